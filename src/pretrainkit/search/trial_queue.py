"""A study's trials as a fixed queue of slots, so that any number of workers run exactly ``n_trials``.

Optuna's own loop (``study.optimize``) creates a new trial whenever its queue is empty, so workers that each
stop at N trials overshoot by up to one trial per worker. Here the study holds exactly N slots (WAITING
trials) and a worker only ever takes a slot out of the queue (WAITING -> RUNNING is atomic in every storage);
a dead worker's slot comes back through Optuna's heartbeat-and-retry callback, with the same parameters.

Adding slots is the one step that must not run twice at once (two workers would add N each). Study names
are the only thing every storage keeps unique, so top-ups are numbered and the worker that manages to
create the study ``<name>:top-up:<g>`` adds the slots; the others wait for it to mark that study done.

Random draws (the GP's start-up trials) depend on the seed and the slot, not on which worker runs it or
when: a slot carries a draw index, and its weights are the draws that a lone worker's RandomSampler(seed)
would make at that position. A lone worker therefore samples exactly what ``study.optimize`` did before.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, Self

import numpy as np
import optuna
from optuna.trial import TrialState

DRAW_ATTR = "pretrainkit:draw"  # system attribute of a slot that samples: its index in the random sequence
_USED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


class DrawSeededSampler(optuna.samplers.BaseSampler):
    """Independent random draws keyed by (seed, the slot's draw index, parameter), not by draw order.

    ``param_order`` is the order in which a trial suggests its parameters; the value for parameter i of a
    slot with draw index d is the (d * len(param_order) + i)-th draw of ``RandomSampler(seed)``.
    """

    def __init__(self, seed: int, param_order: list[str]) -> None:
        self._seed = seed
        self._order = list(param_order)

    def infer_relative_search_space(self, study, trial) -> dict:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict:
        return {}

    def sample_independent(self, study, trial, param_name: str, param_distribution) -> Any:
        draw = trial.system_attrs.get(DRAW_ATTR)
        if draw is None or param_name not in self._order:  # not a slot of ours: seeded by its number instead
            seed = int(np.random.SeedSequence([self._seed, trial.number]).generate_state(1)[0])
            return optuna.samplers.RandomSampler(seed).sample_independent(
                study, trial, param_name, param_distribution
            )
        rs = optuna.samplers.RandomSampler(self._seed)
        # Each float suggestion consumes exactly one draw; replaying the skipped ones keeps RandomSampler's
        # own transform (cheap: a few hundred draws at most).
        for _ in range(int(draw) * len(self._order) + self._order.index(param_name)):
            rs.sample_independent(study, trial, param_name, param_distribution)
        return rs.sample_independent(study, trial, param_name, param_distribution)


def worker_seed(seed: int, first_trial_number: int) -> int:
    """GP seed of a worker: ``seed`` for the one that starts the study (trial 0, as a lone worker always
    does), a seed derived from its first trial for every other, so that concurrent workers that fit the
    same finished trials still propose different points."""
    if first_trial_number == 0:
        return seed
    return int(np.random.SeedSequence([seed, first_trial_number]).generate_state(1)[0])


def top_up(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    n_trials: int,
    first_params: dict[str, float] | None,
    timeout_s: float = 60.0,
) -> None:
    """Add WAITING slots until the study holds ``n_trials`` that are finished, running or waiting.

    Failed trials do not count (a retried one has its copy in the queue). ``first_params``: fixed params of
    slot 0 of a new study (the equal mix), or None. Top-ups are numbered: the worker that creates the study
    ``<name>:top-up:<g+1>`` once number g is done (or abandoned for ``timeout_s``) adds the slots.
    """
    first_seen: dict[int, float] = {}
    while True:
        if _missing(study, n_trials) <= 0:
            return
        g, done, started = _last_top_up(storage, study.study_name)
        # a lock whose worker died before writing its start time ages from when this worker first saw it
        since = started if started is not None else first_seen.setdefault(g, time.time())
        if g >= 0 and not done and time.time() - since < timeout_s:
            time.sleep(0.2)  # another worker is adding slots
            continue
        try:
            lock = optuna.create_study(storage=storage, study_name=f"{study.study_name}:top-up:{g + 1}")
        except optuna.exceptions.DuplicatedStudyError:
            continue  # another worker took this number: wait for it
        lock.set_user_attr("started", time.time())
        trials = study.get_trials(deepcopy=False)  # counted again now that no other worker can add slots
        draws = [t.system_attrs[DRAW_ATTR] for t in trials if DRAW_ATTR in t.system_attrs]
        # Studies written before slots existed: their sampled trials used the first draws.
        next_draw = max(draws) + 1 if draws else sum("fixed_params" not in t.system_attrs for t in trials)
        for i in range(_missing(study, n_trials, trials)):
            if i == 0 and not trials and first_params is not None:
                attrs = {"fixed_params": first_params}
            else:
                attrs = {DRAW_ATTR: next_draw}
                next_draw += 1
            study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs=attrs))
        lock.set_user_attr("done", True)
        return


def _missing(study: optuna.Study, n_trials: int, trials: list | None = None) -> int:
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    return n_trials - sum(t.state in _USED for t in trials)


def _last_top_up(storage: optuna.storages.BaseStorage, name: str) -> tuple[int, bool, float | None]:
    """(number, done, start time or None if not written yet) of the study's latest top-up; (-1, True, 0)
    if none."""
    prefix, last = f"{name}:top-up:", (-1, True, 0.0)
    for s in storage.get_all_studies():
        tail = s.study_name[len(prefix) :] if s.study_name.startswith(prefix) else ""
        if tail.isdigit() and int(tail) > last[0]:
            last = (int(tail), bool(s.user_attrs.get("done")), s.user_attrs.get("started"))
    return last


def fail_running(study: optuna.Study, callback: Callable) -> None:
    """A lone worker's restart: trials its killed predecessor left RUNNING are failed and re-queued."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
            callback(study, study._storage.get_trial(t._trial_id))


def claim(study: optuna.Study) -> int | None:
    """Take the lowest-numbered WAITING trial (atomically: another worker may race for it); None if none."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if study._storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
                return t._trial_id
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


class _Heartbeat:
    """Records the running trial's heartbeat every ``interval`` seconds from a thread."""

    def __init__(self, storage, trial_id: int, interval: float) -> None:
        self._storage, self._id, self._interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._storage.record_heartbeat(self._id)
            except Exception:  # a dropped connection: the next beat retries
                pass

    def __enter__(self) -> Self:
        self._storage.record_heartbeat(self._id)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def work(
    study: optuna.Study,
    run: Callable[[optuna.Trial], float],
    n_trials: int,
    heartbeat: int | None,
    before_first: Callable[[optuna.trial.FrozenTrial], None],
    after_each: Callable[[], None] | None = None,
) -> None:
    """Run slots until none is waiting and (with heartbeats) none is running elsewhere.

    With heartbeats a worker also waits for the other workers' running trials: if one of them dies, its
    trial turns stale after the grace period and this worker fails it, re-queues it and runs the copy.
    ``before_first``: called with the first slot this worker takes, before its trial starts;
    ``after_each``: after each of its trials.
    """
    first, idle_since = True, None
    while True:
        if heartbeat:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        trial_id = claim(study)
        if trial_id is None:
            if not heartbeat:
                return
            trials = study.get_trials(deepcopy=False)
            # Others' trials still running: wait, one may die and come back. Short of n_trials with nothing
            # running: a worker that just failed a stale trial may be about to queue its copy, so wait a
            # little; failures that are not retried leave the study short for good.
            if any(t.state == TrialState.RUNNING and _is_slot(t) for t in trials):
                idle_since = None
            else:
                idle_since = idle_since or time.monotonic()
                if _missing(study, n_trials, trials) <= 0 or time.monotonic() - idle_since > 2 * heartbeat:
                    return
            time.sleep(min(1.0, heartbeat / 2))
            continue
        idle_since = None
        if first:
            before_first(study._storage.get_trial(trial_id))
            first = False
        _run_one(study, trial_id, run, heartbeat)
        if after_each is not None:
            after_each()


def _is_slot(t: optuna.trial.FrozenTrial) -> bool:
    # Slots always get heartbeats; a RUNNING trial of an older, slot-less study may never turn stale.
    return DRAW_ATTR in t.system_attrs or "fixed_params" in t.system_attrs


def _run_one(
    study: optuna.Study, trial_id: int, run: Callable[[optuna.Trial], float], heartbeat: int | None
) -> None:
    trial = optuna.Trial(study, trial_id)
    state, value, err = None, None, None
    beat = _Heartbeat(study._storage, trial_id, heartbeat) if heartbeat else None
    if beat:
        beat.__enter__()
    try:
        value = run(trial)
    except optuna.TrialPruned:
        state = TrialState.PRUNED
    except BaseException as e:  # KeyboardInterrupt too: failed, not left running; re-raised
        state, err = TrialState.FAIL, e
    finally:
        if beat:
            beat.__exit__()
    # skip_if_finished: a worker frozen past the grace period finds its trial failed and re-queued already.
    study.tell(trial, value if state is None else None, state=state, skip_if_finished=True)
    if err is not None:
        raise err
