"""Bi-VLDoc test fixtures: a tiny model configuration and a few real FUNSD pages, encoded once per module."""

import os
from pathlib import Path

import pytest

from pretrainkit.systems.bivldoc.model import preset

SHARED = Path(
    os.environ.get("PRETRAINKIT_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")
)
TINY = dict(
    d_model=32,
    ffn=64,
    n_heads=2,
    text_layers=1,
    fusion_layers=1,
    image_size=64,
    cnn_channels=(8, 8, 16, 16),
    max_tokens=64,
    max_segments=16,
)


def tiny_config(vocab_size: int, **kw):
    return preset("cpu", vocab_size=vocab_size, **{**TINY, **kw})


@pytest.fixture(scope="module")
def tiny():
    return tiny_config


@pytest.fixture(scope="module")
def funsd_few():
    from pretrainkit.systems.bivldoc.data import load_funsd

    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    return load_funsd(SHARED, "train", limit=6)


@pytest.fixture(scope="module")
def encoded(funsd_few):
    from pretrainkit.systems.bivldoc.encoding import encode_pages, train_tokenizer

    tok = train_tokenizer(funsd_few, 400)
    cfg = tiny_config(tok.get_vocab_size())
    enc, _ = encode_pages(funsd_few, tok, cfg, "test")
    return tok, cfg, enc
