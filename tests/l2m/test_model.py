"""Decision Transformer: shapes, action bins, causal autoregression, padding, query, overfitting, acting."""

import pytest
import torch
from torch import nn

from pretrainkit.errors import ConfigError
from pretrainkit.systems.l2m.model import DecisionTransformer, DTConfig, decode_bins, encode_actions

SMALL = {
    "state_dim": 6,
    "act_dim": 3,
    "d_model": 32,
    "n_layer": 2,
    "n_head": 2,
    "context": 4,
    "max_timestep": 50,
    "dropout": 0.0,
}


def _batch(B=3, K=4, S=6, A=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "states": torch.randn(B, K, S, generator=g),
        "actions": torch.rand(B, K, A, generator=g) * 2 - 1,
        "rtg": torch.rand(B, K, generator=g),
        "timesteps": torch.arange(K).repeat(B, 1) + 3,
        "mask": torch.ones(B, K, dtype=torch.bool),
    }


def _args(b):
    return b["states"], b["actions"], b["rtg"], b["timesteps"], b["mask"]


@pytest.mark.parametrize("head,rtg", [("discrete", True), ("discrete", False), ("continuous", True)])
def test_forward_shapes(head, rtg):
    m = DecisionTransformer(DTConfig(**SMALL, head=head, condition_on_rtg=rtg))
    out = m(*_args(_batch()))
    assert out.shape == ((3, 4, 3, 64) if head == "discrete" else (3, 4, 3))
    tokens, tmask = m.embed(*_args(_batch()))
    assert tokens.shape == (3, 4 * m.cfg.tokens_per_step, 32) and tmask.shape == tokens.shape[:2]


def test_bin_round_trip():
    a = torch.linspace(-1, 1, 1001)
    assert (decode_bins(encode_actions(a)) - a).abs().max() <= 1 / 64 + 1e-6  # half a bin width
    bins = torch.arange(64)
    for mode in ("center", "lower"):
        assert torch.equal(encode_actions(decode_bins(bins, 64, mode)), bins)
    assert encode_actions(torch.tensor([-1.0, 1.0, -5.0, 5.0])).tolist() == [0, 63, 0, 63]
    assert decode_bins(torch.tensor([0, 63])).tolist() == pytest.approx([-1 + 1 / 64, 1 - 1 / 64])
    assert decode_bins(torch.tensor([0]), mode="lower").item() == -1.0


def test_action_dims_are_autoregressive_and_causal():
    torch.manual_seed(0)
    m = DecisionTransformer(DTConfig(**SMALL)).eval()
    b = _batch()
    base = m(*_args(b))
    b2 = {k: v.clone() for k, v in b.items()}
    b2["actions"][:, 2, 1] = -b2["actions"][:, 2, 1]  # change dim 1 of step 2 (a different bin)
    out = m(*_args(b2))
    torch.testing.assert_close(out[:, :2], base[:, :2])  # earlier steps unaffected
    torch.testing.assert_close(out[:, 2, :2], base[:, 2, :2])  # dims 0 and 1 of step 2 do not see a_1
    assert not torch.allclose(out[:, 2, 2], base[:, 2, 2])  # dim 2 is conditioned on a_1


def test_left_padding_does_not_change_valid_outputs():
    torch.manual_seed(0)
    m = DecisionTransformer(DTConfig(**SMALL)).eval()
    b = _batch(B=1)
    short = {k: v[:, 2:] for k, v in b.items()}
    padded = {k: v.clone() for k, v in b.items()}
    padded["mask"][:, :2] = False
    padded["states"][:, :2] = 123.0  # garbage in padded slots must not leak
    out_pad = m(*_args(padded))
    out_short = m(*_args(short))
    torch.testing.assert_close(out_pad[:, 2:], out_short, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out_pad).all()


def test_state_embedding_is_masked_mean_of_state_tokens():
    torch.manual_seed(0)
    m = DecisionTransformer(DTConfig(**SMALL))
    b = _batch()
    b["mask"][0, :2] = False
    tokens, tmask = m.embed(*_args(b))
    q = m.state_embedding(b["states"], b["timesteps"], b["mask"])
    torch.testing.assert_close(q, m.state_query(tokens, tmask))
    assert q.shape == (3, 32) and not q.requires_grad
    b2 = dict(b, actions=torch.zeros_like(b["actions"]), rtg=torch.zeros_like(b["rtg"]))
    torch.testing.assert_close(m.state_query(*m.embed(*_args(b2))), q)  # depends on states only


def test_adapter_target_names_are_linear():
    m = DecisionTransformer(DTConfig(**SMALL))
    mods = dict(m.named_modules())
    for name in (
        "blocks.0.attn.q_proj",
        "blocks.1.attn.v_proj",
        "blocks.0.attn.k_proj",
        "blocks.1.mlp.fc1",
        "blocks.1.mlp.fc2",
        "blocks.0.attn.out_proj",
    ):
        assert isinstance(mods[name], nn.Linear)


@pytest.mark.parametrize("head", ["discrete", "continuous"])
def test_overfits_tiny_batch(head):
    torch.manual_seed(0)
    m = DecisionTransformer(DTConfig(**SMALL, head=head))
    b = _batch(B=4)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first, _ = m.loss(b)
    for _ in range(40):
        loss, metrics = m.loss(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first.item()
    if head == "discrete":
        assert metrics["bin_acc"] > 0.5


def test_act_matches_greedy_decoding():
    torch.manual_seed(0)
    m = DecisionTransformer(DTConfig(**SMALL)).eval()
    b = _batch(B=2, K=6)  # longer history than the context: act keeps the last K steps
    b["timesteps"] = torch.arange(6).repeat(2, 1)
    a = m.act(b["states"], b["rtg"], b["actions"], b["timesteps"])
    assert a.shape == (2, 3) and a.abs().max() <= 1
    last = {k: v[:, -4:].clone() for k, v in b.items() if k != "mask"}
    last["actions"][:, -1] = a
    logits = m(last["states"], last["actions"], last["rtg"], last["timesteps"])[:, -1]
    torch.testing.assert_close(
        decode_bins(logits.argmax(-1)), a
    )  # each dim greedy given chosen previous dims
    mc = DecisionTransformer(DTConfig(**SMALL, head="continuous")).eval()
    assert mc.act(b["states"], b["rtg"], b["actions"], b["timesteps"]).shape == (2, 3)


def test_config_errors():
    with pytest.raises(ConfigError, match="head"):
        DTConfig(head="gauss")
    with pytest.raises(ConfigError, match="divisible"):
        DTConfig(d_model=30, n_head=4)
    with pytest.raises(ConfigError, match="context"):
        DecisionTransformer(DTConfig(**SMALL))(*_args(_batch(K=5)))
