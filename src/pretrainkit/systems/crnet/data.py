"""Text corpora for LM pre-training: read documents, hold out whole documents, tokenise, pack into sequences.

Sources (``data.source``):
- nothing: the shared corpus, ``<shared data>/text`` (25 Project Gutenberg books + tinyshakespeare);
- a ``.txt`` file (one document), a ``.jsonl`` file (one document per line, field ``data.text_field``), or a
  folder searched recursively for both;
- a Hugging Face ``datasets`` folder written by ``save_to_disk`` (needs ``pip install datasets``);
- ``hf:NAME[:CONFIG]``, e.g. ``hf:allenai/c4:en``: streamed from the hub, the first ``data.max_docs`` records of
  the train split (needs ``datasets`` and network; never used by the tests).

Documents. A ``.txt`` file is one document (``data.documents: file``, the default: whole books are held out, so
validation text shares no passage, name or chapter with training text), or is cut at blank lines into documents
of about ``data.doc_chars`` characters (``paragraphs``: for a corpus of one or few large files). Project Gutenberg
licence boilerplate is cut off (text between the ``*** START OF`` and ``*** END OF`` lines is kept).

Split. Documents are shuffled with ``data.split_seed`` and taken into validation until they hold
``data.val_fraction`` of the characters (a document that would overshoot by half the target is skipped); the
split never depends on the training seed, so every method and seed sees the same validation text.

Packing. Each split becomes one token stream ``EOS d1 EOS d2 EOS ...``; sequence i reads positions
[iT, iT+T) and predicts [iT+1, iT+T+1), so every token after the first is a target exactly once and attention
may cross document boundaries (GPT-2/nanoGPT practice; the papers pad each document instead). Training drops the
ragged tail; validation keeps it, padded with label -100, so the scored token count is exactly
``sum(len(doc)) + n_docs`` (each document's tokens plus its closing EOS) — no off-by-one in the divisor.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pretrainkit.core.arrays import read_npz
from pretrainkit.core.io import atomic_write
from pretrainkit.errors import ConfigError, DataError
from pretrainkit.paths import shared_data_root
from pretrainkit.systems.crnet.tokenizer import TextTokenizer

TEXT_SUFFIXES = (".txt", ".jsonl")
HF_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_PG_START = re.compile(r"^\*\*\*\s*START OF[^\n]*\n", re.MULTILINE)
_PG_END = re.compile(r"^\*\*\*\s*END OF", re.MULTILINE)


@dataclass
class Document:
    name: str  # file name (plus a part number for paragraph documents); shown in errors and split listings
    text: str


# --------------------------------------------------------------------------------------------------- reading
def shared_corpus() -> Path:
    """The shared English text folder (Gutenberg books + tinyshakespeare)."""
    return shared_data_root() / "text"


def strip_gutenberg(text: str) -> str:
    """Keep only the book between Project Gutenberg's ``*** START OF`` and ``*** END OF`` lines (if present)."""
    start = _PG_START.search(text)
    if start:
        text = text[start.end() :]
    end = _PG_END.search(text)
    if end:
        text = text[: end.start()]
    return text


def read_utf8(path: Path) -> str:
    """A file's text, strict UTF-8 (a BOM is allowed); DataError naming the file for anything else or no text."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"corpus file {path} is not UTF-8 text (bad byte 0x{raw[e.start]:02x} at offset {e.start}); "
            "convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None
    if not text.strip():
        raise DataError(f"corpus file {path} is empty; remove it or add text")
    return text


def _read_jsonl(path: Path, field: str) -> list[Document]:
    docs = []
    for i, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{path}:{i}: not a JSON object (expected one record per line)") from None
        text = rec.get(field) if isinstance(rec, dict) else None
        if not isinstance(text, str):
            raise DataError(f"{path}:{i}: no string field '{field}' (set data.text_field to the text field)")
        if text.strip():
            docs.append(Document(f"{path.name}:{i}", text))
    if not docs:
        raise DataError(f"corpus file {path} has no non-empty '{field}' records")
    return docs


def _read_hf_disk(path: Path, field: str, split: str, max_docs: int) -> list[Document]:
    try:
        import datasets  # optional: only for users with a saved datasets folder
    except ImportError:
        raise DataError(
            f"{path} is a Hugging Face datasets folder; reading it needs `pip install datasets`"
        ) from None
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(
                f"datasets folder {path} has splits {sorted(ds)}, not '{split}' (set data.hf_split)"
            )
        ds = ds[split]
    if field not in ds.column_names:
        raise DataError(
            f"datasets folder {path} has columns {ds.column_names}, not '{field}' (set data.text_field)"
        )
    n = len(ds) if not max_docs else min(max_docs, len(ds))
    return [
        Document(f"{path.name}[{i}]", t) for i, t in enumerate(ds.select(range(n))[field]) if t and t.strip()
    ]


def _stream_hub(spec: str, field: str, split: str, max_docs: int) -> list[Document]:
    if max_docs <= 0:
        raise ConfigError(f"streaming '{spec}' needs data.max_docs > 0 (how many records to take)")
    name, _, config = spec.removeprefix("hf:").partition(":")
    try:
        import datasets
    except ImportError:
        raise DataError(f"streaming '{spec}' needs `pip install datasets` and network access") from None
    stream = datasets.load_dataset(name, config or None, split=split, streaming=True)
    docs = []
    for i, rec in enumerate(stream):
        if len(docs) >= max_docs:
            break
        text = rec.get(field)
        if isinstance(text, str) and text.strip():
            docs.append(Document(f"{name}[{i}]", text))
    if not docs:
        raise DataError(f"no '{field}' records streamed from '{spec}'")
    return docs


def corpus_files(source: str | Path | None) -> list[Path]:
    """The .txt/.jsonl files a source names (sorted), or [] for a datasets folder or a hub stream."""
    if source is None:
        root = shared_corpus()
        if not root.is_dir():
            raise DataError(
                f"shared text corpus not found at {root}; pass --data PATH (a folder of .txt/.jsonl)"
            )
        source = root
    if str(source).startswith("hf:"):
        return []
    path = Path(source)
    if not path.exists():
        raise DataError(f"corpus path not found: {path}")
    if path.is_file():
        if path.suffix not in TEXT_SUFFIXES:
            raise DataError(f"corpus file {path} must end in .txt or .jsonl")
        return [path]
    if any((path / m).is_file() for m in HF_DISK_MARKERS):
        return []
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    if not files:
        raise DataError(
            f"no .txt or .jsonl files under {path} (and it is not a Hugging Face datasets folder)"
        )
    return files


def read_corpus(
    source: str | Path | None,
    text_field: str = "text",
    hf_split: str = "train",
    max_docs: int = 0,
    gutenberg: bool = True,
) -> list[Document]:
    """Every document of ``source`` (see the module docstring), in a fixed order; at most ``max_docs`` if > 0."""
    if source is not None and str(source).startswith("hf:"):
        return _stream_hub(str(source), text_field, hf_split, max_docs)
    files = corpus_files(source)
    if not files:
        return _read_hf_disk(Path(source), text_field, hf_split, max_docs)  # type: ignore[arg-type]
    docs: list[Document] = []
    for f in files:
        if f.suffix == ".jsonl":
            docs += _read_jsonl(f, text_field)
        else:
            text = read_utf8(f)
            if gutenberg:
                text = strip_gutenberg(text)
                if not text.strip():
                    raise DataError(f"corpus file {f} holds only Project Gutenberg boilerplate, no book text")
            docs.append(Document(f.name, text))
        if max_docs and len(docs) >= max_docs:
            return docs[:max_docs]
    return docs


def source_fingerprint(source: str | Path | None) -> list:
    """What identifies a corpus cheaply: each file's path, size and modification time (or the hub spec)."""
    if source is not None and str(source).startswith("hf:"):
        return [str(source)]
    files = corpus_files(source) or sorted(p for p in Path(source).rglob("*") if p.is_file())  # type: ignore[arg-type]
    return [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


# --------------------------------------------------------------------------------------------------- documents
def paragraph_documents(docs: Iterable[Document], max_chars: int) -> list[Document]:
    """Cut each document at blank lines into consecutive pieces of at most ``max_chars`` characters
    (a single longer paragraph stays whole)."""
    if max_chars < 1:
        raise ConfigError(f"data.doc_chars must be >= 1, got {max_chars}")
    out = []
    for d in docs:
        part, size, k = [], 0, 0
        for para in re.split(r"\n\s*\n", d.text):
            if not para.strip():
                continue
            if part and size + len(para) + 2 > max_chars:
                out.append(Document(f"{d.name}#{k}", "\n\n".join(part)))
                part, size, k = [], 0, k + 1
            part.append(para)
            size += len(para) + 2
        if part:
            out.append(Document(f"{d.name}#{k}", "\n\n".join(part)))
    return out


def split_by_document(
    docs: list[Document], val_fraction: float, seed: int
) -> tuple[list[Document], list[Document]]:
    """(train, validation) with whole documents held out: about ``val_fraction`` of the characters, seeded."""
    if not 0 < val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    if len(docs) < 2:
        raise DataError(
            f"the corpus has {len(docs)} document(s); holding out whole documents needs at least 2 "
            "(use --set data.documents=paragraphs to cut long files into documents)"
        )
    held = set(hold_out([len(d.text) for d in docs], val_fraction, seed))
    return [d for i, d in enumerate(docs) if i not in held], [docs[i] for i in sorted(held)]


def hold_out(sizes: list[int], fraction: float, seed: int) -> list[int]:
    """Indices of whole documents holding about ``fraction`` of the total size: a seeded random order, skipping
    any document that would overshoot the target by half; at least one held out, at least one kept."""
    target = fraction * sum(sizes)
    order = np.random.default_rng(seed).permutation(len(sizes))
    held, size = [], 0
    for i in order:
        if size >= target:
            break
        if size + sizes[i] <= 1.5 * target:  # skip a document that would overshoot the target by half
            held.append(int(i))
            size += sizes[i]
    if not held:
        held = [int(np.argmin(sizes))]
    if len(held) == len(sizes):
        held = held[:-1]
    return sorted(held)


def stream_documents(stream: np.ndarray, eos: int) -> list[np.ndarray]:
    """The documents of a ``token_stream`` (``EOS d1 EOS ... dn EOS``), without their EOS."""
    ends = np.flatnonzero(stream == eos)
    return [stream[a + 1 : b] for a, b in zip(ends[:-1], ends[1:])]


# --------------------------------------------------------------------------------------------------- packing
def token_stream(token_lists: Iterable[list[int]], eos: int) -> np.ndarray:
    """``EOS d1 EOS d2 EOS ... dn EOS`` as int32: every document's tokens and its closing EOS are targets."""
    parts = [np.array([eos], dtype=np.int32)]
    for ids in token_lists:
        parts.append(np.asarray(ids, dtype=np.int32))
        parts.append(np.array([eos], dtype=np.int32))
    return np.concatenate(parts)


def pack(stream: np.ndarray, seq_len: int, keep_tail: bool, pad_id: int) -> dict[str, torch.Tensor]:
    """Cut a stream into (input_ids, labels) of ``seq_len``; labels are the inputs shifted by one position.

    ``keep_tail``: the last partial sequence is kept, its missing positions padded (input ``pad_id``,
    label -100), so every target of the stream is scored once; otherwise it is dropped."""
    if seq_len < 1:
        raise ConfigError(f"sequence length must be >= 1, got {seq_len}")
    n_targets = len(stream) - 1
    n = -(-n_targets // seq_len) if keep_tail else n_targets // seq_len
    if n == 0:
        raise DataError(f"{len(stream)} tokens are too few for one sequence of {seq_len}")
    total = n * seq_len + 1
    padded = np.full(total, -100, dtype=np.int64)
    used = min(total, len(stream))
    padded[:used] = stream[:used]
    inputs = padded[:-1].reshape(n, seq_len).copy()
    labels = padded[1:].reshape(n, seq_len).copy()
    inputs[inputs == -100] = pad_id
    return {
        "input_ids": torch.from_numpy(inputs).to(torch.int32),
        "labels": torch.from_numpy(labels).to(torch.int32),
    }


def evenly_spaced(tensors: dict[str, torch.Tensor], max_sequences: int) -> dict[str, torch.Tensor]:
    """At most ``max_sequences`` sequences spread evenly over all of them (so a cap still covers every document)."""
    n = len(next(iter(tensors.values())))
    if max_sequences <= 0 or n <= max_sequences:
        return tensors
    idx = torch.from_numpy(np.unique(np.linspace(0, n - 1, max_sequences).round().astype(np.int64)))
    return {k: v[idx] for k, v in tensors.items()}


# --------------------------------------------------------------------------------------------------- prepared data
@dataclass
class TextData:
    """A tokenised corpus: the tokenizer, the train and validation token streams and the documents of each."""

    tokenizer: TextTokenizer
    train_stream: np.ndarray
    val_stream: np.ndarray
    train_docs: list[str]
    val_docs: list[str]

    def train_tensors(self, seq_len: int) -> dict[str, torch.Tensor]:
        return pack(self.train_stream, seq_len, keep_tail=False, pad_id=self.tokenizer.eos_id)

    def val_tensors(self, seq_len: int, max_tokens: int = 0) -> dict[str, torch.Tensor]:
        """Validation sequences (tail padded); ``max_tokens`` > 0 keeps evenly spaced sequences up to that many."""
        t = pack(self.val_stream, seq_len, keep_tail=True, pad_id=self.tokenizer.eos_id)
        return evenly_spaced(t, max_tokens // seq_len if max_tokens > 0 else 0)

    def summary(self) -> dict:
        return {
            "train_documents": len(self.train_docs),
            "val_documents": len(self.val_docs),
            "train_tokens": len(self.train_stream),
            "val_tokens": len(self.val_stream),
            "vocab_size": self.tokenizer.vocab_size,
            "val_document_names": self.val_docs[:50],
        }


def _documents(dcfg) -> list[Document]:
    docs = read_corpus(dcfg.source, dcfg.text_field, dcfg.hf_split, dcfg.max_docs, dcfg.strip_gutenberg)
    if dcfg.documents == "paragraphs":
        docs = paragraph_documents(docs, dcfg.doc_chars)
    return docs


def _tokenizer_texts(docs: list[Document], max_chars: int) -> Iterable[str]:
    used = 0
    for d in docs:
        if max_chars and used >= max_chars:
            return
        text = d.text if not max_chars else d.text[: max_chars - used]
        used += len(text)
        yield text


def prepare_text_data(dcfg, folder: str | Path, log=print) -> TextData:
    """Tokenizer + token streams for the data section ``dcfg`` (a ``DataSection``), kept under ``folder``.

    ``folder/tokenizer.json`` is reused when present (a resumed run keeps its ids); otherwise it is trained on
    the training documents only (or copied from ``data.tokenizer``). Token streams are cached in
    ``folder/data/tokens-<key>.npz``, keyed by the corpus files' sizes and times, the data settings and the
    tokenizer, so evaluate and resume do not tokenise again."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok_path = folder / "tokenizer.json"
    docs = split = None
    if tok_path.is_file():
        tok = TextTokenizer.load(tok_path)
    elif dcfg.tokenizer:
        tok = TextTokenizer.load(dcfg.tokenizer)
        tok.save(tok_path)
    else:
        docs = _documents(dcfg)
        split = split_by_document(docs, dcfg.val_fraction, dcfg.split_seed)
        log(f"training a {dcfg.vocab_size}-id byte-level BPE tokenizer on {len(split[0])} training documents")
        tok = TextTokenizer.train(_tokenizer_texts(split[0], dcfg.tokenizer_max_chars), dcfg.vocab_size)
        tok.save(tok_path)
    key_src = {
        "corpus": source_fingerprint(dcfg.source),
        "settings": [
            dcfg.documents,
            dcfg.doc_chars,
            dcfg.text_field,
            dcfg.hf_split,
            dcfg.max_docs,
            dcfg.strip_gutenberg,
            dcfg.val_fraction,
            dcfg.split_seed,
        ],
        "tokenizer": hashlib.sha256(tok.tok.to_str().encode()).hexdigest(),
    }
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:16]
    (folder / "data").mkdir(exist_ok=True)
    cache = folder / "data" / f"tokens-{key}.npz"
    if cache.is_file():
        train, val, names = read_token_cache(cache)
        return TextData(tok, train, val, names["train"], names["val"])
    if split is None:
        docs = docs or _documents(dcfg)
        split = split_by_document(docs, dcfg.val_fraction, dcfg.split_seed)
    train_docs, val_docs = split
    log(f"tokenising {len(train_docs)} training and {len(val_docs)} validation documents")
    train = token_stream(tok.encode_batch([d.text for d in train_docs]), tok.eos_id)
    val = token_stream(tok.encode_batch([d.text for d in val_docs]), tok.eos_id)
    names = {"train": [d.name for d in train_docs], "val": [d.name for d in val_docs]}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file handle stops numpy from appending ".npz" to the temp name
            np.savez(f, train=train, val=val, names=np.array(json.dumps(names)))

    atomic_write(cache, write)
    return TextData(tok, train, val, names["train"], names["val"])


def read_token_cache(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, list[str]]]:
    """(train ids, val ids, document names) from a token cache, or one DataError saying to delete it.

    The cache is written atomically, so a bad one means outside damage; it is refused rather than rebuilt
    because evaluate must not write into the run directory."""
    path = Path(path)
    hint = "delete it and run the command again to tokenise afresh"
    try:
        arrays = read_npz(path, required=("train", "val", "names"), advice=hint)
    except DataError as e:
        raise DataError(f"token cache {e}") from None
    try:
        names = json.loads(str(arrays["names"]))
        ok = all(isinstance(names.get(k), list) for k in ("train", "val"))
    except (ValueError, AttributeError):
        ok = False
    train, val = arrays["train"], arrays["val"]
    if not ok or any(a.ndim != 1 or not np.issubdtype(a.dtype, np.integer) for a in (train, val)):
        raise DataError(f"token cache {path} does not hold 1-D token ids and document names; {hint}")
    return train, val, names


def corpus_as_validation(source: str | Path, dcfg, tok: TextTokenizer) -> TextData:
    """Every document of another corpus as a validation set (``evaluate --data``), with the run's tokenizer."""
    docs = read_corpus(source, dcfg.text_field, dcfg.hf_split, dcfg.max_docs, dcfg.strip_gutenberg)
    val = token_stream(tok.encode_batch([d.text for d in docs]), tok.eos_id)
    return TextData(tok, np.zeros(1, dtype=np.int32), val, [], [d.name for d in docs])
