"""Continual methods on a tiny DT and synthetic tasks (no simulator): parameters, penalties, routing, errors."""

import numpy as np
import pytest
import torch

from pretrainkit.core.config import load_config
from pretrainkit.errors import ConfigError, PretrainkitError
from pretrainkit.systems.l2m.config import L2MConfig, MethodSection
from pretrainkit.systems.l2m.data import ContextWindowDataset, TaskData
from pretrainkit.systems.l2m.methods import METHODS, PRETRAIN, L2MMethod, L2MOracle
from pretrainkit.systems.l2m.model import DecisionTransformer, DTConfig

TINY = DTConfig(
    state_dim=6, act_dim=3, d_model=16, n_layer=2, n_head=2, context=3, max_timestep=50, dropout=0.0
)
ADAPTER_MARKS = ("lora_", "ia3_", "prompts.", "modulation_pool.")


def synthetic_task(name: str, offset: float, seed: int, episodes: int = 4, length: int = 12) -> TaskData:
    """States around ``offset`` in the first half of the dims; actions a fixed function of the state."""
    g = np.random.default_rng(seed)
    n = episodes * length
    states = g.normal(0.0, 0.3, (n, 6)).astype(np.float32)
    states[:, :3] += offset
    actions = np.tanh(states[:, :3] * np.sign(offset or 1.0)).astype(np.float32)
    ends = np.arange(1, episodes + 1) * length
    dones = np.zeros(n, bool)
    dones[ends - 1] = True
    return TaskData(name, states, actions, np.ones(n, np.float32), dones, ends - length, ends)


def batch(data: TaskData, n: int = 16, seed: int = 0) -> dict:
    return ContextWindowDataset(data, context=3).sample_batch(n, torch.Generator().manual_seed(seed))


def make(name: str, n_tasks: int = 2, queries=None, **cfg):
    torch.manual_seed(0)
    dt = DecisionTransformer(TINY)
    return dt, METHODS.get(name)(dt, MethodSection(**{"pool_size": 4, "rank": 2, **cfg}), n_tasks, queries)


@pytest.mark.parametrize("name", METHODS.names())
def test_trainable_parameters(name):
    _, m = make(name)
    train = {n for n, p in m.named_parameters() if p.requires_grad}
    assert train and m.trainable_parameters() == sum(p.numel() for p in m.parameters() if p.requires_grad)
    if m.frozen_backbone:
        assert all(any(k in n for k in ADAPTER_MARKS) for n in train), sorted(train)
        assert not any(
            p.requires_grad for n, p in m.dt.named_parameters() if not any(k in n for k in ADAPTER_MARKS)
        )
    else:
        assert train == {n for n, _ in m.named_parameters()}  # the whole backbone
    loss, metrics = m(batch(synthetic_task("a", 1.0, 0)))
    assert torch.isfinite(loss) and "bin_acc" in metrics
    loss.backward()
    assert all(p.grad is None for p in m.parameters() if not p.requires_grad)


@pytest.mark.parametrize("name", ["lora", "ia3", "l2m", "l2m-oracle"])
def test_fresh_adapters_leave_predictions_unchanged(name):
    _, m = make(name)
    torch.manual_seed(0)
    base = DecisionTransformer(TINY).eval()
    m.eval()
    b = batch(synthetic_task("a", 1.0, 0))
    pred, _ = m.predict(b, 0)
    torch.testing.assert_close(pred, base(b["states"], b["actions"], b["rtg"], b["timesteps"], b["mask"]))


@pytest.mark.parametrize("name", ["ewc", "l2"])
def test_penalty_is_zero_at_the_anchor_and_grows_away_from_it(name):
    _, m = make(name, fisher_batches=2, fisher_batch_size=4)
    data = ContextWindowDataset(synthetic_task("a", 1.0, 0), context=3)
    assert m.penalty() is None  # nothing consolidated yet
    m.begin_task(0, data)
    m.end_task(0, data)
    assert m.penalty().item() == 0.0
    with torch.no_grad():
        m.dt.head.weight.add_(0.1)
    assert m.penalty().item() > 0
    _, m2 = make(name)  # same initial weights: the anchor
    m2.load_extra_state_dict(m.extra_state_dict())
    assert m2.penalty().item() == 0.0
    with torch.no_grad():
        m2.dt.head.weight.add_(0.1)
    assert m2.penalty().item() == pytest.approx(m.penalty().item(), rel=1e-5)


def _train(m, data: TaskData, task_id: int, steps: int = 30) -> None:
    ds = ContextWindowDataset(data, context=3)
    m.begin_task(task_id, ds)
    m.train()
    opt = torch.optim.Adam(m.param_groups())
    g = torch.Generator().manual_seed(task_id)
    for _ in range(steps):
        loss, _ = m(ds.sample_batch(16, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.end_task(task_id, ds)


def test_l2m_routes_two_tasks_to_distinct_modulators_and_pretraining_to_none():
    tasks = [synthetic_task("a", 2.0, 0), synthetic_task("b", -2.0, 1)]
    pre = synthetic_task("p", 0.0, 2)
    torch.manual_seed(0)
    dt0 = DecisionTransformer(TINY)  # the same backbone make() builds
    b_pre = batch(pre, 64)
    queries = dt0.state_embedding(b_pre["states"], b_pre["timesteps"], b_pre["mask"]).mean(0, keepdim=True)
    _, m = make("l2m", queries=queries, pool_size=8, lr_adapter=1e-2, key_lr=5e-2, pretrain_eval="routed")
    for i, t in enumerate(tasks):
        _train(m, t, i)
    m.eval()
    picked = []
    for i, t in enumerate(tasks):
        idx = m.selected_keys(batch(t, 64, seed=5), i)
        top = torch.mode(idx).values.item()
        assert top >= 0 and (idx == top).float().mean() > 0.9
        picked.append(top)
    assert picked[0] != picked[1]
    assert (m.selected_keys(b_pre, PRETRAIN) == -1).float().mean() > 0.9  # pre-training data: unmodulated
    counts = m.pool.counts
    assert counts.sum() == 2 * 30 * 16 and counts[picked[0]] > 0 and counts[picked[1]] > 0
    # the first task's modulator is not touched by training the second (count penalty steers it away)
    before = {k: v[picked[0]].clone() for k, v in m.pool.lora_B.items()}
    _train(m, synthetic_task("c", 4.0, 3), 1, steps=5)
    assert all(torch.equal(before[k], m.pool.lora_B[k][picked[0]]) for k in before)


def test_actor_acts_and_tallies_keys():
    _, m = make("l2m")
    actor = m.actor(0).eval()
    B, K = 5, 3
    states = torch.randn(B, K, 6)
    a = actor.act(
        states,
        torch.zeros(B, K),
        torch.zeros(B, K, 3),
        torch.arange(K).repeat(B, 1),
        torch.ones(B, K, dtype=torch.bool),
    )
    assert a.shape == (B, 3) and a.abs().max() <= 1 and sum(actor.usage.values()) == B
    assert not actor.training


def test_oracle_needs_a_modulator_per_task():
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match="at least one modulator per task"):
        L2MOracle(DecisionTransformer(TINY), MethodSection(pool_size=2), n_tasks=3)
    L2MMethod(DecisionTransformer(TINY), MethodSection(pool_size=2), n_tasks=3)  # routed L2M does not care
    with pytest.raises(ConfigError, match="l2m-oracle needs method.pool_size >= number of continual tasks"):
        load_config(
            L2MConfig,
            None,
            ["method.pool_size=2", "data.continual_tasks=[hammer-v3,push-wall-v3,faucet-close-v3]"],
        )


def test_config_rejects_unknown_names():
    with pytest.raises(ConfigError, match="unknown Meta-World task 'hamer-v3'.*hammer-v3"):
        load_config(L2MConfig, None, ["data.continual_tasks=[hamer-v3]"])
    with pytest.raises(PretrainkitError, match="unknown continual method 'packnet'; allowed: ewc, ft, ia3"):
        load_config(L2MConfig, None, ["continual.methods=[ft,packnet]"])
    with pytest.raises(ConfigError, match="both pre-training and continual"):
        load_config(L2MConfig, None, ["data.pretrain_tasks=[hammer-v3]"])
