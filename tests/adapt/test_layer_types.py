"""Adapters on every base type they wrap: identity at init, merge within 1e-6, save apart and reload, only
adapter tensors train; one-line errors for unsupported types and too-large ranks; a new base type is one class
plus a registration; sidecars of format /1 still load."""

import json

import pytest
import torch
from torch import nn

from pretrainkit.adapt import (
    ADAPTERS,
    AdapterLayer,
    ModulationPool,
    adapter_layers,
    adapter_state_dict,
    inject,
    load_adapter,
    merge,
    register_adapter,
    save_adapter,
    trainable_parameters,
)
from pretrainkit.adapt.base import adapter_tensors, module_like
from pretrainkit.errors import ConfigError

torch.set_num_threads(1)
PYG_REASON = "torch_geometric is not installed (pip install '.[phe]')"


class Holder(nn.Module):
    """One module under test, named ``layer``; dict outputs are flattened so outputs compare as one tensor."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, *inputs):
        out = self.layer(*inputs)
        return torch.cat([out[k].flatten() for k in sorted(out)]) if isinstance(out, dict) else out


def _hetero_dict_linear():
    from torch_geometric.nn import HeteroDictLinear

    return HeteroDictLinear({"paper": 6, "author": 4}, 5)


def _hetero_linear():
    from torch_geometric.nn import HeteroLinear

    return HeteroLinear(6, 5, num_types=3)


def _hgt():
    from torch_geometric.nn import HGTConv

    meta = (["paper", "author"], [("author", "writes", "paper"), ("paper", "rev_writes", "author")])
    return HGTConv({"paper": 8, "author": 6}, 8, meta, heads=2)


def _hgt_inputs(g):
    x = {"paper": torch.randn(5, 8, generator=g), "author": torch.randn(4, 6, generator=g)}
    edges = {
        ("author", "writes", "paper"): torch.tensor([[0, 1, 2, 3, 3], [0, 1, 2, 4, 0]]),
        ("paper", "rev_writes", "author"): torch.tensor([[0, 1, 2, 4, 0], [0, 1, 2, 3, 3]]),
    }
    return x, edges


# (id, base factory, inputs from a generator, adapter, options, targets, needs PyG)
# fmt: off
CASES = [
    ("linear-lora", lambda: nn.Linear(8, 5), lambda g: (torch.randn(3, 4, 8, generator=g),), "lora",
     {"rank": 3}, ["layer"], False),
    ("linear-lora-xab", lambda: nn.Linear(8, 5), lambda g: (torch.randn(3, 8, generator=g),), "lora",
     {"rank": 2, "alpha": 5.0, "layout": "xab"}, ["layer"], False),
    ("linear-ia3", lambda: nn.Linear(8, 5), lambda g: (torch.randn(3, 8, generator=g),), "ia3", {}, ["layer"],
     False),
    ("conv2d-lora", lambda: nn.Conv2d(3, 6, 3, padding=1), lambda g: (torch.randn(2, 3, 7, 7, generator=g),),
     "lora", {"rank": 4, "alpha": 8.0}, ["layer"], False),
    ("conv2d-reflect-stride-lora", lambda: nn.Conv2d(3, 4, (3, 2), stride=2, padding=1, padding_mode="reflect"),
     lambda g: (torch.randn(2, 3, 8, 9, generator=g),), "lora", {"rank": 2}, ["layer"], False),
    ("conv1d-lora", lambda: nn.Conv1d(4, 5, 3, dilation=2), lambda g: (torch.randn(2, 4, 11, generator=g),),
     "lora", {"rank": 3, "alpha": 0.5}, ["layer"], False),
    ("conv2d-ia3", lambda: nn.Conv2d(3, 6, 3), lambda g: (torch.randn(2, 3, 6, 6, generator=g),), "ia3", {},
     ["layer"], False),
    ("conv1d-ia3-nobias", lambda: nn.Conv1d(3, 4, 2, bias=False), lambda g: (torch.randn(2, 3, 6, generator=g),),
     "ia3", {}, ["layer"], False),
    ("embedding-lora", lambda: nn.Embedding(20, 6, padding_idx=0),
     lambda g: (torch.randint(0, 20, (3, 5), generator=g),), "lora", {"rank": 3, "alpha": 1.5}, ["layer"],
     False),
    ("heterodictlinear-lora", _hetero_dict_linear,
     lambda g: ({"paper": torch.randn(4, 6, generator=g), "author": torch.randn(3, 4, generator=g)},),
     "lora", {"rank": 2, "alpha": 5.0}, ["layer"], True),
    ("heterodictlinear-ia3", _hetero_dict_linear,
     lambda g: ({"paper": torch.randn(4, 6, generator=g), "author": torch.randn(3, 4, generator=g)},),
     "ia3", {}, ["layer"], True),
    ("heterolinear-lora", _hetero_linear,
     lambda g: (torch.randn(7, 6, generator=g), torch.tensor([2, 0, 1, 0, 2, 2, 0])), "lora",
     {"rank": 3, "alpha": 6.0}, ["layer"], True),
    ("hgtconv-lora", _hgt, _hgt_inputs, "lora", {"rank": 2, "alpha": 3.0},
     ["layer.kqv_lin", "layer.out_lin", "layer.k_rel", "layer.v_rel"], True),
]
# fmt: on


def _build(case, seed=0):
    _, make, inputs, *_ = case
    if case[-1]:
        pytest.importorskip("torch_geometric", reason=PYG_REASON)
    torch.manual_seed(seed)
    model = Holder(make())
    return model, inputs(torch.Generator().manual_seed(1))


def _randomise(model, seed=3, std=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in adapter_state_dict(model).values():
            t.add_(torch.randn(t.shape, generator=g) * std)


def _plain_types(model):
    return {n: type(m) for n, m in model.named_modules()}


@pytest.fixture(params=CASES, ids=[c[0] for c in CASES])
def case(request):
    return request.param


def test_fresh_adapter_is_identity_and_only_adapter_tensors_train(case):
    model, inputs = _build(case)
    before = model(*inputs)
    base_params = {id(p) for p in model.parameters()}
    names = inject(model, case[3], case[5], **case[4])
    assert names and set(adapter_layers(model)) == set(names)
    torch.testing.assert_close(model(*inputs), before, rtol=0, atol=0)
    own = {id(t) for t in adapter_tensors(model).values()}
    trainable = trainable_parameters(model)
    assert trainable and {id(p) for p in trainable} == own and not own & base_params
    _randomise(model)
    model(*inputs).square().sum().backward()
    for p in model.parameters():
        if id(p) in own:
            assert p.grad is not None and torch.count_nonzero(p.grad) > 0
        else:
            assert p.grad is None


def test_merge_gives_plain_modules_with_the_same_output(case):
    model, inputs = _build(case)
    types = _plain_types(model)
    names = inject(model, case[3], case[5], **case[4])
    _randomise(model)
    adapted = model(*inputs)
    assert not torch.allclose(adapted, _build(case)[0](*inputs))  # the adapter does change the function
    assert merge(model) == names
    assert not adapter_layers(model) and _plain_types(model) == types
    torch.testing.assert_close(model(*inputs), adapted, rtol=0, atol=1e-6)


def test_saved_apart_and_reloaded_into_a_fresh_model(case, tmp_path):
    model, inputs = _build(case)
    inject(model, case[3], case[5], **case[4])
    _randomise(model)
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    fresh, _ = _build(case)
    assert load_adapter(fresh, path) == list(adapter_layers(model))
    torch.testing.assert_close(fresh(*inputs), model(*inputs), rtol=0, atol=0)
    assert {id(p) for p in trainable_parameters(fresh)} == {id(t) for t in adapter_tensors(fresh).values()}


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.conv = nn.Conv1d(6, 6, 3, padding=1)
        self.norm = nn.LayerNorm(6)
        self.out = nn.Linear(6, 4)

    def forward(self, ids):
        h = self.conv(self.embed(ids).transpose(1, 2)).transpose(1, 2)
        return self.out(self.norm(h))


def test_one_injection_over_several_types_round_trips(tmp_path):
    torch.manual_seed(0)
    m = Mixed()
    ids = torch.randint(0, 10, (2, 7), generator=torch.Generator().manual_seed(1))
    assert inject(m, "lora", ["embed", "conv", "out"], rank=2) == ["embed", "conv", "out"]
    assert {type(layer).__name__ for layer in adapter_layers(m).values()} == {
        "LoRAEmbedding",
        "LoRAConv",
        "LoRALinear",
    }
    _randomise(m)
    path = save_adapter(m, tmp_path / "a.safetensors")
    assert json.loads(path.with_suffix(".json").read_text())["groups"][0]["options"] == {
        "rank": 2,
        "alpha": 2.0,
    }
    torch.manual_seed(0)
    fresh = Mixed()
    load_adapter(fresh, path)
    torch.testing.assert_close(fresh(ids), m(ids), rtol=0, atol=0)


def _one_line(excinfo, *parts):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert p in msg, msg


def test_unsupported_type_is_named_in_a_one_line_error():
    m = Mixed()
    with pytest.raises(ConfigError) as e:
        inject(m, "lora", ["norm"])
    _one_line(e, "'norm'", "LayerNorm", "Linear", "Conv2d", "Embedding")
    with pytest.raises(ConfigError) as e:
        inject(m, "ia3", ["embed"])
    _one_line(e, "Embedding", "adapter 'ia3'")
    with pytest.raises(ConfigError) as e:
        inject(m, "modulation", ["conv"], pool=ModulationPool(2, 6, rank=2))
    _one_line(e, "Conv1d", "adapter 'modulation'")
    with pytest.raises(ConfigError) as e:
        inject(m, "lora", ["missing"])
    _one_line(e, "['missing']", "embed", "conv", "out")
    assert not adapter_layers(m)


@pytest.mark.parametrize(
    "make,options,limit",
    [
        (lambda: nn.Linear(8, 4), {"rank": 5}, "min(in 8, out 4)"),
        (lambda: nn.Linear(8, 4), {"rank": 5, "layout": "xab"}, "min(in 8, out 4)"),
        (lambda: nn.Conv2d(1, 6, 2), {"rank": 5}, "min(in 4, out 6)"),  # in = channels x kernel = 1 x 4
        (lambda: nn.Embedding(3, 8), {"rank": 4}, "min(in 3, out 8)"),
    ],
)
def test_rank_above_min_in_out_is_refused(make, options, limit):
    m = Holder(make())
    with pytest.raises(ConfigError) as e:
        inject(m, "lora", ["layer"], **options)
    _one_line(e, "'layer'", f"rank {options['rank']}", limit)
    assert not adapter_layers(m)


def test_rank_above_min_in_out_is_refused_by_the_pool_and_on_typed_pyg_linears():
    with pytest.raises(ConfigError) as e:
        inject(Holder(nn.Linear(8, 3)), "modulation", ["layer"], pool=ModulationPool(2, 8, rank=4))
    _one_line(e, "rank 4", "min(in 8, out 3)")
    pytest.importorskip("torch_geometric", reason=PYG_REASON)
    from torch_geometric.nn import HeteroDictLinear, HeteroLinear

    with pytest.raises(ConfigError) as e:
        inject(Holder(HeteroDictLinear({"a": 8, "b": 2}, 5)), "lora", ["layer"], rank=3)
    _one_line(e, "type 'b'", "min(in 2, out 5)")
    with pytest.raises(ConfigError) as e:
        inject(Holder(HeteroLinear(4, 6, num_types=2)), "lora", ["layer"], rank=5)
    _one_line(e, "min(in 4, out 6)")


def test_other_bad_options_are_one_line_errors():
    with pytest.raises(ConfigError) as e:
        inject(Holder(nn.Embedding(10, 6)), "lora", ["layer"], rank=2, dropout=0.1)
    _one_line(e, "dropout", "Embedding")
    with pytest.raises(ConfigError) as e:
        inject(Holder(nn.Conv2d(4, 4, 3, groups=2)), "lora", ["layer"], rank=2)
    _one_line(e, "groups=2")
    with pytest.raises(ConfigError) as e:
        inject(Holder(nn.Linear(4, 4)), "lora", ["layer"], rank=2, layout="ba")
    _one_line(e, "layout")
    with pytest.raises(ConfigError) as e:
        inject(Holder(nn.Conv2d(4, 4, 3)), "lora", ["layer"], rank=2, layout="xab")
    _one_line(e, "unknown option(s) ['layout']")


# ------------------------------------------------------------------ a new base type: one class + registration
class Affine(nn.Module):
    """A toy module type no adapter knows: y = x * weight + bias (elementwise)."""

    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d))
        self.bias = nn.Parameter(torch.randn(d))

    def forward(self, x):
        return x * self.weight + self.bias


def test_new_base_type_and_new_adapter_need_no_edits_elsewhere(tmp_path):
    @register_adapter("ia3", base=Affine)  # an existing family learns a new base type
    class IA3Affine(AdapterLayer):
        def __init__(self, base: Affine):
            super().__init__(base)
            self.ia3_scale = nn.Parameter(torch.ones_like(base.weight))

        def forward(self, x):
            return self.base(x) * self.ia3_scale

        def merged(self):
            s = self.ia3_scale.detach()
            return module_like(self.base, weight=self.base.weight * s, bias=self.base.bias * s)

    @register_adapter("toy_shift", base=Affine)  # a new family for it
    class Shift(AdapterLayer):
        def __init__(self, base: Affine, init: float = 0.0):
            super().__init__(base)
            self.shift = nn.Parameter(torch.full_like(base.weight, init))

        def forward(self, x):
            return self.base(x) + self.shift

        def merged(self):
            return module_like(self.base, bias=self.base.bias + self.shift.detach())

    try:
        x = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
        for adapter in ("ia3", "toy_shift"):
            torch.manual_seed(0)
            m = Holder(Affine(5))
            ref = m(x)
            inject(m, adapter, ["layer"])
            torch.testing.assert_close(m(x), ref, rtol=0, atol=0)
            _randomise(m)
            path = save_adapter(m, tmp_path / f"{adapter}.safetensors")
            torch.manual_seed(0)
            fresh = Holder(Affine(5))
            load_adapter(fresh, path)
            torch.testing.assert_close(fresh(x), m(x), rtol=0, atol=0)
            adapted = m(x)
            merge(m)
            assert type(m.layer) is Affine
            torch.testing.assert_close(m(x), adapted, rtol=0, atol=1e-6)
        with pytest.raises(ConfigError, match="Affine"):
            inject(Holder(Affine(5)), "lora", ["layer"])  # lora did not learn it
    finally:
        del ADAPTERS.get("ia3").wrappers[Affine]
        ADAPTERS._items.pop("toy_shift")


# ------------------------------------------------------------------ sidecar format /1 (alpha default 2 * rank)
@pytest.mark.parametrize("options,scale", [({"rank": 2}, 2.0), ({}, 2.0), ({"rank": 2, "alpha": 3.0}, 1.5)])
def test_format_1_sidecars_load_with_their_own_alpha_default(tmp_path, options, scale):
    torch.manual_seed(0)
    m = Holder(nn.Linear(8, 8))
    inject(m, "lora", ["layer"], **options)
    _randomise(m)
    path = save_adapter(m, tmp_path / "old.safetensors")
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["format"] = "pretrainkit-adapter/1"
    meta["groups"][0]["options"] = options  # what /1 wrote: the caller's options, alpha implied as 2 * rank
    side.write_text(json.dumps(meta))
    torch.manual_seed(0)
    fresh = Holder(nn.Linear(8, 8))
    load_adapter(fresh, path)
    assert fresh.layer.scale == scale
    assert fresh.layer.injection["options"]["alpha"] == scale * fresh.layer.rank
