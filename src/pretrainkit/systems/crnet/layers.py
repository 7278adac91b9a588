"""The ways a decoder block's seven linear projections can be built: full, low-rank, CoLA, LoRA, ReLoRA, CR-Net.

Every projection maps ``x (..., h_in) -> y (..., h_out)`` without bias (LLaMA has none). Factored weights use the
``x @ A @ B`` convention of the papers: ``A`` is ``(h_in, r)``, ``B`` is ``(r, h_out)``.

CR-Net (Kong et al., ICLR 2026) chains each projection across layers. Layer 1 is a plain full-rank linear map (the
"anchor"); for layer l >= 2 and each projection P::

    Y_l = sign(beta) * (|beta| + eps) * Y_{l-1} + (X_l @ A_l) @ B_l

with a learned scalar ``beta`` per (layer, projection). The decoder threads the previous layer's outputs through the
stack with a :class:`Chain` (one per block call). The paper does not state how A, B and beta are initialised;
``init_crnet`` documents the two choices offered. ``CRNetLinear`` and ``init_crnet`` live in
``pretrainkit.adapt.cross_layer`` (which applies the same chain to any model's blocks) and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The chain step lives in adapt (to_cross_layer applies it to any model); re-exported for CR-Net's modules.
from pretrainkit.adapt.cross_layer import INITS as CRNET_INITS  # noqa: F401
from pretrainkit.adapt.cross_layer import CRNetLinear, init_crnet  # noqa: F401
from pretrainkit.adapt.cross_layer import cola_std as _cola_std
from pretrainkit.adapt.lora import LoRALinear
from pretrainkit.errors import ConfigError

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
METHODS = ("full", "lowrank", "cola", "lora", "relora", "crnet")
CRNET_ANCHORS = ("full", "lowrank")


def check_rank(rank: int, h_in: int, h_out: int, where: str) -> int:
    """Return ``rank`` if 1 <= rank <= min(h_in, h_out), else raise a one-line ConfigError naming the layer."""
    limit = min(h_in, h_out)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
        raise ConfigError(
            f"rank {rank!r} for {where} must be an integer in 1..{limit} (min of in {h_in}, out {h_out})"
        )
    return rank


def layer_ranks(rank: int | Sequence[int] | None, n_layers: int, method: str) -> list[int | None]:
    """Expand a uniform rank or a per-layer list into one entry per layer (None for full-rank)."""
    if method == "full":
        return [None] * n_layers
    if rank is None:
        raise ConfigError(f"method '{method}' needs a rank: an int or a list with one int per layer")
    if isinstance(rank, int) and not isinstance(rank, bool):
        return [rank] * n_layers
    if not isinstance(rank, (list, tuple)):
        raise ConfigError(f"rank must be a positive int or a list with one int per layer, got {rank!r}")
    ranks = list(rank)
    if len(ranks) != n_layers:
        raise ConfigError(f"per-layer rank list has {len(ranks)} entries; the model has {n_layers} layers")
    return ranks


class LowRankLinear(nn.Module):
    """Plain factorisation W = A @ B ("Low-Rank" baseline of GaLore's Table 2), CoLA's balanced init."""

    def __init__(self, h_in: int, h_out: int, rank: int):
        super().__init__()
        self.rank = rank
        std = _cola_std(h_in, h_out, rank)
        self.A = nn.Parameter(torch.randn(h_in, rank) * std)
        self.B = nn.Parameter(torch.randn(rank, h_out) * std)

    def reset_parameters(self) -> None:
        std = _cola_std(self.A.shape[0], self.B.shape[1], self.rank)
        nn.init.normal_(self.A, std=std)
        nn.init.normal_(self.B, std=std)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.A @ self.B


class ColaLinear(LowRankLinear):
    """CoLA (Liu et al. 2025): a non-linearity inside the bottleneck, y = SiLU(x @ A) @ B."""

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(x @ self.A) @ self.B


# LoRA / ReLoRA checkpoints written before CR-Net's LoRA moved onto adapt's layer used these names.
_OLD_LORA_NAMES = {"weight": "base.weight", "A": "lora_A", "B": "lora_B"}


def _load_old_lora_names(module, state_dict, prefix, *_) -> None:
    for old, new in _OLD_LORA_NAMES.items():
        if prefix + old in state_dict and prefix + new not in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)


def scratch_lora(
    h_in: int, h_out: int, rank: int, alpha: float, dropout: float, init_std: float
) -> LoRALinear:
    """LoRA trained from scratch: a frozen full-rank W ~ N(0, init_std) plus a trainable (alpha / r) * A @ B.

    This is GaLore's "LoRA" pre-training baseline (alpha 32, dropout 0.05): adapt's LoRA layer in its "xab"
    layout (A (h_in, r) ~ U(+-1/sqrt(h_in)), B (r, h_out) = 0, y = W x + s x A B). Its ``merge_and_reset``
    folds A @ B into W and restarts A, B, which turns it into ReLoRA when the trainer calls it every N steps.
    """
    # A meta Linear draws nothing; W is drawn here, before A, as CR-Net always drew them. Frozen but a
    # Parameter (not a buffer) so it is saved, sharded and merged like any weight.
    base = nn.Linear(h_in, h_out, bias=False, device="meta")
    base.weight = nn.Parameter(torch.randn(h_out, h_in) * init_std, requires_grad=False)
    layer = LoRALinear(base, rank, alpha, dropout, layout="xab")
    layer.register_load_state_dict_pre_hook(_load_old_lora_names)
    return layer


class Chain:
    """Threads CR-Net's cross-layer projection outputs through one block call.

    ``prev`` holds the previous layer's outputs by projection name (None: the model does not chain, nothing is
    kept); ``out`` collects this layer's outputs for the next layer; ``low`` (optional) records the rank-r
    intermediates X @ A, which only the memory-saving recomputation asks for.
    """

    def __init__(self, prev: dict[str, Tensor] | None, low: dict[str, Tensor] | None = None):
        self.prev = prev
        self.out: dict[str, Tensor] = {}
        self.low = low

    def __call__(self, name: str, proj: nn.Module, x: Tensor) -> Tensor:
        if isinstance(proj, CRNetLinear):
            if self.prev is None or name not in self.prev:
                raise RuntimeError(f"CR-Net projection {name} needs the previous layer's output")
            z = proj.low(x)
            if self.low is not None:
                self.low[name] = z
            y = proj.combine(z, self.prev[name])
        else:
            y = proj(x)
        if self.prev is not None:
            self.out[name] = y
        return y


def build_projection(
    method: str, h_in: int, h_out: int, rank: int | None, layer: int, name: str, cfg
) -> nn.Module:
    """One projection of decoder layer ``layer`` (0-based) for ``method``; ``cfg`` is the model's LlamaConfig."""
    if method == "full":
        return nn.Linear(h_in, h_out, bias=False)
    where = f"layer {layer + 1} {name}"
    if method == "crnet" and layer == 0:
        # Layer 1 is the "high-rank anchor" whose output starts every chain; "lowrank" is the paper's ablation.
        if cfg.crnet_anchor == "full":
            return nn.Linear(h_in, h_out, bias=False)
        return LowRankLinear(h_in, h_out, check_rank(rank, h_in, h_out, where))
    r = check_rank(rank, h_in, h_out, where)
    if method == "lowrank":
        return LowRankLinear(h_in, h_out, r)
    if method == "cola":
        return ColaLinear(h_in, h_out, r)
    if method in ("lora", "relora"):
        return scratch_lora(h_in, h_out, r, cfg.lora_alpha, cfg.lora_dropout, cfg.init_std)
    if method == "crnet":
        return CRNetLinear(h_in, h_out, r, cfg.crnet_init, cfg.crnet_beta_init, cfg.crnet_eps)
    raise ConfigError(f"unknown method '{method}'; allowed: {', '.join(METHODS)}")
