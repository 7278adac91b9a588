"""Continual learning over a task sequence: a stage loop and the usual metrics, for any backbone.

A *stage* trains on one task of the sequence, then evaluates every task seen so far plus optional extra
tasks (e.g. the pre-training tasks). Results live in a ``ContinualRecord``: one matrix per metric with a row
per stage and a column per task (``None`` where a task was not evaluated), plus an optional ``initial`` row
measured before any stage. From it: average success, forgetting per task, and retention of the extra tasks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pretrainkit.core.io import atomic_write_text
from pretrainkit.errors import ConfigError, DataError

Row = dict[str, dict[str, Any]]  # task -> metric -> value (numbers, or e.g. a key histogram)


class StageLearner(Protocol):
    """What the loop drives: ``learn(stage, task)`` trains on one task and returns facts to log."""

    def learn(self, stage: int, task: str) -> dict[str, Any]: ...


Evaluate = Callable[[str, int], dict[str, float]]  # (task, stage or -1 for initial) -> metrics


@dataclass
class ContinualRecord:
    """Everything measured over a task sequence; ``rows[s][task][metric]`` after stage ``s``."""

    tasks: list[str]
    extra_tasks: list[str] = field(default_factory=list)
    initial: Row = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)  # what each learn() returned

    @property
    def columns(self) -> list[str]:
        return [*self.tasks, *self.extra_tasks]

    @property
    def done(self) -> int:
        """Number of completed stages."""
        return len(self.rows)

    def matrix(self, metric: str) -> list[list[float | None]]:
        """``[stage][column]`` values of one metric (``None`` where not evaluated)."""
        return [[row.get(t, {}).get(metric) for t in self.columns] for row in self.rows]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContinualRecord:
        try:
            return cls(**data)
        except TypeError as e:
            raise DataError(f"not a continual record: {e}") from None

    def save(self, path: str | Path) -> None:
        """Write as JSON atomically (temp file, then rename), so a kill never leaves half a record."""
        atomic_write_text(path, json.dumps(self.to_json(), indent=1, default=_num))

    @classmethod
    def load(cls, path: str | Path) -> ContinualRecord:
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read continual record {path}: {e}") from None


def _num(o: Any) -> Any:
    return o.item() if hasattr(o, "item") else str(o)


def run_stages(
    tasks: Sequence[str],
    learner: StageLearner,
    evaluate: Evaluate,
    extra_tasks: Sequence[str] = (),
    record: ContinualRecord | None = None,
    initial: bool = True,
    on_stage_end: Callable[[int, ContinualRecord], None] | None = None,
    extra_every_stage: bool = True,
) -> ContinualRecord:
    """Train on ``tasks`` in order; after each, evaluate the tasks seen so far and ``extra_tasks``
    (``extra_every_stage=False``: the extra tasks after the last stage only, enough for retention).

    ``initial=True`` first evaluates every task before any training (the reference for retention and a
    zero-shot row); a ``record`` whose ``initial`` is already filled keeps it.
    Pass a ``record`` with completed stages to resume (the learner must already hold their state); the
    loop continues at ``record.done``. ``on_stage_end(stage, record)`` runs after each stage (checkpoints).
    """
    tasks, extra_tasks = list(tasks), list(extra_tasks)
    if not tasks:
        raise ConfigError("a continual run needs at least one task")
    overlap = sorted(set(tasks) & set(extra_tasks))
    if overlap or len(set(tasks)) != len(tasks):
        raise ConfigError(f"sequence tasks must be distinct and not among the extra tasks (clash: {overlap})")
    if record is None:
        record = ContinualRecord(tasks, extra_tasks)
    elif record.tasks != tasks or record.extra_tasks != extra_tasks:
        raise ConfigError(
            f"cannot resume: the saved run has tasks {record.tasks} + {record.extra_tasks}, "
            f"this one {tasks} + {extra_tasks}"
        )
    if initial and not record.initial and record.done == 0:
        record.initial = {t: dict(evaluate(t, -1)) for t in record.columns}
    for stage in range(record.done, len(tasks)):
        info = learner.learn(stage, tasks[stage])
        last = stage == len(tasks) - 1
        row = {
            t: dict(evaluate(t, stage))
            for t in [*tasks[: stage + 1], *(extra_tasks if extra_every_stage or last else [])]
        }
        record.stages.append({"task": tasks[stage], **(info or {})})
        record.rows.append(row)
        if on_stage_end is not None:
            on_stage_end(stage, record)
    return record


# ---- metrics on matrices --------------------------------------------------------------------------------
Matrix = Sequence[Sequence[float | None]]


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else None


def average_success(matrix: Matrix, stage: int = -1) -> float | None:
    """Mean over the sequence tasks seen by ``stage`` (columns ``0..stage``) of that stage's row."""
    stage = stage % len(matrix)
    return _mean(list(matrix[stage][: stage + 1]))


def forgetting(matrix: Matrix) -> list[float | None]:
    """Per sequence task i: max success at stages i..T-2 minus success at the final stage T-1.

    Positive = forgotten. The last task has no earlier stage, so its entry is ``None``. Columns beyond
    the number of stages (extra tasks) are ignored: use ``retention`` for them.
    """
    T = len(matrix)
    out: list[float | None] = []
    for i in range(T):
        earlier = [matrix[s][i] for s in range(i, T - 1) if matrix[s][i] is not None]
        final = matrix[T - 1][i]
        out.append(max(earlier) - final if earlier and final is not None else None)
    return out


def mean_forgetting(matrix: Matrix) -> float | None:
    """Mean forgetting over the first T-1 tasks (``None`` for a single-stage run)."""
    return _mean(forgetting(matrix))


def retention(initial: Sequence[float | None], final: Sequence[float | None]) -> dict[str, float | None]:
    """Extra (pre-training) tasks: mean before, mean after, and after / before (``None`` if before is 0)."""
    before, after = _mean(initial), _mean(final)
    ratio = after / before if before and after is not None else None
    return {"before": before, "after": after, "ratio": ratio}


def summarise(record: ContinualRecord, metric: str = "success") -> dict[str, Any]:
    """Average final success, per-task and mean forgetting, and extra-task retention for one record."""
    m = record.matrix(metric)
    if not m:
        raise DataError("the continual record has no completed stage to summarise")
    n = len(record.tasks)
    final_extra = m[-1][n:]
    initial_extra = [record.initial.get(t, {}).get(metric) for t in record.extra_tasks]
    per_task = forgetting(m)  # over the stages done so far
    return {
        "final_mean": average_success(m, -1),
        "mean_over_stages": _mean([average_success(m, s) for s in range(len(m))]),
        "just_learned": _mean(
            [m[s][s] for s in range(len(m))]
        ),  # each task right after its stage: plasticity
        "forgetting": dict(zip(record.tasks, per_task)),
        "mean_forgetting": _mean(per_task),
        "retention": retention(initial_extra, final_extra),
    }
