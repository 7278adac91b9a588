"""The one-worker executor behaves like a pool: results and errors come back through the futures."""

import pytest

from pretrainkit.core.parallel import InlineExecutor, executor, spawn_map


def _div(a, b):
    return a / b


def test_inline_executor_returns_results_and_raises_on_result():
    with executor(1) as pool:
        assert isinstance(pool, InlineExecutor)
        ok, bad = pool.submit(_div, 6, 3), pool.submit(_div, 1, 0)
    assert ok.result() == 2 and ok.done()
    with pytest.raises(ZeroDivisionError):
        bad.result()


def test_spawn_map_in_two_processes_keeps_job_order():
    jobs = [(x, 2) for x in range(5)]
    assert (
        list(spawn_map(_div, jobs, workers=2))
        == list(spawn_map(_div, jobs, workers=1))
        == [0, 0.5, 1, 1.5, 2]
    )
    assert sorted(spawn_map(_div, jobs, workers=2, ordered=False)) == [0, 0.5, 1, 1.5, 2]
