"""l2m.action: L2M's behaviour-cloning objective as a registered task. BehaviourCloning (now a one-task mix)
equals ``dt.loss`` of before bit for bit (loss, metrics, every gradient over optimiser steps, dropout on) and
keeps its ``dt.`` checkpoint keys."""

import copy

import pytest
import torch
import torch.nn.functional as F

from pretrainkit.core.task import TASKS
from pretrainkit.errors import ConfigError
from pretrainkit.systems.l2m.model import DecisionTransformer, DTConfig, decode_bins, encode_actions
from pretrainkit.systems.l2m.pipeline import BehaviourCloning
from pretrainkit.systems.l2m.tasks import ActionTask

torch.set_num_threads(1)
SMALL = {
    "state_dim": 6,
    "act_dim": 3,
    "d_model": 32,
    "n_layer": 2,
    "n_head": 2,
    "context": 4,
    "max_timestep": 50,
    "dropout": 0.1,
}


def window_batch(seed: int, B: int = 5, K: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, K, dtype=torch.bool)
    mask[0, :2] = False  # a padded episode start
    return {
        "states": torch.randn(B, K, 6, generator=g),
        "actions": torch.rand(B, K, 3, generator=g) * 2.2 - 1.1,
        "rtg": torch.rand(B, K, generator=g),
        "timesteps": torch.arange(K).repeat(B, 1) + 3,
        "mask": mask,
    }


def old_loss(dt: DecisionTransformer, b: dict[str, torch.Tensor]):
    """``dt.loss(batch)`` before the task mix: the teacher-forced pass and the inline action loss."""
    cfg = dt.cfg
    pred = dt(b["states"], b["actions"], b["rtg"], b["timesteps"], b.get("mask"))
    actions, valid = b["actions"], b["mask"].bool()
    with torch.no_grad():
        if cfg.head == "discrete":
            target = encode_actions(actions, cfg.n_bins)
            decoded = decode_bins(pred.argmax(-1), cfg.n_bins, cfg.bin_decode)
        else:
            decoded = pred
    if cfg.head == "discrete":
        loss = F.cross_entropy(pred[valid].reshape(-1, cfg.n_bins), target[valid].reshape(-1))
        acc = (pred[valid].argmax(-1) == target[valid]).float().mean().item()
        metrics = {"action_ce": loss.item(), "bin_acc": acc}
    else:
        loss = F.mse_loss(pred[valid], actions[valid].clamp(-1, 1))
        metrics = {"action_mse": loss.item()}
    metrics["action_mae"] = (decoded[valid] - actions[valid]).abs().mean().item()
    return loss, metrics


def test_action_task_is_registered_and_checks_its_options():
    assert isinstance(TASKS.build("l2m.action", n_bins=16), ActionTask) and ActionTask().shares_input
    with pytest.raises(ConfigError, match="head"):
        ActionTask(head="gaussian")
    with pytest.raises(ConfigError, match="bin_decode"):
        ActionTask(bin_decode="upper")


@pytest.mark.parametrize(
    "head,decode", [("discrete", "center"), ("discrete", "lower"), ("continuous", "center")]
)
def test_behaviour_cloning_equals_the_old_dt_loss_bit_for_bit(head, decode):
    torch.manual_seed(0)
    new = BehaviourCloning(DecisionTransformer(DTConfig(**SMALL, head=head, bin_decode=decode)))
    old = copy.deepcopy(new)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (old, new)]
    for step in range(3):
        b = window_batch(step)
        torch.manual_seed(40 + step)  # dropout draws from the global RNG
        lo, mo = old_loss(old.dt, b)
        torch.manual_seed(40 + step)
        ln, mn = new(b)
        assert torch.equal(ln, lo)
        for k, v in mo.items():
            assert float(mn[f"l2m.action/{k}"]) == v, k
        torch.manual_seed(40 + step)
        assert old.dt.loss(b)[1] == mo  # the DT's own float-metric loss is unchanged too
        for opt, loss in zip(opts, (lo, ln)):
            opt.zero_grad(set_to_none=True)
            loss.backward()
        for (n, po), (_, pn) in zip(old.named_parameters(), new.named_parameters()):
            assert torch.equal(po.grad, pn.grad), n
        for opt in opts:
            opt.step()


def test_checkpoint_keys_keep_the_dt_prefix_and_the_dt_reads_a_batch():
    dt = DecisionTransformer(DTConfig(**{**SMALL, "dropout": 0.0}))
    model = BehaviourCloning(dt)
    assert set(model.state_dict()) == {f"dt.{k}" for k in dt.state_dict()} and model.dt is dt
    b = window_batch(1)
    assert torch.equal(dt(b), dt(b["states"], b["actions"], b["rtg"], b["timesteps"], b["mask"]))
