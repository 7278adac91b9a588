"""`pretrainkit bench saga`: the full grid, the headline figures and a pre-training throughput line."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from pretrainkit.core.data import EpochBatches
from pretrainkit.core.results import md_table, write_results
from pretrainkit.core.task import TASKS, MixModel, TaskMix
from pretrainkit.core.trainer import TrainConfig, Trainer
from pretrainkit.systems.saga import report
from pretrainkit.systems.saga.config import SagaConfig
from pretrainkit.systems.saga.experiment import METHODS, Grid
from pretrainkit.systems.saga.model import LimuBertEncoder
from pretrainkit.systems.saga.pipeline import SagaPipeline


def throughput(pipe: SagaPipeline, steps: int = 12, batch: int = 128) -> dict[str, float]:
    """Pre-training windows/s (point task) through our Trainer against a bare loop on the same model and batches."""
    x = torch.from_numpy(pipe.windows.x[:1024])

    def make():
        torch.manual_seed(0)
        return MixModel(LimuBertEncoder(), TaskMix([TASKS.build("saga.point")]))

    model, data = make(), EpochBatches({"x": x}, batch, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        loss, _ = model(next(data))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    bare = batch * len(times) / sum(times)
    stamps: list[float] = []
    Trainer(make(), EpochBatches({"x": x}, batch, seed=0),
            TrainConfig(max_steps=steps + 2, lr=1e-3, schedule="constant", progress=False),
            step_hooks=[lambda t, s: stamps.append(time.perf_counter())]).fit()
    ours = batch * (len(stamps) - 2) / (stamps[-1] - stamps[1])
    return {"bare_windows_per_s": bare, "trainer_windows_per_s": ours, "ratio": ours / bare}


def run_bench(cfg: SagaConfig, out_dir: Path | None = None) -> Path:
    t0 = time.time()
    pipe = SagaPipeline(cfg)
    rows = Grid(pipe, methods=METHODS).run(workers=cfg.downstream.workers)
    tp = throughput(pipe)
    head = report.headline(rows)
    head["goal_ratio_met"] = bool(head["activity_ratio_at_100"] and head["activity_ratio_at_100"] >= 0.90)
    head["goal_beats_limubert_both"] = bool(
        (head["saga_minus_limubert_activity"] or 0) > 0 and (head["saga_minus_limubert_user"] or 0) > 0)
    plot = report.plot(rows, Path(out_dir or "docs/results") / "saga_accuracy.png")
    pc = cfg.pretrain
    body = "\n".join([
        "## Protocol", "",
        f"- Data: UCI HAPT ({len(pipe.windows)} windows of 120 steps at 20 Hz, 6 channels), loaded from "
        f"`{pipe.windows.source}`.",
        "- Splits: **random** = LIMU-BERT's 80/10/10 over windows (seed 3431); **subject** = whole users to "
        "train/val/test (activity only); **time** = within each user the earliest 80 % of windows train, the "
        "latest 10 % test (user identification only).",
        f"- Pre-training on the {len(pipe.pretrain_windows())} windows that lie in the training part of every "
        "split above (so no encoder sees a validation or test window of any split): reading B = four encoders "
        f"(one per task) x "
        f"{pc.train.max_steps} steps of {pc.batch_size} windows; reading A = one encoder x {pc.train.max_steps} "
        "steps whose every step runs all four tasks (the same number of encoder passes as B in total).",
        "- Downstream unit = 1-s sub-window (20 steps) of a window, as LIMU-BERT. A budget of k labels per class "
        "is drawn from the training units; 20 % of it (>= 1 per class) selects the GRU's epoch"
        + (f" and, at budgets <= {cfg.downstream.restart_max_budget}, the best of "
           f"{cfg.downstream.head_restarts} GRU inits (for every GRU method alike)"
           if cfg.downstream.head_restarts > 1 else "")
        + ". The weight search "
        f"(Optuna GP sampler, {cfg.search.n_trials} trials) maximises {cfg.downstream.cv_folds}-fold CV accuracy "
        "of a ridge probe inside the budget. No validation- or test-split label is used to tune anything "
        "except the full-label model, which selects its epoch on the validation split.",
        "- saga-A's search uses one budget-20 draw (seed 0) per task, so at budgets 50 and 100 with seeds 1-2 it "
        "has seen up to 20 extra labels per class; it is reported for budgets >= 20 only.",
        "", "## Results", "", report.tables(rows), "",
        f"![accuracy against labels per class]({plot.name})", "",
        "## Pre-training throughput (same model, same batches, same run)", "",
        md_table(["loop", "windows/s"], [["bare PyTorch loop", round(tp["bare_windows_per_s"], 1)],
                                          ["pretrainkit Trainer", round(tp["trainer_windows_per_s"], 1)]]),
        "", f"Ratio {tp['ratio']:.3f}. Wall time of the whole bench: {time.time() - t0:.0f} s.",
    ])
    return write_results("saga", head, body, {"rows": rows, "throughput": tp, "config": _cfg_dict(cfg)},
                         seeds=cfg.downstream.seeds, out_dir=out_dir, title="Saga")


def _cfg_dict(cfg: SagaConfig) -> dict:
    from pretrainkit.core.config import to_dict

    return to_dict(cfg)
