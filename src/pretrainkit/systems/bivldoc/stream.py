"""Resumable batch streams of encoded pages, and the pre-training view (every task's corruption, once).

``PageStream`` is a ``core.data.BatchStream``: shuffled epochs whose order is a function of (seed, epoch), so
its state is (epoch, position). With a ``ViewConfig`` it applies ``pretrain_view`` to each batch with a
generator seeded from (seed, epoch, position), so a resumed run draws exactly the same masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pretrainkit.errors import ConfigError, DataError
from pretrainkit.systems.bivldoc.encoding import MASK, SPECIALS
from pretrainkit.systems.bivldoc.model import DocBatch, EncodedPage, collate


@dataclass
class ViewConfig:
    mask_prob: float = 0.15  # MVLM: share of text tokens masked (80 % [MASK], 10 % random, 10 % kept)
    tipa_prob: float = (
        0.15  # TIPA: share of segments whose text-side boxes are hidden (at least one per page)
    )
    itm_prob: float = 0.2  # ITM: share of pages given another page's image
    # where a swapped image comes from: "same-source" = another page of the same kind (a FUNSD form gets another
    # FUNSD form, a receipt another receipt), so telling them apart needs reading the image, not its layout
    # statistics (in-batch swaps across kinds were solved from the page kind alone: accuracy 1.0 in 80 steps);
    # "batch" = any other page of the batch
    itm_negatives: str = "same-source"
    # word-patch alignment (the LayoutLMv3 baseline's WPA, also usable here): blank this share of the cells of
    # a wpa_grid x wpa_grid grid over the image; each unmasked token says whether its cell was blanked
    wpa_prob: float = 0.0
    wpa_grid: int = 8

    def validate(self) -> None:
        for k in ("mask_prob", "tipa_prob", "itm_prob", "wpa_prob"):
            if not 0 <= getattr(self, k) <= 1:
                raise ConfigError(f"config key 'pretrain.{k}' must be in [0, 1], got {getattr(self, k)}")
        if self.itm_negatives not in ("same-source", "batch"):
            raise ConfigError(
                f"unknown pretrain.view.itm_negatives '{self.itm_negatives}'; allowed: same-source, batch"
            )


def _at_least_one(pick: torch.Tensor, allowed: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """``pick`` with one random allowed position forced on in every row that has none."""
    scores = torch.rand(allowed.shape, generator=g) * allowed
    forced = torch.zeros_like(pick)
    forced[torch.arange(len(pick)), scores.argmax(1)] = True
    empty = ~(pick & allowed).any(1) & allowed.any(1)
    return (pick & allowed) | (forced & empty[:, None])


def pretrain_view(
    b: DocBatch,
    cfg: ViewConfig,
    vocab_size: int,
    g: torch.Generator,
    neg_images: torch.Tensor | None = None,
) -> DocBatch:
    """The corrupted batch all four tasks read, with their targets: masked tokens (``mlm_labels``), hidden
    segment boxes (``tipa_hidden``/``tipa_target``; the hidden boxes are zeroed in ``boxes``, the visual
    tokens keep theirs: where a segment is must be found by matching its text to the image) and swapped images
    (``itm_label`` 0): page i's swap is ``neg_images[i]`` when given (the stream's same-source pick), else
    another page of the batch with a different page id. ``cfg.wpa_prob`` > 0 also blanks image cells
    (``wpa_labels``)."""
    n = len(b)
    # ITM: swap first, so TIPA only hides boxes on pages that kept their own image
    images, itm = b.images.clone(), torch.ones(n)
    if neg_images is not None:
        swap = torch.rand(n, generator=g) < cfg.itm_prob
        images[swap] = neg_images[swap]
        itm[swap] = 0.0
    elif n > 1:
        swap = torch.rand(n, generator=g) < cfg.itm_prob
        for i in swap.nonzero().flatten().tolist():
            others = (
                [j for j in range(n) if b.page_ids[j] != b.page_ids[i]]
                if b.page_ids
                else [j for j in range(n) if j != i]
            )
            if others:
                images[i] = b.images[others[int(torch.randint(len(others), (1,), generator=g))]]
                itm[i] = 0.0
    # MVLM
    text = b.attention_mask.clone()
    text[:, 0] = False  # never [CLS]
    masked = _at_least_one(torch.rand(b.input_ids.shape, generator=g) < cfg.mask_prob, text, g)
    mlm_labels = torch.where(masked, b.input_ids, torch.full_like(b.input_ids, -100))
    r = torch.rand(b.input_ids.shape, generator=g)
    random_ids = torch.randint(len(SPECIALS), vocab_size, b.input_ids.shape, generator=g)
    ids = torch.where(masked & (r < 0.8), torch.full_like(b.input_ids, MASK), b.input_ids)
    ids = torch.where(masked & (r >= 0.8) & (r < 0.9), random_ids, ids)
    # TIPA
    segs = b.seg_mask & (itm > 0.5)[:, None]
    hidden = _at_least_one(torch.rand(b.seg_mask.shape, generator=g) < cfg.tipa_prob, segs, g)
    S = b.seg_boxes.shape[1]
    tok_hidden = (b.seg_index[..., None] == torch.arange(S)).mul(hidden[:, None, :]).any(-1)
    boxes = b.boxes.masked_fill(tok_hidden[..., None], 0)
    wpa = None
    if cfg.wpa_prob > 0:
        G = cfg.wpa_grid
        cells = torch.rand(n, G, G, generator=g) < cfg.wpa_prob
        H, W = images.shape[-2:]
        pix = cells.repeat_interleave(-(-H // G), 1)[:, :H].repeat_interleave(-(-W // G), 2)[:, :, :W]
        images = images.masked_fill(pix[:, None], 0.0)
        cx = ((b.boxes[..., 0] + b.boxes[..., 2]) * G // 2001).clamp(0, G - 1)
        cy = ((b.boxes[..., 1] + b.boxes[..., 3]) * G // 2001).clamp(0, G - 1)
        hit = cells.flatten(1).gather(1, cy * G + cx).long()
        wpa = torch.where(
            text & ~masked, hit, torch.full_like(hit, -100)
        )  # as LayoutLMv3: unmasked text only
    return b.replace(
        input_ids=ids,
        boxes=boxes,
        images=images,
        mlm_labels=mlm_labels,
        tipa_hidden=hidden,
        tipa_target=b.seg_boxes.clone(),
        itm_label=itm,
        wpa_labels=wpa,
    )


class PageStream:
    """Batches of ``pages`` (encoded), reshuffled each epoch; under data parallelism each rank takes its
    contiguous slice of every global batch. ``view``: apply ``pretrain_view`` (pre-training)."""

    unit = "pages"

    def __init__(
        self,
        pages: list[EncodedPage],
        batch_size: int,
        seed: int = 0,
        layout: str = "word",
        view: ViewConfig | None = None,
        vocab_size: int = 0,
        rank: int = 0,
        world: int = 1,
        groups: list[str] | None = None,
    ):
        if not pages:
            raise DataError("no pages to train on")
        self.pages, self.layout, self.view, self.vocab_size = pages, layout, view, vocab_size
        # groups[i]: page i's kind (its source); ITM's same-source negatives are drawn within it
        if groups is not None and len(groups) != len(pages):
            raise DataError(f"{len(groups)} page groups for {len(pages)} pages")
        self.groups = list(groups) if groups is not None else ["all"] * len(pages)
        self._by_group: dict[str, list[int]] = {}
        for i, grp in enumerate(self.groups):
            self._by_group.setdefault(grp, []).append(i)
        self.batch_size = min(batch_size, len(pages))
        if self.batch_size % world:
            raise ConfigError(f"batch size {self.batch_size} is not divisible by {world} processes")
        self.seed, self.rank, self.world = seed, rank, world
        self.epoch, self.pos = 0, 0
        self._perm: torch.Tensor | None = None

    @property
    def items_per_batch(self) -> int:
        return self.batch_size // self.world

    def __iter__(self):
        return self

    def _order(self) -> torch.Tensor:
        if self._perm is None:
            g = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch)
            self._perm = torch.randperm(len(self.pages), generator=g)
        return self._perm

    def __next__(self) -> DocBatch:
        if self.pos + self.batch_size > len(self.pages):
            self.epoch, self.pos, self._perm = self.epoch + 1, 0, None
        idx = self._order()[self.pos : self.pos + self.batch_size]
        g = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + self.epoch * 7919 + self.pos) * 31 + self.rank
        )
        self.pos += self.batch_size
        per = self.batch_size // self.world
        idx = idx[self.rank * per : (self.rank + 1) * per].tolist()
        batch = collate([self.pages[i] for i in idx], layout=self.layout)
        if self.view is not None:
            neg = self._negatives(idx, g) if self.view.itm_negatives == "same-source" else None
            batch = pretrain_view(batch, self.view, self.vocab_size, g, neg_images=neg)
        return batch

    def _negatives(self, idx: list[int], g: torch.Generator) -> torch.Tensor:
        """For each page, the image of another page of its group (another id), drawn from the whole corpus."""
        out = []
        for i in idx:
            pool = self._by_group[self.groups[i]]
            j = pool[int(torch.randint(len(pool), (1,), generator=g))]
            if self.pages[j].page_id == self.pages[i].page_id:  # one redraw over the rest of the pool
                rest = [k for k in pool if self.pages[k].page_id != self.pages[i].page_id] or [
                    k for k in range(len(self.pages)) if self.pages[k].page_id != self.pages[i].page_id
                ]
                j = rest[int(torch.randint(len(rest), (1,), generator=g))] if rest else i
            out.append(self.pages[j].image)
        return torch.stack(out).float() / 255.0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.pos, self.seed = int(state["epoch"]), int(state["pos"]), int(state["seed"])
        self._perm = None
