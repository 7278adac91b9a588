"""CR-Net's configuration: data, model (preset + method), training, GaLore / ReLoRA settings, bench.

Every section is a dataclass read by ``core.config.load_config`` (YAML profile + ``--set key=value``); unknown
keys and bad values are one-line ConfigErrors. ``validate`` builds the model config once so a rank wider than
a layer, an unknown method or a sequence longer than the model's context fails before any data is read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from pretrainkit.core.trainer import TrainConfig
from pretrainkit.errors import ConfigError
from pretrainkit.systems.crnet.layers import METHODS as MODEL_METHODS
from pretrainkit.systems.crnet.model import PRESETS, LlamaConfig

# "galore" is a pipeline-level method: the full-rank model trained with the GaLore optimiser.
METHODS = (*MODEL_METHODS, "galore")


@dataclass
class DataSection:
    source: str | None = (
        None  # None: the shared Gutenberg + tinyshakespeare corpus; see data.py for the forms
    )
    documents: Literal["file", "paragraphs"] = (
        "file"  # file: one document per .txt; paragraphs: cut at blank lines
    )
    doc_chars: int = 20000  # paragraph documents: about this many characters each
    text_field: str = "text"  # .jsonl / datasets field holding the text
    hf_split: str = "train"  # split of a datasets folder or hub stream
    max_docs: int = 0  # 0 = all (a hub stream needs a number)
    strip_gutenberg: bool = True  # cut Project Gutenberg licence boilerplate
    val_fraction: float = 0.1  # share of characters held out, in whole documents
    split_seed: int = 0  # the validation split's seed (independent of the training seed)
    val_max_tokens: int = (
        0  # 0 = score the whole validation split; else evenly spaced sequences up to this many
    )
    vocab_size: int = 4096  # BPE ids to learn (bytes + merges + EOS)
    tokenizer: str | None = None  # an existing tokenizer.json to use instead of training one
    tokenizer_max_chars: int = 0  # 0 = train the tokenizer on all training text


@dataclass
class ModelSection:
    preset: str = "cpu-small"  # tiny, cpu-small, cpu-base, 60m, 130m, 350m, 1b, 7b (model.PRESETS)
    method: str = "crnet"  # full, lowrank, cola, lora, relora, crnet, galore
    rank: int | list[int] | None = (
        None  # None: the preset's rank (h/4 for CPU presets, the papers' r otherwise)
    )
    # Optional overrides of the preset's shape (None keeps the preset's value).
    hidden: int | None = None
    intermediate: int | None = None
    n_heads: int | None = None
    n_layers: int | None = None
    max_seq_len: int | None = None
    tie_embeddings: bool = False
    crnet_init: str = "zero_b"  # zero_b | cola (the paper does not say; layers.init_crnet)
    crnet_beta_init: float = 1.0
    crnet_anchor: str = "full"  # layer 1 full-rank (paper) or lowrank (the paper's ablation)
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    recompute: str = "none"  # none | checkpoint | crnet (CR-Net's chain-inverting recomputation)
    checkpoint_every: int = 8  # crnet recompute keeps full outputs of every k-th layer


@dataclass
class GaLoreSection:
    rank: int | None = None  # None: the model's rank setting (the preset's)
    update_proj_gap: int = 200  # steps between SVD projector refreshes (GaLore's T)
    scale: float = 0.25  # GaLore's alpha


@dataclass
class ReLoRASection:
    reset_every: int = 100  # merge A B into W and restart them every N steps
    rewarm_steps: int = 10  # after each merge, ramp the lr back up over N steps (ReLoRA's jagged schedule)


@dataclass
class MemoryShape:
    n_layers: int = 4
    seq_len: int = 128
    batch_size: int = 8


@dataclass
class BenchSection:
    methods: list[str] = field(
        default_factory=lambda: ["full", "lowrank", "cola", "lora", "relora", "galore", "crnet"]
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    lr: dict[str, float] = field(default_factory=dict)  # per method; a method not listed uses train.lr
    # per method; a method not listed uses block_lr_scale (galore: galore.scale, the same role for its arm)
    block_lr_scale: dict[str, float] = field(default_factory=dict)
    lr_note: str = ""  # where the per-method lrs come from (printed in the results)
    # trainable: lowrank, CoLA, LoRA and ReLoRA at the smallest rank training >= CR-Net's parameters;
    # total: the first bench's rule (lowrank and CoLA by total parameters, LoRA/ReLoRA at the model rank)
    align_by: Literal["trainable", "total"] = "trainable"
    align_params: bool = (
        True  # lowrank/cola get the smallest rank whose parameters >= CR-Net's (the paper's ♢)
    )
    memory_shapes: list[MemoryShape] = field(default_factory=lambda: [MemoryShape(), MemoryShape(8, 256, 8)])
    hf_rounds: int = 5  # interleaved timing rounds of ours vs transformers' LlamaForCausalLM
    hf_steps: int = 3  # training steps per round
    arm_budget_s: float = 0.0  # > 0: cut train.max_steps (for every method alike) so the slowest arm fits
    time_limit_s: float = 0.0  # > 0: hard stop of one arm (its steps are then reported as fewer)
    # another regime's results JSON (e.g. docs/results/crnet.json): its ranking is stored beside this one's
    compare_with: str = ""


@dataclass
class SweepSection:
    """`pretrainkit crnet sweep`: the lr grid every bench method gets, scored on a dev split of the training
    documents (never on the validation documents the bench reports)."""

    methods: list[str] = field(default_factory=lambda: ["full", "cola", "lora", "galore", "crnet"])
    lrs: list[float] = field(default_factory=lambda: [0.003, 0.01])
    block_scales: list[float] = field(default_factory=lambda: [1.0, 0.25, 0.1])
    seed: int = 0
    dev_fraction: float = 0.1  # share of the training tokens scored as the dev split
    # documents: whole training documents drawn at random (seed dev_seed), as validation was drawn from the
    # corpus; tail: the end of the training stream (the first sweep's reading, off-domain on the shared corpus)
    dev_split: Literal["documents", "tail"] = "documents"
    dev_seed: int = 1
    workers: int = 2
    bench_cells: bool = False  # train each method at its bench cell only (bench.lr x bench.block_lr_scale)
    name: str = "crnet-sweep"  # docs/results/<name>.{md,json}


@dataclass
class CRNetConfig:
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    seq_len: int = 128
    batch_size: int = 8  # sequences per optimiser step (global, across processes; times train.grad_accum)
    eval_batch_size: int = 16
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            max_steps=500, lr=3e-3, warmup_steps=50, min_lr_ratio=0.1, grad_clip=1.0, log_every=10
        )
    )
    # lr multiplier for the blocks' projections and CR-Net's betas (embeddings, head, norms keep train.lr).
    # GaLore ignores it: its own scale (projected updates x galore.scale) gives its arm this structure.
    block_lr_scale: float = 1.0
    # CR-Net's betas at train.lr x this instead (None: with the projections). An open choice of the paper.
    beta_lr_scale: float | None = None
    galore: GaLoreSection = field(default_factory=GaLoreSection)
    relora: ReLoRASection = field(default_factory=ReLoRASection)
    bench: BenchSection = field(default_factory=BenchSection)
    sweep: SweepSection = field(default_factory=SweepSection)
    device: str = "auto"  # auto (CUDA if present) | cpu | cuda
    out: str = "runs/crnet"

    def validate(self) -> None:
        check_method(self.model.method)
        for m in self.bench.methods:
            check_method(m)
        for m in [*self.bench.lr, *self.bench.block_lr_scale, *self.sweep.methods]:
            check_method(m)
        if not 0 < self.sweep.dev_fraction < 1:
            raise ConfigError(f"sweep.dev_fraction must be in (0, 1), got {self.sweep.dev_fraction}")
        b, sw = self.bench, self.sweep
        scales = [self.block_lr_scale, *b.block_lr_scale.values(), *sw.lrs, *sw.block_scales]
        if min([*scales, *([self.beta_lr_scale] if self.beta_lr_scale is not None else [])]) <= 0:
            raise ConfigError(
                "block_lr_scale, beta_lr_scale, bench.block_lr_scale, sweep.lrs and sweep.block_scales must be > 0"
            )
        if self.model.preset not in PRESETS:
            raise ConfigError(f"unknown model preset '{self.model.preset}'; allowed: {', '.join(PRESETS)}")
        for key in ("seq_len", "batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key '{key}' must be >= 1, got {getattr(self, key)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got '{self.device}'")
        if self.relora.reset_every < 1:
            raise ConfigError(f"relora.reset_every must be >= 1, got {self.relora.reset_every}")
        mcfg = llama_config(self, vocab_size=self.data.vocab_size)  # raises on a bad rank / shape / name
        if self.seq_len > mcfg.max_seq_len:
            raise ConfigError(
                f"seq_len {self.seq_len} exceeds the model's context max_seq_len={mcfg.max_seq_len} "
                f"(raise model.max_seq_len or lower seq_len)"
            )
        if self.train.parallel == "fsdp" and self.model.recompute == "crnet":
            raise ConfigError(
                "under FSDP2 use model.recompute=checkpoint (crnet recompute supports one device / DDP)"
            )
        if self.train.parallel == "fsdp" and self.model.method == "galore":
            raise ConfigError(
                "method galore needs whole gradients for its SVD; use train.parallel=ddp or none"
            )


def check_method(name: str) -> str:
    """``name`` if it is a known method, else a one-line ConfigError listing them."""
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'; allowed: {', '.join(METHODS)}")
    return name


def model_method(method: str) -> str:
    """The model's projection type for a pipeline method (galore trains the full-rank model)."""
    return "full" if check_method(method) == "galore" else method


def llama_config(cfg: CRNetConfig, vocab_size: int, method: str | None = None, **overrides) -> LlamaConfig:
    """The LlamaConfig of ``cfg.model`` (or of ``method``) with the tokenizer's vocabulary size."""
    m = cfg.model
    shape = {
        k: getattr(m, k) for k in ("hidden", "intermediate", "n_heads", "n_layers", "max_seq_len", "rank")
    }
    shape = {k: v for k, v in shape.items() if v is not None}
    kw = {
        **shape,
        "vocab_size": vocab_size,
        "method": model_method(method or m.method),
        "tie_embeddings": m.tie_embeddings,
        "crnet_init": m.crnet_init,
        "crnet_beta_init": m.crnet_beta_init,
        "crnet_anchor": m.crnet_anchor,
        "lora_alpha": m.lora_alpha,
        "lora_dropout": m.lora_dropout,
        "recompute": m.recompute,
        "checkpoint_every": m.checkpoint_every,
        **overrides,
    }
    return LlamaConfig.preset(m.preset, **kw)


def galore_rank(cfg: CRNetConfig, mcfg: LlamaConfig) -> int:
    """GaLore's projection rank: galore.rank, else the model section's (or the preset's) uniform rank."""
    if cfg.galore.rank is not None:
        return cfg.galore.rank
    r = cfg.model.rank if cfg.model.rank is not None else PRESETS[cfg.model.preset]["rank"]
    if isinstance(r, list):
        raise ConfigError("GaLore needs one rank: set galore.rank when model.rank is a per-layer list")
    return int(r)


def replace(obj, **changes):
    """dataclasses.replace for nested config sections."""
    return dataclasses.replace(obj, **changes)
