"""Continual-learning penalties that hold parameters near their values after earlier tasks.

``L2Anchor``: ``weight * sum (theta - theta*)^2``. ``EWC``: ``weight * sum F (theta - theta*)^2`` with F a
diagonal empirical Fisher, summed over tasks (optionally decayed: online EWC). Call ``consolidate()`` at
the end of each task; add ``penalty()`` to the loss while training the next ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from pretrainkit.errors import CheckpointError, ConfigError

LossSamples = Callable[[], Iterable[torch.Tensor]]


class L2Anchor:
    """Penalise the squared distance of the trainable parameters to their values at the last consolidation."""

    def __init__(self, model: nn.Module, weight: float = 1.0):
        self.model, self.weight = model, float(weight)
        self.anchor: dict[str, torch.Tensor] = {}

    def _params(self, model: nn.Module | None = None) -> dict[str, nn.Parameter]:
        return dict((model or self.model).named_parameters())

    def consolidate(self) -> None:
        """Remember the current trainable parameters as the anchor theta*."""
        self.anchor = {n: p.detach().clone() for n, p in self._params().items() if p.requires_grad}

    def _importance(self, name: str) -> torch.Tensor | float:
        return 1.0

    def penalty(self, model: nn.Module | None = None) -> torch.Tensor:
        """The penalty as a differentiable scalar (zero before the first consolidation)."""
        params = self._params(model)
        total = next(iter(params.values())).new_zeros(())
        for n, ref in self.anchor.items():
            total = total + (self._importance(n) * (params[n] - ref) ** 2).sum()
        return self.weight * total

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors for a safetensors checkpoint (resume mid-sequence)."""
        return {f"anchor.{n}": t for n, t in self.anchor.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what ``state_dict`` returned; names must be parameters of the model."""
        known = self._params()
        for k in state:
            if k.split(".", 1)[1] not in known:
                raise CheckpointError(f"regulariser state names '{k}', which is no parameter of this model")
        self.anchor = {k[7:]: v.clone() for k, v in state.items() if k.startswith("anchor.")}


class EWC(L2Anchor):
    """Elastic weight consolidation with a diagonal Fisher from ``fisher_samples_fn``.

    ``fisher_samples_fn()`` yields scalar losses (per sample for the exact empirical Fisher, per
    mini-batch for a cheaper estimate); F is the mean of their squared gradients. Fishers from
    successive tasks add up (``decay < 1`` shrinks the older ones first).
    """

    def __init__(
        self,
        model: nn.Module,
        fisher_samples_fn: LossSamples | None = None,
        weight: float = 1.0,
        decay: float = 1.0,
    ):
        super().__init__(model, weight)
        self.fisher_samples_fn, self.decay = fisher_samples_fn, float(decay)
        self.fisher: dict[str, torch.Tensor] = {}

    def estimate_fisher(self, fisher_samples_fn: LossSamples) -> dict[str, torch.Tensor]:
        """Mean squared gradient of each trainable parameter over the yielded losses."""
        params = {n: p for n, p in self._params().items() if p.requires_grad}
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        count = 0
        for loss in fisher_samples_fn():
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for n, g in zip(params, grads):
                if g is not None:
                    fisher[n] += g.detach() ** 2
            count += 1
        if count == 0:
            raise ConfigError("the Fisher sample function yielded no losses; it must yield at least one")
        return {n: f / count for n, f in fisher.items()}

    def consolidate(self, fisher_samples_fn: LossSamples | None = None) -> None:
        """End of a task: add this task's Fisher to the running sum and anchor at the current parameters."""
        fn = fisher_samples_fn or self.fisher_samples_fn
        if fn is None:
            raise ConfigError("EWC needs a Fisher sample function (at construction or in consolidate())")
        new = self.estimate_fisher(fn)
        self.fisher = {n: self.decay * self.fisher[n] + f if n in self.fisher else f for n, f in new.items()}
        super().consolidate()

    def _importance(self, name: str) -> torch.Tensor:
        return self.fisher[name]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**super().state_dict(), **{f"fisher.{n}": t for n, t in self.fisher.items()}}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        self.fisher = {k[7:]: v.clone() for k, v in state.items() if k.startswith("fisher.")}
        if set(self.fisher) != set(self.anchor):
            raise CheckpointError("EWC state has Fisher and anchor tensors for different parameters")
