"""One atomic-write helper, one file hash, one device/autocast resolver, and metric-named model selection."""

import hashlib

import numpy as np
import pytest
import torch

from pretrainkit.adapt.probe import HeadConfig, accuracy, fit_classifier, fit_restarts, macro_f1, predict
from pretrainkit.core import checkpoint
from pretrainkit.core.device import autocast, resolve_device, uses_bf16
from pretrainkit.core.io import atomic_write, atomic_write_text, file_sha256
from pretrainkit.errors import ConfigError


def test_atomic_write_replaces_whole_or_keeps_the_old_file(tmp_path):
    p = tmp_path / "f.json"
    atomic_write_text(p, "old")

    def fails(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(p, fails)
    assert p.read_text() == "old" and sorted(x.name for x in tmp_path.iterdir()) == ["f.json"]
    atomic_write(p, lambda tmp: tmp.write_bytes(b"new"))
    assert p.read_text() == "new" and sorted(x.name for x in tmp_path.iterdir()) == ["f.json"]
    assert checkpoint.atomic_write_text is atomic_write_text  # the old import path is the same helper


def test_file_sha256_is_sha256_of_the_bytes(tmp_path):
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)  # several read chunks
    (tmp_path / "b").write_bytes(data)
    assert file_sha256(tmp_path / "b") == hashlib.sha256(data).hexdigest()


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device(name)
    with pytest.raises(ConfigError, match="auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")


def test_autocast_follows_precision_and_device():
    x = torch.randn(4, 4)
    with autocast(torch.device("cpu"), "auto"):
        assert (x @ x).dtype == torch.float32
    with autocast(torch.device("cpu"), "bf16"):
        assert (x @ x).dtype == torch.bfloat16
    assert uses_bf16(torch.device("cuda"), "auto") and not uses_bf16(torch.device("cuda"), "fp32")
    with pytest.raises(ConfigError, match="precision must be one of"):
        uses_bf16(torch.device("cpu"), "fp16")


def _imbalanced(seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.zeros(90, dtype=torch.long), torch.ones(10, dtype=torch.long)])
    x = torch.randn(100, 3, generator=g) + 0.6 * y[:, None].float()  # overlapping classes: acc != macro-F1
    return x, y


def test_model_selection_uses_the_named_metric():
    x, y = _imbalanced()
    cfg = HeadConfig(epochs=12, lr=0.05, batch_size=16)
    assert cfg.metric == "accuracy"
    results = {}
    for metric, fn in (("accuracy", accuracy), ("macro_f1", macro_f1)):
        torch.manual_seed(0)
        head, score = fit_classifier(
            torch.nn.Linear(3, 2),
            x[:60],
            y[:60],
            x[60:],
            y[60:],
            HeadConfig(epochs=12, lr=0.05, batch_size=16, metric=metric),
            seed=0,
        )
        pred = predict(head, x[60:])
        assert score == fn(pred, y[60:].numpy())
        results[metric] = (accuracy(pred, y[60:].numpy()), macro_f1(pred, y[60:].numpy()))
    assert results["accuracy"] != results["macro_f1"]  # the metric changed which epoch was kept
    torch.manual_seed(0)
    _, acc_default = fit_classifier(torch.nn.Linear(3, 2), x[:60], y[:60], x[60:], y[60:], cfg, seed=0)
    assert acc_default == results["accuracy"][0]
    _, best, _ = fit_restarts(
        lambda: torch.nn.Linear(3, 2),
        x[:60],
        y[:60],
        x[60:],
        y[60:],
        HeadConfig(epochs=5, lr=0.05, batch_size=16, metric="macro_f1"),
        [0, 1],
    )
    assert 0.0 <= best <= 1.0
    with pytest.raises(ConfigError, match="unknown selection metric 'auc'; allowed: accuracy, macro_f1"):
        HeadConfig(metric="auc")
