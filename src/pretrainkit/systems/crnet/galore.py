"""GaLore (Zhao et al., ICML 2024): AdamW whose moments live in a low-rank projection of each weight's gradient.

For a 2-D weight with gradient G (m x n) in a GaLore group, every ``update_proj_gap`` steps the top-r singular
vectors of the current G give a projector (right vectors Q (r x n) when m >= n, else left vectors P (m x r)).
Each step: R = G Q^T (or P^T G), Adam moments and the normalised update are computed on R, projected back
(R Q or P R), multiplied by ``scale`` (alpha) and applied with decoupled weight decay. Moments are kept when the
projector changes, as in GaLore's code. A parameter whose rank would be >= min(m, n) gets no projection (it
would save nothing), so it is plain AdamW. Groups without ``galore=True`` are plain AdamW.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from pretrainkit.errors import ConfigError


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW with GaLore gradient projection for param groups marked ``galore=True`` (2-D tensors only)."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        rank: int = 128,
        update_proj_gap: int = 200,
        scale: float = 0.25,
    ):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ConfigError(
                f"GaLoreAdamW needs lr, eps, weight_decay >= 0 and betas in [0, 1); got "
                f"lr={lr}, eps={eps}, weight_decay={weight_decay}, betas={betas}"
            )
        if rank < 1 or update_proj_gap < 1:
            raise ConfigError(
                f"GaLore rank and update_proj_gap must be >= 1, got {rank} and {update_proj_gap}"
            )
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "rank": rank,
            "update_proj_gap": update_proj_gap,
            "scale": scale,
            "galore": False,
        }
        super().__init__(params, defaults)

    @staticmethod
    def _projects(group: dict, p: Tensor) -> bool:
        return bool(group["galore"]) and p.ndim == 2 and group["rank"] < min(p.shape)

    @staticmethod
    def _new_projector(g: Tensor, rank: int) -> Tensor:
        # SVD in at least float32 (GaLore uses float32 for bf16 weights); keep the side that makes R smaller.
        U, _, Vh = torch.linalg.svd(g.to(torch.promote_types(g.dtype, torch.float32)), full_matrices=False)
        proj = Vh[:rank, :] if g.shape[0] >= g.shape[1] else U[:, :rank]
        return proj.to(g.dtype).contiguous()

    @staticmethod
    def project(g: Tensor, proj: Tensor) -> Tensor:
        """Gradient (m x n) to the low-rank space: G Q^T (m x r) with right vectors, P^T G (r x n) with left."""
        return g @ proj.T if g.shape[0] >= g.shape[1] else proj.T @ g

    @staticmethod
    def project_back(r: Tensor, proj: Tensor, shape: torch.Size) -> Tensor:
        return r @ proj if shape[0] >= shape[1] else proj @ r

    @torch.no_grad()
    def step(self, closure=None):
        """One AdamW step (projected where the group asks for GaLore)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                galore = self._projects(group, p)
                if not state:
                    state["step"] = 0
                if galore:
                    if state["step"] % group["update_proj_gap"] == 0:
                        state["projector"] = self._new_projector(g, group["rank"])
                    g = self.project(g, state["projector"])
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(g)
                    state["exp_avg_sq"] = torch.zeros_like(g)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                update = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt_().add_(eps))
                if galore:
                    update = self.project_back(update, state["projector"], p.shape) * group["scale"]
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(update, alpha=-lr)
        return loss

    def state_bytes(self) -> int:
        """Bytes held in optimizer state tensors (moments and projectors)."""
        return sum(
            v.numel() * v.element_size()
            for s in self.state.values()
            for v in s.values()
            if isinstance(v, Tensor)
        )


# Projections of the decoder blocks: GaLore's code projects every nn.Linear inside attention and MLP.
_GALORE_NAME = re.compile(r"(^|\.)layers\.\d+\.(self_attn|mlp)\.")


def galore_param_groups(model: nn.Module, weight_decay: float = 0.0) -> list[dict]:
    """Two groups: the blocks' 2-D projection weights (``galore=True``) and everything else (plain AdamW)."""
    low, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (low if p.ndim == 2 and _GALORE_NAME.search(name) else rest).append(p)
    return [
        {"params": low, "galore": True, "weight_decay": weight_decay},
        {"params": rest, "weight_decay": weight_decay},
    ]
