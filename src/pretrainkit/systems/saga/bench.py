"""`pretrainkit bench saga`: the full grid, the headline figures and a pre-training throughput line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from pretrainkit.core import benchkit
from pretrainkit.core.data import EpochBatches
from pretrainkit.core.results import RESULTS_DIR, md_table, publish
from pretrainkit.core.task import TASKS, MixModel, TaskMix
from pretrainkit.core.trainer import TrainConfig, Trainer
from pretrainkit.systems.saga import report
from pretrainkit.systems.saga.config import SagaConfig
from pretrainkit.systems.saga.experiment import METHODS, Grid
from pretrainkit.systems.saga.model import LimuBertEncoder
from pretrainkit.systems.saga.pipeline import SagaPipeline

KIND, TITLE = "saga.bench", "Saga"
NOT_STORED = "(not stored in this results file)"


def throughput(pipe: SagaPipeline, steps: int = 12, batch: int = 128, warmup: int = 2) -> dict[str, float]:
    """Pre-training windows/s (point task) through our Trainer against a bare loop on the same model and batches."""
    x = torch.from_numpy(pipe.windows.x[:1024])

    def make():
        torch.manual_seed(0)
        return MixModel(LimuBertEncoder(), TaskMix([TASKS.build("saga.point")]))

    def batches():
        return EpochBatches({"x": x}, batch, seed=0)

    bare = benchkit.time_bare(
        make, batches, steps, warmup, make_optimizer=lambda m: torch.optim.Adam(m.parameters(), lr=1e-3)
    )
    ours = benchkit.time_trainer(
        lambda data, n: Trainer(
            make(), data, TrainConfig(max_steps=n, lr=1e-3, schedule="constant", progress=False)
        ),
        batches,
        steps,
        warmup,
    )
    return {
        "bare_windows_per_s": batch / bare,
        "trainer_windows_per_s": batch / ours,
        "ratio": bare / ours,
        "steps": steps,
        "warmup": warmup,
        "batch": batch,
    }


def run_bench(
    cfg: SagaConfig, out_dir: Path | None = None, name: str = "saga", profile: str | None = None
) -> Path:
    t0 = time.time()
    pipe = SagaPipeline(cfg)
    rows = Grid(pipe, methods=METHODS).run(workers=cfg.downstream.workers)
    tp = throughput(pipe)
    out = Path(out_dir or RESULTS_DIR)
    report.plot(rows, out / f"{name}_accuracy.png")
    data = {
        "rows": rows,
        "throughput": tp,
        "wall_s": time.time() - t0,
        "data_info": {
            "windows": len(pipe.windows),
            "source": pipe.windows.source,
            "pretrain_windows": len(pipe.pretrain_windows()),
        },
    }
    return publish(
        name,
        data,
        lambda p: render(p, plot_name=f"{name}_accuracy.png"),
        kind=KIND,
        seeds=cfg.downstream.seeds,
        out_dir=out_dir,
        title=TITLE,
        config=cfg,
        profile=profile,
    )


def render(payload: dict[str, Any], plot_name: str = "saga_accuracy.png") -> tuple[dict[str, Any], str, dict]:
    """Headline and report from a stored Saga results JSON (the grid's rows, throughput and config)."""
    from pretrainkit.core.config import from_dict

    cfg = from_dict(SagaConfig, payload["config"])
    rows, tp = payload["rows"], payload["throughput"]
    info = payload.get("data_info") or {}
    wall = payload.get("wall_s")
    fixed = cfg.data.format == "basicmotions"
    head = report.headline(rows, split="uea" if fixed else "random")
    head["goal_ratio_met"] = bool(head["activity_ratio_at_100"] and head["activity_ratio_at_100"] >= 0.90)
    head["goal_ratio_at_20_met"] = bool(head["activity_ratio_at_20"] and head["activity_ratio_at_20"] >= 0.90)
    head["goal_beats_limubert_both"] = bool(
        (head["saga_minus_limubert_activity"] or 0) > 0 and (head["saga_minus_limubert_user"] or 0) > 0
    )
    head["goal_beats_limubert_equal_compute_both"] = bool(
        (head["saga_minus_limubert_equal_compute_activity"] or 0) > 0
        and (head["saga_minus_limubert_equal_compute_user"] or 0) > 0
    )
    head["n_seeds"] = len({r["seed"] for r in rows})
    pc = cfg.pretrain
    body = "\n".join(
        [
            "## Protocol",
            "",
            (
                f"- Data: UEA BasicMotions ({info['windows']} series of 100 steps at 10 Hz, 6 channels; the "
                f"archive's 40 TRAIN and 40 TEST series), loaded from `{info['source']}`. Split **uea** = TRAIN "
                "minus a stratified 20 % for validation, TEST as test. Units are 2-s (20-step) sub-series."
                if fixed and info
                else f"- Data: UCI HAPT ({info['windows']} windows of 120 steps at 20 Hz, 6 channels), loaded from "
                f"`{info['source']}`."
                if info
                else "- Data: UCI HAPT (windows of 120 steps at 20 Hz, 6 channels; the "
                f"window count and source {NOT_STORED})."
            ),
            (
                "- Splits: **random** = LIMU-BERT's 80/10/10 over windows (seed 3431); **subject** = whole users to "
                "train/val/test (activity only); **time** = within each user the earliest 80 % of windows train, the "
                "latest 10 % test (user identification only)."
            ),
            (
                f"- Pre-training on the {str(info['pretrain_windows']) + ' ' if info else ''}windows that lie in the "
                "training part of every split above (so no encoder sees a validation or test window of any split): "
                f"reading B = four encoders (one per task) x {pc.train.max_steps} steps of {pc.batch_size} windows; "
                f"reading A = one encoder x {pc.train.max_steps} steps whose every step runs all four tasks (the same "
                "number of encoder passes as B in total)."
            ),
            "- Downstream unit = 1-s sub-window (20 steps) of a window, as LIMU-BERT. A budget of k labels per class "
            "is drawn from the training units; 20 % of it (>= 1 per class) selects the GRU's epoch"
            + (
                f" and, at budgets <= {cfg.downstream.restart_max_budget}, the best of "
                f"{cfg.downstream.head_restarts} GRU inits (for every GRU method alike)"
                if cfg.downstream.head_restarts > 1
                else ""
            )
            + ". The weight search "
            f"(Optuna GP sampler, {cfg.search.n_trials} trials) maximises {cfg.downstream.cv_folds}-fold CV accuracy "
            "of a ridge probe inside the budget. No validation- or test-split label is used to tune anything "
            "except the full-label models, which select their epoch or hyperparameter on the validation split. "
            "The ratios' denominator is the full-label model with the best validation accuracy (activity, random "
            f"split): **{head['full_label_reference']}**.",
            (
                "- saga-A's search uses one budget-20 draw (seed 0) per task, so at budgets 50 and 100 with seeds 1-2 "
                "it has seen up to 20 extra labels per class; it is reported for budgets >= 20 only."
            ),
            "",
            "## Results",
            "",
            report.tables(rows),
            "",
            f"![accuracy against labels per class]({plot_name})",
            "",
            "## Pre-training throughput (same model, same batches, same run)",
            "",
            (
                f"{tp.get('steps', 12)} timed steps of {tp.get('batch', 128)} windows after {tp.get('warmup', 2)} "
                "warm-up steps, one run each (n=1)."
            ),
            "",
            md_table(
                ["loop", "windows/s", "n"],
                [
                    ["bare PyTorch loop", round(tp["bare_windows_per_s"], 1), 1],
                    ["pretrainkit Trainer", round(tp["trainer_windows_per_s"], 1), 1],
                ],
            ),
            "",
            f"Ratio {tp['ratio']:.3f}. Wall time of the whole bench: "
            + (f"{wall:.0f} s." if wall is not None else f"{NOT_STORED}."),
        ]
    )
    return head, body, {}
