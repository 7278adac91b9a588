"""What every bench shares: its command-line flags and the step timer (a trainer against a bare loop).

Flags: ``--config PROFILE|FILE`` (the profile lookup of core/profiles.py), ``--set KEY=VALUE``, ``--results-dir``,
``--name``, ``--seeds`` and ``--rerender RESULTS_JSON`` (re-draw a report from its stored JSON, nothing run).

Timer: a loop is timed by the moments it takes its batches, so the same measurement serves a bare PyTorch loop
and ``Trainer.fit()`` without a step hook: step k starts when batch k is fetched, and the time from the fetch
that starts the first timed step to the one that starts the step after the last timed one covers exactly the
timed steps (so the loop runs one step more than warm-up + timed steps).
"""

from __future__ import annotations

import argparse
import math
import shlex
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pretrainkit.core.profiles import add_profile_args, profile_path
from pretrainkit.errors import ConfigError


# --------------------------------------------------------------------------------------------------- flags
def add_bench_args(
    parser: argparse.ArgumentParser,
    system: str,
    default_profile: str,
    default_name: str | None = None,
    results_alias: tuple[str, ...] = (),
) -> None:
    """The flags every bench takes. ``--seeds`` and ``--name`` default to the profile's values; ``-h`` is
    argparse's own (prints help, runs nothing)."""
    add_profile_args(parser, system, default_profile)
    parser.add_argument(
        "--results-dir",
        *results_alias,
        dest="results_dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where <name>.md/.json go (default docs/results)",
    )
    parser.add_argument(
        "--name",
        default=None,
        metavar="NAME",
        help=f"results file name (default: {default_name or 'the profile’s'})",
    )
    parser.add_argument("--seeds", default=None, metavar="S1,S2", help="seeds (default: the profile's)")
    parser.add_argument(
        "--rerender",
        type=Path,
        default=None,
        metavar="RESULTS_JSON",
        help="re-write a finished bench's report from its stored JSON: nothing is trained or "
        "timed; the other options are ignored (except --results-dir)",
    )


def parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(s) for s in str(text).replace(" ", "").strip("[]").split(",") if s != ""]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ConfigError("--seeds needs at least one seed")
    return seeds


def seed_overrides(args: argparse.Namespace, key: str) -> list[str]:
    """``--seeds 0,1`` as the override ``<key>=[0,1]``."""
    seeds = parse_seeds(getattr(args, "seeds", None))
    return [] if seeds is None else [f"{key}=[{','.join(map(str, seeds))}]"]


def load_bench_config(cls: type, system: str, args: argparse.Namespace, overrides: list[str] = ()) -> Any:
    """The resolved config: the profile (or file) of ``--config``, then ``overrides``, then ``--set``."""
    from pretrainkit.core.config import load_config

    return load_config(cls, profile_path(system, args.config), [*overrides, *(args.set or [])])


def replay_args(parser: argparse.ArgumentParser, command: str, words: int) -> argparse.Namespace:
    """The options of a stored command line (``provenance.command``) parsed again by ``parser``; ``words``:
    how many leading words name the verb (``pretrainkit crnet sweep`` = 3). For results files that predate
    stored configs: their config is the command's, against today's profile."""
    try:
        return parser.parse_args(shlex.split(command)[words:])
    except SystemExit:
        raise ConfigError(f"cannot parse the stored command {command!r}") from None


# --------------------------------------------------------------------------------------------------- timer
class StampedBatches:
    """A batch stream that notes ``time.perf_counter()`` each time a batch is taken (``sync`` first, e.g.
    ``torch.cuda.synchronize``, so queued GPU work is inside the step it belongs to). Forwards the stream's
    ``items_per_batch`` and ``state_dict`` so the Trainer takes it as the stream itself."""

    def __init__(self, batches: Iterator, sync: Callable[[], None] | None = None):
        self.batches, self.sync, self.stamps = batches, sync, []

    def __iter__(self):
        return self

    def __next__(self):
        if self.sync is not None:
            self.sync()
        self.stamps.append(time.perf_counter())
        return next(self.batches)

    def __getattr__(self, name: str):  # items_per_batch, state_dict, load_state_dict, ...
        if name == "batches":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.batches, name)

    def seconds_per_step(self, steps: int, warmup: int, per_step: int = 1) -> float:
        """Mean seconds of steps warmup+1 .. warmup+steps (``per_step``: batches per step, e.g. grad_accum)."""
        first, last = warmup * per_step, (warmup + steps) * per_step
        if len(self.stamps) <= last:
            raise RuntimeError(
                f"the loop took {len(self.stamps)} batches; timing {steps} steps after {warmup} "
                f"warm-up steps needs {last + 1}"
            )
        return (self.stamps[last] - self.stamps[first]) / steps


def bare_loop(model, optimizer, batches: Iterator, n_steps: int) -> None:
    """The plain PyTorch loop a trainer is compared with: forward (``model(batch) -> (loss, metrics)``),
    backward, optimiser step."""
    for _ in range(n_steps):
        loss, _ = model(next(batches))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def time_loop(
    loop: Callable[[StampedBatches, int], Any],
    batches: Iterator,
    steps: int,
    warmup: int = 3,
    per_step: int = 1,
    sync: Callable[[], None] | None = None,
) -> float:
    """Seconds per step of ``loop(stream, n_steps)``, any loop that takes ``per_step`` batches a step from
    ``stream`` for ``n_steps`` steps (a bare loop, or one that builds a Trainer and calls ``fit()``)."""
    stream = StampedBatches(batches, sync)
    loop(stream, warmup + steps + 1)
    return stream.seconds_per_step(steps, warmup, per_step)


def time_bare(
    make_model: Callable[[], Any],
    make_batches: Callable[[], Iterator],
    steps: int,
    warmup: int = 3,
    make_optimizer: Callable[[Any], Any] | None = None,
    sync: Callable[[], None] | None = None,
) -> float:
    """Seconds per step of :func:`bare_loop` on a fresh model (default optimiser: AdamW, lr 1e-3)."""
    import torch

    model = make_model()
    opt = make_optimizer(model) if make_optimizer else torch.optim.AdamW(model.parameters(), lr=1e-3)
    return time_loop(lambda data, n: bare_loop(model, opt, data, n), make_batches(), steps, warmup, sync=sync)


def time_trainer(
    make_trainer: Callable[[Iterator, int], Any],
    make_batches: Callable[[], Iterator],
    steps: int,
    warmup: int = 3,
    per_step: int = 1,
    sync: Callable[[], None] | None = None,
) -> float:
    """Seconds per step of ``make_trainer(stream, max_steps).fit()``: the same measurement as
    :func:`time_bare` (no step hook needed; the final checkpoint falls after the last timed step)."""
    return time_loop(
        lambda data, n: make_trainer(data, n).fit(), make_batches(), steps, warmup, per_step, sync
    )


def best_time(
    fns: dict[str, Callable[[], Any]],
    rounds: int,
    steps: int,
    warmup: int = 0,
    per_call: bool = False,
    reset: Callable[[str], Any] | None = None,
    sync: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Best seconds per call of each function over ``rounds`` interleaved rounds (the order reverses every
    round, so a slow spell of a shared machine does not fall on one). Each round: ``warmup`` untimed calls,
    then ``steps`` timed calls, as one block (mean per call) or, with ``per_call``, one by one; ``reset(name)``
    after a function's round (e.g. clearing its gradients)."""
    sync = sync or (lambda: None)
    best = {k: math.inf for k in fns}
    names = list(fns)
    for r in range(rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            f = fns[k]
            for _ in range(warmup):
                f()
            if per_call:
                for _ in range(steps):
                    sync()
                    t = time.perf_counter()
                    f()
                    sync()
                    best[k] = min(best[k], time.perf_counter() - t)
            else:
                sync()
                t = time.perf_counter()
                for _ in range(steps):
                    f()
                sync()
                best[k] = min(best[k], (time.perf_counter() - t) / steps)
            if reset is not None:
                reset(k)
    return best
