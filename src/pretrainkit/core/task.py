"""Pre-training tasks and their weighted mix.

A task owns its small head (if any) and turns (batch, backbone output) into a loss and named metrics.
Tasks are plain ``nn.Module``s: usable from any PyTorch loop, not only from our trainer. A mix runs the
backbone once for all tasks that leave the input unchanged; tasks that corrupt the input or need several
views run their own step (see ``PretrainTask``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pretrainkit.errors import ConfigError
from pretrainkit.registry import Registry

TASKS: Registry[PretrainTask] = Registry("pre-training task")
Metrics = dict[str, "torch.Tensor | float"]  # tensors stay unread until the logging interval


def register_task(name: str):
    """Class decorator: ``@register_task("span_mask") class SpanMask(PretrainTask): ...``."""

    def deco(cls):
        cls.name = name
        return TASKS.register(name)(cls)

    return deco


class PretrainTask(nn.Module):
    """One pre-training objective.

    A task takes one of three paths through a step, decided by what its class overrides:

    - **shared** (overrides neither ``prepare`` nor ``forward``): the task reads the batch as it is, so every
      such task in a mix reads ONE ``backbone(batch)`` output; it implements only ``loss(batch, backbone_out)``
      and must not modify that output in place (the next task reads it too).
    - **prepared** (overrides ``prepare(batch, generator)``): the task corrupts its own copy of the input
      (masked modelling); the default ``forward`` runs prepare -> backbone -> loss for it alone.
    - **own step** (overrides ``forward(batch, backbone, generator)``): the task runs the backbone itself, as
      often and on whatever it likes (several views; perturbed parameters via ``torch.func.functional_call``).

    ``shares_input`` reports the path; a subclass may set the class attribute ``shares_input = False`` to force
    its own backbone forward even though it leaves the input unchanged (a backbone output the task must not
    share, or a timing comparison). ``loss`` returns ``(loss, metrics)``; metric values may be floats or
    tensors, and tensors are best left unread (no ``.item()``): the mix hands them on detached.
    """

    name: str = "task"

    def prepare(self, batch: Any, generator: torch.Generator | None = None) -> Any:
        return batch

    def loss(self, batch: Any, backbone_out: Any) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError

    def forward(
        self, batch: Any, backbone: Callable[[Any], Any], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, Metrics]:
        """The task's whole step on its own: prepare its input, run the backbone on it, score the output."""
        task_batch = self.prepare(batch, generator)
        return self.loss(task_batch, backbone(task_batch))

    @property
    def shares_input(self) -> bool:
        """True when the task can read a backbone output computed once for the whole mix."""
        cls = type(self)
        return cls.prepare is PretrainTask.prepare and cls.forward is PretrainTask.forward


WeightSchedule = Callable[[int], Mapping[str, float]]


def _detached(v: Any) -> Any:
    return v.detach() if isinstance(v, torch.Tensor) else v


class TaskMix(nn.Module):
    """Weighted sum of tasks. Logs each task's own loss; weights can be replaced from outside.

    ``schedule`` (optional) maps a step to weights and overrides the fixed weights at that step.
    """

    def __init__(
        self,
        tasks: Sequence[PretrainTask],
        weights: Mapping[str, float] | None = None,
        schedule: WeightSchedule | None = None,
    ):
        super().__init__()
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ConfigError(f"task names must be unique in a mix, got {names}")
        # ModuleDict keys may not contain "."; registered names ("saga.point") are mapped to "saga__point".
        self._modules_by_name = nn.ModuleDict({n.replace(".", "__"): t for n, t in zip(names, tasks)})
        self.names = names
        self.weights: dict[str, float] = {n: 1.0 for n in names}
        if weights is not None:
            self.set_weights(weights)
        self.schedule = schedule
        # The training step a schedule sees when forward() is called without one (MixModel's forward(batch)):
        # the core Trainer sets it before each step.
        self.current_step: int | None = None

    def set_weights(self, weights: Mapping[str, float]) -> None:
        unknown = set(weights) - set(self.names)
        if unknown:
            raise ConfigError(f"weights name unknown tasks {sorted(unknown)}; tasks: {sorted(self.names)}")
        for n, w in weights.items():
            w = float(w)
            if not (w >= 0.0 and w < float("inf")):
                raise ConfigError(f"task weight for '{n}' must be finite and >= 0, got {w}")
            self.weights[n] = w

    def task(self, name: str) -> PretrainTask:
        return self._modules_by_name[name.replace(".", "__")]

    def weights_at(self, step: int | None) -> dict[str, float]:
        if self.schedule is not None and step is not None:
            w = dict(self.weights)
            w.update(self.schedule(step))
            return w
        return dict(self.weights)

    def active(self, step: int | None = None) -> list[str]:
        """Tasks with non-zero weight: a zero-weight task is skipped entirely (no forward through its head)."""
        return [n for n, w in self.weights_at(step).items() if w > 0]

    def forward(
        self,
        batch: Any,
        backbone: Callable[[Any], Any],
        step: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, Metrics]:
        """Run every active task in task order and return the weighted loss and its metrics.

        Input-sharing tasks read one ``backbone(batch)`` output, computed when the first of them runs (so a
        mix without sharing draws random numbers exactly as a loop of prepare -> backbone -> loss would);
        the other tasks run their own step (``task(batch, backbone, generator)``). The weighted sum is taken
        in task order, so its bits do not depend on which tasks shared.

        Metrics: ``loss`` and ``loss/<task>`` are detached 0-dim tensors (reading them is left to the logging
        interval: no device sync per step), ``weight/<task>`` the Python float used, and each task's own
        metrics under ``<task>/<key>`` (tensors detached, floats as given).
        """
        step = self.current_step if step is None else step
        w = self.weights_at(step)
        total: torch.Tensor | None = None
        metrics: Metrics = {}
        shared_out: Any = None
        have_shared = False
        for name in self.active(step):
            task = self.task(name)
            if task.shares_input:
                if not have_shared:
                    shared_out, have_shared = backbone(batch), True
                loss, m = task.loss(batch, shared_out)
            else:
                loss, m = task(batch, backbone, generator=generator)
            metrics[f"loss/{name}"] = loss.detach()
            metrics[f"weight/{name}"] = w[name]
            for k, v in m.items():
                metrics[f"{name}/{k}"] = _detached(v)
            total = w[name] * loss if total is None else total + w[name] * loss
        if total is None:
            raise ConfigError("every task weight is zero; at least one task needs a positive weight")
        metrics["loss"] = total.detach()
        return total, metrics


class MixModel(nn.Module):
    """A backbone and its task mix as one module whose ``forward(batch)`` returns ``(loss, metrics)``.

    This is the shape the trainer (and DDP/FSDP, which need one forward per backward) expects. Random
    masking draws from the global RNG, which the trainer reseeds per step for exact resume.

    ``backbone_name`` is the attribute (and so the state-dict prefix, ``<name>.…``) the backbone is stored
    under; it stays ``backbone`` unless a system's checkpoints predate the mix (CR-Net's ``lm.``, L2M's ``dt.``),
    so their run directories load unchanged. ``model.backbone`` reaches it under any name.
    """

    def __init__(self, backbone: nn.Module, mix: TaskMix, backbone_name: str = "backbone"):
        super().__init__()
        self.backbone_name = backbone_name
        self.add_module(backbone_name, backbone)
        self.mix = mix

    @property
    def backbone(self) -> nn.Module:
        try:
            return self._modules[self.backbone_name]
        except KeyError:  # AttributeError, so hasattr() and add_module() see "not set yet"
            raise AttributeError("backbone") from None

    def forward(self, batch: Any) -> tuple[torch.Tensor, Metrics]:
        return self.mix(batch, self.backbone)
