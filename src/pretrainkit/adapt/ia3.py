"""(IA)^3: a learned per-output scale on a frozen Linear's output, initialised to ones (identity)."""

from __future__ import annotations

import torch
from torch import nn

from pretrainkit.adapt.base import AdapterLayer, register_adapter


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
        """Fold the scale into the rows of W and into b."""
        lin = self.base
        with torch.no_grad():
            lin.weight *= self.ia3_scale[:, None]
            if lin.bias is not None:
                lin.bias *= self.ia3_scale
        return lin
