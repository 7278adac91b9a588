"""(IA)^3: a per-output scale, ones at init, the only thing that trains; folds into W and b."""

import torch
from torch import nn

from pretrainkit.adapt import IA3Linear, inject, merge


def test_fresh_ia3_equals_base_model(make_model, x):
    base, m = make_model(), make_model()
    inject(m, "ia3", ["attn.*", "mlp.fc"])
    torch.testing.assert_close(m(x), base(x), rtol=0, atol=0)


def test_scales_outputs_per_feature():
    lin = nn.Linear(4, 3)
    layer = IA3Linear(lin)
    with torch.no_grad():
        layer.ia3_scale.copy_(torch.tensor([2.0, 0.0, -1.0]))
    inp = torch.randn(7, 4)
    torch.testing.assert_close(layer(inp), lin(inp) * torch.tensor([2.0, 0.0, -1.0]))


def test_only_the_vector_trains(make_model, x):
    m = make_model()
    inject(m, "ia3", ["mlp.fc"])
    assert [n for n, p in m.named_parameters() if p.requires_grad] == [
        "blocks.0.mlp.fc.ia3_scale",
        "blocks.1.mlp.fc.ia3_scale",
    ]
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    opt.zero_grad()
    m(x).pow(2).mean().backward()
    opt.step()
    assert not torch.equal(m.blocks[0].mlp.fc.ia3_scale, torch.ones(16))
    assert all(torch.equal(p, frozen[n]) for n, p in m.named_parameters() if n in frozen)


def test_merge_without_bias():
    lin = nn.Linear(4, 3, bias=False)
    model = nn.Sequential(lin)
    inject(model, "ia3", ["0"])
    with torch.no_grad():
        model[0].ia3_scale.uniform_(0.5, 2.0)
    inp = torch.randn(5, 4)
    before = model(inp)
    merge(model)
    assert type(model[0]) is nn.Linear and model[0].bias is None
    torch.testing.assert_close(model(inp), before, rtol=0, atol=1e-6)
