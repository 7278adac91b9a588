"""A user's own scanned pages: a folder of images OCR'd with Tesseract into ``Page`` objects, cached per page.

Tesseract's TSV output gives word rows (level 5) with their block/paragraph/line ids; each OCR line becomes a
segment. Results are cached as JSON next to nothing of the user's: in ``cache_dir``, keyed by the image's
SHA-256, so a re-run (or the same scan under another name) is not OCR'd again. ``OMP_THREAD_LIMIT=1``: one
thread per page is fastest on a shared machine (parallelise over pages instead).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from pretrainkit.errors import DataError
from pretrainkit.systems.bivldoc.data import Page, file_digest, load_image, normalise_boxes, union_box

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
INSTALL_HINT = (
    "install Tesseract: `sudo apt-get install tesseract-ocr` (Debian/Ubuntu), `brew install tesseract` "
    "(macOS), or see https://tesseract-ocr.github.io/tessdoc/Installation.html"
)


def tesseract_available() -> str | None:
    """The tesseract binary's path, or None."""
    return shutil.which(os.environ.get("TESSERACT_CMD", "tesseract"))


def _require_tesseract():
    try:
        import pytesseract
    except ImportError:
        raise DataError("OCR needs pytesseract: pip install 'pretrainkit[bivldoc]'") from None
    binary = tesseract_available()
    if binary is None:
        raise DataError(f"the tesseract binary is not installed (needed to OCR your pages); {INSTALL_HINT}")
    pytesseract.pytesseract.tesseract_cmd = binary
    return pytesseract


def ocr_words(image) -> tuple[list[str], list[list[int]], list[tuple[int, int, int]]]:
    """Tesseract's words on a PIL image: texts, pixel boxes and (block, paragraph, line) ids."""
    pytesseract = _require_tesseract()
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    d = pytesseract.image_to_data(image, output_type=pytesseract.Output.DICT)
    words, boxes, lines = [], [], []
    for i, text in enumerate(d["text"]):
        if int(d["level"][i]) != 5 or not str(text).strip():
            continue
        x, y, w, h = (int(d[k][i]) for k in ("left", "top", "width", "height"))
        words.append(str(text).strip())
        boxes.append([x, y, x + w, y + h])
        lines.append((int(d["block_num"][i]), int(d["par_num"][i]), int(d["line_num"][i])))
    return words, boxes, lines


def ocr_page(path: str | Path, cache_dir: str | Path | None = None) -> Page:
    """One image as a ``Page`` (segments = OCR lines), from the cache when this image was OCR'd before."""
    path = Path(path)
    image = load_image(path)  # refuses an unreadable or truncated file before tesseract sees it
    width, height = image.size
    cache = Path(cache_dir) / f"{file_digest(path)}.json" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        rec = json.loads(cache.read_text())
    else:
        words, boxes, lines = ocr_words(image)
        rec = {"words": words, "boxes": boxes, "lines": [list(t) for t in lines]}
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(rec))
    if not rec["words"]:
        raise DataError(f"OCR found no words on {path}")
    b = normalise_boxes(rec["boxes"], width, height, str(path))
    keys = [tuple(t) for t in rec["lines"]]
    order = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    seg = np.asarray([order[k] for k in keys], dtype=np.int64)
    page = Page(
        page_id=path.stem,
        source="ocr",
        words=list(rec["words"]),
        boxes=b,
        seg_ids=seg,
        seg_boxes=np.stack([union_box(b[seg == s]) for s in range(len(order))]),
        size=(width, height),
        image_path=path,
    )
    page._image = image
    return page


def ocr_folder(folder: str | Path, cache_dir: str | Path | None = None) -> list[Page]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"page folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no page images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return [ocr_page(p, cache_dir) for p in files]
