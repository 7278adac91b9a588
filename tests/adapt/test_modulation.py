"""The L2M modulation pool: per-sample selection, zero-init identity, gradient routing, count penalty, oracle."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pretrainkit.adapt import ModulationPool, inject, load_adapter, merge, save_adapter
from pretrainkit.errors import ConfigError

TARGETS = ["attn.q", "attn.v"]


def _pooled(make_model, n=4, **kw):
    m = make_model()
    pool = ModulationPool(n_modulators=n, key_dim=8, rank=2, **kw)
    inject(m, "modulation", TARGETS, pool=pool)
    inject(m, "modulation", ["mlp.fc"], pool=pool, placement="output")  # L2M's FF form
    return m, pool


def _randomise(pool, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pool.lora_B.values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def test_fresh_pool_leaves_backbone_unchanged(make_model, x):
    base = make_model()
    m, pool = _pooled(make_model)
    assert m.modulation_pool is pool and not any(
        p.requires_grad for n, p in m.named_parameters() if "modulation_pool" not in n
    )
    with pool.using(torch.tensor([0, 1, 2, 3, 0])):
        torch.testing.assert_close(m(x), base(x), rtol=0, atol=0)


def test_outputs_change_only_for_samples_whose_modulator_changed(make_model, x):
    base = make_model()
    m, pool = _pooled(make_model)
    _randomise(pool)
    with pool.using(torch.tensor([0, 1, 2, 3, 1])):
        a = m(x)
    with pool.using(torch.tensor([0, 2, 2, 3, -1])):  # samples 1 and 4 change; -1 = unmodulated
        b = m(x)
    same = torch.tensor([True, False, True, True, False])
    assert torch.equal(a[same], b[same])
    assert not torch.allclose(a[1], b[1]) and not torch.allclose(a[4], b[4])
    torch.testing.assert_close(b[4], base(x)[4], rtol=0, atol=0)
    with pool.bypass():
        torch.testing.assert_close(m(x), base(x), rtol=0, atol=0)


def test_parallel_and_output_placements_match_the_formulas():
    lin = nn.Linear(3, 4)
    for placement in ("parallel", "output"):
        holder = nn.Module()
        holder.lin = lin
        pool = ModulationPool(n_modulators=2, key_dim=3, rank=2, alpha=6.0)
        inject(holder, "modulation", ["lin"], pool=pool, placement=placement)
        _randomise(pool)
        A, B = pool.lora_A["lin"][1], pool.lora_B["lin"][1]
        inp = torch.randn(2, 5, 3)
        y = lin(inp)
        src = inp if placement == "parallel" else y
        with pool.using(torch.tensor([1, 1])):
            torch.testing.assert_close(holder.lin(inp), y + 3.0 * src @ A.T @ B.T)


def test_gradient_reaches_only_selected_modulator_and_key(make_model, x):
    m, pool = _pooled(make_model)
    _randomise(pool)
    pool.train()
    q = torch.randn(5, 8)
    with torch.no_grad():
        pool.keys[2] = q.mean(0) * 10  # every sample picks key 2
    with pool.selecting(q) as sel:
        loss = m(x).pow(2).mean() + 0.5 * sel.key_loss
    assert (sel.indices == 2).all()
    loss.backward()
    for key in pool.lora_A:
        for p in (pool.lora_A[key], pool.lora_B[key]):
            assert p.grad[2].abs().sum() > 0
            assert p.grad[[0, 1, 3]].abs().sum() == 0
    assert pool.keys.grad[2].abs().sum() > 0 and pool.keys.grad[[0, 1, 3]].abs().sum() == 0
    assert all(p.grad is None for n, p in m.named_parameters() if "modulation_pool" not in n)


def test_top1_picks_nearest_key_and_key_loss_pulls_it_closer():
    pool = ModulationPool(n_modulators=5, key_dim=6, rank=2)
    q = torch.randn(8, 6)
    sel = pool.select(q)
    expect = (F.normalize(q, dim=-1) @ F.normalize(pool.keys, dim=-1).T).argmax(-1)
    assert torch.equal(sel.indices[:, 0], expect)
    opt = torch.optim.SGD([pool.keys], lr=0.1)
    before = sel.key_loss.item()
    opt.zero_grad()
    sel.key_loss.backward()
    opt.step()
    assert pool.select(q).key_loss.item() < before


def test_count_penalty_steers_a_tie_to_an_unused_key():
    pool = ModulationPool(n_modulators=3, key_dim=4, rank=1)
    with torch.no_grad():
        pool.keys.copy_(torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1.0]]))
    q = torch.tensor([[1.0, 0, 0, 0]])
    pool.train()
    assert pool.select(q).indices.item() == 0  # task 0: nothing committed yet, first of the tied keys
    pool.commit_task()
    assert pool.counts.tolist() == [1, 0, 0] and pool.task_counts.sum() == 0
    assert pool.select(q).indices.item() == 1  # task 1 training: key 0 is taken
    pool.eval()
    assert pool.select(q).indices.item() == 0  # evaluation: plain cosine, no penalty
    assert ModulationPool(3, 4, rank=1, count_penalty=False).penalty_weights().shape == (3,)


def test_count_penalty_gives_second_task_its_own_keys():
    torch.manual_seed(0)
    pool = ModulationPool(n_modulators=6, key_dim=8, rank=1).train()
    centre = torch.randn(8)
    task0 = centre + 0.05 * torch.randn(32, 8)
    task1 = centre + 0.05 * torch.randn(32, 8)  # similar queries: without the penalty they would share keys
    used0 = set(pool.select(task0).indices.flatten().tolist())
    pool.commit_task()
    used1 = set(pool.select(task1).indices.flatten().tolist())
    assert used1 and not (used0 & used1)


def test_oracle_mode_uses_the_task_slice():
    pool = ModulationPool(n_modulators=3, key_dim=4, rank=1, oracle_tasks=3)
    q = torch.randn(6, 4)
    for t in range(3):
        assert (pool.select(q, task_id=t).indices == t).all()
    pool = ModulationPool(n_modulators=6, key_dim=4, rank=1, oracle_tasks=3)
    assert set(pool.select(q, task_id=1).indices.flatten().tolist()) <= {2, 3}
    with pytest.raises(ConfigError, match="pool size 2 < 3 tasks"):
        ModulationPool(n_modulators=2, key_dim=4, oracle_tasks=3)
    with pytest.raises(ConfigError, match="task_id"):
        pool.select(q)


def test_top_k_averages_the_selected_deltas(make_model, x):
    m, pool = _pooled(make_model, top_k=2)
    _randomise(pool)
    lin = m.blocks[0].attn.q
    h = torch.randn(5, 6, 8)
    with pool.using(torch.tensor([[0, 1]] * 5)):
        both = lin(h) - lin.base(h)
    parts = []
    for i in (0, 1):
        with pool.using(torch.full((5,), i)):
            parts.append(lin(h) - lin.base(h))
    torch.testing.assert_close(both, (parts[0] + parts[1]) / 2)


def test_misuse_gives_clear_errors(make_model, x):
    m, pool = _pooled(make_model)
    with pytest.raises(ConfigError, match="no modulator selected"):
        m(x)
    with (
        pool.using(torch.tensor([0, 1])),
        pytest.raises(ConfigError, match="first dimension must be the batch"),
    ):
        m(x)
    with pytest.raises(ConfigError, match="query must have shape"):
        pool.select(torch.randn(5, 7))
    with pytest.raises(ConfigError, match="indices"):
        pool.indices = torch.tensor([4])
    with pytest.raises(ConfigError, match="cannot be merged"):
        merge(m)
    with pytest.raises(ConfigError, match="placement"):
        inject(make_model(), "modulation", TARGETS, n_modulators=2, key_dim=8, placement="pre")
    with pytest.raises(ConfigError, match="unknown option"):
        inject(make_model(), "modulation", TARGETS, n_modulators=2, key_dim=8, ranks=2)


def test_pool_built_from_options_saves_and_reloads(make_model, x, tmp_path):
    m = make_model()
    inject(m, "modulation", TARGETS, n_modulators=3, key_dim=8, rank=2)
    pool = m.modulation_pool
    _randomise(pool)
    pool.train()
    pool.select(torch.randn(5, 8))
    pool.commit_task()
    save_adapter(m, tmp_path / "pool.safetensors")

    fresh = make_model()
    load_adapter(fresh, tmp_path / "pool.safetensors")
    p2 = fresh.modulation_pool
    assert torch.equal(p2.counts, pool.counts) and torch.equal(p2.keys, pool.keys)
    idx = torch.tensor([0, 1, 2, 1, 0])
    with pool.using(idx), p2.using(idx):
        torch.testing.assert_close(fresh(x), m(x), rtol=0, atol=0)


def test_merge_is_all_or_nothing_and_sequential_needs_a_home(make_model, x):
    m = make_model()
    inject(m, "lora", ["attn.q"], rank=2)
    inject(m, "modulation", ["mlp.fc"], n_modulators=2, key_dim=8, rank=2)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_()
    with m.modulation_pool.using(torch.zeros(5, dtype=torch.long)):
        before = m(x)
        with pytest.raises(ConfigError, match="cannot be merged"):
            merge(m)
        torch.testing.assert_close(m(x), before, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="Sequential"):
        inject(nn.Sequential(nn.Linear(2, 2)), "modulation", ["0"], n_modulators=2, key_dim=2)


def test_deepcopy_keeps_layers_pointing_at_their_own_pool(make_model):
    import copy

    m, pool = _pooled(make_model)
    m2 = copy.deepcopy(m)
    assert m2.blocks[1].mlp.fc.pool is m2.modulation_pool and m2.modulation_pool is not pool
