"""One weight-search worker of a shared study, as `pretrainkit ... search-weights` runs it on each machine.

argv: STORAGE STUDY N_TRIALS N_STARTUP SEED GATE_DIR HOLD. The objective is a fixed function of the weights.
With HOLD=1 the worker's first trial writes GATE_DIR/held.json (its pid and weights) and then blocks, so the
test knows this worker is mid-trial when it SIGKILLs it; with HOLD=0 and a GATE_DIR, trials wait for that
file first (otherwise quick workers could finish every trial before the held one has started).
"""

import json
import os
import sys
import time

import torch

from pretrainkit.search.task_weights import SearchConfig, search_task_weights

torch.set_num_threads(1)

TARGET = {"a": 0.5, "b": 0.3, "c": 0.2}


def objective_value(w: dict[str, float]) -> float:
    return -sum((w[k] - TARGET[k]) ** 2 for k in TARGET)


def config(storage: str | None, study: str, n_trials: int, n_startup: int, seed: int) -> SearchConfig:
    return SearchConfig(
        n_trials=n_trials,
        n_startup_trials=n_startup,
        seed=seed,
        storage=storage,
        study_name=study,
        # short enough for a quick test, long enough that a live worker starved of CPU on a busy 2-core
        # machine is not taken for dead (a 1 s / 5 s pair failed there now and then)
        heartbeat_interval=2,
        grace_period=12,
    )


def main() -> None:
    storage, study, n_trials, n_startup, seed, gate, hold = sys.argv[1:8]
    held = [hold == "1"]

    def objective(w: dict[str, float]) -> float:
        if held[0]:
            held[0] = False
            tmp = os.path.join(gate, "held.json.tmp")
            with open(tmp, "w") as f:
                json.dump({"pid": os.getpid(), "weights": w}, f)
            os.replace(tmp, os.path.join(gate, "held.json"))
            time.sleep(600)  # until SIGKILLed
        while gate != "-" and not os.path.exists(os.path.join(gate, "held.json")):
            time.sleep(0.05)
        time.sleep(0.05)  # a trial takes a little while, so the workers interleave
        return objective_value(w)

    res = search_task_weights(
        objective,
        list(TARGET),
        config(storage, study, int(n_trials), int(n_startup), int(seed)),
        progress=False,
    )
    print(json.dumps({"best_weights": res.best_weights, "n_trials": res.n_trials}))


if __name__ == "__main__":
    main()
