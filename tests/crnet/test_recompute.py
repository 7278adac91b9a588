"""CR-Net recomputation: exact gradients (float64) against plain autograd and checkpointing; less memory."""

import pytest
import torch

from pretrainkit.systems.crnet.model import LlamaConfig, LlamaLM
from pretrainkit.systems.crnet.recompute import kept_layers, peak_memory


def run(recompute, dtype=torch.float64, n_layers=8, every=3, **kw):
    """Loss and every parameter's gradient of one step; betas set to mixed signs so the inverse is exercised."""
    torch.manual_seed(0)
    cfg = LlamaConfig.preset("tiny", method="crnet", crnet_init="cola", n_layers=n_layers, recompute=recompute,
                             checkpoint_every=every, **kw)
    m = LlamaLM(cfg).to(dtype)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("beta"):
                p.fill_(float(torch.empty(()).uniform_(0.4, 1.4, generator=g)) * (-1) ** int(torch.rand((), generator=g) < 0.3))
    x = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(1))
    _, loss = m(x, x)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}


def assert_same(a, b, rtol):
    assert torch.equal(a[0], b[0]) or torch.allclose(a[0], b[0], rtol=rtol, atol=0)
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=rtol, atol=rtol * b[1][name].abs().max().item(),
                                   msg=name)


def test_kept_layers():
    assert kept_layers(8, 4) == [3, 7]
    assert kept_layers(16, 8) == [7, 15]
    assert kept_layers(4, 8) == [3]
    assert kept_layers(8, 1) == [1, 2, 3, 4, 5, 6, 7]  # never layer 1: it is recomputed from its input
    assert kept_layers(1, 8) == []


def test_crnet_recompute_gradients_equal_autograd_float64():
    ref = run("none")
    assert_same(run("crnet"), ref, rtol=1e-9)
    assert_same(run("checkpoint"), ref, rtol=1e-9)
    assert_same(run("crnet", every=1), ref, rtol=1e-9)  # every output kept: no inversion at all
    assert_same(run("crnet", every=100), ref, rtol=1e-9)  # only the last kept: the longest inverse chain


def test_crnet_recompute_with_low_rank_anchor_and_float32():
    assert_same(run("crnet", n_layers=4, crnet_anchor="lowrank"), run("none", n_layers=4, crnet_anchor="lowrank"),
                rtol=1e-9)
    assert_same(run("crnet", dtype=torch.float32), run("none", dtype=torch.float32), rtol=2e-4)


def test_recompute_trains_like_plain_autograd():
    torch.manual_seed(0)
    x = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(1))
    losses = {}
    for rec in ("none", "crnet"):
        torch.manual_seed(0)
        m = LlamaLM(LlamaConfig.preset("tiny", method="crnet", recompute=rec, checkpoint_every=2)).double()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        for _ in range(5):
            loss = m(x, x)[1]
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses[rec] = loss.item()
    assert losses["crnet"] == pytest.approx(losses["none"], rel=1e-9)


def test_crnet_recompute_stores_less_activation_memory():
    x = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(1))
    peaks = {}
    for rec in ("none", "checkpoint", "crnet"):
        torch.manual_seed(0)
        m = LlamaLM(LlamaConfig.preset("tiny", method="crnet", n_layers=8, recompute=rec, checkpoint_every=4))
        peaks[rec] = peak_memory(m, x)
        assert all(p.grad is None for p in m.parameters())
    assert peaks["crnet"] < peaks["checkpoint"] < peaks["none"]
    assert peaks["crnet"] < 0.6 * peaks["none"]
