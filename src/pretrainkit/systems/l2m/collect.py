"""Offline dataset collection with Meta-World's scripted expert policies.

L2M's replay-buffer data cannot be downloaded, so we regenerate it: each task's scripted expert drives the
env for whole 200-step episodes, with Gaussian action noise at several levels so the data is not one narrow
deterministic path (the DT then sees recoveries and RTG carries information). One ``<task>.npz`` per task,
one process per task, a progress bar over episodes, and resumable: a task whose file exists is skipped, and a
file only appears once it is complete (written to a temp name, then renamed).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import queue
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from pretrainkit.core.arrays import read_npz
from pretrainkit.core.io import atomic_write, atomic_write_text
from pretrainkit.errors import ConfigError, DataError
from pretrainkit.systems.l2m.envs import HORIZON, MT50, check_tasks, make_env, versions

SUMMARY_NAME = "collection.json"
DEFAULT_NOISE = (0.0, 0.1, 0.3)

_progress_queue: Any = None  # set in each worker process so it can report finished episodes


def task_file(out_dir: str | Path, task: str) -> Path:
    """Where ``task``'s dataset lives inside ``out_dir``."""
    return Path(out_dir) / f"{task}.npz"


def _task_seed(seed: int, task: str) -> np.random.SeedSequence:
    # Depends on the task's name, not its position in the request, so a resumed or reordered run
    # produces the same episodes for the same task.
    return np.random.SeedSequence([int(seed), MT50.index(task)])


def _expert(task: str):
    from metaworld.policies import ENV_POLICY_MAP

    return ENV_POLICY_MAP[task]()


def collect_task(
    task: str,
    out_path: str | Path,
    episodes: int,
    noise_levels: Sequence[float] = DEFAULT_NOISE,
    seed: int = 0,
    horizon: int = HORIZON,
) -> dict[str, Any]:
    """Roll out the scripted expert for ``episodes`` episodes of ``task`` and write one ``.npz`` atomically.

    Episode ``i`` uses noise std ``noise_levels[i % len(noise_levels)]``; executed (noisy) actions are clipped
    to [-1, 1] and stored as ``actions``, the clean expert action as ``expert_actions``. Returns the task's
    summary record (also stored in the file as ``meta_json``).
    """
    warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")  # expert P-gains, per step
    ss = _task_seed(seed, task)
    env_seed = int(ss.generate_state(1)[0])
    rng = np.random.default_rng(ss.spawn(1)[0])
    env = make_env(task, env_seed, horizon)
    policy = _expert(task)
    obs_dim = env.observation_space.shape[0]
    act_dim = env.action_space.shape[0]
    n = episodes * horizon
    states = np.zeros((n, obs_dim), np.float32)
    actions = np.zeros((n, act_dim), np.float32)
    expert_actions = np.zeros((n, act_dim), np.float32)
    rewards = np.zeros(n, np.float32)
    dones = np.zeros(n, bool)
    success = np.zeros(n, bool)
    ep_len = np.zeros(episodes, np.int64)
    ep_noise = np.zeros(episodes, np.float32)
    ep_success = np.zeros(episodes, bool)
    ep_return = np.zeros(episodes, np.float32)

    wall0, cpu0 = time.perf_counter(), time.process_time()
    t = 0
    for ep in range(episodes):
        sigma = float(noise_levels[ep % len(noise_levels)])
        obs, _ = env.reset()
        start = t
        for _ in range(horizon):
            clean = np.clip(policy.get_action(obs), -1.0, 1.0).astype(np.float32)
            act = clean if sigma == 0 else np.clip(clean + rng.normal(0.0, sigma, act_dim), -1.0, 1.0)
            next_obs, r, terminated, truncated, info = env.step(act.astype(np.float32))
            states[t], actions[t], expert_actions[t] = obs, act, clean
            rewards[t], success[t] = r, bool(info["success"])
            t += 1
            obs = next_obs
            if terminated or truncated:
                break
        dones[t - 1] = True
        ep_len[ep], ep_noise[ep] = t - start, sigma
        ep_success[ep] = success[start:t].any()  # CW/L2M count an episode successful if any step succeeds
        ep_return[ep] = rewards[start:t].sum()
        if _progress_queue is not None:
            _progress_queue.put(1)
    seconds, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    env.close()

    by_noise = {
        f"{s:g}": float(ep_success[ep_noise == np.float32(s)].mean())
        for s in sorted({float(x) for x in noise_levels})
        if (ep_noise == np.float32(s)).any()
    }
    record = {
        "task": task,
        "file": Path(out_path).name,
        "episodes": int(episodes),
        "steps": int(t),
        "horizon": int(horizon),
        "noise_levels": [float(x) for x in noise_levels],
        "seed": int(seed),
        "expert_success": by_noise.get("0"),  # noise-free episodes only; None if none were run
        "success_by_noise": by_noise,
        "mean_return": float(ep_return.mean()) if episodes else 0.0,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),
        "steps_per_cpu_second": round(t / max(cpu, 1e-9), 1),
        "versions": versions(),
    }
    arrays = {
        "states": states[:t],
        "actions": actions[:t],
        "expert_actions": expert_actions[:t],
        "rewards": rewards[:t],
        "dones": dones[:t],
        "success": success[:t],
        "episode_lengths": ep_len,
        "episode_noise": ep_noise,
        "episode_success": ep_success,
        "episode_returns": ep_return,
        "task": np.array(task),
        "meta_json": np.array(json.dumps(record)),
    }
    _atomic_savez(Path(out_path), arrays)
    return record


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file handle stops numpy from appending ".npz" to the temp name
            np.savez_compressed(f, **arrays)

    atomic_write(path, write)


def _record_from_file(path: Path) -> dict[str, Any]:
    # A finished file carries its own record, so the summary can be rebuilt after a crash or by a resumed run.
    arrays = read_npz(path, advice="delete it so that `pretrainkit l2m collect` collects that task again")
    if "meta_json" not in arrays:
        return {"task": path.stem}
    try:
        record = json.loads(str(arrays["meta_json"]))
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise DataError(
            f"{path}: its meta_json record is not a JSON object; delete the file to collect it again"
        )
    return record


def _init_worker(q) -> None:
    global _progress_queue
    _progress_queue = q


def _write_summary(out_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_text(out_dir / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")


def collect(
    tasks: Sequence[str],
    out_dir: str | Path,
    episodes_per_task: int = 100,
    noise_levels: Sequence[float] = DEFAULT_NOISE,
    workers: int = 1,
    seed: int = 0,
    horizon: int = HORIZON,
    progress: bool = True,
) -> dict[str, Any]:
    """Collect scripted-expert datasets for ``tasks`` into ``out_dir`` (one ``<task>.npz`` each); resumable.

    ``episodes_per_task`` counts all noise levels together (cycled per episode). Tasks whose file already
    exists are skipped. Runs one process per task (``workers`` at a time; 1 = in this process) and writes
    ``collection.json`` with each task's record (expert success at noise 0, steps per CPU-second, ...).
    """
    tasks = check_tasks(tasks)
    if episodes_per_task < 1:
        raise ConfigError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    noise_levels = tuple(float(s) for s in noise_levels)
    if not noise_levels or any(not (0.0 <= s < float("inf")) for s in noise_levels):
        raise ConfigError(
            f"noise_levels must be a non-empty list of finite stds >= 0, got {list(noise_levels)}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp*"):  # left by a killed run; never a finished file
        stale.unlink(missing_ok=True)

    records: dict[str, dict[str, Any]] = {}
    todo, differs = [], []
    want = {
        "episodes": episodes_per_task,
        "noise_levels": list(noise_levels),
        "seed": seed,
        "horizon": horizon,
    }
    for t in tasks:
        f = task_file(out, t)
        if f.exists():
            records[t] = {**_record_from_file(f), "skipped": True}
            if any(records[t].get(k) != v for k, v in want.items()):
                differs.append(t)  # kept as is; delete the file to recollect with the new settings
        else:
            todo.append(t)

    from tqdm import tqdm

    bar = tqdm(total=len(todo) * episodes_per_task, desc="collect episodes", unit="ep", disable=not progress)
    wall0 = time.perf_counter()
    args = {"episodes": episodes_per_task, "noise_levels": noise_levels, "seed": seed, "horizon": horizon}
    try:
        if workers == 1 or len(todo) <= 1:
            for t in todo:
                records[t] = collect_task(t, task_file(out, t), **args)
                bar.update(episodes_per_task)
        elif todo:
            _collect_parallel(todo, out, args, min(workers, len(todo)), records, bar)
    finally:
        bar.close()
    wall = time.perf_counter() - wall0

    fresh = [r for t, r in records.items() if t in todo]
    steps = sum(r["steps"] for r in fresh)
    cpu = sum(r["cpu_seconds"] for r in fresh)
    summary_path = out / SUMMARY_NAME
    old = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    merged = {
        **old.get("tasks", {}),
        **{t: {k: v for k, v in r.items() if k != "skipped"} for t, r in records.items()},
    }
    summary = {
        "tasks": merged,
        "expert_success": {t: r.get("expert_success") for t, r in merged.items()},
        "last_run": {
            "collected": todo,
            "skipped": [t for t in tasks if t not in todo],
            "skipped_with_other_settings": differs,
            "workers": workers,
            "steps": steps,
            "wall_seconds": round(wall, 3),
            # Each task runs single-threaded in its own process, so steps per CPU-second = per-core throughput.
            "env_steps_per_s_per_core": round(steps / cpu, 1) if cpu > 0 else None,
            "env_steps_per_s_wall": round(steps / wall, 1) if steps and wall > 0 else None,
        },
        "versions": versions(),
    }
    _write_summary(out, summary)
    return summary


def _collect_parallel(todo, out: Path, args, workers: int, records, bar) -> None:
    # spawn, not fork: the caller may hold torch / OpenMP threads, which fork can leave in a broken state.
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(q,)) as pool:
        futures = {pool.submit(collect_task, t, task_file(out, t), **args): t for t in todo}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(q, bar)
                for f in done:
                    records[futures[f]] = f.result()  # re-raises a worker's error here
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    _drain(q, bar)  # workers have exited, so their queue buffers are flushed


def _drain(q, bar) -> None:
    while True:
        try:
            bar.update(q.get_nowait())
        except queue.Empty:
            return
