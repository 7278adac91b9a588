"""CR-Net's LoRA-from-scratch on adapt's LoRA layer: bit-for-bit what the original CR-Net class computed.

``OldLoRALinear`` is a verbatim copy of the class CR-Net had before its LoRA moved onto ``pretrainkit.adapt``;
everything here compares with ``torch.equal`` (no tolerance): initial values, RNG consumption, forward
outputs and gradients under dropout, AdamW steps, ReLoRA's merge, and loading a checkpoint saved with the
old parameter names.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import pretrainkit.systems.crnet.model as crnet_model
from pretrainkit.adapt import LoRALinear
from pretrainkit.systems.crnet.layers import scratch_lora
from pretrainkit.systems.crnet.model import LlamaConfig, LlamaLM


class OldLoRALinear(nn.Module):
    """CR-Net's LoRALinear as it was (the reference)."""

    def __init__(self, h_in: int, h_out: int, rank: int, alpha: float, dropout: float, init_std: float):
        super().__init__()
        self.rank, self.scaling, self.init_std = rank, alpha / rank, init_std
        self.weight = nn.Parameter(torch.randn(h_out, h_in) * init_std, requires_grad=False)
        self.A = nn.Parameter(torch.empty(h_in, rank))
        self.B = nn.Parameter(torch.zeros(rank, h_out))
        self.dropout = nn.Dropout(dropout)
        self.reset_lora()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.init_std)
        self.reset_lora()

    def reset_lora(self) -> None:
        bound = 1.0 / math.sqrt(self.A.shape[0])
        nn.init.uniform_(self.A, -bound, bound)
        nn.init.zeros_(self.B)

    @torch.no_grad()
    def merge_and_reset(self) -> None:
        self.weight += self.scaling * (self.A @ self.B).T.to(self.weight.dtype)
        self.reset_lora()

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight) + self.scaling * (self.dropout(x) @ self.A @ self.B)


# Old parameter name -> name on the new layer (identity while CR-Net still had its own class).
def _new_names(layer: nn.Module) -> dict[str, str]:
    if hasattr(layer, "lora_A"):
        return {"weight": "base.weight", "A": "lora_A", "B": "lora_B"}
    return {"weight": "weight", "A": "A", "B": "B"}


def _tensors(layer: nn.Module) -> dict[str, Tensor]:
    """The layer's (weight, A, B) under the old names."""
    own = dict(layer.named_parameters())
    return {old: own[new] for old, new in _new_names(layer).items()}


def _pair(seed=0, h_in=12, h_out=9, rank=3, alpha=32.0, dropout=0.05, std=0.02):
    torch.manual_seed(seed)
    old = OldLoRALinear(h_in, h_out, rank, alpha, dropout, std)
    rng_old = torch.get_rng_state()
    torch.manual_seed(seed)
    new = scratch_lora(h_in, h_out, rank, alpha, dropout, std)
    rng_new = torch.get_rng_state()
    return old, new, rng_old, rng_new


def _assert_same(old: nn.Module, new: nn.Module) -> None:
    for k, t in _tensors(new).items():
        ref = getattr(old, k)
        assert t.shape == ref.shape and t.stride() == ref.stride(), k
        assert torch.equal(t, ref), k
        assert t.requires_grad == ref.requires_grad, k


@pytest.mark.parametrize("h_in,h_out,rank", [(12, 9, 3), (16, 40, 8), (40, 16, 1)])
def test_init_draws_the_same_values_in_the_same_order(h_in, h_out, rank):
    old, new, rng_old, rng_new = _pair(h_in=h_in, h_out=h_out, rank=rank)
    _assert_same(old, new)
    assert torch.equal(rng_old, rng_new)  # the same number of draws: later modules see the same stream
    assert new.scale == old.scaling


def test_forward_gradients_adamw_and_merge_are_bit_identical():
    old, new, _, _ = _pair()
    x = torch.randn(3, 5, 12)
    with torch.no_grad():  # B is zero at init: give it values so the low-rank path matters
        for layer in (old, new):
            _tensors(layer)["B"].copy_(torch.randn(3, 9, generator=torch.Generator().manual_seed(7)))
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2) for m in (old, new)]
    for step in range(3):
        outs, grads = [], []
        for layer, opt in zip((old, new), opts):
            xi = x.clone().requires_grad_(True)
            torch.manual_seed(100 + step)  # the same dropout mask for both
            y = layer.train()(xi)
            (y.square().sum() + y.sum()).backward()
            outs.append(y.detach())
            grads.append([xi.grad, _tensors(layer)["A"].grad, _tensors(layer)["B"].grad])
            opt.step()
            opt.zero_grad()
        assert torch.equal(outs[0], outs[1])
        for g_old, g_new in zip(*grads):
            assert torch.equal(g_old, g_new)
        _assert_same(old, new)
    assert torch.equal(old.eval()(x), new.eval()(x))
    torch.manual_seed(5)
    old.merge_and_reset()
    rng_old = torch.get_rng_state()
    torch.manual_seed(5)
    new.merge_and_reset()
    assert torch.equal(rng_old, torch.get_rng_state())
    _assert_same(old, new)
    assert torch.equal(old.eval()(x), new.eval()(x))


def _old_model(monkeypatch, cfg: LlamaConfig, seed: int) -> LlamaLM:
    """A LlamaLM whose LoRA projections are the old class (the model code otherwise today's)."""
    build = crnet_model.build_projection

    def old_build(method, h_in, h_out, rank, layer, name, c):
        if method in ("lora", "relora"):
            return OldLoRALinear(h_in, h_out, rank, c.lora_alpha, c.lora_dropout, c.init_std)
        return build(method, h_in, h_out, rank, layer, name, c)

    with monkeypatch.context() as mp:
        mp.setattr(crnet_model, "build_projection", old_build)
        torch.manual_seed(seed)
        return LlamaLM(cfg)


def _old_key(new_key: str, model: LlamaLM) -> str:
    for mname, m in model.named_modules():
        if isinstance(m, LoRALinear) and new_key.startswith(mname + "."):
            tail = new_key[len(mname) + 1 :]
            back = {v: k for k, v in _new_names(m).items()}
            return f"{mname}.{back[tail]}"
    return new_key


@pytest.mark.parametrize("method", ["lora", "relora"])
def test_whole_model_matches_the_old_class(monkeypatch, method):
    cfg = LlamaConfig.preset("tiny", method=method, vocab_size=64)
    ref = _old_model(monkeypatch, cfg, seed=3)
    rng_ref = torch.get_rng_state()
    torch.manual_seed(3)
    lm = LlamaLM(cfg)
    assert torch.equal(rng_ref, torch.get_rng_state())
    old_sd = ref.state_dict()
    new_sd = lm.state_dict()
    assert len(old_sd) == len(new_sd)
    for k, t in new_sd.items():
        assert torch.equal(t, old_sd[_old_key(k, lm)]), k
    # The trainable parameters come in the same order (optimizer state is saved by position).
    old_train = [p for p in ref.parameters() if p.requires_grad]
    new_train = [p for p in lm.parameters() if p.requires_grad]
    assert [p.shape for p in old_train] == [p.shape for p in new_train]
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    opts = [torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1) for ps in (old_train, new_train)]
    for step in range(3):
        losses = []
        for m, opt in zip((ref, lm), opts):
            torch.manual_seed(50 + step)
            loss = m.train()(ids, ids)[1]
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in m.parameters() if p.requires_grad], 1.0)
            losses.append(loss.detach())
            opt.step()
            opt.zero_grad()
        assert torch.equal(losses[0], losses[1])
    torch.manual_seed(9)
    for m in ref.modules():
        if isinstance(m, OldLoRALinear):
            m.merge_and_reset()
    torch.manual_seed(9)
    lm.merge_and_reset()
    for k, t in lm.state_dict().items():
        assert torch.equal(t, ref.state_dict()[_old_key(k, lm)]), k
    assert torch.equal(ref.eval()(ids)[0], lm.eval()(ids)[0])
    # A checkpoint written with the old parameter names loads into today's model.
    fresh = LlamaLM(cfg)
    missing, unexpected = fresh.load_state_dict(ref.state_dict(), strict=False)
    assert not missing and not unexpected
    assert torch.equal(fresh.eval()(ids)[0], ref(ids)[0])
