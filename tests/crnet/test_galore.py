"""GaLore-AdamW: equals AdamW without projection, known first step, exact subspace, resume, smaller state."""

import io

import pytest
import torch

from pretrainkit.errors import ConfigError
from pretrainkit.systems.crnet.galore import GaLoreAdamW, galore_param_groups
from pretrainkit.systems.crnet.model import LlamaConfig, LlamaLM


def grads_for(params, step):
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


def make_params(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(12, 8, generator=g, dtype=dtype),
        torch.randn(6, 10, generator=g, dtype=dtype),
        torch.randn(5, generator=g, dtype=dtype),
    ]


def test_full_rank_matches_adamw():
    ours, ref = make_params(), make_params()
    opt = GaLoreAdamW(
        [{"params": ours, "galore": True}], lr=0.01, weight_decay=0.1, rank=8, scale=1.0, update_proj_gap=2
    )
    torch_opt = torch.optim.AdamW(ref, lr=0.01, weight_decay=0.1)
    for step in range(5):
        grads_for(ours, step)
        grads_for(ref, step)
        opt.step()
        torch_opt.step()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(12, 8), (6, 10)])
def test_first_step_known_answer(shape):
    p = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    p0 = p.clone()
    p.grad = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    GaLoreAdamW([{"params": [p], "galore": True}], lr=0.1, rank=3, scale=0.25, eps=1e-8).step()
    U, _, Vh = torch.linalg.svd(p.grad, full_matrices=False)
    if shape[0] >= shape[1]:
        r = p.grad @ Vh[:3].T
        back = (r / (r.abs() + 1e-8)) @ Vh[:3]  # Adam's first step is m / (sqrt(v) + eps) = g / (|g| + eps)
    else:
        r = U[:, :3].T @ p.grad
        back = U[:, :3] @ (r / (r.abs() + 1e-8))
    torch.testing.assert_close(p, p0 - 0.1 * 0.25 * back)


def test_projection_is_exact_for_a_gradient_inside_the_subspace():
    g = torch.Generator().manual_seed(3)
    for m, n in [(20, 9), (7, 15)]:
        G = torch.randn(m, 3, generator=g, dtype=torch.float64) @ torch.randn(
            3, n, generator=g, dtype=torch.float64
        )
        proj = GaLoreAdamW._new_projector(G, 3)
        R = GaLoreAdamW.project(G, proj)
        assert R.shape == ((m, 3) if m >= n else (3, n))
        torch.testing.assert_close(GaLoreAdamW.project_back(R, proj, G.shape), G)


def test_state_dict_round_trip_resumes_exactly():
    def build(params):
        return GaLoreAdamW(
            [{"params": params[:2], "galore": True}, {"params": params[2:]}],
            lr=0.01,
            rank=2,
            update_proj_gap=2,
            scale=0.5,
            weight_decay=0.01,
        )

    a = make_params(torch.float32)
    opt_a = build(a)
    for step in range(3):
        grads_for(a, step)
        opt_a.step()
    buf = io.BytesIO()
    torch.save(opt_a.state_dict(), buf)  # through bytes, as the trainer's checkpoint does
    buf.seek(0)
    b = [p.clone() for p in a]
    opt_b = build(b)
    opt_b.load_state_dict(torch.load(buf, weights_only=True))
    for step in range(3, 7):  # crosses a projector refresh at step 4
        grads_for(a, step)
        grads_for(b, step)
        opt_a.step()
        opt_b.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_low_rank_state_is_smaller_than_adamw_and_model_trains():
    torch.manual_seed(0)
    m = LlamaLM(LlamaConfig.preset("tiny", vocab_size=64))
    groups = galore_param_groups(m)
    assert len(groups[0]["params"]) == 7 * 4 and len(groups[1]["params"]) == 2 * 4 + 3
    opt = GaLoreAdamW(groups, lr=1e-2, rank=8, update_proj_gap=5, scale=0.25)
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    first = None
    for _ in range(10):
        loss = m(x, x)[1]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first
    adam = torch.optim.AdamW(m.parameters())
    m(x, x)[1].backward()
    adam.step()
    adam_bytes = sum(v.numel() * v.element_size() for s in adam.state.values() for v in s.values())
    low_bytes = sum(
        v.numel() * v.element_size()
        for p in groups[0]["params"]
        for v in opt.state[p].values()
        if torch.is_tensor(v)
    )
    full_bytes = sum(2 * p.numel() * p.element_size() for p in groups[0]["params"])
    assert opt.state_bytes() < adam_bytes
    assert low_bytes < 0.5 * full_bytes


def test_bad_arguments():
    with pytest.raises(ConfigError, match="rank"):
        GaLoreAdamW(make_params(), rank=0)
    with pytest.raises(ConfigError, match="betas"):
        GaLoreAdamW(make_params(), betas=(0.9, 1.0))
