"""A study's trials as a fixed queue of slots, so that any number of workers run exactly ``n_trials``.

Optuna's own loop (``study.optimize``) creates a new trial whenever its queue is empty, so workers that each
stop at N trials overshoot by up to one trial per worker. Here the study holds exactly N slots (WAITING
trials) and a worker only ever takes a slot out of the queue (WAITING -> RUNNING is atomic in every storage);
a dead worker's slot comes back through Optuna's heartbeat-and-retry callback, with the same parameters.

Adding slots is the one step that must not run twice at once (two workers would add N each). Study names
are the only thing every storage keeps unique, so the worker that manages to create the study
``<name>:top-up:<trials so far>-><N>`` adds the slots; the others wait for it to mark that study done.

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

from pretrainkit.errors import ConfigError

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
            return optuna.samplers.RandomSampler(seed).sample_independent(study, trial, param_name,
                                                                          param_distribution)
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


def top_up(study: optuna.Study, storage: optuna.storages.BaseStorage, n_trials: int,
           first_params: dict[str, float] | None, timeout_s: float = 60.0) -> None:
    """Add WAITING slots until the study holds ``n_trials`` that are finished, running or waiting.

    Failed trials do not count (a retried one has its copy in the queue). ``first_params``: fixed params of
    slot 0 of a new study (the equal mix), or None.
    """
    waited_since = None
    while True:
        trials = study.get_trials(deepcopy=False)
        missing = n_trials - sum(t.state in _USED for t in trials)
        if missing <= 0:
            return
        lock = f"{study.study_name}:top-up:{len(trials)}->{n_trials}"
        try:
            lock_study = optuna.create_study(storage=storage, study_name=lock)
        except optuna.exceptions.DuplicatedStudyError:
            # Another worker is adding these slots; once it is done (or gone) the count above is current.
            waited_since = waited_since or time.monotonic()
            if _lock_done(storage, lock):
                continue
            if time.monotonic() - waited_since > timeout_s:
                raise ConfigError(f"weight search: the worker adding trials to study '{study.study_name}' did "
                                  f"not finish within {timeout_s:.0f} s; delete study '{lock}' from the storage "
                                  f"(optuna delete-study) if that worker died") from None
            time.sleep(0.2)
            continue
        draws = [t.system_attrs[DRAW_ATTR] for t in trials if DRAW_ATTR in t.system_attrs]
        # Studies written before slots existed: their sampled trials used the first draws.
        next_draw = max(draws) + 1 if draws else sum("fixed_params" not in t.system_attrs for t in trials)
        for i in range(missing):
            if i == 0 and not trials and first_params is not None:
                attrs = {"fixed_params": first_params}
            else:
                attrs = {DRAW_ATTR: next_draw}
                next_draw += 1
            study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs=attrs))
        lock_study.set_user_attr("done", True)
        return


def _lock_done(storage: optuna.storages.BaseStorage, lock: str) -> bool:
    try:
        return bool(storage.get_study_user_attrs(storage.get_study_id_from_name(lock)).get("done"))
    except KeyError:  # created a moment ago and not yet visible to this worker
        return False


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
            except Exception:  # noqa: BLE001, S110 - a dropped connection: the next beat retries
                pass

    def __enter__(self) -> Self:
        self._storage.record_heartbeat(self._id)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def work(study: optuna.Study, run: Callable[[optuna.Trial], float], heartbeat: int | None,
         before_first: Callable[[optuna.trial.FrozenTrial], None],
         after_each: Callable[[], None] | None = None) -> None:
    """Run slots until none is waiting and (with heartbeats) none is running elsewhere.

    With heartbeats a worker also waits for the other workers' running trials: if one of them dies, its
    trial turns stale after the grace period and this worker fails it, re-queues it and runs the copy.
    ``before_first``: called with the first slot this worker takes, before its trial starts;
    ``after_each``: after each of its trials.
    """
    first = True
    while True:
        if heartbeat:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        trial_id = claim(study)
        if trial_id is None:
            if heartbeat and any(_is_slot(t) for t in study.get_trials(deepcopy=False,
                                                                       states=(TrialState.RUNNING,))):
                time.sleep(min(1.0, heartbeat / 2))
                continue
            return
        if first:
            before_first(study._storage.get_trial(trial_id))
            first = False
        _run_one(study, trial_id, run, heartbeat)
        if after_each is not None:
            after_each()


def _is_slot(t: optuna.trial.FrozenTrial) -> bool:
    # Slots always get heartbeats; a RUNNING trial of an older, slot-less study may never turn stale.
    return DRAW_ATTR in t.system_attrs or "fixed_params" in t.system_attrs


def _run_one(study: optuna.Study, trial_id: int, run: Callable[[optuna.Trial], float],
             heartbeat: int | None) -> None:
    trial = optuna.Trial(study, trial_id)
    state, value, err = None, None, None
    beat = _Heartbeat(study._storage, trial_id, heartbeat) if heartbeat else None
    if beat:
        beat.__enter__()
    try:
        value = run(trial)
    except optuna.TrialPruned:
        state = TrialState.PRUNED
    except BaseException as e:  # noqa: BLE001 - KeyboardInterrupt too: failed, not left running; re-raised
        state, err = TrialState.FAIL, e
    finally:
        if beat:
            beat.__exit__()
    # skip_if_finished: a worker frozen past the grace period finds its trial failed and re-queued already.
    study.tell(trial, value if state is None else None, state=state, skip_if_finished=True)
    if err is not None:
        raise err
