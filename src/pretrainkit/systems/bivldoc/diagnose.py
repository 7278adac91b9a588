"""Short diagnosis runs behind docs/bivldoc-diagnosis.md (one thread, minutes), on the bench's own jobs:

    python -m pretrainkit.systems.bivldoc.diagnose WORK PRE_STEPS FT_STEPS LRS METHODS [KEY=VALUE ...]

prepares the bench's data in WORK (once), prints the unigram entropy of the pre-training tokens (the floor
MVLM must beat to have learnt anything beyond token frequencies), pre-trains each of METHODS (comma list of
bench methods; ``scratch`` skips it) for PRE_STEPS on seed 0, then fine-tunes FUNSD for FT_STEPS at each lr
of LRS on the training forms but the last 20 and prints entity F1 on those 20 held-out *training* forms (the
test forms are never read). KEY=VALUE: config overrides over the ``bench`` profile.
"""

from __future__ import annotations

import collections
import json
import math
import sys
from pathlib import Path

import torch


def main(argv: list[str]) -> None:
    from pretrainkit.core.config import load_config
    from pretrainkit.core.profiles import profile_path
    from pretrainkit.systems.bivldoc import bench
    from pretrainkit.systems.bivldoc.config import BiVLDocConfig

    torch.set_num_threads(1)
    work, pre_steps, ft_steps, lrs, methods, *sets = argv
    work_p = Path(work)
    work_p.mkdir(parents=True, exist_ok=True)
    cfg = load_config(
        BiVLDocConfig,
        profile_path("bivldoc", "bench"),
        [f"pretrain.train.max_steps={pre_steps}", f"finetune.train.max_steps={ft_steps}", *sets],
    )
    if not (work_p / "data.pt").exists():
        print("prepare", bench.prepare(cfg, work_p), flush=True)
    data = bench._data(work_p)
    counts = collections.Counter(int(i) for e in data["pretrain"] for i in e.input_ids[1:])
    n = sum(counts.values())
    h = -sum(c / n * math.log(c / n) for c in counts.values())
    print(
        f"unigram entropy of pre-training tokens: {h:.3f} nats over {n} tokens, {len(counts)} distinct",
        flush=True,
    )
    for m in methods.split(","):
        init = None
        if m != "scratch":
            r = bench.pretrain_job(cfg, m, 0, str(work_p))
            init = r["init"]
            print(
                "pretrain", m, json.dumps({k: r[k] for k in ("pages_per_s", "wall_s", "losses")}), flush=True
            )
        for lr in (float(x) for x in lrs.split(",")):
            r = bench.finetune_job(cfg, m, 0, "funsd", None, init, str(work_p), val_forms=20, lr=lr)
            print("val", m, lr, ft_steps, round(r["scores"]["f1"], 4), f"{r['wall_s']:.0f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
