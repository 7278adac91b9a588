"""CR-Net's pre-training objective as a registered task: ``crnet.next_token``.

The batch is ``{"input_ids": (B, T), "labels": (B, T)}`` with labels aligned to the inputs (``labels[:, t]`` is
the target at position ``t``, -100 ignored); the backbone is a ``LlamaLM``, which reads ``input_ids`` from the
batch and returns ``(logits, None)``. The task leaves the input unchanged, so in a mix it shares that forward.
"""

from __future__ import annotations

from typing import Any

import torch

from pretrainkit.core.losses import TokenCrossEntropy
from pretrainkit.core.task import Metrics, PretrainTask, register_task


@register_task("crnet.next_token")
class NextTokenTask(PretrainTask):
    """Next-token prediction: mean cross-entropy of the LM's logits (in float32) over the scored labels."""

    def __init__(self, ignore_index: int = -100):
        super().__init__()
        self.ce = TokenCrossEntropy(ignore_index)

    def loss(self, batch: dict[str, torch.Tensor], backbone_out: Any) -> tuple[torch.Tensor, Metrics]:
        logits = backbone_out[0] if isinstance(backbone_out, tuple) else backbone_out
        return self.ce(logits.float(), batch["labels"].long()), {}
