"""to_cross_layer: CR-Net's cross-layer low-rank form applied to any model's stack of blocks."""

import copy
import gc

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pretrainkit.adapt.cross_layer import CrossLayerLinear, to_cross_layer
from pretrainkit.errors import ConfigError

PROJ = ["attn.qkv", "mlp.fc", "mlp.out"]


@pytest.fixture(autouse=True)
def _no_cyclic_garbage_left():
    # pytest.raises keeps tracebacks whose frames hold models: cyclic garbage that a later test's CPU memory
    # profile (crnet's peak_memory counts frees of older tensors too) would see collected mid-measurement.
    yield
    gc.collect()


class Attn(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)

    def forward(self, h):
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class MLP(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.fc = nn.Linear(d, 2 * d)
        self.out = nn.Linear(2 * d, d, bias=False)

    def forward(self, h):
        return self.out(F.gelu(self.fc(h)))


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.attn = Attn(d)
        self.mlp = MLP(d)

    def forward(self, x):
        x = x + self.attn(self.norm(x))
        return x + self.mlp(x)


class Toy(nn.Module):
    """(B, T, 4) -> (B, T, 3) through 3 pre-LN-ish blocks."""

    def __init__(self, d: int = 8, n_blocks: int = 3):
        super().__init__()
        self.embed = nn.Linear(4, d)
        self.blocks = nn.ModuleList([Block(d) for _ in range(n_blocks)])
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        h = self.embed(x)
        for b in self.blocks:
            h = b(h)
        return self.head(h)


def _toy(seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    return Toy()


def _x(seed: int = 1, shape=(5, 6)) -> torch.Tensor:
    return torch.randn(*shape, 4, generator=torch.Generator().manual_seed(seed))


def _record(model: nn.Module, names) -> dict:
    """Forward hooks that keep every block's output of each named projection: {(block, name): tensor}."""
    out = {}
    for i, b in enumerate(model.blocks):
        for n in names:
            b.get_submodule(n).register_forward_hook(lambda m, a, y, key=(i, n): out.__setitem__(key, y))
    return out


def test_block_zero_is_unchanged_and_later_blocks_are_cross_layer():
    ref, model = _toy(), _toy()
    to_cross_layer(model, "blocks", PROJ, rank=2)
    for n in PROJ:
        a, b = model.blocks[0].get_submodule(n), ref.blocks[0].get_submodule(n)
        assert type(a) is nn.Linear
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
        for i in (1, 2):
            assert isinstance(model.blocks[i].get_submodule(n), CrossLayerLinear)
    # Everything outside the chosen projections keeps its weights.
    kept = {k: v for k, v in ref.state_dict().items() if not any(f".{n}." in k for n in PROJ)}
    kept.update({k: v for k, v in ref.state_dict().items() if k.startswith("blocks.0.")})
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in kept.items())


def test_zero_b_beta_one_repeats_the_previous_block_exactly():
    # B = 0, zero bias, beta = 1 and eps = 0: Y_l = 1 * Y_{l-1} + X A 0 + 0 = Y_{l-1}, bit for bit.
    model = _toy()
    to_cross_layer(model, "blocks", PROJ, rank=2, init="zero_b", beta_init=1.0, eps=0.0)
    seen = _record(model, PROJ)
    model(_x())
    for n in PROJ:
        assert torch.equal(seen[(1, n)], seen[(0, n)]) and torch.equal(seen[(2, n)], seen[(1, n)])
    # The default eps keeps the chain coefficient off zero: Y_l = (1 + eps) Y_{l-1}.
    model = _toy()
    to_cross_layer(model, "blocks", PROJ, rank=2)
    seen = _record(model, PROJ)
    model(_x())
    torch.testing.assert_close(seen[(2, "mlp.fc")], (1 + 1e-6) ** 2 * seen[(0, "mlp.fc")])


def test_output_follows_the_formula_with_cola_init():
    model = _toy()
    to_cross_layer(model, "blocks", PROJ, rank=3, init="cola", beta_init=0.5)
    seen = {}
    for i in (0, 1):
        model.blocks[i].mlp.fc.register_forward_hook(lambda m, a, y, i=i: seen.__setitem__(i, (a[0], y)))
    model(_x())
    p = model.blocks[1].mlp.fc
    x1, y1 = seen[1]
    want = (0.5 + 1e-6) * seen[0][1] + x1 @ p.A @ p.B + p.bias
    torch.testing.assert_close(y1, want)
    assert p.B.abs().sum() > 0


def test_gradients_reach_beta_a_b_and_the_previous_block():
    model = _toy()
    to_cross_layer(model, "blocks", PROJ, rank=2, init="cola")
    model(_x()).square().sum().backward()
    for i in (1, 2):
        for n in PROJ:
            p = model.blocks[i].get_submodule(n)
            for t in (p.A, p.B, p.beta):
                assert t.grad is not None and t.grad.abs().sum() > 0, (i, n)
    # Block 0's projection gets gradient through the chain too: compare with a model whose block 1 and 2
    # projections ignore Y_{l-1} (beta -> 0 is not allowed, so cut the graph by detaching instead).
    g_chain = model.blocks[0].mlp.out.weight.grad.clone()
    cut = _toy()
    to_cross_layer(cut, "blocks", PROJ, rank=2, init="cola")
    cut.load_state_dict(model.state_dict())
    cut.blocks[1].mlp.out.chain = _Detaching(cut.blocks[1].mlp.out.chain)
    cut(_x()).square().sum().backward()
    assert not torch.allclose(cut.blocks[0].mlp.out.weight.grad, g_chain)


class _Detaching:
    """A chain view whose reads are detached: block 1 no longer passes gradient back to block 0."""

    def __init__(self, chain):
        self.chain = chain

    def take(self, *a):
        return self.chain.take(*a).detach()

    def put(self, *a):
        self.chain.put(*a)


def test_chain_resets_between_forwards_and_any_batch_shape_works():
    model = _toy()
    to_cross_layer(model, "blocks", PROJ, rank=2, init="cola")
    a, b = _x(1), _x(2, shape=(3, 7))
    ya, yb = model(a), model(b)
    fresh = copy.deepcopy(model)  # its own chain: deepcopy must not share the original's
    assert fresh.blocks[1].mlp.fc.chain is not model.blocks[1].mlp.fc.chain
    assert torch.equal(fresh(b), yb) and torch.equal(copy.deepcopy(model)(a), ya)
    assert model.blocks[1].mlp.fc.chain.latest == {}  # nothing outlives a pass
    # 2-d and 4-d inputs: projections are token-wise.
    flat = _x(3, shape=(6,))
    assert model(flat).shape == (6, 3)


def test_parameter_counts_match_a_hand_count():
    model = _toy()
    d, r = 8, 2
    info = to_cross_layer(model, "blocks", PROJ, rank=r)
    dense = {"attn.qkv": d * 3 * d + 3 * d, "mlp.fc": d * 2 * d + 2 * d, "mlp.out": 2 * d * d}
    low = {
        "attn.qkv": d * r + r * 3 * d + 1 + 3 * d,
        "mlp.fc": d * r + r * 2 * d + 1 + 2 * d,
        "mlp.out": 2 * d * r + r * d + 1,
    }
    for n in PROJ:
        c = info.per_projection[n]
        assert (c.before, c.after) == (3 * dense[n], dense[n] + 2 * low[n])
        assert c.trainable_after == c.after
    rest = 4 * d + d + 3 * (2 * d) + d * 3 + 3  # embed, 3 LayerNorms, head
    assert info.params_before == rest + sum(3 * v for v in dense.values())
    assert info.params_after == rest + sum(dense[n] + 2 * low[n] for n in PROJ)
    assert info.params_after == sum(p.numel() for p in model.parameters()) == info.trainable_after
    assert info.params_before == info.trainable_before and str(info.params_after) in info.summary()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"blocks": "layers"}, "no sub-module 'layers'"),
        ({"blocks": "head"}, "ModuleList"),
        ({"projections": ["attn.q"]}, "no sub-module 'attn.q'"),
        ({"projections": ["norm"]}, "not a plain nn.Linear"),
        ({"projections": []}, "distinct non-empty"),
        ({"projections": ["mlp.fc", "mlp.fc"]}, "distinct non-empty"),
        ({"rank": 0}, "rank 0"),
        ({"rank": 9}, "1..8"),
        ({"rank": 2.5}, "rank 2.5"),
        ({"init": "xavier"}, "unknown cross-layer init"),
    ],
)
def test_bad_arguments_are_one_line_config_errors_and_change_nothing(kwargs, match):
    model, ref = _toy(), _toy()
    args = {"blocks": "blocks", "projections": PROJ, "rank": 2, **kwargs}
    with pytest.raises(ConfigError, match=match) as e:
        to_cross_layer(model, **args)
    assert "\n" not in str(e.value)
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values(), strict=True)
    )


def test_width_mismatch_and_out_of_order_calls_are_config_errors():
    model = _toy()
    model.blocks[2].mlp.fc = nn.Linear(8, 12)
    model.blocks[2].mlp.out = nn.Linear(12, 8)
    with pytest.raises(ConfigError, match="12 outputs"):
        to_cross_layer(model, "blocks", ["mlp.fc"], rank=2)
    model = _toy()
    to_cross_layer(model, "blocks", PROJ, rank=2)
    with pytest.raises(ConfigError, match="needs block 0's 'attn.qkv' output"):
        model.blocks[1](torch.randn(2, 3, 8))
    model.blocks[0](torch.randn(2, 3, 8))
    with pytest.raises(ConfigError, match="same token shape"):
        model.blocks[1](torch.randn(2, 4, 8))
    with pytest.raises(ConfigError, match="plain nn.Linear"):  # applying it twice
        to_cross_layer(model, "blocks", PROJ, rank=2)


# ---- L2M's Decision Transformer ----------------------------------------------------------------------------
DT_PROJ = ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "mlp.fc1", "mlp.fc2"]


def _dt(seed: int = 0):
    from pretrainkit.systems.l2m.model import DecisionTransformer

    torch.manual_seed(seed)
    return DecisionTransformer(
        state_dim=5, act_dim=3, d_model=16, n_layer=3, n_head=2, context=3, n_bins=8, dropout=0.0
    )


def _dt_batch(B: int = 4, K: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, K, dtype=torch.bool)
    mask[0, 0] = False  # left padding takes the masked attention path
    return {
        "states": torch.randn(B, K, 5, generator=g),
        "actions": torch.rand(B, K, 3, generator=g) * 2 - 1,
        "rtg": torch.randn(B, K, generator=g),
        "timesteps": torch.arange(K).repeat(B, 1),
        "mask": mask,
    }


def test_decision_transformer_trains_and_acts_in_cross_layer_form():
    dt = _dt()
    n_full = dt.num_params()
    info = to_cross_layer(dt, "blocks", DT_PROJ, rank=4, init="cola")
    assert info.params_before == n_full and info.params_after == dt.num_params() < n_full
    b = _dt_batch()
    loss, _ = dt.loss(b)
    loss.backward()
    assert dt.blocks[2].mlp.fc2.beta.grad is not None and dt.blocks[0].attn.q_proj.weight.grad.abs().sum() > 0
    # act(): the cached incremental path feeds each new token through every block in order, so the chain is
    # exact there too; it must pick the same actions as full passes.
    dt.eval()
    g = torch.Generator().manual_seed(3)
    s, r = torch.randn(6, 3, 5, generator=g), torch.randn(6, 3, generator=g)
    a, t = torch.rand(6, 3, 3, generator=g) * 2 - 1, torch.arange(3).repeat(6, 1)
    m = torch.ones(6, 3, dtype=torch.bool)
    m[:2, 0] = False
    cached, full = dt.act(s, r, a, t, m, use_cache=True), dt.act(s, r, a, t, m, use_cache=False)
    assert torch.equal(cached, full)
    # Hidden states of the last cached token match a full pass (a sharper check than the argmax).
    cache = dt.new_cache()
    tok, tmask = dt.embed(s, a, r, t, m)
    dt.forward_tokens(tok[:, :-1], tmask[:, :-1], cache)
    torch.testing.assert_close(
        dt.forward_tokens(tok[:, -1:], tmask, cache)[:, -1], dt.forward_tokens(tok, tmask)[:, -1]
    )
