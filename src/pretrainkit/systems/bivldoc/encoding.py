"""Words to model inputs: a WordPiece vocabulary built here, and ``encode_page`` (page -> ``EncodedPage``).

No model hub is reachable, so the vocabulary is built from the pre-training pages' words (FUNSD train,
receipts, rendered Gutenberg text), never from FUNSD's test pages, by counting (see ``train_tokenizer``);
the ``tokenizers`` package normalises, splits and tokenises. WordPiece rather than byte-level BPE because
every sub-word must map back to one page word (``word_ids``), and lower-cased word pieces suit noisy short
form text. Saved as ``tokenizer.json`` in the pre-training run and reused by fine-tuning.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from pretrainkit.errors import DataError
from pretrainkit.systems.bivldoc.data import BIO_TAGS, Page
from pretrainkit.systems.bivldoc.model import EncodedPage, ModelConfig

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = range(len(SPECIALS))
LABEL_IDS = {t: i for i, t in enumerate(BIO_TAGS)}


def _tokenizer(vocab: dict[str, int] | None = None):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    model = (
        models.WordPiece(vocab, unk_token="[UNK]")
        if vocab is not None
        else models.WordPiece(unk_token="[UNK]")
    )
    tok = Tokenizer(model)
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def train_tokenizer(pages: Iterable[Page], vocab_size: int):
    """A WordPiece vocabulary from the pages' words, built deterministically: the specials, every character
    seen (as a word start and as ``##c``), then the most frequent whole words and ``##`` endings (2-4 chars)
    by (count, text). The ``tokenizers`` trainer is not used: it breaks frequency ties differently from run to
    run, so two runs with one seed would get different vocabularies (and different results)."""
    from collections import Counter

    pages = list(pages)
    for p in pages:
        if p.source == "funsd-test":
            raise DataError(f"the vocabulary must not see FUNSD test page {p.page_id}")
    probe = _tokenizer({s: i for i, s in enumerate(SPECIALS)})
    words: Counter[str] = Counter()
    for p in pages:
        for w in p.words:
            words.update(
                piece for piece, _ in probe.pre_tokenizer.pre_tokenize_str(probe.normalizer.normalize_str(w))
            )
    chars = sorted({c for w in words for c in w})
    vocab = list(SPECIALS) + chars + [f"##{c}" for c in chars]
    if len(vocab) > vocab_size:
        raise DataError(
            f"pretrain.vocab_size={vocab_size} is below the {len(vocab)} characters and specials seen"
        )
    ends: Counter[str] = Counter()
    for w, n in words.items():
        for k in range(2, min(4, len(w) - 1) + 1):
            ends[f"##{w[-k:]}"] += n
    room = vocab_size - len(vocab)
    ranked = lambda c: [t for t, n in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])) if n > 1]  # noqa: E731
    seen = set(vocab)
    whole = [w for w in ranked(words) if len(w) > 1 and w not in seen][: room * 3 // 4]
    vocab += whole
    seen.update(whole)
    vocab += [e for e in ranked(ends) if e not in seen][: vocab_size - len(vocab)]
    return _tokenizer({t: i for i, t in enumerate(vocab)})


def save_tokenizer(tok, path: str | Path) -> None:
    tok.save(str(path))


def load_tokenizer(path: str | Path):
    from tokenizers import Tokenizer

    if not Path(path).is_file():
        raise DataError(
            f"tokenizer not found: {path} (pre-train first, or pass the pre-training run directory)"
        )
    return Tokenizer.from_file(str(path))


def page_image(page: Page, size: int) -> torch.Tensor:
    """(1, size, size) uint8, ink high (255 - gray), the page squeezed to a square as LayoutLM-family models do."""
    from PIL import Image

    im = page.image.resize((size, size), Image.BILINEAR)
    return torch.from_numpy(255 - np.asarray(im, dtype=np.uint8).copy())[None]


class Truncation:
    """Counts what ``encode_page`` cut off, so truncation is stated (one line), never silent."""

    def __init__(self):
        self.pages, self.words, self.total_pages = 0, 0, 0

    def add(self, enc: EncodedPage) -> None:
        self.total_pages += 1
        if enc.n_words_kept < enc.n_words:
            self.pages += 1
            self.words += enc.n_words - enc.n_words_kept

    def report(self, what: str, cfg: ModelConfig, stream=sys.stderr) -> str | None:
        if not self.pages:
            return None
        line = (
            f"note: {self.pages} of {self.total_pages} {what} pages were truncated to model.max_tokens="
            f"{cfg.max_tokens} / model.max_segments={cfg.max_segments} ({self.words} words dropped)"
        )
        print(line, file=stream)
        return line


Overflow = Literal["truncate", "error", "windows"]


def encode_page(
    page: Page,
    tok,
    cfg: ModelConfig,
    overflow: Overflow = "truncate",
    image: torch.Tensor | None = None,
    start: int = 0,
) -> EncodedPage:
    """Tokenise ``page``'s words from word ``start`` on (the first sub-word carries the word's label), keeping
    whole words only while they fit ``cfg.max_tokens`` (with [CLS]) and ``cfg.max_segments``; the window's
    segments are renumbered from 0. ``overflow="error"`` refuses a page that does not fit."""
    enc = tok.encode(list(page.words[start:]), is_pretokenized=True, add_special_tokens=False)
    ids = np.asarray(enc.ids, dtype=np.int64)
    wid = np.asarray([-1 if w is None else w + start for w in enc.word_ids], dtype=np.int64)
    if len(ids) == 0 or (wid < 0).any():
        raise DataError(f"page {page.page_id}: the tokenizer produced no tokens for its words")
    seg = page.seg_ids[wid]
    seg0 = int(seg[0])
    fits = (np.arange(len(ids)) < cfg.max_tokens - 1) & (seg - seg0 < cfg.max_segments)
    # keep whole words only: a word is kept when all of its sub-words fit
    end = int(wid[~fits].min()) if (~fits).any() else len(page.words)
    if end == start:
        raise DataError(f"page {page.page_id}: word {start} alone has more sub-words than model.max_tokens")
    if end < len(page.words) and overflow == "error":
        raise DataError(
            f"page {page.page_id}: {len(ids)} tokens / {len(page.seg_boxes)} segments exceed "
            f"model.max_tokens={cfg.max_tokens} (with [CLS]) / model.max_segments={cfg.max_segments}; "
            "set data.overflow=truncate to keep the first words, or windows to split the page"
        )
    keep = wid < end
    ids, wid, seg = ids[keep], wid[keep], seg[keep] - seg0
    first = np.r_[True, wid[1:] != wid[:-1]]
    # position inside the segment, counted in tokens
    starts = np.r_[True, seg[1:] != seg[:-1]]
    run_start = np.maximum.accumulate(np.where(starts, np.arange(len(seg)), 0))
    in_seg = np.arange(len(seg)) - run_start
    labels = np.full(len(ids), -100, dtype=np.int64)
    if page.labels is not None:
        ids_of = LABEL_IDS if page.tag_set == BIO_TAGS else {t: i for i, t in enumerate(page.tag_set)}
        lab = np.asarray([ids_of[page.labels[w]] for w in wid], dtype=np.int64)
        labels[first] = lab[first]
    n_seg = int(seg.max()) + 1
    cat = lambda head, rest: torch.from_numpy(np.concatenate([np.asarray(head, dtype=np.int64), rest]))  # noqa: E731
    return EncodedPage(
        page_id=page.page_id,
        input_ids=cat([CLS], ids),
        boxes=torch.from_numpy(np.concatenate([np.zeros((1, 4), np.int64), page.boxes[wid]])),
        seg_index=cat([-1], seg),
        in_seg_pos=cat([0], in_seg),
        word_index=cat([-1], np.where(first, wid, -1)),
        labels=cat([-100], labels),
        seg_boxes=torch.from_numpy(page.seg_boxes[seg0 : seg0 + n_seg].copy()),
        image=page_image(page, cfg.image_size) if image is None else image,
        n_words=len(page.words),
        n_words_kept=end - start,
        first_word=start,
    )


def encode_windows(page: Page, tok, cfg: ModelConfig) -> list[EncodedPage]:
    """The whole page as consecutive windows of whole words (one image, encoded once), so no word is lost."""
    image = page_image(page, cfg.image_size)
    out, start = [], 0
    while start < len(page.words):
        e = encode_page(page, tok, cfg, "windows", image=image, start=start)
        out.append(e)
        start += e.n_words_kept
    return out


def encode_pages(
    pages: Sequence[Page], tok, cfg: ModelConfig, what: str, overflow: Overflow = "truncate"
) -> tuple[list[EncodedPage], str | None]:
    """Every page encoded; ``windows`` splits long pages, ``truncate`` states how much it cut (one line)."""
    if overflow == "windows":
        return [e for p in pages for e in encode_windows(p, tok, cfg)], None
    trunc = Truncation()
    out = []
    for p in pages:
        e = encode_page(p, tok, cfg, overflow)
        trunc.add(e)
        out.append(e)
    return out, trunc.report(what, cfg)
