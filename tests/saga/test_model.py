"""LIMU-BERT encoder, heads and input normalisation."""

import math

import pytest
import torch
import torch.nn.functional as F

from pretrainkit.errors import ConfigError, DataError
from pretrainkit.systems.saga.model import (
    GRUClassifier,
    LimuBertConfig,
    LimuBertEncoder,
    LinearProbe,
    ReconstructionHead,
    normalise_imu,
)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def small_cfg(**kw) -> LimuBertConfig:
    return LimuBertConfig(**{"seq_len": 20, "hidden": 12, "ff": 24, "n_heads": 3, "n_layers": 2, **kw})


def test_default_size_matches_limu_bert():
    enc = LimuBertEncoder()
    head = ReconstructionHead(72, 6)
    # 51 552 encoder + 5 838 head; LIMU reports 62 K because its checkpoint also holds an unused 72x72 `fc` (5 256).
    assert n_params(enc) == 51_552
    assert n_params(head) == 5_838
    assert 50_000 < n_params(enc) + n_params(head) < 65_000
    h = enc(torch.randn(2, 120, 6))
    assert h.shape == (2, 120, 72)


def test_shared_layers_share_parameters():
    counts = {n: n_params(LimuBertEncoder(small_cfg(n_layers=n))) for n in (1, 4, 8)}
    assert len(set(counts.values())) == 1
    unshared = [n_params(LimuBertEncoder(small_cfg(n_layers=n, share_layers=False))) for n in (1, 2, 3)]
    assert unshared[0] == counts[1]
    assert unshared[2] - unshared[1] == unshared[1] - unshared[0] > 0  # one block per layer


def test_shared_encoder_applies_one_block_n_times():
    torch.manual_seed(0)
    enc = LimuBertEncoder(small_cfg(n_layers=3))
    x = torch.randn(2, 20, 6)
    h = enc(x)
    e = enc.emb_norm(enc.embed(enc.normalise(x)))
    e = enc.emb_norm(e + enc.pos.weight)  # LIMU code: the same LN before and after adding positions
    block = enc.blocks[0]
    for _ in range(3):
        e = block(e)
    torch.testing.assert_close(h, e)


def _manual_attention(block, h, n_heads):
    b, n, d = h.shape
    q, k, v = (
        m(h).view(b, n, n_heads, d // n_heads).transpose(1, 2)
        for m in (block.attn.q, block.attn.k, block.attn.v)
    )
    a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // n_heads), dim=-1)
    return (a @ v).transpose(1, 2).reshape(b, n, d)


def test_block_follows_limu_code_or_paper():
    torch.manual_seed(1)
    h = torch.randn(2, 20, 12)
    code = LimuBertEncoder(small_cfg()).blocks[0]
    a = _manual_attention(code, h, 3)
    a = F.layer_norm(a + code.proj(a), (12,), code.norm1.weight, code.norm1.bias, 1e-12)  # no residual from h
    want = F.layer_norm(a + code.ffn(a), (12,), code.norm2.weight, code.norm2.bias, 1e-12)
    torch.testing.assert_close(code(h), want)

    paper = LimuBertEncoder(small_cfg(limu_code_compat=False)).blocks[0]
    a = paper.norm0(_manual_attention(paper, h, 3) + h)
    p = paper.norm1(paper.proj(a) + a)
    torch.testing.assert_close(paper(h), paper.norm2(paper.ffn(p) + p))
    assert n_params(paper) == n_params(code) + 2 * 12  # the third LayerNorm


def test_normalisation_divides_acc_only():
    x = torch.randn(2, 5, 6) * 10
    y = normalise_imu(x)
    torch.testing.assert_close(y[..., :3], x[..., :3] / 9.8)
    torch.testing.assert_close(y[..., 3:], x[..., 3:])
    torch.testing.assert_close(LimuBertConfig(acc_channels=(3, 6)).normalise(x)[..., 3:], x[..., 3:] / 9.8)


def test_encoder_normalises_inside_and_accepts_dict():
    torch.manual_seed(2)
    raw = LimuBertEncoder(small_cfg())
    pre = LimuBertEncoder(small_cfg(acc_scale=1.0))
    pre.load_state_dict(raw.state_dict())
    x = torch.randn(3, 20, 6) * 9.8
    torch.testing.assert_close(raw(x), pre(normalise_imu(x)))
    torch.testing.assert_close(raw({"x": x, "mask": None}), raw(x))
    assert raw(x[:, :7]).shape == (3, 7, 12)  # shorter windows use the first positions


def test_encoder_rejects_bad_input_and_config():
    enc = LimuBertEncoder(small_cfg())
    with pytest.raises(DataError, match="channels"):
        enc(torch.randn(2, 20, 5))
    with pytest.raises(DataError, match="steps"):
        enc(torch.randn(2, 21, 6))
    with pytest.raises(DataError, match="key 'x'"):
        enc({"inputs": torch.randn(2, 20, 6)})
    with pytest.raises(ConfigError, match="divisible"):
        LimuBertConfig(hidden=10, n_heads=4)
    with pytest.raises(ConfigError, match="acc_channels"):
        LimuBertConfig(acc_channels=(0, 7))


def test_gru_classifier_is_limu_gru_v2():
    clf = GRUClassifier(72, 6)
    assert n_params(clf) == 9_186  # LIMU-BERT paper: LIMU-GRU ~9 K parameters
    h = torch.randn(4, 20, 72)
    clf.eval()
    out = clf(h)
    assert out.shape == (4, 6)
    torch.testing.assert_close(out, clf(h))  # no dropout in eval
    # the prediction depends on the last step's state only through the recurrence: changing step 0 changes it
    h2 = h.clone()
    h2[:, 0] += 1.0
    assert not torch.allclose(clf(h2), out)
    small = GRUClassifier(8, 3, rnn_sizes=(5,), rnn_layers=(1,), dropout=0.0)
    assert small(torch.randn(2, 4, 8)).shape == (2, 3)
    with pytest.raises(ConfigError):
        GRUClassifier(8, 3, rnn_sizes=(5, 4), rnn_layers=(1,))


def test_linear_probe_is_linear_on_time_mean():
    probe = LinearProbe(12, 4)
    h = torch.randn(3, 10, 12)
    torch.testing.assert_close(probe(h), probe.out(h.mean(1)))


def test_reconstruction_head_shape_and_structure():
    head = ReconstructionHead(12, 6)
    h = torch.randn(2, 5, 12)
    lin1, _act, ln, lin2 = head.net
    torch.testing.assert_close(head(h), lin2(ln(F.gelu(lin1(h)))))
    assert head(h).shape == (2, 5, 6)
