"""Synthetic document pages (SynthDoG-style): real text rendered into page images with exact word boxes.

Real unlabelled pages are scarce here (149 FUNSD forms + 100 receipts), so pre-training adds pages rendered
from the Gutenberg books: a title, then paragraphs in one or two columns or form-like ``key: value`` lines, in
several fonts and sizes, with optional scan noise. Each word's box is the ink box Pillow reports for it at
the place it was drawn, so boxes are exact by construction (a test checks every inked pixel lies in a box).
Segments are the rendered lines (paragraphs) or the key and the value of a form line separately.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from pretrainkit.errors import DataError
from pretrainkit.systems.bivldoc.data import Page, normalise_boxes, union_box

FONT_DIRS = (
    "/usr/share/fonts/truetype/dejavu",
    "/usr/share/fonts/truetype/liberation",
    "/usr/share/fonts/truetype/freefont",
)
_FALLBACK_WORDS = (
    "the form date name address total amount number please return to office page of report "
    "account signature received approved company phone fax subject item price"
).split()


@lru_cache(maxsize=1)
def font_files() -> tuple[str, ...]:
    found = []
    for d in FONT_DIRS:
        if Path(d).is_dir():
            found += sorted(
                str(p) for p in Path(d).glob("*.ttf") if "Oblique" not in p.name or len(found) < 2
            )
    return tuple(found)


def _font(path: str | None, size: int):
    from PIL import ImageFont

    if path is None:  # Pillow's own scalable font, always present (no system fonts needed)
        return ImageFont.load_default(size)
    return ImageFont.truetype(path, size)


@lru_cache(maxsize=4)
def gutenberg_words(root: str, max_books: int = 8, max_words: int = 200_000) -> tuple[str, ...]:
    """Words of the first ``max_books`` books under ``root``, the Project Gutenberg header and licence cut off."""
    books = sorted(Path(root).glob("*.txt"))[:max_books]
    words: list[str] = []
    for b in books:
        text = b.read_text(encoding="utf-8", errors="replace")
        start = re.search(r"\*\*\* ?START OF.*?\*\*\*", text)
        end = re.search(r"\*\*\* ?END OF", text)
        text = text[start.end() if start else 0 : end.start() if end else len(text)]
        words += [w for w in text.split() if len(w) < 24]
        if len(words) >= max_words:
            break
    return tuple(words[:max_words])


class TextSource:
    """Runs of consecutive words from the books (or a small built-in list when no books are present)."""

    def __init__(self, words: tuple[str, ...]):
        self.words = words or _FALLBACK_WORDS

    def run(self, rng: np.random.Generator, n: int) -> list[str]:
        i = int(rng.integers(0, max(1, len(self.words) - n)))
        out = list(self.words[i : i + n])
        while len(out) < n:
            out.append(self.words[int(rng.integers(len(self.words)))])
        return out


def render_page(
    rng: np.random.Generator,
    text: TextSource,
    page_id: str,
    size: tuple[int, int] = (612, 792),
    noise: float = 0.5,
    fonts: tuple[str, ...] | None = None,
) -> Page:
    """One rendered page. ``noise`` in [0, 1]: scan speckle/blur strength (0 = clean, for exact-ink tests)."""
    from PIL import Image, ImageDraw, ImageFilter

    fonts = font_files() if fonts is None else fonts
    choices = list(fonts) or [None]
    width, height = size
    img = Image.new("L", size, 255)
    draw = ImageDraw.Draw(img)
    words: list[str] = []
    boxes: list[tuple[int, int, int, int]] = []
    seg_ids: list[int] = []
    n_seg = 0
    margin = int(width * rng.uniform(0.05, 0.1))

    def put(x: int, y: int, run: list[str], font, seg: int, x_max: int) -> tuple[int, int]:
        """Draw ``run`` left to right from (x, y) up to ``x_max``; returns where the next word would go."""
        space = max(3, int(font.size * 0.3))
        for w in run:
            left, top, r, b = draw.textbbox((x, y), w, font=font)
            if r > x_max:
                break
            draw.text((x, y), w, font=font, fill=int(rng.integers(0, 60)))
            if r > left and b > top:  # a word with no ink (e.g. only combining marks) gets no box
                words.append(w)
                boxes.append((left, top, r, b))
                seg_ids.append(seg)
            x = r + space
        return x, y

    y = margin
    title_font = _font(choices[int(rng.integers(len(choices)))], int(rng.integers(22, 32)))
    put(margin, y, text.run(rng, int(rng.integers(2, 6))), title_font, n_seg, width - margin)
    n_seg += 1
    y += int(title_font.size * 2)
    layout = rng.choice(["columns", "form", "mixed"])
    body = _font(choices[int(rng.integers(len(choices)))], int(rng.integers(11, 18)))
    line_h = int(body.size * rng.uniform(1.3, 1.8))
    if layout in ("form", "mixed"):
        key_font = _font(choices[int(rng.integers(len(choices)))], body.size)
        stop = height - margin if layout == "form" else height // 2
        while y + line_h < stop:
            key = text.run(rng, int(rng.integers(1, 4)))
            key[-1] = key[-1].rstrip(".,;") + ":"
            x, _ = put(margin, y, key, key_font, n_seg, width // 2)
            n_seg += 1
            gap = int(rng.integers(10, 60))
            put(x + gap, y, text.run(rng, int(rng.integers(1, 7))), body, n_seg, width - margin)
            n_seg += 1
            y += int(line_h * rng.uniform(1.0, 2.0))
    if layout in ("columns", "mixed"):
        cols = int(rng.integers(1, 3))
        col_w = (width - 2 * margin - (cols - 1) * 20) // cols
        top = y
        for c in range(cols):
            x0, y = margin + c * (col_w + 20), top
            while y + line_h < height - margin:
                put(x0, y, text.run(rng, 14), body, n_seg, x0 + col_w)
                n_seg += 1
                y += line_h
    if noise > 0:
        arr = np.asarray(img, dtype=np.float32)
        arr += rng.normal(0, 12 * noise, arr.shape)
        speck = rng.random(arr.shape) < 0.002 * noise
        arr[speck] = rng.uniform(0, 120, int(speck.sum()))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        if rng.random() < noise * 0.5:
            img = img.filter(ImageFilter.GaussianBlur(radius=0.6))
    if not words:
        raise DataError(f"rendered page {page_id} has no words (page {size} too small for its fonts?)")
    b = normalise_boxes(boxes, width, height, f"rendered page {page_id}")
    seg = np.asarray(seg_ids, dtype=np.int64)
    used = np.unique(seg)  # renumber: a segment whose words all overflowed has no words
    seg = np.searchsorted(used, seg)
    seg_boxes = np.stack([union_box(b[seg == s]) for s in range(len(used))])
    page = Page(
        page_id=page_id, source="synthetic", words=words, boxes=b, seg_ids=seg, seg_boxes=seg_boxes, size=size
    )
    page._image = img
    page.pixel_boxes = np.asarray(boxes, dtype=np.int64)  # exact pixel boxes, for tests and debugging
    return page


def render_pages(
    n: int,
    data_root: str | Path | None = None,
    seed: int = 0,
    size: tuple[int, int] = (612, 792),
    noise: float = 0.5,
    text_root: str | Path | None = None,
) -> list[Page]:
    """``n`` rendered pages from the Gutenberg books under ``<data_root>/text/gutenberg`` (or ``text_root``)."""
    root = Path(text_root) if text_root else (Path(data_root) / "text" / "gutenberg" if data_root else None)
    words = gutenberg_words(str(root)) if root is not None and root.is_dir() else ()
    text = TextSource(words)
    rng = np.random.default_rng(seed)
    return [render_page(rng, text, f"synth-{seed}-{i}", size=size, noise=noise) for i in range(n)]
