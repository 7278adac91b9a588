"""Saga's four masked-reconstruction pre-training tasks: saga.sensor, saga.point, saga.subperiod, saga.period.

Each task owns a ReconstructionHead and a masker. ``prepare`` masks a batch ``{"x": (B, L, C) raw units}``
and returns ``{"x": masked raw input, "target": normalised original, "mask": bool (B, L, C)}`` (other keys pass
through); the backbone (``LimuBertEncoder``, which accepts that dict) maps it to (B, L, H), and ``loss`` is
the MSE over the masked entries only, as in LIMU-BERT.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pretrainkit.core.losses import MaskedMSE
from pretrainkit.core.task import Metrics, PretrainTask, register_task
from pretrainkit.errors import ConfigError, DataError
from pretrainkit.systems.saga.masking import (
    PeriodMasker,
    SensorMasker,
    SpanMasker,
    SubPeriodMasker,
    apply_mask,
)
from pretrainkit.systems.saga.model import ReconstructionHead, check_acc_channels, normalise_imu


class MaskedReconstructionTask(PretrainTask):
    """Shared body of the four levels; subclasses only name their masker class in ``masker_cls``."""

    masker_cls: type = SpanMasker

    def __init__(
        self,
        hidden: int = 72,
        n_channels: int = 6,
        acc_scale: float = 9.8,
        acc_channels: Sequence[int] = (0, 3),
        mask_prob: float = 0.8,
        **masker_options: Any,
    ):
        super().__init__()
        check_acc_channels(tuple(acc_channels), n_channels)
        if not 0.0 <= mask_prob <= 1.0:
            raise ConfigError(f"mask_prob must be in [0, 1], got {mask_prob}")
        self.n_channels, self.acc_scale, self.acc_channels = n_channels, float(acc_scale), tuple(acc_channels)
        self.mask_prob = float(mask_prob)
        self.head = ReconstructionHead(hidden, n_channels)
        self.mse = MaskedMSE()
        self.masker = self._build_masker(masker_options)

    def _build_masker(self, options: Mapping[str, Any]):
        allowed = [p for p in inspect.signature(self.masker_cls.__init__).parameters if p != "self"]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError(f"task '{self.name}' got unknown options {unknown}; allowed: {allowed}")
        if "acc_channels" in allowed:
            options = {"acc_channels": self.acc_channels, **options}
        return self.masker_cls(**options)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's input scaling (acc / acc_scale), so targets live in the units the encoder sees."""
        return normalise_imu(x, self.acc_scale, self.acc_channels)

    def prepare(self, batch: Mapping[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        """Mask the window batch: the masker sees normalised data; masked entries are zeroed w.p. mask_prob."""
        if not isinstance(batch, Mapping) or "x" not in batch:
            raise DataError("Saga tasks expect a batch dict with key 'x' of shape (batch, steps, channels)")
        x = batch["x"]
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.n_channels:
            raise DataError(
                f"batch['x'] must be a (batch, steps, {self.n_channels}) tensor, got {getattr(x, 'shape', type(x))}"
            )
        x = x.float()
        target = self.normalise(x)
        mask = self.masker(target, generator)
        return {**batch, "x": apply_mask(x, mask, generator, self.mask_prob), "target": target, "mask": mask}

    def loss(self, batch: Mapping[str, Any], backbone_out: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
        """Mean squared error over the masked entries only; metrics ``mse`` and ``masked_frac`` (tensors).

        An all-unmasked batch scores 0 with a zero gradient (the graph stays alive for DDP and the optimiser).
        ``masked_frac`` is counted in float64, so it reads as the exact ratio the float metric used to be."""
        mask = batch["mask"]
        loss = self.mse(self.head(backbone_out), batch["target"], mask)
        return loss, {"mse": loss.detach(), "masked_frac": mask.sum(dtype=torch.float64) / mask.numel()}


@register_task("saga.sensor")
class SensorTask(MaskedReconstructionTask):
    """Sensor level: reconstruct one hidden axis (or whole sensor, ``unit="sensor"``) over the window."""

    masker_cls = SensorMasker


@register_task("saga.point")
class PointTask(MaskedReconstructionTask):
    """Point level: LIMU-BERT's span masking (15 % of steps, spans <= 10), all channels."""

    masker_cls = SpanMasker


@register_task("saga.subperiod")
class SubPeriodTask(MaskedReconstructionTask):
    """Sub-period level: reconstruct the samples between two consecutive energy extrema."""

    masker_cls = SubPeriodMasker


@register_task("saga.period")
class PeriodTask(MaskedReconstructionTask):
    """Period level: reconstruct one main (FFT) period of the window."""

    masker_cls = PeriodMasker


SAGA_TASKS = ("saga.sensor", "saga.point", "saga.subperiod", "saga.period")
