"""Tracking where users look: TensorBoard event files and an MLflow run read back with their own readers,
resume into the same history, one-line errors for an unknown tracker or a missing extra, and the weight
search's study opened with optuna-dashboard's storage code."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from pretrainkit.core import tracking
from pretrainkit.core.config import from_dict
from pretrainkit.core.data import EpochBatches
from pretrainkit.core.rundir import RunDir
from pretrainkit.core.trainer import TrainConfig, Trainer
from pretrainkit.errors import ConfigError, NonFiniteLossError, PretrainkitError

sys.path.insert(0, str(Path(__file__).parent))
from toy import ToyRegressor, toy_data

torch.set_num_threads(1)


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


needs_tb = pytest.mark.skipif(
    _missing("tensorboard"), reason="tensorboard not installed: pip install '.[tracking]'"
)
needs_mlflow = pytest.mark.skipif(
    _missing("mlflow"), reason="mlflow not installed: pip install '.[tracking]'"
)
needs_dashboard = pytest.mark.skipif(
    _missing("optuna_dashboard"), reason="optuna-dashboard not installed: pip install '.[tracking]'"
)


def _trainer(run_dir, eval_hooks=(), model=ToyRegressor, **kw):
    torch.manual_seed(0)
    cfg = TrainConfig(**{"max_steps": 6, "lr": 0.05, "progress": False, "log_every": 2, **kw})
    return Trainer(model(), EpochBatches(toy_data(), 16, seed=1), cfg, run_dir=run_dir, eval_hooks=eval_hooks)


def _logged(run_dir: Path, key: str = "loss") -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in RunDir(run_dir).read_metrics() if key in r]


def _probe(trainer, step):
    return {"probe": float(step) / 10}


# ---- switch and errors ----------------------------------------------------------------------------------
def test_no_tracker_writes_only_metrics_jsonl(tmp_path):
    _trainer(tmp_path).fit()
    assert [s for s, _ in _logged(tmp_path)] == [2, 4, 6]
    assert not (tmp_path / tracking.TENSORBOARD_DIR).exists()
    assert not (tmp_path / tracking.MLFLOW_DB).exists() and not (tmp_path / tracking.MLFLOW_RUN_FILE).exists()


def test_unknown_tracker_is_a_one_line_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.trackers.*'wandb'.*allowed: tensorboard, mlflow") as e:
        from_dict(
            TrainConfig, {"trackers": "[tensorboard, wandb]"}
        )  # as --set ...train.trackers=[...] gives it
    assert "\n" not in str(e.value)
    # a TrainConfig built in code (never validated) is refused when fit starts, before any step
    t = _trainer(tmp_path, trackers=["wandb"])
    with pytest.raises(ConfigError, match="allowed: tensorboard, mlflow"):
        t.fit()
    assert t.step == 0
    with pytest.raises(ConfigError, match="twice"):
        from_dict(TrainConfig, {"trackers": ["tensorboard", "tensorboard"]})


def test_cli_refuses_an_unknown_tracker_in_one_line_and_names_the_system(tmp_path, monkeypatch, capsys):
    from pretrainkit.cli import main

    monkeypatch.setenv(tracking.SYSTEM_ENV, "unset")  # restored after the test
    rc = main(
        ["saga", "pretrain", "--set", "pretrain.train.trackers=[tensorboard,wandb]", "--out", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert (
        rc == 2 and err.count("\n") == 1 and "'wandb' is not a tracker; allowed: tensorboard, mlflow" in err
    )
    assert os.environ[tracking.SYSTEM_ENV] == "saga"  # what MLflow's experiment would be named


@pytest.mark.parametrize("name,module", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_missing_extra_is_a_one_line_error_naming_it(tmp_path, monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails as if it were not installed
    t = _trainer(tmp_path, trackers=[name])
    with pytest.raises(
        PretrainkitError, match=r"needs the tracking extra: pip install 'pretrainkit\[tracking\]'"
    ) as e:
        t.fit()
    assert "\n" not in str(e.value) and t.step == 0
    _trainer(tmp_path).fit()  # the run directory's lock was released


def test_trackers_need_a_run_directory():
    with pytest.raises(ConfigError, match="needs a run directory"):
        _trainer(None, trackers=["tensorboard"]).fit()


# ---- TensorBoard ------------------------------------------------------------------------------------------
def _tb_scalars(run_dir: Path, key: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / tracking.TENSORBOARD_DIR))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(key)] if key in acc.Tags()["scalars"] else []


@needs_tb
def test_tensorboard_event_files_hold_the_logged_metrics(tmp_path):
    _trainer(tmp_path, trackers=["tensorboard"], eval_every=4, eval_hooks=[_probe]).fit()
    assert list((tmp_path / tracking.TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    for key in ("loss", "lr", "eval/probe"):
        want = _logged(tmp_path, key)
        assert want and [s for s, _ in _tb_scalars(tmp_path, key)] == [s for s, _ in want]
        # event files store float32
        assert [v for _, v in _tb_scalars(tmp_path, key)] == pytest.approx([v for _, v in want], rel=1e-6)
    assert [s for s, _ in _tb_scalars(tmp_path, "eval/probe")] == [4, 6]


class _Doubled(ToyRegressor):
    def forward(self, batch):
        loss, metrics = super().forward(batch)
        return 2 * loss, metrics


@needs_tb
def test_tensorboard_resume_appends_and_a_fresh_start_clears(tmp_path):
    _trainer(tmp_path, trackers=["tensorboard"], max_steps=4).fit()
    _trainer(tmp_path, trackers=["tensorboard"], max_steps=8).fit(resume="auto")
    assert [s for s, _ in _tb_scalars(tmp_path, "loss")] == [2, 4, 6, 8] == [s for s, _ in _logged(tmp_path)]
    # as if killed after logging step 8 but before its checkpoint: the resumed run re-logs step 8 once
    shutil.rmtree(tmp_path / "checkpoints" / "step-00000008")
    before = _logged(tmp_path)[-1][1]
    _trainer(tmp_path, trackers=["tensorboard"], max_steps=8, model=_Doubled).fit(resume="auto")
    logged, shown = _logged(tmp_path), _tb_scalars(tmp_path, "loss")
    assert [s for s, _ in shown] == [s for s, _ in logged] == [2, 4, 6, 8] and logged[-1][1] != before
    assert [v for _, v in shown] == pytest.approx([v for _, v in logged], rel=1e-6)
    _trainer(tmp_path, trackers=["tensorboard"], max_steps=2).fit()  # fresh start in the same folder
    assert [s for s, _ in _tb_scalars(tmp_path, "loss")] == [2]


@pytest.mark.slow  # two torchrun processes: ~15 s here
@needs_tb
def test_under_ddp_only_rank_0_writes_the_event_files(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(Path(__file__).parent / "dist_worker.py"), "ddp", str(tmp_path / "w.safetensors"),
           str(tmp_path / "run"), "tensorboard"]  # fmt: skip
    r = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=180
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list((tmp_path / "run" / tracking.TENSORBOARD_DIR).glob("events.out.tfevents.*"))) == 1
    assert [s for s, _ in _tb_scalars(tmp_path / "run", "loss")] == [s for s, _ in _logged(tmp_path / "run")]
    assert [s for s, _ in _logged(tmp_path / "run")] == list(range(1, 7))


# ---- MLflow -------------------------------------------------------------------------------------------------
def _mlflow_run(run_dir: Path):
    from mlflow.tracking import MlflowClient

    ref = json.loads((run_dir / tracking.MLFLOW_RUN_FILE).read_text())
    assert ref["tracking_uri"] == f"sqlite:///{(run_dir / tracking.MLFLOW_DB).resolve()}"
    client = MlflowClient(tracking_uri=ref["tracking_uri"])
    return client, client.get_run(ref["run_id"])


def _history(client, run, key: str = "loss") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


@pytest.fixture(scope="module")
def blank_store():
    """An empty MLflow SQLite store, made once: creating one runs MLflow's schema migrations, each its own
    committed transaction, so it is made in RAM (/dev/shm: ~5x faster than on disk here) and every test
    starts from a copy."""
    if _missing("mlflow"):
        pytest.skip("mlflow not installed: pip install '.[tracking]'")
    from mlflow.tracking import MlflowClient

    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=shm) as d:
        path = Path(d) / "blank.db"
        MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
        yield path


@pytest.fixture
def mlflow_env(monkeypatch, blank_store):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(tracking.SYSTEM_ENV, "toy-system")

    def store(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(blank_store, path)
        return path

    return store


@needs_mlflow
def test_mlflow_run_holds_params_and_loss_history_and_resumes_into_it(tmp_path, mlflow_env):
    run_dir = tmp_path / "my-run"
    mlflow_env(run_dir / tracking.MLFLOW_DB)
    resolved = {"seed": 3, "pretrain": {"tasks": ["a", "b"], "train": {"max_steps": 4, "lr": 0.05}}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved))
    _trainer(run_dir, trackers=["mlflow"], max_steps=4, eval_hooks=[_probe]).fit()
    client, run = _mlflow_run(run_dir)
    assert run.info.run_name == "my-run" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "toy-system"
    assert run.data.params == {
        "seed": "3",
        "pretrain.tasks": "[a, b]",
        "pretrain.train.max_steps": "4",
        "pretrain.train.lr": "0.05",
    }
    assert _history(client, run) == _logged(run_dir)  # doubles both ways: exact
    assert _history(client, run, "eval/probe") == _logged(run_dir, "eval/probe")

    # resume: the same run goes on (a param the resumed config adds is logged, the others are kept)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**resolved, "extra": 1}))
    _trainer(run_dir, trackers=["mlflow"], max_steps=8).fit(resume="auto")
    client, again = _mlflow_run(run_dir)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert again.data.params["extra"] == "1" and again.data.params["seed"] == "3"
    assert [s for s, _ in _history(client, again)] == [2, 4, 6, 8]
    assert _history(client, again) == _logged(run_dir)


@needs_mlflow
def test_an_mlflow_store_that_cannot_be_opened_is_a_one_line_error(tmp_path, mlflow_env):
    t = _trainer(tmp_path, trackers=["tensorboard", "mlflow"], mlflow_uri="nosuchscheme://host/db")
    with pytest.raises(PretrainkitError, match="cannot open the tracking store") as e:
        t.fit()
    assert "\n" not in str(e.value) and t.step == 0


class _NanAfter(ToyRegressor):
    def forward(self, batch):
        loss, metrics = super().forward(batch)
        self.calls = getattr(self, "calls", 0) + 1
        return (loss * float("nan") if self.calls > 3 else loss), metrics


@needs_mlflow
def test_mlflow_run_is_marked_failed_when_fit_raises_and_the_users_uri_is_used(
    tmp_path, mlflow_env, monkeypatch
):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{mlflow_env(tmp_path / 'team.db')}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError):
        _trainer(run_dir, trackers=["mlflow"], model=_NanAfter).fit()
    assert not (run_dir / tracking.MLFLOW_DB).exists()
    ref = json.loads((run_dir / tracking.MLFLOW_RUN_FILE).read_text())
    run = MlflowClient(tracking_uri=uri).get_run(ref["run_id"])
    assert ref["tracking_uri"] == uri and run.info.status == "FAILED" and run.info.run_name == "run"


# ---- optuna-dashboard ---------------------------------------------------------------------------------
def _get(app, path: str) -> tuple[str, dict]:
    """One GET through the dashboard's WSGI app, as its web page would ask."""
    from wsgiref.util import setup_testing_defaults

    env = {"REQUEST_METHOD": "GET", "PATH_INFO": path}
    setup_testing_defaults(env)
    status = []
    body = b"".join(app(env, lambda s, headers, exc_info=None: status.append(s)))
    return status[0], json.loads(body)


@needs_dashboard
def test_weight_search_study_opens_in_optuna_dashboard(tmp_path, monkeypatch):
    import optuna_dashboard

    from pretrainkit.search.task_weights import SearchConfig, search_task_weights

    monkeypatch.chdir(tmp_path)
    # as a system runs it: the study in <out>/search/study.db (Saga's pipeline passes run_dir=<out>/search)
    cfg = SearchConfig(n_trials=3, n_startup_trials=3, seed=0)
    res = search_task_weights(
        lambda w: -((w["a"] - 0.7) ** 2), ["a", "b"], cfg, run_dir="out/search", progress=False
    )
    # what `optuna-dashboard sqlite:///out/search/study.db` opens (the URL goes through its own get_storage)
    app = optuna_dashboard.wsgi("sqlite:///out/search/study.db")
    status, studies = _get(app, "/api/studies")
    assert status.startswith("200")
    # beside it the storage may hold the search's small bookkeeping studies (<study>:top-up:<n>)
    [study] = [s for s in studies["study_summaries"] if s["study_name"] == cfg.study_name]
    assert study["study_name"] == cfg.study_name and study["directions"] == [cfg.direction]
    status, detail = _get(app, f"/api/studies/{study['study_id']}")
    assert status.startswith("200")
    trials = detail["trials"]
    assert [t["number"] for t in trials] == [h["number"] for h in res.history]
    assert [t["state"] for t in trials] == ["Complete"] * cfg.n_trials
    assert [t["values"] for t in trials] == [[h["value"]] for h in res.history]
    assert {p["name"] for p in trials[0]["params"]} == {"w_a", "w_b"}
