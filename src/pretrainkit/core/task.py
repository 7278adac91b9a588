"""Pre-training tasks and their weighted mix.

A task owns its small head (if any) and turns (batch, backbone output) into a loss and named metrics.
Tasks are plain ``nn.Module``s: usable from any PyTorch loop, not only from our trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pretrainkit.errors import ConfigError
from pretrainkit.registry import Registry

TASKS: Registry[PretrainTask] = Registry("pre-training task")


def register_task(name: str):
    """Class decorator: ``@register_task("span_mask") class SpanMask(PretrainTask): ...``."""

    def deco(cls):
        cls.name = name
        return TASKS.register(name)(cls)

    return deco


class PretrainTask(nn.Module):
    """One pre-training objective.

    Subclasses implement ``loss(batch, backbone_out) -> (loss, metrics)``. Tasks that must corrupt the
    input before the backbone sees it (masked modelling) also implement ``prepare(batch, generator)``,
    which returns the batch the backbone should consume; the default passes the batch through.
    """

    name: str = "task"

    def prepare(self, batch: Any, generator: torch.Generator | None = None) -> Any:
        return batch

    def loss(self, batch: Any, backbone_out: Any) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


WeightSchedule = Callable[[int], Mapping[str, float]]


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
        self, batch: Any, backbone: Callable[[Any], Any], step: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Run every active task: prepare its input, run the backbone, weight its loss.

        Returns the weighted loss and metrics ``{"loss/<task>": ..., "weight/<task>": ...}`` plus each
        task's own metrics prefixed by its name.
        """
        w = self.weights_at(step)
        total: torch.Tensor | None = None
        metrics: dict[str, float] = {}
        for name in self.active(step):
            task = self.task(name)
            task_batch = task.prepare(batch, generator)
            out = backbone(task_batch)
            loss, m = task.loss(task_batch, out)
            metrics[f"loss/{name}"] = float(loss.detach())
            metrics[f"weight/{name}"] = w[name]
            for k, v in m.items():
                metrics[f"{name}/{k}"] = float(v)
            total = w[name] * loss if total is None else total + w[name] * loss
        if total is None:
            raise ConfigError("every task weight is zero; at least one task needs a positive weight")
        metrics["loss"] = float(total.detach())
        return total, metrics


class MixModel(nn.Module):
    """A backbone and its task mix as one module whose ``forward(batch)`` returns ``(loss, metrics)``.

    This is the shape the trainer (and DDP/FSDP, which need one forward per backward) expects. Random
    masking draws from the global RNG, which the trainer reseeds per step for exact resume.
    """

    def __init__(self, backbone: nn.Module, mix: TaskMix):
        super().__init__()
        self.backbone = backbone
        self.mix = mix

    def forward(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return self.mix(batch, self.backbone)
