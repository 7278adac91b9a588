"""Adapters on PyTorch Geometric's typed linear layers (HGT's building blocks), one adapter per type.

Imported (and so registered) by ``inject`` / ``load_adapter`` once ``torch_geometric`` is imported: a model
holding these modules has imported it. Plain torch underneath, so PyG's compiled kernels are not needed.

- ``HeteroDictLinear`` (a dict of per-node-type Linears, HGT's k/q/v and output maps): LoRA keeps one
  ``lora_A[type]`` (r, in_type) and ``lora_B[type]`` (out, r) per key; (IA)^3 one scale vector per key.
- ``HeteroLinear`` (one weight (T, in, out) indexed by a type vector, HGT's per-relation maps): LoRA keeps
  ``lora_A`` (T, r, in) and ``lora_B`` (T, out, r), so type t's update is ``(B_t A_t)^T`` in the weight's layout.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.parameter import UninitializedParameter
from torch_geometric.nn import HeteroDictLinear, HeteroLinear

from pretrainkit.adapt.base import AdapterLayer, module_like, register_adapter
from pretrainkit.adapt.lora import DEFAULT_RANK, LoRALayer
from pretrainkit.errors import ConfigError


def _check_initialised(*params: Tensor) -> None:
    if any(isinstance(p, UninitializedParameter) for p in params):
        raise ConfigError(
            "the layer is lazily initialised (in_channels=-1): run one forward before injecting"
        )


@register_adapter("lora", base=HeteroDictLinear)
class LoRAHeteroDictLinear(LoRALayer):
    """One low-rank update per node type beside a frozen ``HeteroDictLinear``."""

    def __init__(
        self,
        base: HeteroDictLinear,
        rank: int = DEFAULT_RANK,
        alpha: float | None = None,
        dropout: float = 0.0,
    ):
        super().__init__(base, rank, alpha, dropout)
        _check_initialised(*(lin.weight for lin in base.lins.values()))
        self.lora_A, self.lora_B = nn.ParameterDict(), nn.ParameterDict()
        for key, lin in base.lins.items():
            w = lin.weight
            self.check_rank(w.shape[1], w.shape[0], f"type '{key}'")
            a = torch.empty(self.rank, w.shape[1], device=w.device, dtype=w.dtype)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.lora_A[key] = nn.Parameter(a)
            self.lora_B[key] = nn.Parameter(
                torch.zeros(w.shape[0], self.rank, device=w.device, dtype=w.dtype)
            )

    def forward(self, x_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        out = self.base(x_dict)
        return {
            k: y + self.scale * F.linear(F.linear(self.dropout(x_dict[k]), self.lora_A[k]), self.lora_B[k])
            for k, y in out.items()
        }

    def merged(self) -> HeteroDictLinear:
        with torch.no_grad():
            new = {
                f"lins.{k}.weight": lin.weight
                + self.scale * (self.lora_B[k] @ self.lora_A[k]).to(lin.weight.dtype)
                for k, lin in self.base.lins.items()
            }
            return module_like(self.base, **new)


@register_adapter("lora", base=HeteroLinear)
class LoRAHeteroLinear(LoRALayer):
    """One low-rank update per type beside a frozen ``HeteroLinear``: ``x W_t + s x A_t^T B_t^T``."""

    def __init__(
        self, base: HeteroLinear, rank: int = DEFAULT_RANK, alpha: float | None = None, dropout: float = 0.0
    ):
        super().__init__(base, rank, alpha, dropout)
        w = base.weight  # (T, in, out)
        _check_initialised(w)
        n_types, fan_in, fan_out = w.shape
        self.check_rank(fan_in, fan_out)
        a = torch.empty(n_types, self.rank, fan_in, device=w.device, dtype=w.dtype)
        for t in range(n_types):  # per type, so each gets nn.Linear's fan-in scale
            nn.init.kaiming_uniform_(a[t], a=math.sqrt(5))
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(torch.zeros(n_types, fan_out, self.rank, device=w.device, dtype=w.dtype))

    def forward(self, x: Tensor, type_vec: Tensor) -> Tensor:
        y = self.base(x, type_vec)
        xd = self.dropout(x)
        delta = torch.zeros_like(y)
        for t in range(self.lora_A.shape[0]):  # as PyG's own fallback: one matmul per type present
            rows = (type_vec == t).nonzero(as_tuple=True)[0]
            if rows.numel():
                delta = delta.index_put((rows,), F.linear(F.linear(xd[rows], self.lora_A[t]), self.lora_B[t]))
        return y + self.scale * delta

    def merged(self) -> HeteroLinear:
        w = self.base.weight
        with torch.no_grad():
            delta = torch.einsum("tor,tri->tio", self.lora_B, self.lora_A)  # (B_t A_t)^T per type
            return module_like(self.base, weight=w + self.scale * delta.to(w.dtype))


@register_adapter("ia3", base=HeteroDictLinear)
class IA3HeteroDictLinear(AdapterLayer):
    """(IA)^3 per node type: ``y_k = l_k * lin_k(x_k)``."""

    def __init__(self, base: HeteroDictLinear):
        super().__init__(base)
        _check_initialised(*(lin.weight for lin in base.lins.values()))
        self.ia3_scale = nn.ParameterDict(
            {
                k: nn.Parameter(
                    torch.ones(lin.weight.shape[0], device=lin.weight.device, dtype=lin.weight.dtype)
                )
                for k, lin in base.lins.items()
            }
        )

    def forward(self, x_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: y * self.ia3_scale[k] for k, y in self.base(x_dict).items()}

    def merged(self) -> HeteroDictLinear:
        new = {}
        with torch.no_grad():
            for k, lin in self.base.lins.items():
                s = self.ia3_scale[k]
                new[f"lins.{k}.weight"] = lin.weight * s[:, None]
                if lin.bias is not None:
                    new[f"lins.{k}.bias"] = lin.bias * s
            return module_like(self.base, **new)
