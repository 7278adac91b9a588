"""LLaMA decoder: loss, masking, causality, presets, parameter counts, generation, HF layout."""

import json

import pytest
import torch
import torch.nn.functional as F

from pretrainkit.errors import ConfigError
from pretrainkit.systems.crnet.layers import METHODS
from pretrainkit.systems.crnet.model import (
    PRESETS,
    LlamaConfig,
    LlamaLM,
    count_parameters,
    from_hf_state_dict,
    load_hf,
    save_hf,
    to_hf_state_dict,
)


def tiny(method="full", **kw):
    torch.manual_seed(0)
    return LlamaLM(LlamaConfig.preset("tiny", method=method, lora_dropout=0.0, **kw))


def ids(b=2, t=12, vocab=512, seed=1):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


def test_loss_is_token_mean_with_ignored_labels():
    m = tiny()
    x = ids()
    y = ids(seed=2)
    y[0, :5] = -100
    logits, loss = m(x, y)
    assert logits.shape == (2, 12, 512)
    keep = y != -100
    manual = -logits.log_softmax(-1).gather(-1, y.clamp_min(0)[..., None])[..., 0][keep].mean()
    torch.testing.assert_close(loss, manual)
    total, count = m.loss_sum_and_count(x, y)
    assert count == 19 and total.dtype == torch.float64
    torch.testing.assert_close(total / count, loss.double(), rtol=1e-6, atol=0)
    assert m(x)[1] is None


@pytest.mark.parametrize("method", METHODS)
def test_every_method_is_causal_and_learns(method):
    m = tiny(method)
    x = ids(t=16)
    logits = m(x)[0]
    x2 = x.clone()
    x2[:, 10:] = (x2[:, 10:] + 1) % 512
    torch.testing.assert_close(m(x2)[0][:, :10], logits[:, :10])  # the future does not leak
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    first = None
    for _ in range(15):
        loss = m(x, x)[1]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first


def test_bad_config_and_input():
    with pytest.raises(ConfigError, match="unknown method 'svd'"):
        LlamaConfig.preset("tiny", method="svd")
    with pytest.raises(ConfigError, match="unknown model preset"):
        LlamaConfig.preset("tiny-ish")
    with pytest.raises(ConfigError, match="unknown model config keys"):
        LlamaConfig.preset("tiny", hidden_size=64)
    with pytest.raises(ConfigError, match="recompute 'crnet' needs method 'crnet'"):
        LlamaConfig.preset("tiny", recompute="crnet")
    with pytest.raises(ConfigError, match="heads"):
        LlamaConfig(hidden=66, n_heads=4)
    with pytest.raises(ConfigError, match="exceeds the model's context max_seq_len=256"):
        tiny()(torch.zeros(1, 257, dtype=torch.long))


def test_presets_build_on_meta():
    for name in PRESETS:
        for method in ("full", "crnet"):
            assert count_parameters(LlamaConfig.preset(name, method=method)) > 0


def test_parameter_counts_60m_match_the_note():
    """Note §1.3: full ~58M, CR-Net r=128 ~44.7M, CoLA ~43M (GaLore/CoLA 60M config, untied, vocab 32000)."""
    V, h, f, L, r = 32000, 512, 1376, 8, 128
    norms = (2 * L + 1) * h
    full = 2 * V * h + L * (4 * h * h + 3 * h * f) + norms
    factored = 11 * h * r + 3 * f * r
    assert count_parameters(LlamaConfig.preset("60m")) == full
    crnet = 2 * V * h + (4 * h * h + 3 * h * f) + (L - 1) * (factored + 7) + norms
    assert count_parameters(LlamaConfig.preset("60m", method="crnet")) == crnet
    cola = 2 * V * h + L * factored + norms
    assert count_parameters(LlamaConfig.preset("60m", method="cola")) == cola
    assert count_parameters(LlamaConfig.preset("60m", method="lowrank")) == cola
    lora = LlamaConfig.preset("60m", method="lora")
    assert (
        count_parameters(lora) == cola
        and count_parameters(lora, trainable_only=False) == cola + full - 2 * V * h - norms
    )
    assert round(full / 1e6, 1) == 58.1 and round(crnet / 1e6, 1) == 44.7 and round(cola / 1e6, 1) == 42.8
    assert count_parameters(LlamaConfig.preset("130m", method="crnet")) == pytest.approx(97.4e6, abs=0.1e6)


def test_tied_embeddings_counted_once():
    m = tiny(tie_embeddings=True)
    assert m.lm_head.weight is m.embed_tokens.weight
    assert m.num_parameters() == tiny().num_parameters() - 512 * 64


def test_generate_greedy_and_sampled():
    m = tiny().eval()
    prompt = ids(b=1, t=5)
    out = m.generate(prompt, 6, greedy=True)
    assert out.shape == (1, 11) and torch.equal(out[:, :5], prompt)
    assert out[0, 5] == m(prompt)[0][0, -1].argmax()
    a = m.generate(prompt, 6, top_k=5, generator=torch.Generator().manual_seed(3))
    b = m.generate(prompt, 6, top_k=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    ctx = m.generate(torch.zeros(1, 256, dtype=torch.long), 2, greedy=True)  # crops to max_seq_len
    assert ctx.shape == (1, 258)


def test_relora_merge_keeps_function_and_betas_logged():
    m = tiny("relora").eval()
    for p in m.parameters():
        if p.requires_grad and p.ndim == 2 and p.shape[0] == 16:  # LoRA B factors
            torch.nn.init.normal_(p, std=0.05)
    x = ids()
    before = m(x)[0]
    restarted = m.merge_and_reset()
    assert len(restarted) == 2 * 7 * 4
    torch.testing.assert_close(m(x)[0], before, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="merge_and_reset"):
        tiny().merge_and_reset()
    betas = tiny("crnet").betas()
    assert len(betas) == 7 * 3 and betas["layers.1.q_proj"] == 1.0


def test_hf_layout_round_trip(tmp_path):
    m = tiny().eval()
    sd = to_hf_state_dict(m)
    assert "model.layers.0.self_attn.q_proj.weight" in sd and "model.layers.3.mlp.down_proj.weight" in sd
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= set(sd)
    assert (
        "model.layers.0.input_layernorm.weight" in sd
        and "model.layers.0.post_attention_layernorm.weight" in sd
    )
    x = ids()
    torch.testing.assert_close(from_hf_state_dict(sd, m.cfg)(x)[0], m(x)[0], rtol=0, atol=0)
    save_hf(m, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["hidden_size"] == 64 and cfg["num_hidden_layers"] == 4 and cfg["model_type"] == "llama"
    torch.testing.assert_close(load_hf(tmp_path)(x)[0], m(x)[0], rtol=0, atol=0)
    with pytest.raises(ConfigError, match="full-rank models only"):
        to_hf_state_dict(tiny("crnet"))
    with pytest.raises(ConfigError, match="config.json"):
        load_hf(tmp_path / "missing")


def test_logits_match_transformers_llama(tmp_path):
    transformers = pytest.importorskip("transformers")
    m = tiny().eval()
    save_hf(m, tmp_path)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    x = ids(t=20)
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, m(x)[0], rtol=0, atol=1e-5)
        # and back: HF weights into our model
        ours = from_hf_state_dict(hf.state_dict(), m.cfg)
        torch.testing.assert_close(ours(x)[0], hf(x).logits, rtol=0, atol=1e-5)


def test_cross_entropy_matches_functional_on_bf16_logits():
    m = tiny().to(torch.bfloat16)
    x = ids()
    logits, loss = m(x, x)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.cross_entropy(logits.float().flatten(0, 1), x.flatten()))
