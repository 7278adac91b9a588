"""Meta-World v3 environments as L2M / Continual World use them.

Every env is goal-observable, has a 200-step horizon and draws fresh object/goal positions at every reset
(Continual World's ``random_init_all``), from the env's own seeded generator so runs are reproducible and the
global NumPy state is never touched. Meta-World is imported lazily: name checks work without it.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from functools import cache, partial
from typing import Any, Literal

import numpy as np

from pretrainkit.errors import ConfigError

HORIZON = 200
OBS_DIM = 39
ACT_DIM = 4

# Continual World's CW10 sequence, in order (v3 names of metaworld 3.x).
CW10: tuple[str, ...] = (
    "hammer-v3",
    "push-wall-v3",
    "faucet-close-v3",
    "push-back-v3",
    "stick-pull-v3",
    "handle-press-side-v3",
    "push-v3",
    "shelf-place-v3",
    "window-close-v3",
    "peg-unplug-side-v3",
)

# All 50 v3 tasks in metaworld's own order (a test checks this against metaworld.env_dict).
MT50: tuple[str, ...] = (
    "assembly-v3",
    "basketball-v3",
    "bin-picking-v3",
    "box-close-v3",
    "button-press-topdown-v3",
    "button-press-topdown-wall-v3",
    "button-press-v3",
    "button-press-wall-v3",
    "coffee-button-v3",
    "coffee-pull-v3",
    "coffee-push-v3",
    "dial-turn-v3",
    "disassemble-v3",
    "door-close-v3",
    "door-lock-v3",
    "door-open-v3",
    "door-unlock-v3",
    "hand-insert-v3",
    "drawer-close-v3",
    "drawer-open-v3",
    "faucet-open-v3",
    "faucet-close-v3",
    "hammer-v3",
    "handle-press-side-v3",
    "handle-press-v3",
    "handle-pull-side-v3",
    "handle-pull-v3",
    "lever-pull-v3",
    "pick-place-wall-v3",
    "pick-out-of-hole-v3",
    "pick-place-v3",
    "plate-slide-v3",
    "plate-slide-side-v3",
    "plate-slide-back-v3",
    "plate-slide-back-side-v3",
    "peg-insert-side-v3",
    "peg-unplug-side-v3",
    "soccer-v3",
    "stick-push-v3",
    "stick-pull-v3",
    "push-v3",
    "push-wall-v3",
    "push-back-v3",
    "reach-v3",
    "reach-wall-v3",
    "shelf-place-v3",
    "sweep-into-v3",
    "sweep-v3",
    "window-open-v3",
    "window-close-v3",
)

# L2M's pre-training pool: MT50 minus CW10 ("MT40").
MT40: tuple[str, ...] = tuple(t for t in MT50 if t not in CW10)

# A small pre-training set for CPU runs: distinct objects (so mean state embeddings separate tasks) and
# scripted experts at 1.0 success at H=200 (paper note, section 7.2).
QUICK_PRETRAIN: tuple[str, ...] = (
    "drawer-close-v3",
    "drawer-open-v3",
    "button-press-topdown-v3",
    "door-open-v3",
    "dial-turn-v3",
    "lever-pull-v3",
    "window-open-v3",
    "plate-slide-v3",
)

VectorMode = Literal["sync", "async"]


def check_task(name: str) -> str:
    """Return ``name`` if it is a Meta-World v3 task, else raise a one-line ConfigError listing the choices."""
    if name in MT50:
        return name
    close = difflib.get_close_matches(str(name), MT50, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(
        f"unknown Meta-World task '{name}'{hint}; allowed: the 50 MT50 v3 names, e.g. "
        f"{', '.join(MT50[:4])}, ... (CW10: {', '.join(CW10)})"
    )


def check_tasks(names: Sequence[str]) -> list[str]:
    """Validate a list of task names (see ``check_task``); duplicates are an error too."""
    if isinstance(names, str):
        names = [names]
    out = [check_task(n) for n in names]
    dup = sorted({n for n in out if out.count(n) > 1})
    if dup:
        raise ConfigError(f"task list repeats {', '.join(dup)}; each task may appear once")
    return out


@cache
def _wrapper_cls():
    import gymnasium as gym

    class _Reseed(gym.Wrapper):
        """Lets ``reset(seed=s)`` re-seed the position sampler (raw Meta-World ignores the reset seed)."""

        def __init__(self, env, task: str):
            super().__init__(env)
            self.task = task

        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
            if seed is not None:
                self.env.unwrapped.seed(int(seed))
            return self.env.reset()

    return _Reseed


def make_env(task: str, seed: int = 0, horizon: int = HORIZON):
    """A goal-observable Meta-World v3 env with ``horizon`` steps and new object/goal positions every reset.

    Reproduces Continual World's ``random_init_all``: the task is set once, then the random-position vector is
    unfrozen and drawn from the env's own generator seeded with ``seed``. Returns a gymnasium env whose
    ``step`` reports ``truncated=True`` at the horizon and ``info["success"]`` in {0.0, 1.0}.
    """
    check_task(task)
    if horizon < 1:
        raise ConfigError(f"horizon must be >= 1, got {horizon}")
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    env = ALL_V3_ENVIRONMENTS[task]()
    # Same state MT1's set_task + _MT_OVERRIDE would give, without generating 50 fixed goals first.
    env._partially_observable = False  # goal position in obs[36:39], as in MT benchmarks and CW
    del env.sawyer_observation_space  # cached property depends on observability
    env.observation_space = env.sawyer_observation_space
    env._set_task_called = True
    env._freeze_rand_vec = False  # random_init_all: resample positions at every reset
    env.seeded_rand_vec = True  # ... from env.np_random, not the global NumPy generator
    env.max_path_length = int(horizon)
    env.seed(int(seed))
    return _wrapper_cls()(env, task)


def _make_one(task: str, seed: int, horizon: int):
    return make_env(task, seed, horizon)


def make_vector_env(
    task: str | Sequence[str],
    num_envs: int = 1,
    seed: int = 0,
    horizon: int = HORIZON,
    mode: VectorMode = "sync",
):
    """A gymnasium vector env: ``num_envs`` copies of one task, or one copy per task of a list.

    Copy ``i`` is seeded ``seed + i``. ``mode="sync"`` (default) steps in-process: on 1-2 shared cores it is
    faster than ``"async"`` (one subprocess per env), whose pipe traffic costs more than a 0.3-1 ms MuJoCo step.
    All copies reach the horizon together, so an evaluation loop steps exactly ``horizon`` times.
    """
    import gymnasium as gym

    tasks = [task] * num_envs if isinstance(task, str) else list(task)
    if not tasks:
        raise ConfigError("make_vector_env needs at least one env (num_envs >= 1 or a non-empty task list)")
    for t in set(tasks):
        check_task(t)
    fns = [partial(_make_one, t, seed + i, horizon) for i, t in enumerate(tasks)]
    if mode == "sync":
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    if mode == "async":
        return gym.vector.AsyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    raise ConfigError(f"vector mode must be 'sync' or 'async', got '{mode}'")


def object_positions(obs: np.ndarray) -> np.ndarray:
    """The object-pose part of a Meta-World observation (obs[4:18]); handy to check resets re-randomise."""
    return np.asarray(obs)[..., 4:18]


def versions() -> dict[str, str]:
    """Installed simulator versions, to record next to results (numbers are not comparable across them)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("metaworld", "mujoco", "gymnasium"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "missing"
    return out
