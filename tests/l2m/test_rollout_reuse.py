"""Reusing a vector env across evaluations gives the fresh env's results; stop-on-success keeps success."""

import warnings

import numpy as np
import pytest
import torch

from pretrainkit.errors import ConfigError
from pretrainkit.systems.l2m.envs import make_vector_env
from pretrainkit.systems.l2m.model import DecisionTransformer, DTConfig
from pretrainkit.systems.l2m.rollout import evaluate_task

pytest.importorskip("metaworld")


class Expert:
    """Meta-World's scripted policy as an Actor; counts the rows it acts for."""

    def __init__(self, task: str):
        from metaworld.policies import ENV_POLICY_MAP

        self.policy, self.cfg, self.rows = ENV_POLICY_MAP[task](), DTConfig(context=2), 0

    def act(self, states, rtgs, actions, timesteps, mask=None):
        self.rows += len(states)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = [np.clip(self.policy.get_action(s.numpy()), -1, 1) for s in states[:, -1]]
        return torch.tensor(np.stack(a), dtype=torch.float32)


def test_reused_env_matches_fresh_env():
    torch.manual_seed(0)
    dt = DecisionTransformer(DTConfig(d_model=16, n_layer=1, n_head=2, context=3, dropout=0.0)).eval()
    env = make_vector_env("reach-v3", 3, horizon=8)
    try:
        fresh = evaluate_task(dt, "reach-v3", 3, seed=4, horizon=8)
        evaluate_task(dt, "reach-v3", 3, seed=11, horizon=5, env=env)  # leave it mid-episode
        reused = evaluate_task(dt, "reach-v3", 3, seed=4, horizon=8, env=env)
        assert reused["episode_success"] == fresh["episode_success"]
        assert reused["mean_return"] == pytest.approx(fresh["mean_return"])
        with pytest.raises(ConfigError, match="3 copies, not episodes=2"):
            evaluate_task(dt, "reach-v3", 2, horizon=8, env=env)
    finally:
        env.close()


def test_stop_on_success_keeps_success_and_skips_settled_episodes():
    full = evaluate_task(Expert("reach-v3"), "reach-v3", 3, seed=2, horizon=80)
    expert = Expert("reach-v3")
    stopped = evaluate_task(expert, "reach-v3", 3, seed=2, horizon=80, stop_on_success=True)
    assert full["success"] == stopped["success"] == 1.0
    assert stopped["env_steps"] < full["env_steps"] and expert.rows < stopped["env_steps"]
