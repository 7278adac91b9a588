"""Document pages: one ``Page`` object for FUNSD forms, SROIE receipts, rendered pages and OCR'd scans.

A page holds its image (a path read on first use, or an image in memory), its words, their boxes normalised
to 0-1000 (LayoutLM's convention, independent of the scan's resolution), the segment each word belongs to
(a FUNSD entity, a receipt line, a rendered line, an OCR line) and, for FUNSD, one BIO tag per word.

Every loader validates what it reads and raises a one-line ``DataError`` naming the file: an unreadable or
truncated image, a box outside its page, a page without words, an unknown label.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pretrainkit.errors import DataError

ENTITY_TYPES = ("HEADER", "QUESTION", "ANSWER")
# FUNSD's "other" entities are tagged O (the field's standard 7-tag protocol).
FUNSD_LABELS = {"header": "HEADER", "question": "QUESTION", "answer": "ANSWER", "other": None}
BIO_TAGS = ("O",) + tuple(f"{p}-{t}" for t in ENTITY_TYPES for p in ("B", "I"))
SROIE_FIELDS = ("company", "date", "address", "total")


def load_image(path: str | Path):
    """The image at ``path`` as an 8-bit grayscale PIL image, fully decoded now, so an unreadable or
    truncated file fails here with its name rather than later inside a batch."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("L")
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e} (unreadable or truncated file)") from None


@dataclass
class Page:
    """One document page. ``boxes``/``seg_boxes`` are int (x0, y0, x1, y1) in 0-1000; ``seg_ids[i]`` is
    word i's segment (an index into ``seg_boxes``); ``labels`` (optional) one BIO tag per word."""

    page_id: str
    source: str  # "funsd-train", "funsd-test", "sroie", "synthetic", "ocr"
    words: list[str]
    boxes: np.ndarray  # (N, 4) int64
    seg_ids: np.ndarray  # (N,) int64
    seg_boxes: np.ndarray  # (S, 4) int64
    size: tuple[int, int]  # the image's (width, height) in pixels
    image_path: Path | None = None
    labels: list[str] | None = None
    fields: dict[str, str] | None = None  # SROIE key fields
    tag_set: tuple[str, ...] = BIO_TAGS  # the labels' vocabulary: FUNSD's BIO tags, or SROIE_TAGS
    _image: object = field(default=None, repr=False)

    def __post_init__(self) -> None:
        where = self.image_path or self.page_id
        if not self.words:
            raise DataError(f"page {where} has no words: a page needs at least one word with a box")
        n = len(self.words)
        if self.boxes.shape != (n, 4) or self.seg_ids.shape != (n,):
            raise DataError(
                f"page {where}: {n} words but boxes {self.boxes.shape}, seg_ids {self.seg_ids.shape}"
            )
        for name, b in (("word", self.boxes), ("segment", self.seg_boxes)):
            bad = np.nonzero((b < 0).any(1) | (b > 1000).any(1) | (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1]))[
                0
            ]
            if len(bad):
                raise DataError(
                    f"page {where}: {name} box {b[bad[0]].tolist()} lies outside the page "
                    f"(normalised boxes must satisfy 0 <= x0 <= x1 <= 1000, 0 <= y0 <= y1 <= 1000)"
                )
        if len(self.seg_ids) and (self.seg_ids.min() < 0 or self.seg_ids.max() >= len(self.seg_boxes)):
            raise DataError(f"page {where}: a word names a segment that does not exist")
        if self.labels is not None:
            if len(self.labels) != n:
                raise DataError(f"page {where}: {n} words but {len(self.labels)} labels")
            unknown = sorted(set(self.labels) - set(self.tag_set))
            if unknown:
                raise DataError(
                    f"page {where}: unknown label '{unknown[0]}'; allowed: {', '.join(self.tag_set)}"
                )

    @property
    def image(self):
        """The page image (grayscale PIL), read from ``image_path`` on first use and kept."""
        if self._image is None:
            if self.image_path is None:
                raise DataError(f"page {self.page_id} has neither an image nor an image path")
            self._image = load_image(self.image_path)
        return self._image


def normalise_boxes(
    pixel_boxes: Sequence[Sequence[float]], width: int, height: int, where: str
) -> np.ndarray:
    """Pixel boxes -> int boxes in 0-1000; a box outside the page (beyond a 1-pixel rounding slack) is an
    error naming ``where``, never silently clipped."""
    b = np.asarray(pixel_boxes, dtype=np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = b.T
    bad = np.nonzero(
        (np.minimum(x0, x1) < -1)
        | (np.minimum(y0, y1) < -1)
        | (np.maximum(x0, x1) > width + 1)
        | (np.maximum(y0, y1) > height + 1)
    )[0]
    if len(bad):
        raise DataError(f"{where}: box {b[bad[0]].tolist()} lies outside its {width}x{height} page")
    b = np.stack([np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1), np.maximum(y0, y1)], 1)
    scale = np.array([width, height, width, height], dtype=np.float64)
    return np.clip(np.floor(1000 * b / scale), 0, 1000).astype(np.int64)


def union_box(boxes: np.ndarray) -> np.ndarray:
    return np.array(
        [boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()], dtype=np.int64
    )


def bio_tags(entity: str | None, n: int) -> list[str]:
    return ["O"] * n if entity is None else [f"B-{entity}"] + [f"I-{entity}"] * (n - 1)


# ---- FUNSD ------------------------------------------------------------------------------------------------
def funsd_dir(data_root: str | Path, split: str) -> Path:
    if split not in ("train", "test"):
        raise DataError(f"unknown FUNSD split '{split}'; allowed: train, test")
    d = (
        Path(data_root)
        / "docs"
        / "funsd"
        / "dataset"
        / ("training_data" if split == "train" else "testing_data")
    )
    if not d.is_dir():
        raise DataError(
            f"FUNSD not found at {d} (expected dataset/{{training,testing}}_data/{{images,annotations}})"
        )
    return d


def load_funsd_page(ann_path: Path, image_path: Path, source: str) -> Page:
    """One FUNSD form: each entity is a segment (its words in reading order); labels are word-level BIO."""
    try:
        form = json.loads(Path(ann_path).read_text())["form"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"cannot read FUNSD annotation {ann_path}: {e}") from None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image_path) as im:  # the size only; pixels are read on first use
            width, height = im.size
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"cannot read image {image_path}: {e}") from None
    words, boxes, seg_ids, seg_boxes, labels = [], [], [], [], []
    for ent in form:
        label = str(ent.get("label", "")).lower()
        if label not in FUNSD_LABELS:
            raise DataError(
                f"{ann_path}: unknown label '{ent.get('label')}'; allowed: {', '.join(FUNSD_LABELS)}"
            )
        ws = [w for w in ent.get("words", []) if str(w.get("text", "")).strip()]  # FUNSD has empty-text words
        if not ws:
            continue
        b = normalise_boxes([w["box"] for w in ws], width, height, str(ann_path))
        seg = len(seg_boxes)
        seg_boxes.append(union_box(b))
        words += [str(w["text"]).strip() for w in ws]
        boxes.append(b)
        seg_ids += [seg] * len(ws)
        labels += bio_tags(FUNSD_LABELS[label], len(ws))
    if not words:
        raise DataError(f"{ann_path}: the annotation's word list is empty")
    return Page(
        page_id=Path(ann_path).stem,
        source=source,
        words=words,
        boxes=np.concatenate(boxes),
        seg_ids=np.asarray(seg_ids, dtype=np.int64),
        seg_boxes=np.stack(seg_boxes),
        size=(width, height),
        image_path=Path(image_path),
        labels=labels,
    )


def load_funsd(data_root: str | Path, split: str, limit: int | None = None) -> list[Page]:
    """FUNSD's ``train`` (149 forms) or ``test`` (50) pages, in file-name order (``limit``: the first n)."""
    d = funsd_dir(data_root, split)
    anns = sorted((d / "annotations").glob("*.json"))[:limit]
    return [load_funsd_page(a, d / "images" / f"{a.stem}.png", f"funsd-{split}") for a in anns]


# ---- SROIE ------------------------------------------------------------------------------------------------
def sroie_dir(data_root: str | Path) -> Path:
    d = Path(data_root) / "docs" / "sroie_subset" / "data"
    if not d.is_dir():
        raise DataError(f"SROIE subset not found at {d} (expected data/{{img,box,key}})")
    return d


def load_sroie_page(box_csv: Path, image_path: Path, key_json: Path | None) -> Page:
    """One receipt: each OCR line is a segment; its words get boxes by splitting the line box in proportion
    to character counts (SROIE ships line boxes only, so word boxes are an approximation)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image_path) as im:
            width, height = im.size
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"cannot read image {image_path}: {e}") from None
    words, boxes, seg_ids, seg_boxes = [], [], [], []
    try:
        rows = list(csv.reader(Path(box_csv).read_text(encoding="utf-8", errors="replace").splitlines()))
    except OSError as e:
        raise DataError(f"cannot read SROIE boxes {box_csv}: {e}") from None
    for i, row in enumerate(rows):
        if not row:
            continue
        if len(row) < 9:
            raise DataError(
                f"{box_csv} line {i + 1}: expected 8 coordinates and a text, got {len(row)} fields"
            )
        try:
            q = np.asarray([float(v) for v in row[:8]]).reshape(4, 2)
        except ValueError:
            raise DataError(f"{box_csv} line {i + 1}: coordinates are not numbers: {row[:8]}") from None
        text = ",".join(row[8:]).strip()  # the text may itself contain commas
        toks = text.split()
        if not toks:
            continue
        line = normalise_boxes(
            [[q[:, 0].min(), q[:, 1].min(), q[:, 0].max(), q[:, 1].max()]],
            width,
            height,
            f"{box_csv} line {i + 1}",
        )[0]
        total = sum(len(t) for t in toks) + len(toks) - 1
        x, span = float(line[0]), float(line[2] - line[0])
        seg = len(seg_boxes)
        seg_boxes.append(line)
        for t in toks:
            x1 = x + span * len(t) / total
            boxes.append([int(x), line[1], max(int(x), int(x1)), line[3]])
            words.append(t)
            seg_ids.append(seg)
            x = x1 + span / total
    if not words:
        raise DataError(f"{box_csv}: the receipt's word list is empty")
    fields = None
    if key_json is not None and key_json.is_file():
        try:
            fields = {k: str(v) for k, v in json.loads(key_json.read_text()).items()}
        except ValueError as e:
            raise DataError(f"cannot read SROIE key fields {key_json}: {e}") from None
    return Page(
        page_id=f"sroie-{Path(box_csv).stem}",
        source="sroie",
        words=words,
        boxes=np.asarray(boxes, dtype=np.int64),
        seg_ids=np.asarray(seg_ids, dtype=np.int64),
        seg_boxes=np.stack(seg_boxes),
        size=(width, height),
        image_path=Path(image_path),
        fields=fields,
    )


SROIE_TRAIN = 80  # receipts 000-079 train (and pre-training), 080-099 test: the subset has no official split


def load_sroie(data_root: str | Path, limit: int | None = None, split: str = "train") -> list[Page]:
    """The receipts of ``split`` ("train": the first 80, "test": the last 20, "all"), unlabelled."""
    if split not in ("train", "test", "all"):
        raise DataError(f"unknown SROIE split '{split}'; allowed: train, test, all")
    d = sroie_dir(data_root)
    csvs = sorted((d / "box").glob("*.csv"))
    csvs = {"train": csvs[:SROIE_TRAIN], "test": csvs[SROIE_TRAIN:], "all": csvs}[split][:limit]
    return [load_sroie_page(c, d / "img" / f"{c.stem}.jpg", d / "key" / f"{c.stem}.json") for c in csvs]


# ---- the pre-training corpus ------------------------------------------------------------------------------
def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_no_funsd_test(pages: Iterable[Page], data_root: str | Path) -> None:
    """Refuse a pre-training corpus that holds a FUNSD test page, by page id, by source or by image content
    (the same scan under another name), so the test pages are never seen before evaluation."""
    d = funsd_dir(data_root, "test")
    test_ids = {p.stem for p in (d / "annotations").glob("*.json")}
    test_digests = None
    for p in pages:
        if p.source == "funsd-test" or p.page_id in test_ids:
            raise DataError(
                f"pre-training pages include FUNSD test page {p.page_id}: test pages are never pre-trained on"
            )
        if p.image_path is not None and p.source != "funsd-train":
            if test_digests is None:
                test_digests = {file_digest(f): f.stem for f in (d / "images").glob("*.png")}
            hit = test_digests.get(file_digest(p.image_path))
            if hit:
                raise DataError(
                    f"pre-training image {p.image_path} is FUNSD test page {hit}: test pages are "
                    "never pre-trained on"
                )


def pretrain_pages(
    data_root: str | Path,
    synthetic: int = 0,
    seed: int = 0,
    funsd_limit: int | None = None,
    sroie_limit: int | None = None,
    extra: Sequence[Page] = (),
    **render_kw,
) -> list[Page]:
    """FUNSD's training pages, the SROIE training receipts, ``synthetic`` rendered pages and ``extra`` (e.g. a
    user's OCR'd scans): the unlabelled corpus (labels are dropped). Checked against FUNSD's test set; the
    SROIE test receipts are left out the same way (by split)."""
    pages = [*load_funsd(data_root, "train", funsd_limit), *load_sroie(data_root, sroie_limit), *extra]
    if synthetic:
        from pretrainkit.systems.bivldoc.render import render_pages

        pages += render_pages(synthetic, data_root=data_root, seed=seed, **render_kw)
    check_no_funsd_test(pages, data_root)
    for p in pages:
        p.labels = None
    return pages


# ---- SROIE key-field labels --------------------------------------------------------------------------------
SROIE_TAGS = ("O",) + tuple(f"{p}-{f.upper()}" for f in SROIE_FIELDS for p in ("B", "I"))


def _squash(text: str) -> str:
    return "".join(text.upper().split())


def sroie_field_tags(page: Page, min_ratio: float = 0.8) -> tuple[list[str], list[str]]:
    """Word-level BIO tags for a receipt's key fields, derived by string matching (SROIE gives the field
    strings, not their boxes). A field is matched, spaces ignored, as an exact substring of the words in
    reading order; failing that (the scans' line texts carry OCR typos) as the run of up to 4 consecutive lines
    most similar to it (difflib ratio >= ``min_ratio``). ``total`` takes its last exact occurrence (the grand
    total is printed below the subtotals), the others their first. Returns (tags, fields not found)."""
    from difflib import SequenceMatcher

    if not page.fields:
        raise DataError(f"page {page.page_id} has no key fields")
    tags = ["O"] * len(page.words)
    missing = []
    squashed = [_squash(w) for w in page.words]
    joined = "".join(squashed)
    owner = np.repeat(np.arange(len(squashed)), [len(s) for s in squashed])  # character -> word
    n_seg = int(page.seg_ids.max()) + 1
    lines = ["".join(s for s, g in zip(squashed, page.seg_ids) if g == k) for k in range(n_seg)]
    for key in SROIE_FIELDS:
        value = _squash(page.fields.get(key, ""))
        if not value:
            continue
        at = joined.rfind(value) if key == "total" else joined.find(value)
        if at >= 0:
            words = sorted(set(owner[at : at + len(value)].tolist()))
        else:
            best, span = 0.0, None
            for a in range(n_seg):
                for b in range(a, min(a + 4, n_seg)):
                    r = SequenceMatcher(None, "".join(lines[a : b + 1]), value, autojunk=False).ratio()
                    if r > best:
                        best, span = r, (a, b)
            if best < min_ratio:
                missing.append(key)
                continue
            words = [i for i, g in enumerate(page.seg_ids) if span[0] <= g <= span[1]]
        if any(tags[i] != "O" for i in words):  # a word already taken by an earlier field keeps its tag
            words = [i for i in words if tags[i] == "O"]
        for k, i in enumerate(words):
            tags[i] = f"{'B' if k == 0 else 'I'}-{key.upper()}"
    return tags, missing


def load_sroie_labelled(data_root: str | Path, split: str, limit: int | None = None) -> list[Page]:
    """Receipts of ``split`` with word-level key-field tags (``sroie_field_tags``; fields it cannot find stay O)."""
    pages = load_sroie(data_root, limit, split)
    for p in pages:
        p.labels, _ = sroie_field_tags(p)
        p.tag_set = SROIE_TAGS
    return pages
