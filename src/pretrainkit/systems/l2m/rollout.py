"""Closed-loop evaluation of a Decision Transformer on vectorised Meta-World envs.

All ``episodes`` envs of a task step in lock-step (one batched ``act`` per env step, so the DT's cost is
amortised over episodes); an episode counts as a success if any step succeeds (Continual World's rule).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np
import torch

from pretrainkit.errors import ConfigError
from pretrainkit.systems.l2m.envs import HORIZON, make_vector_env


class Actor(Protocol):
    """Anything with the DecisionTransformer ``act`` signature and ``cfg.context`` / ``cfg.act_dim``."""

    cfg: Any

    def act(self, states, rtgs, actions, timesteps, mask=None) -> torch.Tensor: ...


@torch.no_grad()
def evaluate_task(
    model: Actor,
    task: str,
    episodes: int = 10,
    target_return: float = 1500.0,
    rtg_scale: float = 200.0,
    seed: int = 0,
    horizon: int = HORIZON,
    device: str | torch.device = "cpu",
    stop_on_success: bool = False,
    env: Any = None,
) -> dict[str, Any]:
    """Success rate and mean return of ``model`` over ``episodes`` parallel episodes of ``task``.

    The return-to-go starts at ``target_return`` and drops by each reward (both divided by ``rtg_scale``,
    as in training). Env ``i`` is seeded ``seed + i``, so the same seed gives the same start positions.
    ``stop_on_success``: an episode that has succeeded is settled (success = any step), so the policy stops
    running for it (it idles with zero actions) and the loop ends once all have succeeded. Success is the
    same as without it, at a fraction of the CPU; ``mean_return`` then covers the steps played only.
    ``env``: a ``make_vector_env(task, episodes, horizon=horizon)`` to reuse (left open): building MuJoCo
    envs costs ~0.17 s each, as much as a whole evaluation's simulation. Results equal a fresh env's.
    """
    if episodes < 1:
        raise ConfigError(f"episodes must be >= 1, got {episodes}")
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    K, A = model.cfg.context, model.cfg.act_dim
    own_env = env is None
    if own_env:
        env = make_vector_env(task, episodes, seed=seed, horizon=horizon)
    elif env.num_envs != episodes:
        raise ConfigError(f"the given vector env has {env.num_envs} copies, not episodes={episodes}")
    try:
        obs, _ = env.reset(seed=seed)
        n = episodes
        S = obs.shape[1]
        # Rolling K-step history; left slots stay masked until the episode has that many steps.
        states = torch.zeros(n, K, S, device=device)
        actions = torch.zeros(n, K, A, device=device)
        rtg = torch.zeros(n, K, device=device)
        steps = torch.zeros(n, K, dtype=torch.long, device=device)
        mask = torch.zeros(n, K, dtype=torch.bool, device=device)
        cur_rtg = torch.full((n,), target_return / rtg_scale, device=device)
        success = np.zeros(n, bool)
        ret = np.zeros(n)
        t0, act_time = time.perf_counter(), 0.0
        for t in range(horizon):
            if t > 0:  # shift the window left by one step
                for buf in (states, actions, rtg, steps, mask):
                    buf[:, :-1] = buf[:, 1:].clone()
            states[:, -1] = torch.as_tensor(obs, dtype=torch.float32, device=device)
            actions[:, -1] = 0.0
            rtg[:, -1] = cur_rtg
            steps[:, -1] = t
            mask[:, -1] = True
            a0 = time.perf_counter()
            if stop_on_success and success.any():
                live = torch.from_numpy(np.flatnonzero(~success)).to(device)
                a = torch.zeros(n, A, device=device)
                a[live] = model.act(states[live], rtg[live], actions[live], steps[live], mask[live])
            else:
                a = model.act(states, rtg, actions, steps, mask)
            act_time += time.perf_counter() - a0
            actions[:, -1] = a
            obs, r, term, trunc, info = env.step(a.clamp(-1, 1).cpu().numpy().astype(np.float32))
            success |= np.asarray(info["success"], dtype=float) > 0
            ret += r
            cur_rtg = cur_rtg - torch.as_tensor(r, dtype=torch.float32, device=device) / rtg_scale
            if np.all(term | trunc) or (stop_on_success and success.all()):
                break
        wall = time.perf_counter() - t0
    finally:
        if own_env:
            env.close()
        if was_training and hasattr(model, "train"):
            model.train()
    env_steps = n * (t + 1)
    return {
        "task": task,
        "episodes": n,
        "success": float(success.mean()),
        "episode_success": success.tolist(),
        "mean_return": float(ret.mean()),
        "env_steps": env_steps,
        "seconds": round(wall, 3),
        "policy_seconds": round(act_time, 3),
        "env_steps_per_s": round(env_steps / max(wall - act_time, 1e-9), 1),  # simulator only
    }
