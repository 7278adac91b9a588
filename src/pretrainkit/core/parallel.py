"""Run independent jobs in spawned worker processes, or in this process when one worker is asked for.

Spawn (not fork) because torch, MuJoCo and OpenMP pools do not survive a fork reliably; each worker
imports afresh and sets its own thread count. Jobs must be picklable: a module-level function and
plain arguments (configs are dataclasses).
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from typing import Any


def spawn_map(
    fn: Callable[..., Any], jobs: Iterable[tuple], workers: int = 1, ordered: bool = True
) -> Iterator[Any]:
    """Yield ``fn(*job)`` for every job: in ``workers`` spawned processes when > 1 (and there are at least
    two jobs), else lazily one after another here (so a caller can save each result before the next job
    runs). ``ordered=False`` yields results as they finish."""
    jobs = list(jobs)
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield fn(*job)
        return
    with executor(min(workers, len(jobs))) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        for future in futures if ordered else as_completed(futures):
            yield future.result()


class InlineExecutor(Executor):
    """An Executor that runs each job at ``submit`` in this process: the one-worker case of ``executor``,
    so callers keep a single code path (futures, ``wait``) for one worker and for many."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # re-raised by future.result(), as a process pool would
            future.set_exception(e)
        return future


def executor(workers: int = 1) -> Executor:
    """``workers`` spawned processes, or an inline executor for one: jobs whose submission depends on
    earlier results (e.g. per-seed runs after that seed's pre-training) keep both cores busy."""
    if workers <= 1:
        return InlineExecutor()
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
