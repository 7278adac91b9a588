"""Bi-VLDoc's four pre-training tasks, registered in the core's task mix.

All four read the same fused output of ONE backbone forward (they override only ``loss``, the core's shared
path): the input corruption they need (masked tokens, hidden segment boxes, swapped page images) is drawn
once per batch by the pre-training stream (``stream.pretrain_view``), as LayoutLMv2 does for its MVLM + TIA +
TIM, so the batch every task reads already carries every task's targets. Reconstructed (see the paper note
§1.3): only the names MVLM and TIPA are attested.

- ``bivldoc.mvlm``: masked vision-language modelling, the vocabulary predicted from the fused text features
  at the masked tokens (the page image stays visible: vision guides language).
- ``bivldoc.tipa``: text-image position awareness: a hidden segment's box (zeroed on the text side) is
  recovered from its fused text features, by L1 regression or as a coarse grid cell (``mode``).
- ``bivldoc.lgv``: language-guided vision: each visual segment token must pick its own segment's text
  (the mean of its fused token features) against every other segment in the batch (InfoNCE).
- ``bivldoc.itm``: image-text matching at page level: was the image swapped for another page's (by default
  another page of the same kind, see ``ViewConfig.itm_negatives``)?
- ``bivldoc.wpa``: word-patch alignment (LayoutLMv3's WPA, the objective of our LayoutLMv3 baseline; not in
  Bi-VLDoc's mix): was the image cell under this unmasked token blanked?

Pages whose image was swapped are left out of TIPA and LGV (their text does not describe the image).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pretrainkit.core.losses import InfoNCE, TokenCrossEntropy
from pretrainkit.core.task import PretrainTask, register_task
from pretrainkit.errors import ConfigError
from pretrainkit.systems.bivldoc.model import DocBatch, DocFeatures

TASK_NAMES = ("bivldoc.mvlm", "bivldoc.tipa", "bivldoc.lgv", "bivldoc.itm")  # Bi-VLDoc's own four
WPA = "bivldoc.wpa"  # the LayoutLMv3 baseline's objective (build_tasks(..., wpa=True))


def segment_means(
    text: torch.Tensor, seg_index: torch.Tensor, n_seg: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S, d) mean of each segment's token features and (B, S) whether the segment has any token."""
    onehot = (seg_index[..., None] == torch.arange(n_seg, device=seg_index.device)).to(
        text.dtype
    )  # (B, L, S)
    count = onehot.sum(1)
    means = torch.einsum("bls,bld->bsd", onehot, text) / count.clamp(min=1)[..., None]
    return means, count > 0


def _matched(batch: DocBatch) -> torch.Tensor:
    """(B,) bool: pages that kept their own image."""
    if batch.itm_label is None:
        return torch.ones(len(batch), dtype=torch.bool, device=batch.input_ids.device)
    return batch.itm_label > 0.5


@register_task("bivldoc.mvlm")
class MaskedVisionLanguage(PretrainTask):
    def __init__(self, d_model: int, vocab_size: int):
        super().__init__()
        self.head = nn.Sequential(
            nn.Linear(d_model, d_model), nn.GELU(), nn.LayerNorm(d_model), nn.Linear(d_model, vocab_size)
        )
        self.ce = TokenCrossEntropy(ignore_index=-100)

    def loss(self, batch: DocBatch, out: DocFeatures):
        if batch.mlm_labels is None:
            raise ConfigError("bivldoc.mvlm needs batches from the pre-training stream (mlm_labels)")
        logits = self.head(out.text)
        scored = batch.mlm_labels != -100
        acc = (logits.argmax(-1) == batch.mlm_labels)[scored].float().mean()
        return self.ce(logits, batch.mlm_labels), {"acc": acc.detach()}


@register_task("bivldoc.tipa")
class TextImagePosition(PretrainTask):
    def __init__(self, d_model: int, mode: Literal["regress", "grid"] = "grid", grid: int = 8):
        super().__init__()
        if mode not in ("regress", "grid"):
            raise ConfigError(f"unknown pretrain.tipa_mode '{mode}'; allowed: regress, grid")
        self.mode, self.grid = mode, grid
        self.head = nn.Sequential(
            nn.Linear(d_model, d_model),
            nn.GELU(),
            nn.Linear(d_model, 4 if mode == "regress" else grid * grid),
        )

    def cell(self, boxes: torch.Tensor) -> torch.Tensor:
        """The grid cell (row-major) of each box's centre."""
        cx = (boxes[..., 0] + boxes[..., 2]).float() / 2000
        cy = (boxes[..., 1] + boxes[..., 3]).float() / 2000
        col = (cx * self.grid).long().clamp(0, self.grid - 1)
        row = (cy * self.grid).long().clamp(0, self.grid - 1)
        return row * self.grid + col

    def loss(self, batch: DocBatch, out: DocFeatures):
        if batch.tipa_hidden is None:
            raise ConfigError("bivldoc.tipa needs batches from the pre-training stream (tipa_hidden)")
        means, has = segment_means(out.text, batch.seg_index, batch.seg_boxes.shape[1])
        pick = batch.tipa_hidden & has & _matched(batch)[:, None]
        x, target = means[pick], batch.tipa_target[pick]
        pred = self.head(x)
        if x.shape[0] == 0:  # no hidden segment in this batch: a zero loss that still reaches the head
            return pred.sum() * 0.0, {}
        if self.mode == "regress":
            box = torch.sigmoid(pred)
            loss = F.l1_loss(box, target.float() / 1000)
            return loss, {"l1": loss.detach()}
        cells = self.cell(target)
        return F.cross_entropy(pred, cells), {"acc": (pred.argmax(-1) == cells).float().mean().detach()}


@register_task("bivldoc.lgv")
class LanguageGuidedVision(PretrainTask):
    def __init__(self, d_model: int, temperature: float = 0.1, proj_dim: int = 128):
        super().__init__()
        self.vis = nn.Linear(d_model, proj_dim)
        self.txt = nn.Linear(d_model, proj_dim)
        self.nce = InfoNCE(temperature=temperature)

    def pairs(self, batch: DocBatch, out: DocFeatures) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(query, positive, which): row k is one visual segment token, its own segment's text, and its
        (page, segment) index; every other row's text is a negative."""
        means, has = segment_means(out.text, batch.seg_index, batch.seg_boxes.shape[1])
        pick = batch.seg_mask & has & _matched(batch)[:, None]
        return out.vis_seg[pick], means[pick], pick.nonzero()

    def loss(self, batch: DocBatch, out: DocFeatures):
        q, p, _ = self.pairs(batch, out)
        if q.shape[0] < 2:  # nothing to contrast against
            return (self.vis(out.vis_seg).sum() + self.txt(out.text).sum()) * 0.0, {}
        qv, pt = self.vis(q), self.txt(p)
        with torch.no_grad():
            acc = (
                (
                    (F.normalize(qv, dim=-1) @ F.normalize(pt, dim=-1).T).argmax(-1)
                    == torch.arange(len(qv), device=qv.device)
                )
                .float()
                .mean()
            )
        return self.nce(qv, pt), {"acc": acc}


@register_task("bivldoc.itm")
class ImageTextMatching(PretrainTask):
    def __init__(self, d_model: int):
        super().__init__()
        self.head = nn.Sequential(nn.Linear(2 * d_model, d_model), nn.GELU(), nn.Linear(d_model, 1))

    def loss(self, batch: DocBatch, out: DocFeatures):
        if batch.itm_label is None:
            raise ConfigError("bivldoc.itm needs batches from the pre-training stream (itm_label)")
        logit = self.head(torch.cat([out.vis_global, out.text[:, 0]], -1)).squeeze(-1)
        loss = F.binary_cross_entropy_with_logits(logit, batch.itm_label)
        return loss, {"acc": ((logit > 0).float() == batch.itm_label).float().mean().detach()}


@register_task("bivldoc.wpa")
class WordPatchAlignment(PretrainTask):
    def __init__(self, d_model: int):
        super().__init__()
        self.head = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, 1))

    def loss(self, batch: DocBatch, out: DocFeatures):
        if batch.wpa_labels is None:
            raise ConfigError("bivldoc.wpa needs pretrain.view.wpa_prob > 0 (blanked image cells)")
        logit = self.head(out.text).squeeze(-1)
        scored = batch.wpa_labels != -100
        if not scored.any():
            return logit.sum() * 0.0, {}
        y = batch.wpa_labels[scored].float()
        loss = F.binary_cross_entropy_with_logits(logit[scored], y)
        return loss, {"acc": ((logit[scored] > 0).float() == y).float().mean().detach()}


def build_tasks(
    d_model: int,
    vocab_size: int,
    tipa_mode: str = "grid",
    tipa_grid: int = 8,
    temperature: float = 0.1,
    wpa: bool = False,
) -> list[PretrainTask]:
    """Bi-VLDoc's four tasks (in ``TASK_NAMES`` order); ``wpa``: also LayoutLMv3's word-patch alignment."""
    tasks = [
        MaskedVisionLanguage(d_model, vocab_size),
        TextImagePosition(d_model, tipa_mode, tipa_grid),
        LanguageGuidedVision(d_model, temperature),
        ImageTextMatching(d_model),
    ]
    return [*tasks, WordPatchAlignment(d_model)] if wpa else tasks
