"""A behaviour-cloning MLP on the state alone: the reference a Decision Transformer must at least match.

State -> action with a tanh output and an MSE loss on the (expert) actions of the collected data, trained on
single steps drawn uniformly over every task's steps; no task id, no history, no return. It acts through the
``Actor`` protocol of ``rollout.py`` (``cfg.context`` = 1, ``act`` reads the newest state only), so the same
closed-loop evaluation scores it and the DT.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pretrainkit.core.config import check_at_least, check_positive
from pretrainkit.errors import ConfigError, DataError
from pretrainkit.systems.l2m.data import TaskData


@dataclass
class BCConfig:
    """Size and training of the MLP (defaults: the reviewer's reference, 0.99 mean success in 21 s)."""

    hidden: int = 256
    layers: int = 2
    steps: int = 4000
    batch_size: int = 256
    lr: float = 1e-3

    def validate(self, prefix: str = "diagnose.bc.") -> None:
        for k in ("hidden", "layers", "steps", "batch_size"):
            check_at_least(getattr(self, k), prefix + k)
        check_positive(self.lr, prefix + "lr")


@dataclass
class _ActorShape:
    """What the rollout reads off an actor's ``cfg``."""

    context: int
    act_dim: int
    state_dim: int


class BCPolicy(nn.Module):
    """``layers`` hidden ReLU layers of ``hidden`` units, tanh output in [-1, 1]."""

    def __init__(self, state_dim: int, act_dim: int, hidden: int = 256, layers: int = 2):
        super().__init__()
        if min(state_dim, act_dim, hidden, layers) < 1:
            raise ConfigError(
                f"BCPolicy sizes must be >= 1, got state_dim={state_dim} act_dim={act_dim} "
                f"hidden={hidden} layers={layers}"
            )
        dims = [state_dim, *[hidden] * layers]
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*mods, nn.Linear(dims[-1], act_dim))
        self.cfg = _ActorShape(context=1, act_dim=act_dim, state_dim=state_dim)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(states))

    @torch.no_grad()
    def act(self, states, rtgs=None, actions=None, timesteps=None, mask=None) -> torch.Tensor:
        """The rollout's call: ``states [B, K, S]`` -> ``[B, A]`` from the newest state (the rest is ignored)."""
        return self(states[:, -1])


def stack_steps(datasets: Sequence[TaskData]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every step of every task as (states, actions) tensors; actions clamped to [-1, 1]."""
    datasets = list(datasets)
    if not datasets or not sum(len(d) for d in datasets):
        raise DataError("behaviour cloning needs at least one task with at least one step")
    if len({(d.state_dim, d.act_dim) for d in datasets}) != 1:
        raise DataError("behaviour cloning: tasks differ in state or action dimension")
    s = torch.from_numpy(np.concatenate([d.states for d in datasets]).astype(np.float32))
    a = torch.from_numpy(np.concatenate([d.actions for d in datasets]).astype(np.float32))
    return s, a.clamp(-1.0, 1.0)


def train_bc(
    policy: BCPolicy, datasets: Sequence[TaskData], cfg: BCConfig, seed: int = 0, device: str = "cpu"
) -> dict[str, Any]:
    """Fit ``policy`` by MSE with Adam on uniform random steps; returns first/last loss and timings."""
    cfg.validate()
    states, actions = stack_steps(datasets)
    if states.shape[1] != policy.cfg.state_dim or actions.shape[1] != policy.cfg.act_dim:
        raise DataError(
            f"data is {states.shape[1]}/{actions.shape[1]}-d (state/action), the policy expects "
            f"{policy.cfg.state_dim}/{policy.cfg.act_dim}"
        )
    states, actions = states.to(device), actions.to(device)
    policy.to(device).train()
    gen = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    first = None
    for step in range(cfg.steps):
        idx = torch.randint(len(states), (cfg.batch_size,), generator=gen).to(device)
        loss = F.mse_loss(policy(states[idx]), actions[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step == 0:
            first = float(loss.detach())
    last = float(loss.detach())
    policy.eval()
    return {
        "first_loss": first,
        "final_loss": last,
        "steps": cfg.steps,
        "params": sum(p.numel() for p in policy.parameters()),
        "seconds": round(time.perf_counter() - wall0, 2),
        "cpu_seconds": round(time.process_time() - cpu0, 2),
    }


@torch.no_grad()
def bc_offline_mae(policy: BCPolicy, val: TaskData, device: str = "cpu") -> float | None:
    """Mean |predicted - label| over every held-out step (None without held-out steps)."""
    if len(val) == 0:
        return None
    s, a = stack_steps([val])
    return float((policy(s.to(device)) - a.to(device)).abs().mean())
