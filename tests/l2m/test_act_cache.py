"""KV-cached autoregressive acting gives the same actions as A full passes, also with prefixes and modulators."""

import pytest
import torch

from pretrainkit.adapt import ModulationPool, inject
from pretrainkit.systems.l2m.model import DecisionTransformer, DTConfig


def _inputs(B=12, K=4, S=7, A=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, K, dtype=torch.bool)
    mask[: B // 2, :2] = False  # early-episode windows with left padding
    return (
        torch.randn(B, K, S, generator=g),
        torch.randn(B, K, generator=g),
        torch.rand(B, K, A, generator=g) * 2 - 1,
        torch.arange(K).repeat(B, 1),
        mask,
    )


@pytest.mark.parametrize("rtg", [True, False])
def test_cached_act_matches_full_passes(rtg):
    torch.manual_seed(0)
    m = DecisionTransformer(
        DTConfig(
            state_dim=7,
            act_dim=3,
            d_model=32,
            n_layer=2,
            n_head=4,
            context=4,
            max_timestep=20,
            condition_on_rtg=rtg,
        )
    ).eval()
    s, r, a, t, mask = _inputs()
    prefix = torch.randn(12, 2, 32)
    for p in (None, prefix):
        for msk in (mask, None):
            assert torch.equal(
                m.act(s, r, a, t, msk, prefix=p), m.act(s, r, a, t, msk, prefix=p, use_cache=False)
            )
    # the prefix is really used (an untrained head's argmax barely moves, so compare logits)
    assert not torch.allclose(m(s, a, r, t, mask, prefix=prefix), m(s, a, r, t, mask))
    assert m(s, a, r, t, mask, prefix=prefix).shape == m(s, a, r, t, mask).shape


def test_cached_act_with_per_sample_modulators():
    torch.manual_seed(0)
    m = DecisionTransformer(
        DTConfig(state_dim=7, act_dim=3, d_model=32, n_layer=2, n_head=4, context=4, max_timestep=20)
    ).eval()
    pool = ModulationPool(3, 32, rank=2)
    inject(m, "modulation", ["attn.q_proj", "attn.v_proj"], pool=pool)
    inject(m, "modulation", ["mlp.fc1"], pool=pool, placement="output")
    with torch.no_grad():
        for p in pool.lora_B.values():
            p.normal_(0, 0.5)
    s, r, a, t, mask = _inputs()
    idx = torch.arange(12) % 4 - 1  # -1 (none), 0, 1, 2
    with pool.using(idx):
        cached, full = m.act(s, r, a, t, mask), m.act(s, r, a, t, mask, use_cache=False)
    assert torch.equal(cached, full)
