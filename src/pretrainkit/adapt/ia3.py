"""(IA)^3: a learned per-output scale on a frozen Linear's output, initialised to ones (identity)."""

from __future__ import annotations

import torch
from torch import nn

from pretrainkit.adapt.base import AdapterLayer, linear_with, register_adapter


@register_adapter("ia3")
class IA3Linear(AdapterLayer):
    """``y = l * (W x + b)`` with one trainable vector ``l`` of size ``out_features``."""

    def __init__(self, base: nn.Linear):
        super().__init__(base)
        w = base.weight
        self.ia3_scale = nn.Parameter(torch.ones(base.out_features, device=w.device, dtype=w.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) * self.ia3_scale

    def merged(self) -> nn.Linear:
        """A plain Linear with the scale folded into the rows of W and into b."""
        lin, scale = self.base, self.ia3_scale.detach()
        bias = None if lin.bias is None else lin.bias * scale
        return linear_with(lin, lin.weight * scale[:, None], bias)
