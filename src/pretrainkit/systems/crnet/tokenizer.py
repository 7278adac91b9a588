"""A byte-level BPE tokenizer trained locally with Hugging Face ``tokenizers`` and saved with the run.

Byte-level means every UTF-8 string encodes (no unknown token) and decodes back to exactly the same string.
One special token, ``<|endoftext|>`` (id 0), separates packed documents. The T5 tokenizer of the papers is not
available offline, so absolute perplexities are only comparable inside one run of this tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from pretrainkit.errors import ConfigError, DataError

EOS = "<|endoftext|>"
MIN_VOCAB = 256 + 1  # the 256 byte symbols plus EOS


class TextTokenizer:
    """Thin wrapper over ``tokenizers.Tokenizer``: encode, decode, the EOS id, save to / load from tokenizer.json."""

    def __init__(self, tok):
        self.tok = tok
        eos = tok.token_to_id(EOS)
        if eos is None:
            raise DataError(f"tokenizer has no {EOS} token; train one with pretrainkit or add it")
        self.eos_id: int = eos

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> TextTokenizer:
        """Learn ``vocab_size`` ids (bytes + merges + EOS) from ``texts``; deterministic for the same texts."""
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB:
            raise ConfigError(
                f"data.vocab_size must be an integer >= {MIN_VOCAB} (256 bytes + EOS), got {vocab_size!r}"
            )
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        # No prefix space: decode(encode(s)) == s exactly, which the packing and the tests rely on.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        """Read a ``tokenizer.json`` (ours, or any HF fast tokenizer that has the EOS token)."""
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise DataError(f"tokenizer file not found: {path}")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - the Rust error type is not importable; any failure = bad file
            raise DataError(
                f"{path} is not a tokenizers JSON file ({str(e).splitlines()[0][:120]})"
            ) from None
        return cls(tok)

    def save(self, path: str | Path) -> Path:
        """Write ``tokenizer.json`` (atomically, so a killed run never leaves half a file)."""
        from pretrainkit.core.checkpoint import atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, self.tok.to_str())
        return path

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode many documents at once (the Rust side may use several threads)."""
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special)
