"""Continual stage loop and metrics: known matrices, what is evaluated when, resume, errors."""

import pytest

from pretrainkit.adapt.continual import (
    ContinualRecord,
    average_success,
    forgetting,
    mean_forgetting,
    retention,
    run_stages,
    summarise,
)
from pretrainkit.errors import ConfigError, DataError

# rows = stages (after task 0, 1, 2), columns = tasks 0, 1, 2
M = [
    [0.8, None, None],
    [0.6, 0.9, None],
    [0.2, 1.0, 0.5],
]


def test_average_success_uses_only_seen_tasks():
    assert average_success(M, 0) == pytest.approx(0.8)
    assert average_success(M, 1) == pytest.approx(0.75)
    assert average_success(M, -1) == pytest.approx((0.2 + 1.0 + 0.5) / 3)


def test_forgetting_is_max_earlier_minus_final():
    f = forgetting(M)
    assert f[0] == pytest.approx(0.8 - 0.2) and f[1] == pytest.approx(0.9 - 1.0) and f[2] is None
    assert mean_forgetting(M) == pytest.approx((0.6 - 0.1) / 2)
    assert forgetting([[0.3]]) == [None] and mean_forgetting([[0.3]]) is None
    # extra columns (pre-training tasks) beyond the stages are ignored
    assert forgetting([[1.0, 0.7], [0.5, 0.1]]) == [pytest.approx(0.5), None]


def test_retention_ratio_and_zero_before():
    assert retention([0.5, 1.0], [0.25, 0.5]) == pytest.approx({"before": 0.75, "after": 0.375, "ratio": 0.5})
    assert retention([0.0], [0.4])["ratio"] is None


class Toy:
    """Success 1 on the task just learned, decaying by half on older ones; extra task drops once."""

    def __init__(self):
        self.learned: list[str] = []

    def learn(self, stage, task):
        self.learned.append(task)
        return {"steps": 10 + stage}

    def evaluate(self, task, stage):
        if task == "pre":
            return {"success": 1.0 if stage < 0 else 0.5}
        age = len(self.learned) - 1 - self.learned.index(task)
        return {"success": 0.5**age}


def test_run_stages_fills_the_matrix_and_evaluates_only_seen_tasks():
    toy, calls = Toy(), []

    def ev(task, stage):
        calls.append((task, stage))
        return toy.evaluate(task, stage) if task == "pre" or task in toy.learned else {"success": 0.0}

    saved = []
    rec = run_stages(["a", "b", "c"], toy, ev, extra_tasks=["pre"], on_stage_end=lambda s, r: saved.append(s))
    assert rec.done == 3 and saved == [0, 1, 2] and [s["steps"] for s in rec.stages] == [10, 11, 12]
    assert set(rec.initial) == {"a", "b", "c", "pre"}  # zero-shot row before any stage
    assert ("b", 0) not in calls and ("c", 1) not in calls  # unseen tasks are not evaluated
    assert rec.matrix("success") == [[1.0, None, None, 0.5], [0.5, 1.0, None, 0.5], [0.25, 0.5, 1.0, 0.5]]
    s = summarise(rec)
    assert s["final_mean"] == pytest.approx(1.75 / 3) and s["just_learned"] == 1.0
    assert s["forgetting"] == {"a": pytest.approx(0.75), "b": pytest.approx(0.5), "c": None}
    assert s["retention"] == pytest.approx({"before": 1.0, "after": 0.5, "ratio": 0.5})


def test_extra_tasks_only_before_and_after_the_sequence_when_asked():
    toy, calls = Toy(), []

    def ev(task, stage):
        calls.append((task, stage))
        return toy.evaluate(task, stage) if task == "pre" or task in toy.learned else {"success": 0.0}

    rec = run_stages(["a", "b", "c"], toy, ev, extra_tasks=["pre"], extra_every_stage=False)
    assert [c for c in calls if c[0] == "pre"] == [("pre", -1), ("pre", 2)]
    assert [row[3] for row in rec.matrix("success")] == [None, None, 0.5]
    assert summarise(rec)["retention"] == pytest.approx({"before": 1.0, "after": 0.5, "ratio": 0.5})


def test_resume_continues_after_the_last_completed_stage(tmp_path):
    toy = Toy()
    rec = run_stages(["a", "b"], toy, lambda t, s: {"success": 1.0}, extra_tasks=["pre"])
    partial = ContinualRecord(rec.tasks, rec.extra_tasks, rec.initial, rec.rows[:1], rec.stages[:1])
    partial.save(tmp_path / "r.json")
    loaded = ContinualRecord.load(tmp_path / "r.json")
    assert loaded == partial
    toy2 = Toy()
    out = run_stages(["a", "b"], toy2, lambda t, s: {"success": 0.5}, ["pre"], record=loaded)
    assert toy2.learned == ["b"] and out.done == 2 and out.rows[0]["a"]["success"] == 1.0
    with pytest.raises(ConfigError, match="cannot resume"):
        run_stages(["a", "x"], Toy(), lambda t, s: {}, ["pre"], record=loaded)


def test_bad_inputs():
    with pytest.raises(ConfigError, match="at least one task"):
        run_stages([], Toy(), lambda t, s: {})
    with pytest.raises(ConfigError, match="clash"):
        run_stages(["a"], Toy(), lambda t, s: {}, extra_tasks=["a"])
    with pytest.raises(DataError, match="no completed stage"):
        summarise(ContinualRecord(["a"]))
    with pytest.raises(DataError, match="cannot read"):
        ContinualRecord.load("/nonexistent/record.json")
