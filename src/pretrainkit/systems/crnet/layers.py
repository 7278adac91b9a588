"""The ways a decoder block's seven linear projections can be built: full, low-rank, CoLA, LoRA, ReLoRA, CR-Net.

Every projection maps ``x (..., h_in) -> y (..., h_out)`` without bias (LLaMA has none). Factored weights use the
``x @ A @ B`` convention of the papers: ``A`` is ``(h_in, r)``, ``B`` is ``(r, h_out)``.

CR-Net (Kong et al., ICLR 2026) chains each projection across layers. Layer 1 is a plain full-rank linear map (the
"anchor"); for layer l >= 2 and each projection P::

    Y_l = sign(beta) * (|beta| + eps) * Y_{l-1} + (X_l @ A_l) @ B_l

with a learned scalar ``beta`` per (layer, projection). The decoder threads the previous layer's outputs through the
stack with a :class:`Chain` (one per block call). The paper does not state how A, B and beta are initialised;
``init_crnet`` documents the two choices offered.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrainkit.adapt.lora import LoRALinear
from pretrainkit.errors import ConfigError

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
METHODS = ("full", "lowrank", "cola", "lora", "relora", "crnet")
CRNET_INITS = ("zero_b", "cola")
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


def _cola_std(h_in: int, h_out: int, rank: int) -> float:
    # CoLA's balanced init: A, B ~ N(0, 1) * r^-1/4 * (h_in + h_out)^-1/4, so A @ B has Xavier-like variance.
    return rank**-0.25 * (h_in + h_out) ** -0.25


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


class CRNetLinear(nn.Module):
    """CR-Net projection for layer l >= 2: Y_l = sign(beta)(|beta| + eps) * Y_{l-1} + (X_l @ A) @ B.

    ``low(x)`` gives the rank-r intermediate X @ A and ``combine(z, prev)`` finishes the output; the recomputation
    in ``recompute.py`` stores ``z`` and inverts ``combine``.
    """

    def __init__(
        self,
        h_in: int,
        h_out: int,
        rank: int,
        init: str = "zero_b",
        beta_init: float = 1.0,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.rank, self.init, self.beta_init, self.eps = rank, init, beta_init, eps
        self.A = nn.Parameter(torch.empty(h_in, rank))
        self.B = nn.Parameter(torch.empty(rank, h_out))
        # 1 element, not 0-d: FSDP2 cannot shard 0-d parameters.
        self.beta = nn.Parameter(torch.empty(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_crnet(self, self.init, self.beta_init)

    def coef(self) -> Tensor:
        """The chain coefficient sign(beta)(|beta| + eps); never zero, so the chain can be inverted."""
        # copysign treats beta = +0 as positive (torch.sign(0) would give 0 and break the inverse).
        return torch.copysign(self.beta.abs() + self.eps, self.beta)

    def low(self, x: Tensor) -> Tensor:
        return x @ self.A

    def combine(self, z: Tensor, prev: Tensor) -> Tensor:
        # One fused op for z @ B + coef * prev.
        return torch.addcmul(z @ self.B, prev, self.coef().to(prev.dtype))

    def forward(self, x: Tensor, prev: Tensor) -> Tensor:
        return self.combine(self.low(x), prev)


@torch.no_grad()
def init_crnet(proj: CRNetLinear, init: str, beta_init: float) -> None:
    """Initialise a CR-Net projection. The paper does not say how; two documented choices.

    ``"zero_b"`` (default): A ~ N(0, 1/h_in) so X @ A has unit scale, B = 0, beta = beta_init. At step 0 every later
    layer reproduces layer 1's projections (Y_l = beta^(l-1) * Y_1), the LoRA-style "start at the anchor" choice:
    the residual stream starts exactly like a model whose layers share layer 1's weights, and B learns at once.
    ``"cola"``: CoLA's balanced N(0, 1) * r^-1/4 (h_in + h_out)^-1/4 for both A and B; each layer then adds a fresh
    random Xavier-scale term, so Y_l's variance grows with depth (about l times layer 1's at beta = 1).
    Why "zero_b", beta 1 is the default (cpu-small shape, r 32, byte-level tinyshakespeare, 300 AdamW steps at lr 3e-3,
    held-out loss): zero_b/beta 1: 2.049, 2.032, 2.024 (3 seeds); zero_b/beta 0.5: 2.018, 2.065, 2.054;
    cola/beta 1: 2.146; cola/beta 0.5: 2.184 (1 seed each). Both zero_b settings trained stably; "cola" was worse.
    """
    h_in, rank = proj.A.shape
    h_out = proj.B.shape[1]
    if init == "zero_b":
        nn.init.normal_(proj.A, std=h_in**-0.5)
        nn.init.zeros_(proj.B)
    elif init == "cola":
        std = _cola_std(h_in, h_out, rank)
        nn.init.normal_(proj.A, std=std)
        nn.init.normal_(proj.B, std=std)
    else:
        raise ConfigError(f"unknown crnet_init '{init}'; allowed: {', '.join(CRNET_INITS)}")
    proj.beta.fill_(beta_init)


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
