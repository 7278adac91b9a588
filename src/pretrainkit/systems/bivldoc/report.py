"""The report's picture: a FUNSD test page with the predicted entities drawn over it beside the gold ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pretrainkit.core.io import atomic_write
from pretrainkit.systems.bivldoc.data import Page

COLOURS = {"HEADER": (214, 39, 40), "QUESTION": (31, 119, 180), "ANSWER": (44, 160, 44)}


def entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of each entity in a BIO sequence, as seqeval reads it."""
    from seqeval.metrics.sequence_labeling import get_entities

    return [(t, s, e) for t, s, e in get_entities(list(tags))]


def draw_entities(page: Page, tags: list[str], title: str):
    """The page in colour with one box per entity (its words' union), coloured by type, and a legend."""
    from PIL import ImageDraw

    im = page.image.convert("RGB")
    draw = ImageDraw.Draw(im)
    w, h = page.size
    scale = np.array([w, h, w, h]) / 1000
    for kind, s, e in entities(tags):
        b = page.boxes[s : e + 1]
        box = (np.array([b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()]) * scale).round()
        draw.rectangle(box.tolist(), outline=COLOURS.get(kind, (0, 0, 0)), width=2)
    draw.rectangle([0, 0, w, 22], fill=(255, 255, 255))
    draw.text((6, 4), title, fill=(0, 0, 0))
    x = 6 + int(draw.textlength(title)) + 16
    for kind, col in COLOURS.items():
        draw.rectangle([x, 6, x + 10, 16], fill=col)
        draw.text((x + 14, 4), kind.lower(), fill=(0, 0, 0))
        x += 24 + int(draw.textlength(kind.lower()))
    return im


def entity_picture(page: Page, predicted: list[str], path: str | Path) -> Path:
    """Gold (left) and predicted (right) entities of ``page`` side by side, written to ``path`` (PNG)."""
    from PIL import Image

    gold = draw_entities(page, page.labels or ["O"] * len(page.words), f"gold: {page.page_id}")
    pred = draw_entities(page, predicted, "predicted")
    both = Image.new("RGB", (gold.width + pred.width + 10, gold.height), (255, 255, 255))
    both.paste(gold, (0, 0))
    both.paste(pred, (gold.width + 10, 0))
    return atomic_write(path, lambda p: both.save(p, format="PNG"))
