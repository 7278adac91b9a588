"""Task-weight search: Optuna's Gaussian-process sampler over the weights of a task mix.

The objective (supplied by the system) maps weights to a validation score. The study lives in storage,
so a killed search resumes and many workers can share one study: an SQLite file in the run directory by
default (one worker), ``journal:PATH`` for a journal file on a shared disk, or a ``postgresql://`` URL for a
cluster. However many workers share a study, it ends with exactly ``n_trials`` finished trials
(see trial_queue); a worker that dies mid-trial has its trial failed and re-run by the others.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import optuna
from tqdm import tqdm

from pretrainkit.core.checkpoint import atomic_write_text
from pretrainkit.errors import ConfigError
from pretrainkit.search import trial_queue
from pretrainkit.search.storage import check_storage, create_study, make_storage, retry_callback

__all__ = [
    "SearchConfig",
    "SearchResult",
    "make_storage",
    "plot_search",
    "search_task_weights",
    "weights_from_params",
]


@dataclass
class SearchConfig:
    n_trials: int = 20
    n_startup_trials: int = 5  # random trials before the GP takes over
    space: Literal["simplex", "box"] = "simplex"  # simplex: weights sum to 1; box: each in [low, high]
    low: float = 0.0
    high: float = 1.0
    seed: int = 0
    # None: sqlite file in the run dir (one worker); "journal:PATH" (its folder must exist); "sqlite:///...";
    # "postgresql://USER:PASSWORD@HOST:PORT/DB" (pip install 'pretrainkit[search-pg]')
    storage: str | None = None
    study_name: str = "task-weights"
    direction: Literal["maximize", "minimize"] = "maximize"
    deterministic_objective: bool = False
    # Trial 0 = equal weights (the natural prior and a baseline): the search then moves away from the equal mix
    # only where the objective says it is better.
    start_at_equal: bool = True
    # Shared storage (journal, postgresql): each running trial beats every heartbeat_interval s; one silent
    # for grace_period s is failed and re-run with the same weights, at most max_retry times.
    heartbeat_interval: int = 10
    grace_period: int = 60
    max_retry: int = 3

    def validate(self) -> None:
        if self.n_trials < 1:
            raise ConfigError(f"config key 'search.n_trials' must be >= 1, got {self.n_trials}")
        if self.heartbeat_interval < 1 or self.grace_period <= self.heartbeat_interval:
            raise ConfigError(
                "config keys 'search.heartbeat_interval'/'search.grace_period' need "
                f"1 <= heartbeat_interval < grace_period, got {self.heartbeat_interval}, "
                f"{self.grace_period}"
            )
        if self.max_retry < 0:
            raise ConfigError(f"config key 'search.max_retry' must be >= 0, got {self.max_retry}")
        check_storage(self.storage)  # at config load: a bad storage fails before any pre-training
        if self.space == "box" and not (0 <= self.low < self.high):
            raise ConfigError(
                f"config keys 'search.low'/'search.high' need 0 <= low < high, got {self.low}, {self.high}"
            )


@dataclass
class SearchResult:
    best_weights: dict[str, float]
    best_value: float
    n_trials: int
    history: list[dict] = field(default_factory=list)  # one {"number", "value", "weights"} per complete trial


# Simplex coordinates are drawn in [EPS, 1] and normalised: a weight vector is scale-invariant for a
# weighted loss, so fixing the sum removes a redundant dimension the GP would otherwise have to learn.
_EPS = 1e-3


def weights_from_params(params: dict[str, float], names: list[str], space: str) -> dict[str, float]:
    raw = {n: float(params[f"w_{n}"]) for n in names}
    if space == "box":
        return raw
    total = sum(raw.values())
    return {n: v / total for n, v in raw.items()}


def search_task_weights(
    objective: Callable[[dict[str, float]], float],
    names: list[str],
    cfg: SearchConfig,
    run_dir: str | Path | None = None,
    progress: bool = True,
    exclusive: bool | None = None,
) -> SearchResult:
    """Run (or continue, or join) a GP-based search over task weights; returns the best weights found.

    Every worker of a shared study calls this with the same config; each returns once the study has
    ``cfg.n_trials`` finished trials. ``exclusive``: this process is the study's only worker, so trials left
    RUNNING by a killed earlier process are failed and re-run at once; None (default): exclusive for SQLite
    storage (the run directory's study.db), shared, with heartbeats, for journal and postgresql storage.
    """
    if not names:
        raise ConfigError("weight search needs at least one task name")
    cfg.validate()
    run_dir = Path(run_dir) if run_dir is not None else None
    optuna.logging.set_verbosity(logging.WARNING)
    if exclusive is None:
        exclusive = cfg.storage is None or cfg.storage.startswith("sqlite:")
    heartbeat = None if exclusive else (cfg.heartbeat_interval, cfg.grace_period)
    storage = make_storage(cfg.storage, run_dir, heartbeat, cfg.max_retry)
    param_names = [f"w_{n}" for n in names]

    def sampler(seed: int) -> optuna.samplers.GPSampler:
        with warnings.catch_warnings():  # deterministic_objective is an experimental argument
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.GPSampler(
                seed=seed,
                n_startup_trials=cfg.n_startup_trials,
                deterministic_objective=cfg.deterministic_objective,
                independent_sampler=trial_queue.DrawSeededSampler(cfg.seed, param_names),
            )

    study = create_study(
        storage,
        cfg.storage,
        study_name=cfg.study_name,
        sampler=sampler(cfg.seed),
        direction=cfg.direction,
        load_if_exists=True,
    )
    if exclusive:
        trial_queue.fail_running(study, retry_callback(cfg.max_retry))

    def trial_fn(trial: optuna.Trial) -> float:
        if cfg.space == "simplex":
            params = {n: trial.suggest_float(f"w_{n}", _EPS, 1.0) for n in names}
        else:
            params = {n: trial.suggest_float(f"w_{n}", cfg.low, cfg.high) for n in names}
        w = weights_from_params({f"w_{k}": v for k, v in params.items()}, names, cfg.space)
        if cfg.space == "box" and sum(w.values()) == 0:
            w = {n: 1.0 for n in names}
        trial.set_user_attr("weights", w)
        value = float(objective(w))
        if not math.isfinite(value):
            raise optuna.TrialPruned(f"objective returned {value}")
        return value

    level = 1.0 if cfg.space == "simplex" else min(cfg.high, max(cfg.low, 1.0))
    trial_queue.top_up(
        study, storage, cfg.n_trials, {p: level for p in param_names} if cfg.start_at_equal else None
    )

    def first_slot(t: optuna.trial.FrozenTrial) -> None:
        study.sampler = sampler(trial_queue.worker_seed(cfg.seed, t.number))

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    with tqdm(total=cfg.n_trials, desc="weight search", disable=not progress) as bar:

        def advance() -> None:  # the study's count, other workers' trials included
            bar.update(len(study.get_trials(deepcopy=False, states=finished)) - bar.n)

        advance()
        trial_queue.work(
            study, trial_fn, cfg.n_trials, None if exclusive else cfg.heartbeat_interval, first_slot, advance
        )
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise ConfigError("weight search finished with no complete trial (every objective call failed)")
    history = [{"number": t.number, "value": t.value, "weights": t.user_attrs["weights"]} for t in complete]
    best = study.best_trial
    result = SearchResult(
        best_weights=best.user_attrs["weights"],
        best_value=float(best.value),
        n_trials=len(complete),
        history=history,
    )
    if run_dir is not None:
        atomic_write_text(
            run_dir / "search.json",
            json.dumps(
                {
                    "best_weights": result.best_weights,
                    "best_value": result.best_value,
                    "n_trials": result.n_trials,
                    "history": history,
                },
                indent=1,
            ),
        )
        plot_search(result, run_dir / "plots" / "search.png", cfg.direction)
    return result


def plot_search(result: SearchResult, path: Path, direction: str = "maximize") -> Path:
    """Objective per trial with the running best, and the best weights as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    vals = [h["value"] for h in result.history]
    best, running = [], None
    for v in vals:
        running = v if running is None else (max if direction == "maximize" else min)(running, v)
        best.append(running)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(range(len(vals)), vals, "o", ms=4, label="trial")
    a.plot(range(len(vals)), best, "-", label="best so far")
    a.set_xlabel("trial")
    a.set_ylabel("objective")
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    names = list(result.best_weights)
    b.bar(names, [result.best_weights[n] for n in names])
    b.set_title("best weights", fontsize=9)
    b.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
