"""Where a run's numbers go besides ``metrics.jsonl``: TensorBoard event files and an MLflow run.

A ``Tracker`` takes what the trainer logs at its log interval (and its evaluations) as ``log(step, metrics)``,
the run's resolved config once as ``log_params(config)``, and ``close()`` at the end of ``fit`` (``failed``
when fit raised). ``train.trackers: [tensorboard, mlflow]`` turns them on for any system; the trainer opens
them on rank 0 only, after resuming, and never calls them between log steps, so a run without trackers does
exactly the work it did before.

TensorBoard and MLflow are the optional ``tracking`` extra and imported only when asked for. Resuming keeps
one history: TensorBoard appends to the same ``<run>/tensorboard`` folder (hiding the events a killed run
logged after its checkpoint), MLflow reopens the run whose id ``<run>/mlflow_run.json`` keeps.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any, Protocol

import yaml

from pretrainkit.core.config import to_dict
from pretrainkit.core.io import atomic_write_text
from pretrainkit.core.rundir import RunDir
from pretrainkit.errors import ConfigError, PretrainkitError

TRACKERS = ("tensorboard", "mlflow")
EXTRA_HINT = "pip install 'pretrainkit[tracking]'"
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DB = "mlflow.db"
MLFLOW_RUN_FILE = "mlflow_run.json"
# How far above the trainer's run directory the pipeline's resolved config.yaml may lie (Saga trains in
# <out>/pretrain/<pool>/<tag> and writes <out>/config.yaml).
CONFIG_SEARCH_DEPTH = 3

# The system whose CLI verb is running, set by the CLI: MLflow's experiment is named after it. An environment
# variable, so the training processes a pipeline starts (Saga's encoder workers, torchrun's ranks) see it too.
SYSTEM_ENV = "PRETRAINKIT_SYSTEM"


def set_system(name: str) -> None:
    os.environ[SYSTEM_ENV] = name


class Tracker(Protocol):
    def log(self, step: int, metrics: Mapping[str, Any]) -> None: ...

    def log_params(self, config: Mapping[str, Any]) -> None: ...

    def close(self, failed: bool = False) -> None: ...


def validate_names(names: list[str] | tuple[str, ...], key: str = "train.trackers") -> None:
    for n in names:
        if n not in TRACKERS:
            raise ConfigError(f"config key '{key}': {n!r} is not a tracker; allowed: {', '.join(TRACKERS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"config key '{key}': {list(names)} names a tracker twice")


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mapping (or dataclass) -> {"a.b.c": scalar}; lists become their YAML flow text."""
    out: dict[str, Any] = {}
    for k, v in (to_dict(config) or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = yaml.safe_dump(list(v), default_flow_style=True, width=10**9).strip()
        else:
            out[key] = v
    return out


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a logged record (the trainer's are already Python floats by then)."""
    out = {}
    for k, v in metrics.items():
        if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
            v = v.item()
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


def _need(module: str, tracker: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise PretrainkitError(
            f"train.trackers={tracker} needs the tracking extra: {EXTRA_HINT} ({e})"
        ) from None


# ---- the trackers ------------------------------------------------------------------------------------------
class JsonlTracker:
    """``metrics.jsonl`` in the run directory, one JSON object per logged step (what RunDir writes)."""

    def __init__(self, run_dir: RunDir):
        self.run_dir = run_dir

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.run_dir.log({"step": step, **metrics})

    def log_params(self, config: Mapping[str, Any]) -> None:  # the pipeline writes config.yaml itself
        pass

    def close(self, failed: bool = False) -> None:
        pass


class TensorBoardTracker:
    """Event files under ``<run>/tensorboard`` through PyTorch's own ``SummaryWriter``."""

    def __init__(self, run_dir: RunDir, resumed_at: int = 0):
        _need("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir.path / TENSORBOARD_DIR
        if not resumed_at and self.path.is_dir():
            shutil.rmtree(self.path)  # a fresh start: the old run's curves would be drawn into the new one
        # purge_step: events a killed run wrote after its checkpoint are hidden, so the resumed curve is one line
        self.writer = SummaryWriter(str(self.path), purge_step=resumed_at + 1 if resumed_at else None)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        for k, v in scalars(metrics).items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def log_params(self, config: Mapping[str, Any]) -> None:
        text = "\n".join(f"    {k}: {v}" for k, v in flatten(config).items())  # indented: markdown code block
        self.writer.add_text("config", text)

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class MlflowTracker:
    """One MLflow run per run directory, in an experiment named after the system.

    The tracking URI is ``uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<run>/mlflow.db``. The run's
    id is kept in ``<run>/mlflow_run.json`` so a resumed training logs into the same run."""

    def __init__(self, run_dir: RunDir, resumed_at: int = 0, uri: str = "", experiment: str | None = None):
        _need("mlflow", "mlflow")
        from mlflow.tracking import MlflowClient

        self.uri = (
            uri
            or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{(run_dir.path / MLFLOW_DB).resolve()}"
        )
        self.client = MlflowClient(tracking_uri=self.uri)
        self._resumed = False
        ref = run_dir.path / MLFLOW_RUN_FILE
        known = json.loads(ref.read_text()) if ref.is_file() else {}
        if resumed_at and known.get("tracking_uri") == self.uri and self._reopen(known.get("run_id")):
            self.run_id, self._resumed = known["run_id"], True
            return
        name = experiment or os.environ.get(SYSTEM_ENV) or "pretrainkit"
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            # artifacts next to the database, not in ./mlruns of whatever folder the user started from
            art = (
                (run_dir.path / "mlflow-artifacts").resolve().as_uri()
                if not uri and "MLFLOW_TRACKING_URI" not in os.environ
                else None
            )
            exp_id = self.client.create_experiment(name, artifact_location=art)
        else:
            exp_id = exp.experiment_id
        run = self.client.create_run(
            exp_id, run_name=run_dir.path.name, tags={"pretrainkit.run_dir": str(run_dir.path.resolve())}
        )
        self.run_id = run.info.run_id
        atomic_write_text(ref, json.dumps({"tracking_uri": self.uri, "run_id": self.run_id}, indent=1))

    def _reopen(self, run_id: str | None) -> bool:
        from mlflow.exceptions import MlflowException

        if not run_id:
            return False
        try:
            self.client.get_run(run_id)
        except MlflowException:  # deleted from the store: start a new run rather than fail the training
            return False
        self.client.update_run(run_id, status="RUNNING")
        return True

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in scalars(metrics).items()]
        for i in range(0, len(batch), 1000):  # MLflow's per-request limit on metrics
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000], synchronous=True)

    def log_params(self, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        params = {k: str(v) for k, v in flatten(config).items()}
        if self._resumed:  # MLflow refuses to change a logged param: a resume adds only the new keys
            logged = self.client.get_run(self.run_id).data.params
            params = {k: v for k, v in params.items() if k not in logged}
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's per-request limit on params
            self.client.log_batch(self.run_id, params=items[i : i + 100], synchronous=True)

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


# ---- what the trainer calls -----------------------------------------------------------------------------
def resolved_config(run_dir: RunDir, fallback: Any = None) -> dict[str, Any]:
    """The pipeline's resolved ``config.yaml`` at or just above the run directory, else ``fallback``."""
    here = run_dir.path.resolve()
    for p in [here, *here.parents][: CONFIG_SEARCH_DEPTH + 1]:
        f = p / "config.yaml"
        if f.is_file():
            data = yaml.safe_load(f.read_text())
            if isinstance(data, dict):
                return data
    return {"train": to_dict(fallback)} if fallback is not None else {}


def open_trackers(
    names: list[str] | tuple[str, ...],
    run_dir: RunDir | None,
    resumed_at: int = 0,
    mlflow_uri: str = "",
    config: Any = None,
) -> list[Tracker]:
    """``metrics.jsonl`` plus every named tracker, each given the run's params; ``resumed_at``: the step a
    resumed run continues from (0 for a fresh start)."""
    validate_names(names)
    if run_dir is None:
        if names:
            raise ConfigError(f"train.trackers={list(names)} needs a run directory")
        return []
    out: list[Tracker] = [JsonlTracker(run_dir)]
    try:
        for n in names:
            out.append(
                TensorBoardTracker(run_dir, resumed_at)
                if n == "tensorboard"
                else MlflowTracker(run_dir, resumed_at, uri=mlflow_uri)
            )
        if names:
            params = resolved_config(run_dir, config)
            for t in out:
                t.log_params(params)
    except PretrainkitError:
        close_all(out, failed=True)
        raise
    except Exception as e:  # a store that cannot be opened (bad URI, server down): one line, not a traceback
        close_all(out, failed=True)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PretrainkitError(
            f"train.trackers={list(names)}: cannot open the tracking store: {first}"
        ) from None
    except BaseException:
        close_all(out, failed=True)
        raise
    return out


def log_all(trackers: list[Tracker], step: int, metrics: Mapping[str, Any]) -> None:
    for t in trackers:
        t.log(step, metrics)


def close_all(trackers: list[Tracker], failed: bool = False) -> None:
    """Close every tracker even if one fails to. After a good run the first error is raised once the others
    are closed; after a failed one it is dropped, so the error that stopped training is the one reported."""
    err = None
    for t in trackers:
        try:
            t.close(failed)
        except Exception as e:  # keep closing the rest
            err = err or e
    if err is not None and not failed:
        raise err


__all__ = [
    "TRACKERS",
    "Tracker",
    "JsonlTracker",
    "TensorBoardTracker",
    "MlflowTracker",
    "open_trackers",
    "log_all",
    "close_all",
    "flatten",
    "resolved_config",
    "set_system",
    "validate_names",
]
