"""The bench kit: one mean ± sample std with n, results files that re-render from their JSON, the common bench
flags (help runs nothing, bad profiles are one-line errors), and the hook-free step timer."""

import json
import math
import shutil
import statistics
import sys
from pathlib import Path

import pytest
import torch

from pretrainkit.cli import main
from pretrainkit.core import bench as core_bench
from pretrainkit.core import benchkit
from pretrainkit.core.data import EpochBatches
from pretrainkit.core.results import MeanStd, fmt_mean_std, mean_std, publish, rerender
from pretrainkit.core.trainer import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from results_helpers import assert_rerender_equals, body_of, tables_without_n
from toy import ToyRegressor, toy_data

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"
BENCHES = ("core", "saga", "crnet", "l2m")


# ---- the one statistic --------------------------------------------------------------------------------
def test_mean_std_is_the_sample_std_and_a_single_value_has_none():
    xs = [0.81, 0.86, 0.88]
    ms = mean_std(xs)
    assert ms.n == 3 and ms.mean == pytest.approx(statistics.fmean(xs))
    assert ms.std == pytest.approx(statistics.stdev(xs)) and ms.std > statistics.pstdev(xs)
    one = mean_std([0.5])
    assert one == MeanStd(0.5, None, 1)
    assert mean_std([]) == MeanStd(None, None, 0)
    # missing and diverged values are left out, and n says so
    assert mean_std([1.0, None, math.inf, math.nan, 3.0]) == MeanStd(2.0, statistics.stdev([1.0, 3.0]), 2)


def test_fmt_mean_std_states_n_and_never_shows_a_zero_spread_for_one_value():
    assert fmt_mean_std(MeanStd(0.8512, 0.0234, 3)) == "0.85 ± 0.02 (n=3)"
    assert fmt_mean_std(MeanStd(0.5, None, 1), 3) == "0.500 ± — (n=1)"
    assert fmt_mean_std(MeanStd(None, None, 0)) == "—"
    assert fmt_mean_std(MeanStd(0.85, 0.02, 3), n=False) == "0.85 ± 0.02"
    assert fmt_mean_std(MeanStd(0.85, 0.02, 3), n=3) == "0.85 ± 0.02"  # the table's n: not repeated
    assert fmt_mean_std(MeanStd(0.85, 0.02, 2), n=3) == "0.85 ± 0.02 (n=2)"  # fewer values: said
    assert fmt_mean_std({"mean": 0.5, "std": None, "n": 1}) == "0.50 ± — (n=1)"


def test_table_checker_finds_a_table_without_n():
    assert tables_without_n("## x\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    assert not tables_without_n("## x (n=3)\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    assert not tables_without_n("| method | n |\n|---|---|\n| a | 3 |\n")


# ---- results files: config, kind, re-rendering ---------------------------------------------------------
def _core_data():
    return {
        "bare_s_per_step": [0.0386, 0.0377, 0.0375],
        "trainer_s_per_step": [0.0389, 0.0399, 0.0385],
        "ddp_s_per_step": {"1": 0.039, "2": 0.030},
    }


def test_core_results_store_the_config_and_rerender_to_the_same_report(tmp_path):
    cfg = core_bench.CoreBenchConfig(steps=7)
    md = publish(
        "core",
        _core_data(),
        core_bench.render,
        kind=core_bench.KIND,
        seeds=[0],
        out_dir=tmp_path / "a",
        title=core_bench.TITLE,
        config=cfg,
        profile="bench",
    )
    out = json.loads(md.with_suffix(".json").read_text())
    assert (
        out["config"]["steps"] == 7
        and out["kind"] == "core.bench"
        and out["provenance"]["profile"] == "bench"
    )
    text = md.read_text()
    assert "profile `bench`" in text and "7 timed steps" in text and not tables_without_n(text)
    assert out["headline"]["trainer_overhead_ratio"] == round(0.0385 / 0.0375, 4)
    assert_rerender_equals(md, tmp_path / "b", lambda p, d: rerender(p, core_bench.render, d))
    # a re-rendered file re-rendered again keeps the run's provenance, not the first re-rendering's
    again = rerender(tmp_path / "b" / "core.json", core_bench.render, tmp_path / "c")
    assert "rerendered" not in json.loads(again.with_suffix(".json").read_text())["provenance"]["rerendered"]


def test_rerender_lists_a_changed_verdict(tmp_path):
    md = publish(
        "core",
        _core_data(),
        core_bench.render,
        kind=core_bench.KIND,
        seeds=[0],
        out_dir=tmp_path,
        config=core_bench.CoreBenchConfig(),
    )
    stored = json.loads(md.with_suffix(".json").read_text())
    stored["headline"]["trainer_overhead_ratio"] = 9.9  # as if an older report had drawn another figure
    md.with_suffix(".json").write_text(json.dumps(stored))
    again = rerender(md.with_suffix(".json"), core_bench.render, tmp_path / "b")
    assert "trainer_overhead_ratio: 9.9 -> 1.0267" in again.read_text()


def test_rerender_of_a_file_that_is_not_results_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "x.json").write_text('{"a": 1}')
    assert main(["bench", "core", "--rerender", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a pretrainkit bench results file" in err and "\n" not in err


@pytest.mark.parametrize("name", sorted(p.stem for p in RESULTS.glob("*.json")))
def test_every_stored_results_file_rerenders_with_n_in_every_table(name, tmp_path):
    """The stored results re-render from their JSON alone (nothing run): same headline figures (new n_* keys
    aside), every table states n, and a file rendered under the new convention re-renders unchanged."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(RESULTS / f"{name}.json", src / f"{name}.json")
    target = next((t for t in ("crnet", "l2m", "saga") if name.startswith(t)), name)
    assert (
        main(["bench", target, "--rerender", str(src / f"{name}.json"), "--results-dir", str(tmp_path / "a")])
        == 0
    )
    old = json.loads((RESULTS / f"{name}.json").read_text())
    new = json.loads((tmp_path / "a" / f"{name}.json").read_text())
    assert {k: v for k, v in new["headline"].items() if k in old["headline"]} == old["headline"]
    assert new["provenance"]["date"] == old["provenance"]["date"]
    text = (tmp_path / "a" / f"{name}.md").read_text()
    assert not tables_without_n(text), tables_without_n(text)
    assert (
        main(
            [
                "bench",
                target,
                "--rerender",
                str(tmp_path / "a" / f"{name}.json"),
                "--results-dir",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )
    assert body_of((tmp_path / "b" / f"{name}.md").read_text()) == body_of(text)


# ---- common flags -------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", BENCHES)
def test_bench_help_prints_and_runs_nothing(target, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(core_bench, "run", lambda *a, **k: pytest.fail("the bench ran"))
    with pytest.raises(SystemExit) as e:
        main(["bench", target, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--config", "--set", "--results-dir", "--name", "--seeds", "--rerender"):
        assert flag in out, (target, flag)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target", BENCHES)
def test_unknown_profile_is_a_one_line_error(target, capsys):
    assert main(["bench", target, "--config", "nosuchprofile"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pretrainkit: error: unknown {target} profile 'nosuchprofile'") and "\n" not in err


@pytest.mark.parametrize("target", BENCHES)
def test_every_bench_takes_the_common_flags(target, tmp_path, capsys):
    # all flags parse (an argparse error would exit, not return 2); --rerender of a missing file then stops it
    argv = [
        "bench",
        target,
        "--config",
        "nosuch",
        "--set",
        "a=1",
        "--results-dir",
        str(tmp_path),
        "--name",
        "x",
        "--seeds",
        "0,1",
        "--rerender",
        str(tmp_path / "missing.json"),
    ]
    assert main(argv) == 2
    assert "cannot read results file" in capsys.readouterr().err


def test_bad_seeds_and_core_seed_count_are_one_line_errors(capsys):
    assert main(["bench", "crnet", "--seeds", "0,x"]) == 2
    assert "--seeds must be comma-separated integers" in capsys.readouterr().err
    assert main(["bench", "core", "--seeds", "0,1"]) == 2
    assert "give one seed" in capsys.readouterr().err


# ---- the timer ----------------------------------------------------------------------------------------
class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 1.0
        return self.t


def test_stamped_batches_time_exactly_the_timed_steps(monkeypatch):
    monkeypatch.setattr(benchkit.time, "perf_counter", _Clock())
    calls = []

    def loop(stream, n):
        calls.append(n)
        for _ in range(n):
            next(stream)
            benchkit.time.perf_counter()  # the step itself: one more tick of the clock

    s = benchkit.time_loop(loop, iter(range(100)), steps=5, warmup=3)
    assert calls == [9] and s == 2.0  # each step = its fetch tick + its own tick
    stream = benchkit.StampedBatches(iter(range(3)))
    for _ in range(3):
        next(stream)
    with pytest.raises(RuntimeError, match="needs 5"):
        stream.seconds_per_step(steps=2, warmup=2)


def test_time_trainer_needs_no_step_hook_and_runs_warmup_plus_steps_plus_one(tmp_path):
    torch.manual_seed(0)
    seen = []

    def trainer(stream, max_steps):
        seen.append(max_steps)
        assert stream.items_per_batch == 8  # the stream's own attributes pass through
        return Trainer(
            ToyRegressor(), stream, TrainConfig(max_steps=max_steps, progress=False), run_dir=tmp_path
        )

    s = benchkit.time_trainer(trainer, lambda: EpochBatches(toy_data(), 8, seed=0), steps=4, warmup=2)
    assert seen == [7] and 0 < s < 5
    bare = benchkit.time_bare(ToyRegressor, lambda: EpochBatches(toy_data(), 8, seed=0), steps=4, warmup=2)
    assert 0 < bare < 5


def test_best_time_interleaves_and_takes_the_best(monkeypatch):
    monkeypatch.setattr(benchkit.time, "perf_counter", _Clock())
    order, resets = [], []
    fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    best = benchkit.best_time(fns, rounds=2, steps=2, warmup=1, reset=resets.append)
    assert order == ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3  # order reverses every round
    assert resets == ["a", "b", "b", "a"] and best == {"a": 0.5, "b": 0.5}  # 1 tick per 2-call block
    per = benchkit.best_time(fns, rounds=1, steps=3, per_call=True)
    assert per == {"a": 1.0, "b": 1.0}
