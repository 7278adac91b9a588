"""`pretrainkit l2m routing`: does each task still reach its own modulators? Read from a finished run.

L2M forgets mainly through routing: the count penalty keeps later tasks off a finished task's keys, so its
modulators barely change (the bench's offline forgetting), and if its windows still select the keys it
trained, its actions are unchanged. This report takes the keys each task
trained (the pool's committed selection counts in consecutive stage checkpoints; a key belongs to the task
that selected it most) and the keys recorded at every evaluation (closed-loop steps and held-out windows),
and gives each task's *own-key share* right after its stage and at the end, beside its success. Nothing is
re-run: it reads ``<out>/continual/seed-N/<method>/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pretrainkit.adapt.continual import ContinualRecord
from pretrainkit.core.checkpoint import load_weights
from pretrainkit.core.config import from_dict
from pretrainkit.core.results import fmt_mean_std, load_results, md_table, mean_std, publish
from pretrainkit.core.results import rerender as rerender_results
from pretrainkit.errors import DataError
from pretrainkit.systems.l2m.config import L2MConfig
from pretrainkit.systems.l2m.pipeline import setup_torch

KIND = "l2m.routing"
COUNTS = "dt.modulation_pool.counts"
UNMODULATED = -1  # the 'owner' of the bare backbone: pre-training tasks


def stage_usage(run_dir: Path, stages: int) -> list[torch.Tensor]:
    """Per stage, how often each key was selected while training that stage's task (committed counts
    after the stage minus after the one before)."""
    out, prev = [], None
    for s in range(stages):
        path = run_dir / f"stage-{s}" / "method.safetensors"
        counts = load_weights(path).get(COUNTS) if path.is_file() else None
        if counts is None:
            raise DataError(f"{path} has no modulation-pool counts: routing needs a finished L2M-style run")
        out.append(counts.long() - (0 if prev is None else prev))
        prev = counts.long()
    return out


def key_owners(usage: list[torch.Tensor]) -> dict[int, int]:
    """Key -> the stage (task index) that selected it most in training; keys never selected have no owner."""
    table = torch.stack(usage)  # (stages, keys)
    return {k: int(table[:, k].argmax()) for k in range(table.shape[1]) if int(table[:, k].sum()) > 0}


def own_share(hist: dict[str, float] | None, owners: dict[int, int], task_id: int) -> float | None:
    """Share of a key histogram ({key: share}, key -1 = unmodulated) that went to ``task_id``'s keys."""
    total = sum(hist.values()) if hist else 0
    if not total:
        return None
    own = sum(v for k, v in hist.items() if (UNMODULATED if int(k) < 0 else owners.get(int(k))) == task_id)
    return own / total  # recorded shares are rounded, so they need not add up to exactly 1


def seed_routing(record: ContinualRecord, owners: dict[int, int]) -> dict[str, dict[str, float | None]]:
    """Per task: own-key share (closed loop and held-out) and success, right after its stage and at the end."""
    out = {}
    for t in record.columns:
        tid = record.tasks.index(t) if t in record.tasks else UNMODULATED
        own_stage = tid if tid >= 0 else len(record.rows) - 1  # pre-training tasks: the end only
        first, last = record.rows[own_stage].get(t, {}), record.rows[-1].get(t, {})
        out[t] = {
            "rollout_own_after_stage": own_share(first.get("keys_rollout"), owners, tid),
            "rollout_own_final": own_share(last.get("keys_rollout"), owners, tid),
            "heldout_own_final": own_share(last.get("keys"), owners, tid),
            "success_after_stage": first.get("success"),
            "success_final": last.get("success"),
        }
    return out


def _mean(vals: list[float | None]) -> float | None:
    return mean_std(vals).mean


def routing_report(
    cfg: L2MConfig, method: str = "l2m", name: str | None = None, out_dir: Path | None = None
) -> Path:
    """Write ``docs/results/<name>.{md,json}`` (default name ``<bench.name>-routing``) for ``method``."""
    setup_torch(cfg)  # the thread count in the results' provenance line, as for the bench
    seeds, per_seed, owners_by_seed = list(cfg.bench.seeds), {}, {}
    for s in seeds:
        run_dir = Path(cfg.out) / "continual" / f"seed-{s}" / method
        rec_path = run_dir / "record.json"
        if not rec_path.is_file():
            raise DataError(
                f"no finished run at {run_dir}; run `pretrainkit bench l2m` (or `l2m continual`) first"
            )
        record = ContinualRecord.load(rec_path)
        owners = key_owners(stage_usage(run_dir, record.done))
        per_seed[s], owners_by_seed[s] = seed_routing(record, owners), owners
    data = {
        "method": method,
        "per_seed": per_seed,
        "owners": {s: {str(k): v for k, v in o.items()} for s, o in owners_by_seed.items()},
    }
    return publish(
        name or f"{cfg.bench.name}-routing",
        data,
        render,
        kind=KIND,
        seeds=seeds,
        out_dir=out_dir,
        title=f"L2M routing ({method})",
        config=cfg,
    )


FIELDS = [
    "success_after_stage",
    "success_final",
    "rollout_own_after_stage",
    "rollout_own_final",
    "heldout_own_final",
]


def render(payload: dict[str, Any]) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Headline, report and the per-task means from a stored routing JSON (its per-seed shares)."""
    cfg = from_dict(L2MConfig, payload["config"])
    method, per_seed, owners_by_seed = payload["method"], payload["per_seed"], payload["owners"]
    seeds = list(per_seed)
    n = len(seeds)
    tasks = list(next(iter(per_seed.values())))
    stats = {t: {f: mean_std(per_seed[s][t][f] for s in seeds) for f in FIELDS} for t in tasks}
    means = {t: {f: v.mean for f, v in fs.items()} for t, fs in stats.items()}
    seq = [t for t in tasks if t in cfg.data.continual_tasks]
    earlier = seq[:-1]  # the tasks forgetting is measured on
    headline = {
        "rollout_own_share_after_stage": _round(
            _mean([means[t]["rollout_own_after_stage"] for t in earlier])
        ),
        "rollout_own_share_final": _round(_mean([means[t]["rollout_own_final"] for t in earlier])),
        "heldout_own_share_final": _round(_mean([means[t]["heldout_own_final"] for t in earlier])),
        "n_seeds": n,
    }

    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    def ms(t: str, f: str) -> str:
        return fmt_mean_std(stats[t][f], 2, n=n)

    rows = [
        [
            t.removesuffix("-v3") + ("" if t in seq else " (pre-train)"),
            n,
            f"{ms(t, 'success_after_stage')} -> {ms(t, 'success_final')}",
            f"{ms(t, 'rollout_own_after_stage')} -> {ms(t, 'rollout_own_final')}",
            ms(t, "heldout_own_final"),
        ]
        for t in tasks
    ]
    per = [
        [
            s,
            t.removesuffix("-v3"),
            f"{cell(r['success_after_stage'])} -> {cell(r['success_final'])}",
            f"{cell(r['rollout_own_after_stage'])} -> {cell(r['rollout_own_final'])}",
            cell(r["heldout_own_final"]),
        ]
        for s in seeds
        for t, r in per_seed[s].items()
    ]
    body = "\n".join(
        [
            "## What this measures",
            "",
            (
                f"Method `{method}`, run folder `{cfg.out}`. Own-key share = share of a task's windows routed to keys "
                "that task trained (a key belongs to the task that selected it most in training; for pre-training tasks, "
                "the unmodulated backbone). Closed loop = the steps of the evaluation rollouts; held-out = the offline "
                "validation windows. 'After stage' = right after the task's own stage; pre-training tasks are read at "
                "the end. Headline = mean over the sequence tasks but the last (those forgetting is measured on)."
            ),
            "",
            "## Mean ± sample std over seeds (n = seeds)",
            "",
            md_table(
                [
                    "task",
                    "n",
                    "success after stage -> final",
                    "closed-loop own-key share after stage -> final",
                    "held-out own-key share final",
                ],
                rows,
            ),
            "",
            "## Per seed (one row per seed and task)",
            "",
            md_table(["seed", "task", "success", "closed-loop own-key share", "held-out own-key share"], per),
            "",
            "## Key owners (key: stage; one row per seed)",
            "",
            md_table(
                ["seed", "owners"],
                [
                    [s, ", ".join(f"{k}: {v}" for k, v in sorted(o.items(), key=lambda kv: int(kv[0])))]
                    for s, o in owners_by_seed.items()
                ],
            ),
            "",
        ]
    )
    return headline, body, {"mean": means}


def rerender(results_json: str | Path, out_dir: Path | None = None) -> Path:
    """Re-write a routing report from its stored JSON (nothing re-read from the run folder)."""
    payload = load_results(results_json, "an L2M routing")
    title = f"L2M routing ({payload.get('method', 'l2m')})"
    return rerender_results(results_json, render, out_dir, KIND, title, "an L2M routing")


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)
