"""LoRA: starts equal to the base model, computes W x + (alpha/r) B A x, trains only A and B."""

import pytest
import torch
from torch import nn

from pretrainkit.adapt import LoRALinear, inject
from pretrainkit.errors import ConfigError


def test_fresh_lora_equals_base_model(make_model, x):
    base, m = make_model(), make_model()
    inject(m, "lora", ["attn.q", "attn.v", "mlp.fc", "mlp.proj"], rank=4)
    torch.testing.assert_close(m(x), base(x), rtol=0, atol=0)


def test_lora_formula_and_default_alpha():
    torch.manual_seed(0)
    lin = nn.Linear(6, 5)
    layer = LoRALinear(lin, rank=2, alpha=3.0)
    assert layer.lora_A.shape == (2, 6) and layer.lora_B.shape == (5, 2) and not layer.lora_B.any()
    with torch.no_grad():
        layer.lora_B.normal_()
    inp = torch.randn(4, 6)
    expect = lin(inp) + 1.5 * inp @ layer.lora_A.T @ layer.lora_B.T
    torch.testing.assert_close(layer(inp), expect)
    assert LoRALinear(nn.Linear(6, 5), rank=4).scale == 1.0  # alpha defaults to rank


def test_only_a_and_b_train(make_model, x):
    m = make_model()
    inject(m, "lora", ["attn.q"], rank=2)
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    before = m(x).detach()
    for _ in range(2):
        opt.zero_grad()
        m(x).pow(2).mean().backward()
        opt.step()
    assert not torch.allclose(m(x), before)
    for n, p in m.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]) and p.grad is None, n


def test_dropout_only_in_training():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(6, 5), rank=2, dropout=0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    inp = torch.randn(16, 6)
    layer.train()
    assert not torch.equal(layer(inp), layer(inp))
    layer.eval()
    assert torch.equal(layer(inp), layer(inp))


@pytest.mark.parametrize("bad", [{"rank": 0}, {"dropout": 1.0}])
def test_bad_options(bad):
    with pytest.raises(ConfigError):
        LoRALinear(nn.Linear(3, 3), **bad)
