"""Meta-World env construction: task names, re-randomised resets, horizon, vectorised envs."""

import numpy as np
import pytest

from pretrainkit.errors import ConfigError
from pretrainkit.systems.l2m import envs

pytest.importorskip("metaworld")


def test_task_lists_match_metaworld():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    assert envs.MT50 == tuple(ALL_V3_ENVIRONMENTS)
    assert len(envs.CW10) == 10 and set(envs.CW10) <= set(envs.MT50)
    assert envs.CW10[0] == "hammer-v3" and envs.CW10[-1] == "peg-unplug-side-v3"
    assert len(envs.MT40) == 40 and not set(envs.MT40) & set(envs.CW10)
    assert set(envs.QUICK_PRETRAIN) <= set(envs.MT40)


def test_unknown_task_is_one_line_config_error():
    with pytest.raises(ConfigError) as e:
        envs.make_env("hamer-v3")
    msg = str(e.value)
    assert "\n" not in msg and "hamer-v3" in msg and "hammer-v3" in msg and "allowed" in msg
    with pytest.raises(ConfigError, match="repeats"):
        envs.check_tasks(["push-v3", "push-v3"])


def test_reset_rerandomises_positions_and_horizon_truncates():
    env = envs.make_env("push-v3", seed=3, horizon=5)
    obs1, _ = env.reset()
    obs2, _ = env.reset()
    assert obs1.shape == (envs.OBS_DIM,) and env.action_space.shape == (envs.ACT_DIM,)
    assert not np.allclose(envs.object_positions(obs1)[:3], envs.object_positions(obs2)[:3])
    assert not np.allclose(obs1[36:], obs2[36:]) and np.abs(obs1[36:]).sum() > 0  # goal observable
    # Same seed -> same sequence of start positions; reset(seed=) re-seeds.
    again = envs.make_env("push-v3", seed=3, horizon=5)
    np.testing.assert_allclose(again.reset()[0], obs1)
    np.testing.assert_allclose(again.reset(seed=3)[0], obs1)
    truncs = [env.step(np.zeros(4, np.float32))[3] for _ in range(5)]
    assert truncs == [False] * 4 + [True]


def test_step_reports_success_and_reward():
    env = envs.make_env("reach-v3", seed=0, horizon=10)
    env.reset()
    _, r, term, trunc, info = env.step(np.zeros(4, np.float32))
    assert np.isfinite(r) and term is False and trunc is False and info["success"] in (0.0, 1.0)


def test_vector_env_copies_have_distinct_seeds():
    venv = envs.make_vector_env("window-close-v3", num_envs=2, seed=0, horizon=3)
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (2, envs.OBS_DIM)
    assert not np.allclose(obs[0, 4:7], obs[1, 4:7])
    for _ in range(3):
        obs, _r, _term, trunc, info = venv.step(np.zeros((2, 4), np.float32))
    assert trunc.all() and info["success"].shape == (2,)
    venv.close()
    with pytest.raises(ConfigError, match="sync"):
        envs.make_vector_env("push-v3", 1, mode="threads")
