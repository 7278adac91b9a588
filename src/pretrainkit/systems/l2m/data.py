"""Per-task trajectory datasets (.npz) and Decision-Transformer context windows.

A task file holds flat per-step arrays ``states (T, S)``, ``actions (T, A)``, ``rewards (T,)``, ``dones (T,)``
(``True`` on each episode's last step) plus optional extras (``success``, ``episode_lengths``, ...). This is
the layout ``collect.py`` writes and L2M's ``.npz`` loader reads. Windows are the K steps ending at a
chosen step, left-padded inside the episode, with returns-to-go divided by ``rtg_scale``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pretrainkit.core.arrays import read_npz
from pretrainkit.errors import ConfigError, DataError

REQUIRED_KEYS = ("states", "actions", "rewards", "dones")
DEFAULT_RTG_SCALE = 200.0  # L2M's Meta-World reward scale (returns of 200-step episodes reach ~1e3)


@dataclass
class TaskData:
    """One task's trajectories as flat per-step arrays plus episode boundaries ``[starts[i], ends[i])``."""

    task: str
    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    success: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.states)

    @property
    def num_episodes(self) -> int:
        return len(self.starts)

    @property
    def state_dim(self) -> int:
        return self.states.shape[1]

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    @property
    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of every episode (e.g. to pick an evaluation target return)."""
        csum = np.concatenate([[0.0], np.cumsum(self.rewards, dtype=np.float64)])
        return (csum[self.ends] - csum[self.starts]).astype(np.float32)

    @property
    def episode_success(self) -> np.ndarray | None:
        """Whether any step of each episode succeeded, or None if the file has no ``success``."""
        if self.success is None:
            return None
        return np.array([self.success[s:e].any() for s, e in zip(self.starts, self.ends)], bool)

    def subset(self, episodes: Sequence[int] | np.ndarray) -> TaskData:
        """A new TaskData holding only the given episodes (in that order); per-step arrays are copied."""
        idx = np.asarray(episodes, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_episodes):
            raise DataError(f"episode index out of range 0..{self.num_episodes - 1} for task '{self.task}'")
        steps = (
            np.concatenate([np.arange(self.starts[i], self.ends[i]) for i in idx])
            if idx.size
            else np.zeros(0, int)
        )
        lens = self.ends[idx] - self.starts[idx]
        ends = np.cumsum(lens)
        return TaskData(
            task=self.task,
            states=self.states[steps],
            actions=self.actions[steps],
            rewards=self.rewards[steps],
            dones=self.dones[steps],
            starts=ends - lens,
            ends=ends,
            success=None if self.success is None else self.success[steps],
            extras={k: v[steps] for k, v in self.extras.items() if len(v) == len(self)},
        )


def split_episodes(data: TaskData, val_fraction: float, seed: int = 0) -> tuple[TaskData, TaskData]:
    """Split whole episodes into (train, held-out) at random; held-out gets at least one episode if possible."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(data.num_episodes)
    n_val = round(val_fraction * data.num_episodes)
    if val_fraction > 0 and data.num_episodes > 1:
        n_val = min(max(n_val, 1), data.num_episodes - 1)
    return data.subset(np.sort(perm[n_val:])), data.subset(np.sort(perm[:n_val]))


def load_task_dataset(path: str | Path, task: str | None = None) -> TaskData:
    """Load and validate one task's ``.npz``; every problem is a one-line DataError naming the file.

    The task name comes from the file's ``task`` entry, else ``task``, else the file stem.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"dataset file not found: {p}")
    arrays = read_npz(
        p,
        required=REQUIRED_KEYS,
        advice="collect it again (delete the file, then "
        "`pretrainkit l2m collect`) or point data.dir at another copy",
    )
    for k, a in arrays.items():
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool or (k == "task" and a.ndim == 0)):
            if k not in REQUIRED_KEYS:
                continue  # extras of other dtypes (names, JSON records) are not read here
            raise DataError(f"{p}: '{k}' must be a numeric array, got dtype {a.dtype}")
    name = str(arrays.pop("task")) if "task" in arrays and arrays["task"].ndim == 0 else (task or p.stem)
    states, actions = arrays.pop("states"), arrays.pop("actions")
    rewards, dones = arrays.pop("rewards"), arrays.pop("dones")
    if states.ndim != 2 or actions.ndim != 2:
        raise DataError(
            f"{p}: states and actions must be 2-D (T, dim), got shapes {states.shape} and {actions.shape}"
        )
    if rewards.ndim != 1 or dones.ndim != 1:
        raise DataError(
            f"{p}: rewards and dones must be 1-D (T,), got shapes {rewards.shape} and {dones.shape}"
        )
    lengths = {"states": len(states), "actions": len(actions), "rewards": len(rewards), "dones": len(dones)}
    success = arrays.pop("success", None)
    if success is not None:
        lengths["success"] = len(success)
    if len(set(lengths.values())) != 1:
        raise DataError(f"{p}: per-step arrays have mismatched lengths {lengths}; all must equal T")
    T = len(states)
    if T == 0:
        raise DataError(f"{p}: dataset is empty (0 steps)")
    for k, a in (("states", states), ("actions", actions), ("rewards", rewards)):
        if not np.isfinite(a).all():
            raise DataError(f"{p}: '{k}' contains NaN or infinite values")
    dones = dones.astype(bool)
    ends = np.flatnonzero(dones) + 1
    if len(ends) == 0 or ends[-1] != T:  # an unterminated tail still counts as an episode
        ends = np.append(ends, T)
    starts = np.concatenate([[0], ends[:-1]])
    if "episode_lengths" in arrays:
        ep_len = arrays["episode_lengths"]
        if ep_len.ndim != 1 or int(ep_len.sum()) != T or not np.array_equal(ep_len, ends - starts):
            raise DataError(
                f"{p}: episode_lengths (sum {int(ep_len.sum())}, {len(ep_len)} episodes) disagree with dones "
                f"({len(starts)} episodes over {T} steps)"
            )
    extras = {k: v for k, v in arrays.items() if v.ndim >= 1 and len(v) == T}
    return TaskData(
        task=name,
        states=states.astype(np.float32, copy=False),
        actions=actions.astype(np.float32, copy=False),
        rewards=rewards.astype(np.float32, copy=False),
        dones=dones,
        starts=starts.astype(np.int64),
        ends=ends.astype(np.int64),
        success=None if success is None else success.astype(bool),
        extras=extras,
    )


def returns_to_go(rewards: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Undiscounted return from each step to its episode's end (reverse cumulative sum within episodes)."""
    rtg = np.zeros(len(rewards), np.float64)
    for s, e in zip(starts, ends):
        rtg[s:e] = np.cumsum(rewards[s:e][::-1], dtype=np.float64)[::-1]
    return rtg.astype(np.float32)


class ContextWindowDataset(Dataset):
    """DT training windows over one or more tasks: item ``i`` is the K-step window ending at global step ``i``.

    Every step is a window end once, so sampling uniformly over items weights episodes by length (as L2M's
    buffer does). Each item is a dict of tensors: ``states (K, S)``, ``actions (K, A)``, ``rtg (K,)``
    (return-to-go / ``rtg_scale``), ``timesteps (K,)`` (step within episode), ``mask (K,)`` (False on left
    padding before the episode start) and ``task_id`` (index into ``tasks`` unless ``task_ids`` is given).
    """

    def __init__(
        self,
        datasets: TaskData | Sequence[TaskData],
        context: int = 5,
        rtg_scale: float = DEFAULT_RTG_SCALE,
        task_ids: Sequence[int] | None = None,
    ):
        if isinstance(datasets, TaskData):
            datasets = [datasets]
        datasets = list(datasets)
        if not datasets:
            raise DataError("ContextWindowDataset needs at least one task dataset")
        if context < 1:
            raise ConfigError(f"context must be >= 1 timestep, got {context}")
        if not rtg_scale > 0:
            raise ConfigError(f"rtg_scale must be > 0, got {rtg_scale}")
        dims = {(d.state_dim, d.act_dim) for d in datasets}
        if len(dims) != 1:
            raise DataError(
                f"tasks differ in (state_dim, act_dim): { {d.task: (d.state_dim, d.act_dim) for d in datasets} }"
            )
        if task_ids is not None and len(task_ids) != len(datasets):
            raise ConfigError(f"task_ids has {len(task_ids)} entries for {len(datasets)} datasets")
        self.tasks = [d.task for d in datasets]
        self.context = int(context)
        self.rtg_scale = float(rtg_scale)
        ids = list(range(len(datasets))) if task_ids is None else [int(i) for i in task_ids]
        offsets = np.cumsum([0] + [len(d) for d in datasets])
        self.states = torch.from_numpy(np.concatenate([d.states for d in datasets]))
        self.actions = torch.from_numpy(np.concatenate([d.actions for d in datasets]))
        self.rtg = torch.from_numpy(
            np.concatenate([returns_to_go(d.rewards, d.starts, d.ends) for d in datasets]) / self.rtg_scale
        )
        ep_start = np.concatenate(
            [np.repeat(d.starts + o, d.ends - d.starts) for d, o in zip(datasets, offsets)]
        )
        self.ep_start = torch.from_numpy(ep_start.astype(np.int64))
        self.timesteps = torch.arange(len(ep_start), dtype=torch.int64) - self.ep_start
        self.task_id = torch.from_numpy(np.repeat(np.asarray(ids, np.int64), [len(d) for d in datasets]))

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.get_batch(torch.tensor([int(i)])).items()}

    def get_batch(self, ends: torch.Tensor) -> dict[str, torch.Tensor]:
        """Windows ending at the given global steps, gathered in one vectorised pass (fast on CPU)."""
        ends = torch.as_tensor(ends, dtype=torch.int64)
        if ends.numel() and (ends.min() < 0 or ends.max() >= len(self)):
            raise IndexError(f"window end out of range 0..{len(self) - 1}")
        pos = ends[:, None] - (self.context - 1) + torch.arange(self.context)  # [B, K]
        mask = pos >= self.ep_start[ends][:, None]
        pos = torch.where(mask, pos, ends[:, None])  # padded slots read a valid row, then get zeroed
        m = mask.unsqueeze(-1)
        return {
            "states": torch.where(m, self.states[pos], 0.0),
            "actions": torch.where(m, self.actions[pos], 0.0),
            "rtg": torch.where(mask, self.rtg[pos], 0.0),
            "timesteps": torch.where(mask, self.timesteps[pos], 0),
            "mask": mask,
            "task_id": self.task_id[ends],
        }

    def sample_batch(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """A batch of windows with ends drawn uniformly over all steps (with replacement)."""
        return self.get_batch(torch.randint(len(self), (batch_size,), generator=generator))
