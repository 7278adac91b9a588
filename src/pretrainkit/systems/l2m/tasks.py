"""L2M's pre-training objective as a registered task: ``l2m.action`` (multi-task action prediction).

The batch is a ``ContextWindowDataset`` batch (``states``, ``actions``, ``rtg``, ``timesteps``, ``mask``); the
backbone is a ``DecisionTransformer``, which reads the window from the batch and returns its teacher-forced
action predictions. The task leaves the input unchanged, so in a mix it shares that forward.
"""

from __future__ import annotations

import torch

from pretrainkit.core.task import Metrics, PretrainTask, register_task
from pretrainkit.errors import ConfigError
from pretrainkit.systems.l2m.model import BIN_DECODES, BinDecode, DTConfig, Head, action_loss_terms


@register_task("l2m.action")
class ActionTask(PretrainTask):
    """Behaviour cloning on valid steps: CE over action bins (``head="discrete"``) or MSE (``"continuous"``).

    ``head``, ``n_bins`` and ``bin_decode`` must match the DT's (``ActionTask.for_model(dt.cfg)``). Metrics
    (tensors): ``action_ce`` and ``bin_acc`` or ``action_mse``, and ``action_mae``."""

    def __init__(self, head: Head = "discrete", n_bins: int = 64, bin_decode: BinDecode = "center"):
        super().__init__()
        if head not in ("discrete", "continuous"):
            raise ConfigError(f"l2m.action head must be 'discrete' or 'continuous', got '{head}'")
        if bin_decode not in BIN_DECODES:
            raise ConfigError(f"l2m.action bin_decode must be one of {list(BIN_DECODES)}, got '{bin_decode}'")
        self.head, self.n_bins, self.bin_decode = head, int(n_bins), bin_decode

    @classmethod
    def for_model(cls, cfg: DTConfig) -> ActionTask:
        return cls(head=cfg.head, n_bins=cfg.n_bins, bin_decode=cfg.bin_decode)

    def loss(
        self, batch: dict[str, torch.Tensor], backbone_out: torch.Tensor
    ) -> tuple[torch.Tensor, Metrics]:
        return action_loss_terms(
            backbone_out, batch["actions"], batch.get("mask"), self.head, self.n_bins, self.bin_decode
        )
