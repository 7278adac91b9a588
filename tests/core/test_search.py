import sqlite3

import pytest

from pretrainkit.errors import ConfigError
from pretrainkit.search.task_weights import SearchConfig, search_task_weights

TARGET = {"a": 0.5, "b": 0.3, "c": 0.2}


def toy_objective(w):
    return -sum((w[k] - TARGET[k]) ** 2 for k in TARGET)


def test_gp_search_finds_known_best_weights(tmp_path):
    cfg = SearchConfig(n_trials=25, n_startup_trials=6, seed=0, deterministic_objective=True)
    res = search_task_weights(toy_objective, list(TARGET), cfg, run_dir=tmp_path, progress=False)
    assert max(abs(res.best_weights[k] - TARGET[k]) for k in TARGET) < 0.08
    assert sum(res.best_weights.values()) == pytest.approx(1.0)
    assert (tmp_path / "study.db").is_file() and (tmp_path / "plots" / "search.png").is_file()
    # the GP beats the random start-up trials it began from
    start_best = max(h["value"] for h in res.history[:6])
    assert res.best_value > start_best


def test_search_resumes_from_its_study_file(tmp_path):
    calls = []

    def obj(w):
        calls.append(w)
        return toy_objective(w)

    cfg = SearchConfig(n_trials=4, n_startup_trials=2, seed=1)
    search_task_weights(obj, list(TARGET), cfg, run_dir=tmp_path, progress=False)
    cfg.n_trials = 7
    res = search_task_weights(obj, list(TARGET), cfg, run_dir=tmp_path, progress=False)
    assert len(calls) == 7 and res.n_trials == 7  # the 4 earlier trials were kept, not re-run


def test_killed_running_trial_is_marked_failed_and_rerun(tmp_path):
    cfg = SearchConfig(n_trials=3, n_startup_trials=3, seed=2)
    search_task_weights(toy_objective, list(TARGET), cfg, run_dir=tmp_path, progress=False)
    db = sqlite3.connect(tmp_path / "study.db")
    db.execute("UPDATE trials SET state='RUNNING' WHERE number=2")  # as if the process died mid-trial
    db.commit()
    db.close()
    res = search_task_weights(toy_objective, list(TARGET), cfg, run_dir=tmp_path, progress=False)
    assert res.n_trials == 3


def test_journal_storage_and_box_space(tmp_path):
    (tmp_path / "shared").mkdir()  # the journal's folder must exist: a mistyped path creates no directories
    cfg = SearchConfig(
        n_trials=3,
        n_startup_trials=3,
        space="box",
        low=0.0,
        high=2.0,
        storage=f"journal:{tmp_path / 'shared' / 'study.log'}",
    )
    res = search_task_weights(lambda w: -abs(w["x"] - 1.0), ["x"], cfg, progress=False)
    assert (tmp_path / "shared" / "study.log").is_file()
    assert 0.0 <= res.best_weights["x"] <= 2.0


def test_bad_storage_and_config():
    with pytest.raises(ConfigError, match="unknown search storage"):
        search_task_weights(toy_objective, list(TARGET), SearchConfig(storage="redis://x"), progress=False)
    with pytest.raises(ConfigError, match="n_trials"):
        SearchConfig(n_trials=0).validate()


def test_first_trial_is_the_equal_mix_and_can_be_switched_off(tmp_path):
    seen = []

    def obj(w):
        seen.append(w)
        return -sum((v - 1 / 3) ** 2 for v in w.values())  # best exactly at equal weights

    res = search_task_weights(
        obj, list(TARGET), SearchConfig(n_trials=3, n_startup_trials=3, seed=0), progress=False
    )
    assert seen[0] == pytest.approx({k: 1 / 3 for k in TARGET}) and res.best_weights == seen[0]
    seen.clear()
    search_task_weights(
        obj,
        list(TARGET),
        SearchConfig(n_trials=2, n_startup_trials=2, seed=0, start_at_equal=False),
        progress=False,
    )
    assert seen[0] != pytest.approx({k: 1 / 3 for k in TARGET})
    # resuming a study does not enqueue the equal mix a second time
    cfg = SearchConfig(n_trials=2, n_startup_trials=2, seed=0)
    search_task_weights(obj, list(TARGET), cfg, run_dir=tmp_path, progress=False)
    seen.clear()
    cfg.n_trials = 3
    search_task_weights(obj, list(TARGET), cfg, run_dir=tmp_path, progress=False)
    assert len(seen) == 1 and seen[0] != pytest.approx({k: 1 / 3 for k in TARGET})


@pytest.mark.parametrize("start_at_equal,space", [(True, "simplex"), (False, "box")])
def test_lone_worker_samples_what_optunas_own_loop_samples(start_at_equal, space):
    """The slot queue (exact trial counts across workers) must not move a lone worker's numbers: its trials
    are bit-for-bit those of study.optimize with the same GP sampler and seed (start-up and GP phase)."""
    import optuna

    names = list(TARGET)
    cfg = SearchConfig(
        n_trials=8, n_startup_trials=3, seed=5, space=space, high=2.0, start_at_equal=start_at_equal
    )
    ours = search_task_weights(toy_objective, names, cfg, progress=False).history

    def trial_fn(trial):
        low, high = (1e-3, 1.0) if space == "simplex" else (0.0, cfg.high)
        raw = {n: trial.suggest_float(f"w_{n}", low, high) for n in names}
        w = raw if space == "box" else {n: v / sum(raw.values()) for n, v in raw.items()}
        return toy_objective(w)

    ref = optuna.create_study(
        sampler=optuna.samplers.GPSampler(seed=cfg.seed, n_startup_trials=3), direction="maximize"
    )
    if start_at_equal:
        ref.enqueue_trial({f"w_{n}": 1.0 for n in names})
    ref.optimize(trial_fn, n_trials=cfg.n_trials)
    assert [h["value"] for h in ours] == [t.value for t in ref.trials]
