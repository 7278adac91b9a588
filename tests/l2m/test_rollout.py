"""Closed-loop evaluation on vectorised Meta-World envs."""

import pytest
import torch

from pretrainkit.systems.l2m.model import DecisionTransformer, DTConfig
from pretrainkit.systems.l2m.rollout import evaluate_task

pytest.importorskip("metaworld")


def test_evaluate_task_runs_lockstep_episodes():
    torch.manual_seed(0)
    m = DecisionTransformer(DTConfig(d_model=16, n_layer=1, n_head=2, context=3, dropout=0.0))
    m.train()
    r = evaluate_task(m, "reach-v3", episodes=2, horizon=6, seed=1)
    assert r["episodes"] == 2 and r["env_steps"] == 12 and len(r["episode_success"]) == 2
    assert 0.0 <= r["success"] <= 1.0 and r["mean_return"] > 0
    assert m.training  # mode restored
    again = evaluate_task(m, "reach-v3", episodes=2, horizon=6, seed=1)
    assert again["mean_return"] == pytest.approx(r["mean_return"])
