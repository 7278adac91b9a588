"""Small synthetic task files in the collector's .npz layout, for tests that must not run Meta-World."""

import json
import zlib

import numpy as np


def write_task(
    path, task: str, offset: float, episodes: int = 5, length: int = 16, gain: float = 1.0
) -> None:
    """``episodes`` x ``length`` steps of 39-d states around ``offset``; expert actions tanh(gain * state[:4])
    (a function of the state a small MLP can fit), behaviour actions offset from them by 0.05."""
    g = np.random.default_rng(zlib.crc32(task.encode()))  # stable across processes, unlike hash()
    n = episodes * length
    states = g.normal(offset, 0.3, (n, 39)).astype(np.float32)
    expert = np.tanh(gain * states[:, :4]).astype(np.float32)
    dones = np.zeros(n, bool)
    dones[length - 1 :: length] = True
    meta = {"task": task, "steps": n, "cpu_seconds": 0.1, "episodes": episodes}
    np.savez(
        path / f"{task}.npz",
        states=states,
        actions=expert + 0.05,
        expert_actions=expert,
        rewards=np.ones(n, np.float32),
        dones=dones,
        success=np.ones(n, bool),
        task=np.array(task),
        meta_json=np.array(json.dumps(meta)),
    )
