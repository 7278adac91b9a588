"""(IA)^3: a learned per-output-channel scale on a frozen layer's output, initialised to ones (identity)."""

from __future__ import annotations

import torch
from torch import nn

from pretrainkit.adapt.base import AdapterLayer, linear_with, module_like, register_adapter


@register_adapter("ia3", base=nn.Linear)
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


@register_adapter("ia3", base=(nn.Conv1d, nn.Conv2d, nn.Conv3d))
class IA3Conv(AdapterLayer):
    """``y = l * conv(x)`` with one trainable scale per output channel."""

    def __init__(self, base: nn.Conv2d):
        super().__init__(base)
        w = base.weight
        self.ia3_scale = nn.Parameter(torch.ones(base.out_channels, device=w.device, dtype=w.dtype))

    def _channels(self, t: torch.Tensor, dims: int) -> torch.Tensor:
        return t.view(-1, *(1,) * dims)  # one scale per output channel, broadcast over the spatial dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) * self._channels(self.ia3_scale, len(self.base.kernel_size))

    def merged(self) -> nn.Module:
        """A plain convolution with the scale folded into each output channel's kernel and bias."""
        conv, scale = self.base, self.ia3_scale.detach()
        tensors = {"weight": conv.weight * self._channels(scale, conv.weight.dim() - 1)}
        if conv.bias is not None:
            tensors["bias"] = conv.bias * scale
        return module_like(conv, **tensors)
