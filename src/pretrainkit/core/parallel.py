"""Run independent jobs in spawned worker processes, or in this process when one worker is asked for.

Spawn (not fork) because torch, MuJoCo and OpenMP pools do not survive a fork reliably; each worker
imports afresh and sets its own thread count. Jobs must be picklable: a module-level function and
plain arguments (configs are dataclasses).
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any


def _call(fn_and_args: tuple[Callable[..., Any], tuple]) -> Any:
    fn, args = fn_and_args
    return fn(*args)


def spawn_map(fn: Callable[..., Any], jobs: Iterable[tuple], workers: int = 1,
              ordered: bool = True) -> Iterator[Any]:
    """Yield ``fn(*job)`` for every job: in ``workers`` spawned processes when > 1 (and there are at least
    two jobs), else one after another here. ``ordered=False`` yields results as they finish."""
    jobs = list(jobs)
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield fn(*job)
        return
    with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
        run = pool.imap if ordered else pool.imap_unordered
        yield from run(_call, [(fn, tuple(job)) for job in jobs])


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
