"""Bi-VLDoc's configuration: data, model preset (+ overrides), pre-training tasks and fine-tuning."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from pretrainkit.core.trainer import TrainConfig
from pretrainkit.errors import ConfigError
from pretrainkit.search.task_weights import SearchConfig
from pretrainkit.systems.bivldoc.model import ModelConfig, preset
from pretrainkit.systems.bivldoc.stream import ViewConfig
from pretrainkit.systems.bivldoc.tasks import TASK_NAMES

SHORT_NAMES = tuple(n.split(".", 1)[1] for n in TASK_NAMES)


@dataclass
class DataSection:
    root: str | None = None  # None: $PRETRAINKIT_SHARED_DATA, else ../shared/data beside the checkout
    synthetic_pages: int = 64  # rendered Gutenberg pages added to the pre-training corpus
    synthetic_noise: float = 0.5
    funsd_limit: int | None = None  # first n FUNSD training pages in pre-training (None: all 149)
    sroie_limit: int | None = None  # first n receipts (None: all 80 training receipts, never 080-099)
    own_pages: str | None = (
        None  # a folder of your scanned pages, OCR'd with Tesseract and added to pre-training
    )
    # pre-training pages longer than the model: "truncate" (stated in one line), "windows" (split into windows of
    # whole words: every word is seen; the bench's choice) or "error"; fine-tuning and evaluation always split
    # long pages into windows, so every word is labelled and scored
    overflow: Literal["truncate", "windows", "error"] = "truncate"


@dataclass
class PretrainSection:
    # by short name (mvlm, tipa, lgv, itm: the registered tasks are bivldoc.<name>), so a dotted --set works:
    # --set pretrain.weights.tipa=0.5; a task left out keeps weight 1, weight 0 switches it off
    weights: dict[str, float] = field(default_factory=lambda: {n: 1.0 for n in SHORT_NAMES})
    view: ViewConfig = field(default_factory=ViewConfig)
    tipa_mode: Literal["grid", "regress"] = "grid"
    tipa_grid: int = 8
    temperature: float = 0.1  # LGV InfoNCE
    vocab_size: int = 4000  # WordPiece vocabulary trained on the pre-training pages
    batch_size: int = 4
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            max_steps=300, lr=5e-4, warmup_steps=20, weight_decay=0.01, log_every=10
        )
    )

    def validate(self) -> None:
        unknown = set(self.weights) - set(SHORT_NAMES)
        if unknown:
            raise ConfigError(
                f"unknown pre-training task '{sorted(unknown)[0]}' in pretrain.weights; allowed: "
                f"{', '.join(SHORT_NAMES)}"
            )

    def task_weights(self) -> dict[str, float]:
        """The weights by registered task name."""
        return {f"bivldoc.{n}": w for n, w in self.weights.items()}


@dataclass
class FinetuneSection:
    # a pre-training run directory (its model.json fixes the model: `model` overrides do not apply);
    # None = from scratch (model from `preset` + `model`, vocabulary from the FUNSD training forms)
    init: str | None = None
    # funsd: entity labelling, seqeval F1 on the 50 test forms; sroie: key-field extraction on receipts 000-079,
    # exact match per field on 080-099 (train_forms then counts receipts)
    task: Literal["funsd", "sroie"] = "funsd"
    train_forms: int | None = None  # the first n FUNSD training forms (None: all 149): the few-label curve
    val_forms: int = 20  # search-weights only: the last n of those forms score each trial (in-budget)
    batch_size: int = 4
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            max_steps=400, lr=5e-4, warmup_steps=20, weight_decay=0.01, log_every=20
        )
    )


BENCH_METHODS = ("bivldoc", "mvlm-only", "no-hybrid", "text-only", "layoutlmv3", "scratch")


@dataclass
class BenchSection:
    """`bivldoc bench`: every method x seed pre-trains (``pretrain.train``, seed replaced) then fine-tunes
    FUNSD (``finetune.train``) and SROIE (``sroie_steps``) from that backbone; the few-label curve fine-tunes
    ``few_label_methods`` on the first n FUNSD training forms for n in ``few_label``."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    methods: list[str] = field(default_factory=lambda: list(BENCH_METHODS))
    few_label: list[int] = field(default_factory=lambda: [10, 25, 50])
    few_label_methods: list[str] = field(default_factory=lambda: ["bivldoc", "scratch"])
    sroie_steps: int = 100
    workers: int = 2  # worker processes (one torch thread each)
    lmv3_wpa_prob: float = 0.4  # the LayoutLMv3 baseline's blanked image share (its WPA objective)
    # fine-tuning lr per method: each method's first seed fine-tunes FUNSD on the training forms but the last
    # val_forms once per lr here and scores those held-out training forms (never the test forms); the best lr
    # is then used for all its seeds and tasks. Empty: finetune.train.lr for every method.
    lr_grid: list[float] = field(default_factory=list)
    val_forms: int = 20
    # the smoke profile only: the first n labelled training / test pages of FUNSD and SROIE (None: all)
    train_limit: int | None = None
    eval_limit: int | None = None

    def validate(self) -> None:
        unknown = sorted(set(self.methods) - set(BENCH_METHODS))
        if unknown:
            raise ConfigError(f"unknown bench method '{unknown[0]}'; allowed: {', '.join(BENCH_METHODS)}")
        bad = sorted(set(self.few_label_methods) - set(self.methods))
        if bad:
            raise ConfigError(f"bench.few_label_methods '{bad[0]}' is not in bench.methods")
        if not self.seeds:
            raise ConfigError("bench.seeds needs at least one seed")
        if self.lr_grid and self.val_forms < 1:
            raise ConfigError("bench.val_forms must be >= 1 when bench.lr_grid is given")
        if self.workers < 1 or self.sroie_steps < 1:
            raise ConfigError("bench.workers and bench.sroie_steps must be >= 1")


@dataclass
class BiVLDocConfig:
    preset: str = "cpu"
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields overriding the preset
    data: DataSection = field(default_factory=DataSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    search: SearchConfig = field(default_factory=lambda: SearchConfig(n_trials=8, n_startup_trials=3))
    bench: BenchSection = field(default_factory=BenchSection)
    device: str = "auto"
    out: str = "runs/bivldoc"

    def validate(self) -> None:
        self.model_config(vocab_size=self.pretrain.vocab_size)

    def model_config(self, **fixed) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(ModelConfig)}
        unknown = set(self.model) - names
        if unknown:
            raise ConfigError(
                f"unknown config key 'model.{sorted(unknown)[0]}'; allowed: {', '.join(sorted(names))}"
            )
        kw = {**self.model, **fixed}
        if isinstance(kw.get("cnn_channels"), list):
            kw["cnn_channels"] = tuple(kw["cnn_channels"])
        return preset(self.preset, **kw)
