"""Many workers, one study: four worker processes share one weight search through a real PostgreSQL server
or a journal file, and one of them is SIGKILLed in the middle of a trial.

How the result can be compared with a single worker's, honestly: the GP's proposals depend on which trials
had finished when a worker asked for its next point, so a four-worker GP phase legitimately differs from a
lone worker's. What does not depend on timing is a slot's random start-up draw: it is keyed by the seed
and the slot (see search/trial_queue.py), not by which worker runs it or when. These tests therefore make
every trial a start-up trial (n_startup_trials = n_trials): the study must then end with exactly the
trials, and so the best weights, that one worker finds alone with the same seed. The GP phase is tested
with concurrent workers too (last test), for what holds whatever the timing: the exact count, and no point
proposed twice (workers fit the GP with different seeds, so two that fit the same finished trials at the
same moment still start their acquisition search from different points).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from search_worker import TARGET, config, objective_value  # noqa: E402

from pretrainkit.search.storage import make_storage  # noqa: E402
from pretrainkit.search.task_weights import search_task_weights  # noqa: E402

N_TRIALS, SEED = 10, 3
Complete, Fail = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL


def _workers(storage: str, study: str, gate: Path | None, n: int, n_trials: int, n_startup: int):
    """n worker processes; with a gate folder the first one is held mid-trial (see search_worker.py)."""
    return [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "search_worker.py"),
                storage,
                study,
                str(n_trials),
                str(n_startup),
                str(SEED),
                str(gate or "-"),
                "1" if gate and i == 0 else "0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]


def _finish(procs, timeout: float = 90) -> list[tuple[int, str, str]]:
    deadline = time.monotonic() + timeout
    try:
        return [(p.wait(max(0.1, deadline - time.monotonic())), *p.communicate()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _kill_held_worker(procs, gate: Path) -> dict:
    held, deadline = gate / "held.json", time.monotonic() + 60
    while not held.exists():
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            pytest.fail(
                "the held worker never started its trial: "
                + " | ".join(p.communicate()[1][-1500:] for p in procs)
            )
        time.sleep(0.05)
    info = json.loads(held.read_text())
    os.kill(info["pid"], signal.SIGKILL)
    return info


def _weights_key(w: dict) -> tuple:
    return tuple(w[k] for k in TARGET)


def _check_killed_run(storage: str, study_name: str, storage_obj, gate: Path) -> None:
    procs = _workers(storage, study_name, gate, 4, N_TRIALS, N_TRIALS)
    info = _kill_held_worker(procs, gate)
    results = _finish(procs)
    killed = [r for p, r in zip(procs, results) if p.pid == info["pid"]]
    assert killed[0][0] == -signal.SIGKILL
    for rc, out, err in (r for p, r in zip(procs, results) if p.pid != info["pid"]):
        assert rc == 0, err[-2000:]
        assert json.loads(out.splitlines()[-1])["n_trials"] == N_TRIALS

    trials = optuna.load_study(study_name=study_name, storage=storage_obj).get_trials()
    complete = [t for t in trials if t.state == Complete]
    failed = [t for t in trials if t.state == Fail]
    assert len(complete) == N_TRIALS and len(trials) == N_TRIALS + 1  # nothing waiting, running or extra
    assert len({_weights_key(t.user_attrs["weights"]) for t in complete}) == N_TRIALS  # no point run twice
    # the killed trial is marked failed and was re-run, with its weights, by a surviving worker
    assert len(failed) == 1 and failed[0].user_attrs["weights"] == info["weights"]
    rerun = [t for t in complete if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(rerun) == 1 and rerun[0].user_attrs["weights"] == info["weights"]

    # a lone worker with the same seeds, in memory: the same trials, hence the same best weights
    alone = search_task_weights(
        objective_value, list(TARGET), config(None, "alone", N_TRIALS, N_TRIALS, SEED), progress=False
    )
    assert sorted(_weights_key(t.user_attrs["weights"]) for t in complete) == sorted(
        _weights_key(h["weights"]) for h in alone.history
    )
    best = max(complete, key=lambda t: t.value)
    assert best.user_attrs["weights"] == alone.best_weights and best.value == alone.best_value


def test_four_workers_on_postgres_one_killed(postgres_url, tmp_path):
    _check_killed_run(postgres_url, "pg-killed", postgres_url, tmp_path)


def test_four_workers_on_a_journal_file_one_killed(tmp_path):
    path = tmp_path / "study.log"
    _check_killed_run(f"journal:{path}", "journal-killed", make_storage(f"journal:{path}", None), tmp_path)


def test_concurrent_gp_phase_keeps_the_exact_count_and_proposes_no_point_twice(tmp_path):
    path, n_trials = tmp_path / "study.log", 9
    results = _finish(_workers(f"journal:{path}", "gp", None, 3, n_trials, 3))
    assert all(rc == 0 for rc, _, _ in results), [err[-2000:] for _, _, err in results]
    trials = optuna.load_study(study_name="gp", storage=make_storage(f"journal:{path}", None)).get_trials()
    assert [t.state for t in trials] == [Complete] * n_trials
    assert len({_weights_key(t.user_attrs["weights"]) for t in trials}) == n_trials
