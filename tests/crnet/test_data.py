"""CR-Net data: tokenizer round trip, Gutenberg stripping, document split, packing, corpus errors, caching."""

import numpy as np
import pytest
import torch

from pretrainkit.errors import ConfigError, DataError
from pretrainkit.systems.crnet.config import DataSection
from pretrainkit.systems.crnet.data import (
    Document,
    pack,
    paragraph_documents,
    prepare_text_data,
    read_corpus,
    split_by_document,
    strip_gutenberg,
    token_stream,
)
from pretrainkit.systems.crnet.tokenizer import TextTokenizer


@pytest.fixture
def book_text(shared_data):
    """60 K characters of a real book (Project Gutenberg boilerplate removed)."""
    return strip_gutenberg((shared_data / "text" / "gutenberg" / "972.txt").read_text(encoding="utf-8"))[
        :60_000
    ]


def test_tokenizer_round_trips_and_reloads(book_text, tmp_path):
    tok = TextTokenizer.train([book_text], vocab_size=400)
    assert tok.vocab_size <= 400 and tok.eos_id == 0
    samples = [
        book_text[1000:3000],
        "Naïve café — “quotes”, tabs\tand\nnewlines  ✓ 日本語",
        "  leading spaces",
    ]
    for s in samples:
        ids = tok.encode(s)
        assert tok.decode(ids) == s  # byte-level: exact for any UTF-8 text
    assert len(tok.encode(book_text[1000:3000])) < 2000 / 1.5  # merges were learnt: fewer ids than bytes
    again = TextTokenizer.load(tok.save(tmp_path / "tokenizer.json"))
    assert again.encode(samples[1]) == tok.encode(samples[1]) and again.eos_id == tok.eos_id


def test_tokenizer_rejects_tiny_vocab():
    with pytest.raises(ConfigError, match="vocab_size"):
        TextTokenizer.train(["abc"], vocab_size=100)


def test_strip_gutenberg_keeps_only_the_book():
    text = "Header\nlicence\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\nThe book.\n*** END OF THIS EBOOK ***\nlegal"
    assert strip_gutenberg(text).strip() == "The book."
    assert strip_gutenberg("no markers here") == "no markers here"


def test_token_stream_and_packing_score_every_token_once():
    docs = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    s = token_stream(docs, eos=0)
    assert s.tolist() == [0, 5, 6, 7, 0, 8, 9, 0, 10, 11, 12, 13, 0]
    val = pack(s, seq_len=4, keep_tail=True, pad_id=0)
    assert val["input_ids"].shape == (3, 4)
    n_scored = int((val["labels"] != -100).sum())
    assert n_scored == sum(map(len, docs)) + len(docs) == len(s) - 1  # each doc's tokens + its closing EOS
    # labels are the inputs shifted by one position, across sequence boundaries
    flat_in, flat_lab = val["input_ids"].flatten(), val["labels"].flatten()
    assert torch.equal(flat_lab[: n_scored - 1], flat_in[1:n_scored])
    tail = pack(s, seq_len=5, keep_tail=True, pad_id=0)
    assert tail["labels"][-1].tolist() == [13, 0, -100, -100, -100]  # the padded tail is not scored
    assert tail["input_ids"][-1].tolist() == [12, 13, 0, 0, 0]
    assert int((tail["labels"] != -100).sum()) == len(s) - 1
    train = pack(s, seq_len=4, keep_tail=False, pad_id=0)
    assert train["input_ids"].shape == (3, 4) and int((train["labels"] == -100).sum()) == 0
    assert pack(s, seq_len=5, keep_tail=False, pad_id=0)["input_ids"].shape == (2, 5)  # ragged tail dropped


def test_split_holds_out_whole_documents_seeded():
    docs = [Document(f"d{i}", "x" * (1000 + 137 * i)) for i in range(30)]
    train, val = split_by_document(docs, 0.2, seed=3)
    names_t, names_v = {d.name for d in train}, {d.name for d in val}
    assert not names_t & names_v and names_t | names_v == {d.name for d in docs}
    share = sum(len(d.text) for d in val) / sum(len(d.text) for d in docs)
    assert 0.15 < share < 0.3
    assert [d.name for d in split_by_document(docs, 0.2, seed=3)[1]] == [d.name for d in val]  # deterministic
    assert [d.name for d in split_by_document(docs, 0.2, seed=4)[1]] != [d.name for d in val]
    with pytest.raises(DataError, match="at least 2"):
        split_by_document(docs[:1], 0.2, seed=0)
    with pytest.raises(ConfigError, match="val_fraction"):
        split_by_document(docs, 1.5, seed=0)


def test_paragraph_documents_cut_at_blank_lines():
    text = "\n\n".join(f"paragraph {i} " + "w" * 40 for i in range(10))
    parts = paragraph_documents([Document("book.txt", text)], max_chars=120)
    assert len(parts) == 5 and all(len(p.text) <= 120 for p in parts)
    assert "\n\n".join(p.text for p in parts) == text  # nothing lost or reordered
    assert parts[0].name == "book.txt#0"


def test_corpus_errors_name_the_file(tmp_path):
    (tmp_path / "good.txt").write_text("Some real text.\n")
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(DataError, match="empty.txt is empty"):
        read_corpus(tmp_path)
    (tmp_path / "empty.txt").unlink()
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(DataError, match="latin1.txt is not UTF-8"):
        read_corpus(tmp_path)
    (tmp_path / "latin1.txt").unlink()
    (tmp_path / "recs.jsonl").write_text('{"text": "one"}\n{"body": "two"}\n')
    with pytest.raises(DataError, match=r"recs.jsonl:2: no string field 'text'"):
        read_corpus(tmp_path)
    (tmp_path / "recs.jsonl").write_text('{"text": "one"}\n\n{"text": "two"}\n')
    assert [d.name for d in read_corpus(tmp_path)] == ["good.txt", "recs.jsonl:1", "recs.jsonl:3"]
    with pytest.raises(DataError, match="not found"):
        read_corpus(tmp_path / "missing")


def test_shared_corpus_is_read_whole_books_without_boilerplate(shared_data):
    docs = read_corpus(shared_data / "text")
    assert len(docs) == 26  # 25 Gutenberg files + tinyshakespeare
    assert not any("*** START OF" in d.text or "*** END OF" in d.text for d in docs)
    assert not any("Project Gutenberg-tm License" in d.text for d in docs)
    train, val = split_by_document(docs, 0.1, seed=0)
    assert {d.name for d in train}.isdisjoint({d.name for d in val}) and len(val) >= 1


def test_prepare_text_data_caches_and_reuses_the_tokenizer(tmp_path, book_text):
    src = tmp_path / "corpus"
    src.mkdir()
    for i in range(4):
        (src / f"part{i}.txt").write_text(book_text[i * 12_000 : (i + 1) * 12_000])
    dcfg = DataSection(source=str(src), vocab_size=320, val_fraction=0.25)
    a = prepare_text_data(dcfg, tmp_path / "run", log=lambda s: None)
    assert (tmp_path / "run" / "tokenizer.json").is_file()
    assert len(list((tmp_path / "run" / "data").glob("tokens-*.npz"))) == 1
    assert set(a.train_docs).isdisjoint(a.val_docs) and len(a.train_docs) + len(a.val_docs) == 4
    b = prepare_text_data(dcfg, tmp_path / "run", log=lambda s: pytest.fail(f"re-did work: {s}"))
    assert np.array_equal(a.train_stream, b.train_stream) and np.array_equal(a.val_stream, b.val_stream)
    val = b.val_tensors(32)
    assert int((val["labels"] != -100).sum()) == len(b.val_stream) - 1
    capped = b.val_tensors(32, max_tokens=64)
    assert len(capped["input_ids"]) == 2
