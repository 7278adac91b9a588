"""The slot queue's own rules, in memory: top-ups never double, a dead top-up worker is taken over, a lone
restart re-runs its killed trial with the same weights."""

import optuna

from pretrainkit.search import trial_queue
from pretrainkit.search.storage import retry_callback

WAITING, RUNNING = optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING


def _study():
    storage = optuna.storages.InMemoryStorage()
    return optuna.create_study(storage=storage, study_name="s"), storage


def test_top_up_adds_exactly_the_missing_slots_and_numbers_its_locks():
    study, storage = _study()
    trial_queue.top_up(study, storage, 3, {"w_a": 1.0})
    trial_queue.top_up(study, storage, 3, {"w_a": 1.0})  # a second worker with the same target adds nothing
    trial_queue.top_up(study, storage, 5, {"w_a": 1.0})  # a later, larger target adds the difference
    trials = study.get_trials()
    assert [t.state for t in trials] == [WAITING] * 5
    assert trials[0].system_attrs["fixed_params"] == {"w_a": 1.0}  # the equal mix is the first slot only
    assert [t.system_attrs[trial_queue.DRAW_ATTR] for t in trials[1:]] == [0, 1, 2, 3]
    locks = sorted(s.study_name for s in storage.get_all_studies() if s.study_name != "s")
    assert locks == ["s:top-up:0", "s:top-up:1"]


def test_a_top_up_whose_worker_died_is_taken_over_after_the_timeout():
    study, storage = _study()
    optuna.create_study(storage=storage, study_name="s:top-up:0")  # created, never done: its worker died
    trial_queue.top_up(study, storage, 2, None, timeout_s=0.3)
    assert len(study.get_trials()) == 2
    assert storage.get_study_user_attrs(storage.get_study_id_from_name("s:top-up:1"))["done"]


def test_lone_restart_fails_the_killed_trial_and_queues_a_copy_with_its_params():
    study, storage = _study()
    trial_queue.top_up(study, storage, 2, None)
    tid = trial_queue.claim(study)
    optuna.Trial(study, tid).suggest_float("w_a", 0.0, 1.0)  # the killed worker got this far
    killed = storage.get_trial(tid)
    trial_queue.fail_running(study, retry_callback(3))
    copies = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == killed.number]
    assert storage.get_trial(tid).state == optuna.trial.TrialState.FAIL
    assert len(copies) == 1 and copies[0].state == WAITING and copies[0].params == killed.params
    assert trial_queue.claim(study) != tid and trial_queue.claim(study) is not None


def test_claim_takes_each_waiting_slot_once():
    study, storage = _study()
    trial_queue.top_up(study, storage, 3, None)
    ids = [trial_queue.claim(study) for _ in range(4)]
    assert ids[3] is None and len(set(ids[:3])) == 3
    assert all(storage.get_trial(i).state == RUNNING for i in ids[:3])
