"""LoRA: y = W x + (alpha / r) * B A x with A random and B zero, so a fresh adapter changes nothing."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from pretrainkit.adapt.base import AdapterLayer, linear_with, register_adapter
from pretrainkit.errors import ConfigError


@register_adapter("lora")
class LoRALinear(AdapterLayer):
    """Low-rank update beside a frozen Linear. ``alpha`` defaults to ``2 * rank`` (scale 2, as in L2M)."""

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float | None = None, dropout: float = 0.0):
        super().__init__(base)
        if int(rank) < 1:
            raise ConfigError(f"LoRA rank must be a positive integer, got {rank}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.rank = int(rank)
        self.scale = float(2 * self.rank if alpha is None else alpha) / self.rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(self.rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, self.rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # the same scale nn.Linear gives its weight
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scale={self.scale:g}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)

    def merged(self) -> nn.Linear:
        """A plain Linear with weight ``W + scale * B A``."""
        w = self.base.weight
        with torch.no_grad():
            return linear_with(
                self.base, w + self.scale * (self.lora_B @ self.lora_A).to(w.dtype), self.base.bias
            )
