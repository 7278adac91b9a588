"""Run directory: resolved config, metrics.jsonl, plots, results.json, and the one-writer lock."""

from __future__ import annotations

import fcntl
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from pretrainkit.core.config import save_config, to_dict
from pretrainkit.core.io import atomic_write_text
from pretrainkit.errors import PretrainkitError

LOCK_FILE = ".lock"
# Locks this process holds, by resolved run path: the pipeline and its trainer lock the same run (re-entrant).
_HELD: dict[Path, list] = {}


class RunDir:
    """One run's folder. Metrics are appended one JSON object per line and flushed at once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "plots").mkdir(exist_ok=True)

    def lock(self) -> None:
        """Take the run's exclusive writer lock, or raise a one-line error naming the process that holds it.

        An advisory ``flock`` on ``<run>/.lock``: the kernel drops it when the holder exits, however it dies, so
        a lock left by a killed run is stale by construction and taken over without asking. Re-entrant within
        one process; released by ``unlock`` (as often as it was taken) or at exit."""
        key = self.path.resolve()
        if key in _HELD:
            _HELD[key][1] += 1
            return
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise PretrainkitError(
                f"run directory {self.path} is in use by another process (pid {holder}); "
                "wait for it to finish, or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _HELD[key] = [fd, 1]

    def unlock(self) -> None:
        key = self.path.resolve()
        held = _HELD.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del _HELD[key]
            os.close(held[0])  # closing the descriptor releases the flock

    def clear_for_fresh_start(self) -> None:
        """Remove the checkpoints and metrics of an earlier run before starting over in this folder, so a later
        ``--resume auto`` cannot pick up a stale, newer checkpoint of the old run."""
        import shutil

        if self.checkpoints.is_dir():
            shutil.rmtree(self.checkpoints)
        self.metrics_path.unlink(missing_ok=True)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def save_config(self, cfg: Any) -> None:
        save_config(cfg, self.path / "config.yaml")

    def log(self, record: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 3), **record}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")
            f.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        out = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: ignore it
                continue
        return out

    def truncate_metrics_after(self, step: int) -> None:
        """On resume, drop records logged after the checkpoint so the log matches the weights."""
        kept = [r for r in self.read_metrics() if r.get("step", -1) <= step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def write_results(self, results: dict[str, Any]) -> Path:
        p = self.path / "results.json"
        atomic_write_text(p, json.dumps(to_dict(results), indent=2, default=_jsonable))
        return p

    def plot_metrics(self, keys: list[str] | None = None, name: str = "loss.png") -> Path | None:
        """Line plot of logged scalars against step (loss and per-task losses by default)."""
        recs = [r for r in self.read_metrics() if "step" in r]
        if not recs:
            return None
        keys = keys or sorted({k for r in recs for k in r if k == "loss" or k.startswith("loss/")})
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for k in keys:
            pts = [
                (r["step"], r[k]) for r in recs if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])
            ]
            if pts:
                ax.plot(*zip(*pts), label=k)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        out = self.path / "plots" / name
        fig.tight_layout()
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return to_dict(o) if hasattr(o, "__dataclass_fields__") else str(o)
