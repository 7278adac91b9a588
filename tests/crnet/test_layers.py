"""CR-Net projection and the baseline projections: known outputs, init, rank checks."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pretrainkit.errors import ConfigError
from pretrainkit.systems.crnet.layers import (
    PROJECTIONS,
    Chain,
    ColaLinear,
    CRNetLinear,
    LowRankLinear,
    check_rank,
    scratch_lora,
)
from pretrainkit.systems.crnet.model import LlamaConfig, LlamaLM


def test_crnet_projection_equation_with_signed_beta():
    torch.manual_seed(0)
    p = CRNetLinear(8, 6, 3, init="cola")
    x, prev = torch.randn(2, 5, 8), torch.randn(2, 5, 6)
    for beta in (0.7, -1.3, 0.0):
        with torch.no_grad():
            p.beta.fill_(beta)
        sign = -1.0 if beta < 0 else 1.0
        expected = sign * (abs(beta) + 1e-6) * prev + x @ p.A @ p.B
        torch.testing.assert_close(p(x, prev), expected)
    assert p.coef().item() == pytest.approx(1e-6)  # beta = 0 keeps a non-zero coefficient


def test_crnet_inits():
    torch.manual_seed(0)
    z = CRNetLinear(256, 512, 32, init="zero_b", beta_init=0.5)
    assert torch.count_nonzero(z.B) == 0 and z.beta.item() == 0.5
    assert z.A.std().item() == pytest.approx(256**-0.5, rel=0.05)
    c = CRNetLinear(256, 512, 32, init="cola")
    std = 32**-0.25 * (256 + 512) ** -0.25
    assert c.A.std().item() == pytest.approx(std, rel=0.05) and c.B.std().item() == pytest.approx(
        std, rel=0.05
    )
    with pytest.raises(ConfigError, match="crnet_init"):
        CRNetLinear(4, 4, 2, init="xavier")


def test_baseline_projections_known_outputs():
    torch.manual_seed(0)
    x = torch.randn(3, 10)
    lr = LowRankLinear(10, 7, 4)
    torch.testing.assert_close(lr(x), x @ lr.A @ lr.B)
    cola = ColaLinear(10, 7, 4)
    torch.testing.assert_close(cola(x), F.silu(x @ cola.A) @ cola.B)
    lora = scratch_lora(10, 7, 4, alpha=32.0, dropout=0.0, init_std=0.02)
    w = lora.base.weight
    assert not w.requires_grad and lora.lora_A.requires_grad and lora.lora_B.requires_grad
    torch.testing.assert_close(lora(x), F.linear(x, w))  # B = 0 at start
    with torch.no_grad():
        lora.lora_B.normal_()
    before = lora(x)
    torch.testing.assert_close(before, F.linear(x, w) + 8.0 * (x @ lora.lora_A @ lora.lora_B))
    lora.merge_and_reset()
    torch.testing.assert_close(lora(x), before, rtol=1e-5, atol=1e-5)  # merge keeps the function
    assert torch.count_nonzero(lora.lora_B) == 0


def test_rank_checks():
    assert check_rank(16, 64, 176, "x") == 16
    with pytest.raises(ConfigError, match=r"rank 65 for layer 2 must be an integer in 1\.\.64"):
        LlamaConfig.preset("tiny", method="crnet", rank=65)
    with pytest.raises(ConfigError, match=r"rank 9 for layer 2 down_proj must be an integer in 1\.\.8"):
        check_rank(9, 16, 8, "layer 2 down_proj")
    for bad in (0, -3, 2.5):
        with pytest.raises(ConfigError):
            LlamaConfig.preset("tiny", method="lowrank", rank=bad)
    with pytest.raises(ConfigError, match="4 layers"):
        LlamaConfig.preset("tiny", method="cola", rank=[8, 8])
    with pytest.raises(ConfigError, match="needs a rank"):
        LlamaConfig.preset("tiny", method="crnet", rank=None)


def test_per_layer_ranks_and_anchor():
    m = LlamaLM(LlamaConfig.preset("tiny", method="crnet", rank=[None, 8, 24, 4]))
    first = m.layers[0].projections()
    assert all(type(p) is nn.Linear for p in first.values())  # layer 1: full-rank anchor
    assert [m.layers[i].self_attn.q_proj.A.shape[1] for i in (1, 2, 3)] == [8, 24, 4]
    assert m.layers[2].mlp.down_proj.A.shape == (176, 24)
    ablation = LlamaLM(LlamaConfig.preset("tiny", method="crnet", crnet_anchor="lowrank"))
    assert all(isinstance(p, LowRankLinear) for p in ablation.layers[0].projections().values())


def test_chain_threads_outputs_through_the_stack():
    """At init (B = 0, beta = 1) every later layer reproduces layer 1's projections times coef^(l-1)."""
    torch.manual_seed(0)
    m = LlamaLM(LlamaConfig.preset("tiny", method="crnet", crnet_init="zero_b")).double()
    x = m.embed_tokens(torch.randint(0, 512, (2, 9)))
    rope = m.rope(9, x.dtype)
    prev, outs = {}, []
    for block in m.layers:
        x, prev = block(x, rope, prev)
        outs.append(prev)
    assert set(outs[0]) == set(PROJECTIONS)
    for layer, out in enumerate(outs[1:], start=1):
        for name in PROJECTIONS:
            torch.testing.assert_close(out[name], (1 + 1e-6) ** layer * outs[0][name])
    with pytest.raises(RuntimeError, match="previous layer"):
        Chain({})("q_proj", m.layers[1].self_attn.q_proj, x)
