"""LoRA: y = f(x) + (alpha / r) * B A x beside a frozen layer f, with A random and B zero (a fresh adapter
changes nothing). ``alpha`` defaults to ``r`` (scale 1); a system that wants another scale passes alpha.

One wrapper per base type, the same options (rank, alpha, dropout) on each: ``LoRALinear`` (nn.Linear),
``LoRAConv`` (nn.Conv1d/2d/3d: A a convolution with the base's kernel and r output channels, B a 1x1
convolution, as in PEFT), ``LoRAEmbedding`` (nn.Embedding: rows of A looked up by id, then B). PyG's typed
linears are in ``adapt/pyg.py``. Every ``merged()`` folds ``scale * B A`` into a copy of the base weight.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from pretrainkit.adapt.base import SIDECAR_V1, AdapterLayer, linear_with, module_like, register_adapter
from pretrainkit.errors import ConfigError

DEFAULT_RANK = 8
LAYOUTS = ("linear", "xab")


class LoRALayer(AdapterLayer):
    """What every LoRA wrapper shares: rank / alpha / dropout checks and ``scale = alpha / rank``."""

    def __init__(
        self, base: nn.Module, rank: int = DEFAULT_RANK, alpha: float | None = None, dropout: float = 0.0
    ):
        super().__init__(base)
        if isinstance(rank, bool) or not isinstance(rank, (int, float)) or int(rank) != rank or rank < 1:
            raise ConfigError(f"LoRA rank must be a positive integer, got {rank!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.rank = int(rank)
        self.alpha = float(self.rank if alpha is None else alpha)
        self.scale = self.alpha / self.rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def check_rank(self, fan_in: int, fan_out: int, what: str = "") -> None:
        """Refuse a rank above min(in, out): such an update is not low-rank and costs more than the weight."""
        if self.rank > min(fan_in, fan_out):
            where = f" for {what}" if what else ""
            raise ConfigError(
                f"LoRA rank {self.rank} is larger than min(in {fan_in}, out {fan_out}) of the "
                f"{type(self.base).__name__}{where}; use rank <= {min(fan_in, fan_out)}"
            )

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scale={self.scale:g}"

    @classmethod
    def wrap_all(cls, model: nn.Module, modules: dict[str, nn.Module], **options) -> tuple[dict, dict]:
        layers, saved = super().wrap_all(model, modules, **options)
        # Spell the resolved alpha out in the sidecar, so a later change of the default cannot move a reload.
        if saved.get("alpha") is None:
            saved["alpha"] = float(saved.get("rank", DEFAULT_RANK))
        return layers, saved

    @classmethod
    def upgrade_options(cls, options: dict, fmt: str) -> dict:
        if fmt == SIDECAR_V1 and options.get("alpha") is None:  # /1 meant alpha = 2 * rank
            options = {**options, "alpha": float(2 * options.get("rank", DEFAULT_RANK))}
        return options


@register_adapter("lora", base=nn.Linear)
class LoRALinear(LoRALayer):
    """Low-rank update beside a frozen Linear.

    ``layout="linear"`` (default): ``lora_A`` (r, in), ``lora_B`` (out, r) like nn.Linear weights, A drawn as
    nn.Linear draws its weight. ``layout="xab"``: ``lora_A`` (in, r), ``lora_B`` (r, out), computed as
    ``x @ A @ B`` with A ~ U(+-1/sqrt(in)): the layout of LoRA pre-training codes (GaLore's, ReLoRA's), which
    CR-Net's LoRA-from-scratch keeps so its checkpoints, draws and matrix products stay as they were.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int = DEFAULT_RANK,
        alpha: float | None = None,
        dropout: float = 0.0,
        layout: str = "linear",
    ):
        super().__init__(base, rank, alpha, dropout)
        if layout not in LAYOUTS:
            raise ConfigError(f"LoRA layout must be one of {LAYOUTS}, got {layout!r}")
        self.check_rank(base.in_features, base.out_features)
        self.layout = layout
        w, r = base.weight, self.rank
        shape_a, shape_b = ((r, base.in_features), (base.out_features, r))
        if layout == "xab":
            shape_a, shape_b = shape_a[::-1], shape_b[::-1]
        self.lora_A = nn.Parameter(torch.empty(shape_a, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(shape_b, device=w.device, dtype=w.dtype))
        self.reset_lora()

    def extra_repr(self) -> str:
        return super().extra_repr() + (", layout=xab" if self.layout == "xab" else "")

    @torch.no_grad()
    def reset_lora(self) -> None:
        """A random, B zero: the product starts at zero."""
        if self.layout == "xab":
            bound = 1.0 / math.sqrt(self.lora_A.shape[0])
            nn.init.uniform_(self.lora_A, -bound, bound)
        else:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # the same scale nn.Linear gives its weight
        nn.init.zeros_(self.lora_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "xab":
            return self.base(x) + self.scale * (self.dropout(x) @ self.lora_A @ self.lora_B)
        return self.base(x) + self.scale * F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        """``B A`` in the base weight's (out, in) orientation (not yet scaled)."""
        if self.layout == "xab":
            return (self.lora_A @ self.lora_B).T
        return self.lora_B @ self.lora_A

    def merged(self) -> nn.Linear:
        """A plain Linear with weight ``W + scale * B A``."""
        w = self.base.weight
        with torch.no_grad():
            return linear_with(self.base, w + self.scale * self.delta_weight().to(w.dtype), self.base.bias)

    @torch.no_grad()
    def merge_and_reset(self) -> None:
        """``W += scale * B A`` in place, then restart A and B (ReLoRA's periodic merge)."""
        self.base.weight += self.scale * self.delta_weight().to(self.base.weight.dtype)
        self.reset_lora()


_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@register_adapter("lora", base=(nn.Conv1d, nn.Conv2d, nn.Conv3d))
class LoRAConv(LoRALayer):
    """Low-rank update beside a frozen convolution: A (r, in, *kernel) uses the base's stride, padding and
    dilation; B (out, r, 1, ...) mixes its r channels. Merged, ``B A`` is one kernel of the base's shape."""

    def __init__(
        self, base: nn.Conv2d, rank: int = DEFAULT_RANK, alpha: float | None = None, dropout: float = 0.0
    ):
        super().__init__(base, rank, alpha, dropout)
        if base.groups != 1:
            raise ConfigError(f"LoRA on a grouped convolution (groups={base.groups}) is not supported")
        self.check_rank(base.in_channels * math.prod(base.kernel_size), base.out_channels)
        w, r = base.weight, self.rank
        ones = (1,) * len(base.kernel_size)
        self.lora_A = nn.Parameter(torch.empty(r, *w.shape[1:], device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(w.shape[0], r, *ones, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # the base conv's own init scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.base._conv_forward(self.dropout(x), self.lora_A, None)  # the base's padding mode too
        return self.base(x) + self.scale * _CONV_FN[len(self.base.kernel_size)](z, self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B.flatten(1) @ self.lora_A.flatten(1)).view_as(self.base.weight)

    def merged(self) -> nn.Module:
        w = self.base.weight
        with torch.no_grad():
            return module_like(self.base, weight=w + self.scale * self.delta_weight().to(w.dtype))


@register_adapter("lora", base=nn.Embedding)
class LoRAEmbedding(LoRALayer):
    """Low-rank update of a frozen embedding table: ``E[i] + scale * B A[:, i]`` with A (r, num_embeddings)
    ~ N(0, 1) (nn.Embedding's own init) and B (dim, r) zero. Dropout does not apply to integer ids."""

    def __init__(
        self, base: nn.Embedding, rank: int = DEFAULT_RANK, alpha: float | None = None, dropout: float = 0.0
    ):
        super().__init__(base, rank, alpha, dropout)
        if dropout:
            raise ConfigError(
                "LoRA dropout does not apply to an Embedding (its inputs are ids); use dropout=0"
            )
        if base.max_norm is not None:
            raise ConfigError(
                "LoRA on an Embedding with max_norm (it renormalises its weight) is not supported"
            )
        self.check_rank(base.num_embeddings, base.embedding_dim)
        w, r = base.weight, self.rank
        self.lora_A = nn.Parameter(torch.empty(r, base.num_embeddings, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.embedding_dim, r, device=w.device, dtype=w.dtype))
        nn.init.normal_(self.lora_A)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        z = F.embedding(ids, self.lora_A.T, self.base.padding_idx)
        return self.base(ids) + self.scale * (z @ self.lora_B.T)

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A).T

    def merged(self) -> nn.Embedding:
        w = self.base.weight
        with torch.no_grad():
            return module_like(self.base, weight=w + self.scale * self.delta_weight().to(w.dtype))
