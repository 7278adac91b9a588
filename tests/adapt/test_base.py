"""Injection by name pattern, freezing, adapter-only save/load with strict checks, merge."""

import json

import pytest
import torch
from torch import nn

from pretrainkit.adapt import (
    ADAPTERS,
    AdapterLayer,
    adapter_layers,
    adapter_state_dict,
    inject,
    load_adapter,
    merge,
    register_adapter,
    save_adapter,
    trainable_parameters,
)
from pretrainkit.errors import CheckpointError, ConfigError, PretrainkitError


def _randomise_adapters(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in adapter_state_dict(model).values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * 0.3)


def test_new_adapter_is_one_class_plus_registration(make_model, x):
    @register_adapter("test_negate")
    class Negate(AdapterLayer):
        def forward(self, inp):
            return -self.base(inp)

    try:
        model = make_model()
        ref = model.head(model.blocks[1](model.blocks[0](model.embed(x))))
        assert inject(model, "test_negate", ["head"]) == ["head"]
        torch.testing.assert_close(model(x), -ref)
    finally:
        ADAPTERS._items.pop("test_negate")


def test_unknown_adapter_and_option_are_one_line_errors(make_model):
    with pytest.raises(PretrainkitError, match="unknown adapter 'loraa'.*lora"):
        inject(make_model(), "loraa", ["attn.q"])
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['rnk'\].*rank"):
        inject(make_model(), "lora", ["attn.q"], rnk=4)


def test_patterns_fnmatch_tail_and_regex(make_model):
    m = make_model()
    assert inject(m, "lora", ["attn.q"]) == ["blocks.0.attn.q", "blocks.1.attn.q"]
    m = make_model()
    assert inject(m, "lora", ["blocks.1.*"]) == [
        "blocks.1.attn.q",
        "blocks.1.attn.v",
        "blocks.1.mlp.fc",
        "blocks.1.mlp.proj",
    ]
    m = make_model()
    assert inject(m, "lora", [r"re:blocks\.\d\.attn\.(q|v)"]) == [
        "blocks.0.attn.q",
        "blocks.0.attn.v",
        "blocks.1.attn.q",
        "blocks.1.attn.v",
    ]


def test_unmatched_pattern_names_pattern_and_existing_modules(make_model):
    m = make_model()
    with pytest.raises(ConfigError) as e:
        inject(m, "lora", ["attn.q", "attn.k"])
    msg = str(e.value)
    assert "['attn.k']" in msg and "blocks.0.attn.q" in msg and "\n" not in msg
    assert not adapter_layers(m)  # nothing half-done
    with pytest.raises(ConfigError, match="not a valid regex"):
        inject(m, "lora", ["re:("])


def test_inject_freezes_backbone_and_keeps_earlier_adapters_trainable(make_model):
    m = make_model()
    n_base = sum(p.numel() for p in m.parameters())
    inject(m, "lora", ["attn.q"], rank=2)
    inject(m, "ia3", ["mlp.fc"])  # a second adapter must not freeze the first
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.{i}.attn.q.lora_{ab}" for i in (0, 1) for ab in "AB"} | {
        f"blocks.{i}.mlp.fc.ia3_scale" for i in (0, 1)
    }
    assert sum(p.numel() for p in trainable_parameters(m)) == 2 * (2 * 8 + 8 * 2) + 2 * 16
    assert sum(p.numel() for p in m.parameters() if not p.requires_grad) == n_base
    with pytest.raises(ConfigError):  # adapted layers are not wrapped again
        inject(m, "lora", ["mlp.fc"])


def test_save_is_tiny_and_load_reinjects_into_fresh_backbone(make_model, x, tmp_path):
    m = make_model(d=32)
    inject(m, "lora", ["attn.q", "attn.v"], rank=2, alpha=4)
    _randomise_adapters(m)
    head = nn.Linear(3, 2)
    path = save_adapter(m, tmp_path / "adapter.safetensors", extra_modules={"head": head})
    side = json.loads((tmp_path / "adapter.json").read_text())
    assert side["groups"][0]["adapter"] == "lora" and side["groups"][0]["options"] == {"rank": 2, "alpha": 4}
    assert side["groups"][0]["targets"] == ["attn.q", "attn.v"]
    from safetensors.torch import load_file

    keys = set(load_file(str(path)))
    assert all(".lora_" in k or k.startswith("extra:head/") for k in keys)
    backbone_bytes = sum(p.numel() * 4 for n, p in m.named_parameters() if "lora_" not in n)
    assert path.stat().st_size < backbone_bytes / 4

    fresh, head2 = make_model(d=32), nn.Linear(3, 2)
    names = load_adapter(fresh, path, extra_modules={"head": head2})
    assert names == [f"blocks.{i}.attn.{p}" for i in (0, 1) for p in "qv"]
    torch.testing.assert_close(fresh(x), m(x), rtol=0, atol=0)
    torch.testing.assert_close(head2.weight, head.weight)
    assert not any(p.requires_grad for n, p in fresh.named_parameters() if "lora_" not in n)
    # saving the reloaded model keeps the user's patterns
    save_adapter(fresh, tmp_path / "again.safetensors")
    assert json.loads((tmp_path / "again.json").read_text())["groups"][0]["targets"] == ["attn.q", "attn.v"]


def test_two_adapter_groups_round_trip(make_model, x, tmp_path):
    m = make_model()
    inject(m, "lora", ["attn.q"], rank=2)
    inject(m, "ia3", ["mlp.fc"])
    _randomise_adapters(m)
    save_adapter(m, tmp_path / "a.safetensors")
    fresh = make_model()
    load_adapter(fresh, tmp_path / "a.safetensors")
    torch.testing.assert_close(fresh(x), m(x), rtol=0, atol=0)


def test_load_refuses_corrupt_truncated_or_mismatched_files(make_model, tmp_path):
    m = make_model()
    inject(m, "lora", ["attn.q"], rank=2)
    path = save_adapter(m, tmp_path / "a.safetensors")
    raw = path.read_bytes()

    path.write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.raises(CheckpointError, match="corrupted"):
        load_adapter(make_model(), path)
    flipped = bytearray(raw)
    flipped[-3] ^= 0xFF
    path.write_bytes(bytes(flipped))  # one flipped byte in the tensor data
    with pytest.raises(CheckpointError):
        load_adapter(make_model(), path)
    path.write_bytes(raw)

    with pytest.raises(CheckpointError, match=r"shape \(2, 8\).*\(2, 16\)"):
        load_adapter(make_model(d=16), path)  # other hidden size
    other = make_model()
    other.blocks = other.blocks[:1]
    with pytest.raises(CheckpointError, match="does not fit"):
        load_adapter(other, path)  # a module the adapter needs is absent
    with pytest.raises(CheckpointError, match="holds no extra module 'head'"):
        load_adapter(make_model(), path, extra_modules={"head": nn.Linear(3, 2)})
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="sidecar"):
        load_adapter(make_model(), path)
    with pytest.raises(CheckpointError):
        load_adapter(make_model(), tmp_path / "missing.safetensors")


@pytest.mark.parametrize("adapter,options", [("lora", {"rank": 3, "alpha": 5.0}), ("ia3", {})])
def test_merge_restores_plain_linears_with_same_outputs(make_model, x, adapter, options):
    m = make_model()
    names = inject(m, adapter, ["attn.q", "attn.v", "mlp.fc"], **options)
    _randomise_adapters(m)
    before = m(x)
    assert merge(m) == names
    assert not adapter_layers(m)
    assert all(type(m.get_submodule(n)) is nn.Linear for n in names)
    torch.testing.assert_close(m(x), before, rtol=0, atol=1e-6)
