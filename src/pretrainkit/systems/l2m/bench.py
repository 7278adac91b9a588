"""`pretrainkit bench l2m`: collect, pre-train, run every continual method for every seed, write the results.

docs/results/l2m.md and .json hold, per method, the success matrix (task x stage, mean over seeds), a
summary (final mean success, forgetting, pre-training retention, offline accuracy, trainable parameters),
the keys each task selects, and throughput lines (env steps/s per core, DT training steps/s).
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path
from typing import Any

from pretrainkit.adapt.continual import ContinualRecord, summarise
from pretrainkit.core.config import from_dict
from pretrainkit.core.parallel import executor
from pretrainkit.core.results import fmt_mean_std, load_results, md_table, mean_std, publish
from pretrainkit.core.results import rerender as rerender_results
from pretrainkit.systems.l2m.config import L2MConfig
from pretrainkit.systems.l2m.envs import versions
from pretrainkit.systems.l2m.pipeline import (
    ContinualRun,
    Log,
    Throughput,
    close_envs,
    collect_data,
    evaluate_backbone,
    pretrain,
    setup_torch,
)

KIND, TITLE = "l2m.bench", "L2M"


def _stats(values: list[float | None]) -> dict[str, float | int | None]:
    """Mean, sample std (None for one seed) and n: the project's one statistic, as stored in the JSON."""
    return mean_std(values).as_dict()


def summarise_method(records: dict[int, ContinualRecord], params: int) -> dict[str, Any]:
    """Seed-averaged figures of one method, plus its mean success and offline-accuracy matrices."""
    per_seed = {s: summarise(r) for s, r in records.items()}
    off = {s: summarise(r, "offline_acc") for s, r in records.items()}
    first = next(iter(records.values()))
    cols = ["before", *[f"after {t.removesuffix('-v3')}" for t in first.tasks]]
    n_seeds = len(records)

    def matrix(metric: str) -> dict[str, list[float | None]]:
        out = {}
        for t in first.columns:  # task x stage, mean over seeds
            rows = []
            for r in records.values():
                rows.append(
                    [r.initial.get(t, {}).get(metric)] + [row.get(t, {}).get(metric) for row in r.rows]
                )
            out[t] = [_stats([x[i] for x in rows])["mean"] for i in range(len(cols))]
        return out

    return {
        "final_mean_success": _stats([p["final_mean"] for p in per_seed.values()]),
        "just_learned": _stats([p["just_learned"] for p in per_seed.values()]),
        "mean_over_stages": _stats([p["mean_over_stages"] for p in per_seed.values()]),
        "forgetting": _stats([p["mean_forgetting"] for p in per_seed.values()]),
        "forgetting_per_task": {
            t: _stats([p["forgetting"].get(t) for p in per_seed.values()])["mean"] for t in first.tasks
        },
        "pretrain_before": _stats([p["retention"]["before"] for p in per_seed.values()]),
        "pretrain_after": _stats([p["retention"]["after"] for p in per_seed.values()]),
        "pretrain_retention": _stats([p["retention"]["ratio"] for p in per_seed.values()]),
        "final_offline_acc": _stats([p["final_mean"] for p in off.values()]),
        "offline_forgetting": _stats([p["mean_forgetting"] for p in off.values()]),
        "trainable_params": params,
        "n_seeds": n_seeds,
        "columns": cols,
        "success_matrix": matrix("success"),
        "offline_acc_matrix": matrix("offline_acc"),
        "keys": {t: [r.rows[-1].get(t, {}).get("keys") for r in records.values()] for t in first.columns},
    }


def _seed_job(cfg: L2MConfig, seed: int, log: Log) -> tuple[int, dict[str, Any], dict[str, Any], Throughput]:
    """Pre-train one seed's backbone and evaluate it as is (the shared 'before' row of every method); with
    ``bench.bc_reference`` also the state-only BC MLP on the pre-training tasks (the diagnosis reference)."""
    stats = pretrain(cfg, seed, log=log, progress=False)
    tally = Throughput()
    initial = evaluate_backbone(cfg, seed, tally=tally)
    log(f"[seed {seed}] backbone: " + ", ".join(f"{t} {r['success']:.2f}" for t, r in initial.items()))
    if cfg.bench.bc_reference:
        from pretrainkit.systems.l2m.diagnose import _bc_seed

        stats = {**stats, "bc_reference": _bc_seed(cfg, seed, log)}
    return seed, stats, initial, tally


def _method_job(
    cfg: L2MConfig, seed: int, method: str, initial: dict[str, Any], log: Log, order: str = ""
) -> tuple[int, str, ContinualRecord, int, Throughput]:
    """One method over the continual sequence (``order``: "" or "order2") for one seed (resumes finished
    stages)."""
    run = ContinualRun(cfg, method, seed, log=log, order=order)
    record = run.run(initial=initial)
    return seed, method, record, (run.method.trainable_parameters(), run.method.info()), run.tally


def orders(cfg: L2MConfig) -> dict[str, list[str]]:
    """Task order tag -> the methods run in it ("" = data.continual_tasks, "order2" = bench.second_order)."""
    out = {"": list(cfg.continual.methods)}
    if cfg.bench.second_order != "none" and cfg.bench.second_order_methods:
        cfg.second_order_tasks()  # a one-line error now, not in a worker later
        out["order2"] = [m for m in cfg.continual.methods if m in cfg.bench.second_order_methods]
    return out


def first_methods(cfg: L2MConfig, methods: list[str]) -> list[str]:
    """The methods that can start as soon as a backbone is ready: the calibrating one alone when stage
    lengths are calibrated (the others train each stage as long as it did)."""
    c = cfg.continual
    return [c.calibrate_with] if c.until_success > 0 and c.calibrate_with in methods else list(methods)


def run_bench(
    cfg: L2MConfig, out_dir: Path | None = None, log: Log = print, profile: str | None = None
) -> Path:
    """The whole protocol for ``cfg.bench.seeds`` x ``cfg.continual.methods``; returns the markdown path.

    With ``bench.workers`` > 1 the seeds' pre-training, then the (seed, method) runs, go to that many
    processes (one torch thread each). Every job seeds itself, so the results equal a one-process run."""
    t0 = time.perf_counter()
    setup_torch(cfg)
    coll = collect_data(cfg, progress=False)
    tasks = [*cfg.data.pretrain_tasks, *cfg.data.continual_tasks]
    recs = [coll["tasks"][t] for t in tasks]
    collect_rate = sum(r["steps"] for r in recs) / max(sum(r["cpu_seconds"] for r in recs), 1e-9)
    tally, pre_stats, initials = Throughput(), {}, {}
    runs = orders(cfg)
    by_order: dict[str, dict[str, dict[int, ContinualRecord]]] = {
        o: {m: {} for m in ms} for o, ms in runs.items()
    }
    params: dict[str, int] = {}
    info: dict[str, dict[str, Any]] = {}
    workers = cfg.bench.workers
    job_log = log if workers <= 1 else print  # a worker cannot carry the caller's function
    try:
        # A seed's methods are queued as soon as its backbone is ready (with calibrated stage lengths: as soon
        # as the calibrating method has finished that seed and order), so no worker waits for the others.
        with executor(workers) as pool:
            pending: dict[Any, tuple] = {
                pool.submit(_seed_job, cfg, s, job_log): ("seed",) for s in cfg.bench.seeds
            }

            def submit(seed: int, order: str, methods: list[str]) -> None:
                for m in methods:
                    job = pool.submit(_method_job, cfg, seed, m, initials[seed], job_log, order)
                    pending[job] = ("method", order)

            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    kind = pending.pop(future)
                    if kind[0] == "seed":
                        seed, stats, init, t = future.result()
                        pre_stats[seed], initials[seed] = stats, init
                        for order, methods in runs.items():
                            submit(seed, order, first_methods(cfg, methods))
                    else:
                        seed, m, record, (params[m], facts), t = future.result()
                        order = kind[1]
                        by_order[order][m][seed] = record
                        if facts:
                            info[m] = facts
                        rest = [x for x in runs[order] if x != m]
                        if first_methods(cfg, runs[order]) == [m] and rest:  # the calibrating run is done
                            submit(seed, order, rest)
                    tally.add(t)
    finally:
        close_envs()
    # seed order, whatever finished first
    by_order = {o: {m: dict(sorted(r.items())) for m, r in recs.items()} for o, recs in by_order.items()}
    records = by_order[""]
    wall = time.perf_counter() - t0
    pre_rate = [s["steps_per_cpu_s"] for s in pre_stats.values() if s.get("steps_per_cpu_s")]
    throughput = {
        "collection_env_steps_per_s_per_core": round(collect_rate, 1),
        "eval_env_steps_per_s_per_core": round(tally.eval_env_steps / tally.eval_cpu, 1)
        if tally.eval_cpu
        else None,
        "eval_sim_only_env_steps_per_s": round(tally.eval_env_steps / tally.eval_sim_wall, 1)
        if tally.eval_sim_wall
        else None,
        "pretrain_dt_steps_per_s": round(statistics.fmean(pre_rate), 2) if pre_rate else None,
        "continual_dt_steps_per_s": round(tally.train_steps / tally.train_cpu, 2)
        if tally.train_cpu
        else None,
        "bench_wall_minutes": round(wall / 60, 1),
    }
    measured = {
        "throughput": throughput,
        "pretrain": pre_stats,
        "expert_success": {t: coll["expert_success"].get(t) for t in tasks},
        "versions": versions(),
        "method_info": info,
    }
    if "order2" in by_order:
        measured["records_order2"] = {
            m: {s: r.to_json() for s, r in rs.items()} for m, rs in by_order["order2"].items()
        }
    return _write(cfg, records, params, measured, out_dir, profile)


def _write(
    cfg: L2MConfig,
    records: dict[str, dict[int, ContinualRecord]],
    params: dict[str, int],
    measured: dict[str, Any],
    out_dir: Path | None,
    profile: str | None = None,
) -> Path:
    """Store the records (``measured``: throughput, pre-training stats, expert success, versions) and draw the
    summaries, headline and report from them."""
    data = {
        **measured,
        "params": params,
        "records": {m: {s: r.to_json() for s, r in rs.items()} for m, rs in records.items()},
    }
    return publish(
        cfg.bench.name,
        data,
        render,
        kind=KIND,
        seeds=list(cfg.bench.seeds),
        out_dir=out_dir,
        title=TITLE,
        config=cfg,
        profile=profile,
    )


def render(payload: dict[str, Any]) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Headline, report and the per-method summaries from a stored L2M bench JSON (its records)."""
    cfg = from_dict(L2MConfig, payload["config"])
    records = {
        m: {int(s): ContinualRecord.from_json(r) for s, r in rs.items()}
        for m, rs in payload["records"].items()
    }
    params = payload.get("params") or {m: payload["methods"][m]["trainable_params"] for m in records}
    summary = {m: summarise_method(records[m], params[m]) for m in cfg.continual.methods}
    second = {
        m: summarise_method({int(s): ContinualRecord.from_json(r) for s, r in rs.items()}, params[m])
        for m, rs in (payload.get("records_order2") or {}).items()
    }
    backbone = backbone_success(records, cfg.data.pretrain_tasks)
    headline = {
        "backbone_pretrain_success": _round(backbone["mean"]["mean"]) if backbone else None,
        "final_mean_success": {m: _round(s["final_mean_success"]["mean"]) for m, s in summary.items()},
        "forgetting": {m: _round(s["forgetting"]["mean"]) for m, s in summary.items()},
        "pretrain_retention": {m: _round(s["pretrain_retention"]["mean"]) for m, s in summary.items()},
        "just_learned_success": {m: _round(s["just_learned"]["mean"]) for m, s in summary.items()},
        "pretrain_success_after": {m: _round(s["pretrain_after"]["mean"]) for m, s in summary.items()},
        "trainable_params": {m: s["trainable_params"] for m, s in summary.items()},
        "n_seeds": len(cfg.bench.seeds),
    }
    if second:
        headline["final_mean_success_order2"] = {
            m: _round(s["final_mean_success"]["mean"]) for m, s in second.items()
        }
        headline["forgetting_order2"] = {m: _round(s["forgetting"]["mean"]) for m, s in second.items()}
    headline["goal_met"] = _verdict(summary, backbone["mean"]["mean"] if backbone else None)[1]
    body = report(cfg, summary, payload["throughput"], payload["pretrain"], payload, second, backbone)
    extra: dict[str, Any] = {"methods": summary}
    if second:
        extra["methods_order2"] = second
    return headline, body, extra


def backbone_success(
    records: dict[str, dict[int, ContinualRecord]], tasks: list[str]
) -> dict[str, Any] | None:
    """The pre-trained backbone's closed-loop success on each pre-training task (the shared 'before' row),
    mean ± std over seeds, and the mean over tasks per seed; None when the run did not evaluate them."""
    first = next((r for r in records.values() if r), None)
    if not first or not tasks:
        return None
    per_seed = {s: [r.initial.get(t, {}).get("success") for t in tasks] for s, r in first.items()}
    if any(v is None for vals in per_seed.values() for v in vals):
        return None
    return {
        "tasks": {t: _stats([vals[i] for vals in per_seed.values()]) for i, t in enumerate(tasks)},
        "mean": _stats([sum(vals) / len(vals) for vals in per_seed.values()]),
        "mean_offline_mae": _stats(
            [_mean_or_none([r.initial.get(t, {}).get("offline_mae") for t in tasks]) for r in first.values()]
        ),
    }


def _mean_or_none(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(values) / len(values)


def rerender(results_json: str | Path, out_dir: Path | None = None) -> Path:
    """Re-write a bench's results from the records stored in its JSON (after a change to the report or the
    verdict): no training, no rollouts; the original command, date and commit stay its provenance."""
    payload = load_results(results_json, "an L2M bench")
    if payload.get("kind", KIND) != KIND or "records" not in payload:
        from pretrainkit.errors import DataError

        raise DataError(f"{results_json} is not an L2M bench results file (no records)")
    return rerender_results(results_json, render, out_dir, KIND, TITLE, "an L2M bench")


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _short(task: str) -> str:
    return task.removesuffix("-v3")


def protocol(cfg: L2MConfig, pre: dict[int, Any], data: dict[str, Any]) -> str:
    """What was run, in words, from the config (so the text never drifts from the numbers)."""
    d, c, m, mo = cfg.data, cfg.continual, cfg.method, cfg.model
    env = ", ".join(f"{k} {v}" for k, v in data["versions"].items())
    expert = ", ".join(f"{_short(t)} {v}" for t, v in data["expert_success"].items())
    params = next(iter(pre.values()))["params"]
    routed = (
        (
            f" ({m.pretrain_keys} fixed keys per pre-training task, k-means centres of its queries, compete "
            "with the pool for every input; winning one = unmodulated backbone)"
        )
        if m.pretrain_eval == "routed"
        else (
            " (the bare backbone: the evaluation tells L2M these are pre-training tasks, so its retention is "
            "exact by construction; the default, `method.pretrain_eval=routed`, is task-agnostic)"
        )
    )
    pool_lora = ""
    facts = (data.get("method_info") or {}).get("lora-pool")
    if facts:
        need, rank, pool = facts["rank_for_pool_params"], facts["rank"], facts["pool_params"]
        pool_lora = (
            f"; lora-pool = shared LoRA with L2M's whole pool's trainable parameters ({pool}): rank {rank}"
            + (
                f" (the pool's count would need rank {need}, beyond the layers' width, so it is capped at full "
                "rank: the most a shared update on these layers can express, with fewer parameters than the pool)"
                if rank < need
                else ""
            )
        )
    stages = (
        f"each stage as long as {c.calibrate_with} needed to reach closed-loop success {c.until_success} on "
        f"its task (at most {c.max_steps_per_task} steps; see Stage lengths)"
        if c.until_success > 0
        else f"{c.steps_per_task} steps per task"
    )
    return "\n\n".join(
        [
            (
                f"Meta-World v3 ({env}), horizon 200, object and goal positions re-randomised at every reset. Data: "
                f"scripted experts, {d.episodes_per_task} episodes per task at action noise {d.noise_levels}, labels = "
                f"{d.action_source} actions; expert success (noise 0): {expert}."
            ),
            (
                f"Backbone: Decision Transformer, d={mo.d_model}, {mo.n_layer} layers, {mo.n_head} heads, context "
                f"{mo.context}, "
                + (
                    f"{mo.n_bins} bins per action dimension decoded autoregressively"
                    if mo.head == "discrete"
                    else "continuous actions (one action token, tanh head, MSE)"
                )
                + ("" if mo.condition_on_rtg else ", no return conditioning")
                + ("" if mo.timestep_embedding else ", no timestep embedding")
                + f", {params} parameters, "
                f"pre-trained {cfg.pretrain.train.max_steps} steps (batch {cfg.pretrain.batch_size}) on "
                f"{', '.join(_short(t) for t in d.pretrain_tasks)}; one backbone per seed."
            ),
            (
                f"Continual sequence (CW10 order; tasks whose expert succeeds >= 95 %): "
                f"{' -> '.join(_short(t) for t in d.continual_tasks)}; {stages}, batch "
                f"{c.batch_size}. After every task: {cfg.eval.episodes} closed-loop episodes per task seen so far"
                + (
                    " and per pre-training task"
                    if cfg.eval.pretrain_every_stage
                    else " (pre-training tasks: before the first and after the last stage)"
                )
                + f" (success = any step succeeds; same start positions at every stage), offline bin accuracy on "
                f"{cfg.eval.offline_windows} held-out windows."
            ),
            (
                f"L2M: pool {m.pool_size}, LoRA rank {m.rank} on q, v and MLP fc1 ({m.ff_placement} placement) of every "
                f"layer, top-1 by cosine to the mean state-token embedding, key pull coef {m.key_coef}, count penalty "
                f"{m.count_penalty}; pre-training tasks met '{m.pretrain_eval}'{routed}. L2M-oracle: task id given "
                f"(its own pool slice; pre-training tasks unmodulated). Shared LoRA rank {m.rank} (one modulator's "
                f"size){pool_lora}, and (IA)^3 on every layer; every method but the oracle is evaluated "
                f"task-agnostically; EWC lambda {m.ewc_weight}; L2 weight {m.l2_weight}; L2P: {m.prompt_pool} prompts "
                f"x {m.prompt_len} tokens, top {m.prompt_top_k}. Learning rates {m.lr_full} (full) / {m.lr_adapter} "
                f"(adapters) / {m.key_lr} (keys)."
            ),
        ]
    )


def summary_table(summary: dict[str, Any], backbone_params: int | None = None) -> str:
    """Mean ± sample std per figure; the n column is the method's seeds, and a cell resting on fewer values
    (a figure not measured for some seed) states its own n. Frozen parameters are counted apart."""
    from pretrainkit.systems.l2m.methods import METHODS

    heads = [
        "method",
        "n",
        "final mean success",
        "forgetting",
        "just-learned success",
        "mean over stages",
        "pre-train success before -> after",
        "retention",
        "final offline acc",
        "offline forgetting",
        "trainable params",
        "frozen params",
    ]
    rows = []
    for k, s in summary.items():
        n = s["n_seeds"]

        def f(key: str, digits: int = 2, s=s, n=n) -> str:
            return fmt_mean_std(s[key], digits, n=n)

        rows.append(
            [
                k,
                n,
                f("final_mean_success"),
                f("forgetting"),
                f("just_learned"),
                f("mean_over_stages"),
                f"{f('pretrain_before')} -> {f('pretrain_after')}",
                f("pretrain_retention"),
                f("final_offline_acc", 3),
                f("offline_forgetting", 3),
                s["trainable_params"],
                (backbone_params if METHODS.get(k).frozen_backbone else 0)
                if backbone_params is not None
                else "-",
            ]
        )
    return md_table(heads, rows)


def backbone_table(backbone: dict[str, Any], pre: dict[Any, Any], tasks: list[str]) -> list[str]:
    """The diagnosis table: the backbone on its own pre-training tasks beside the state-only BC MLP."""
    fmt = lambda st, d=2: fmt_mean_std(st, d, n=False)  # noqa: E731
    n = backbone["mean"]["n"]
    rows = [
        [
            "pre-trained DT (this run's backbone)",
            n,
            *[fmt(backbone["tasks"][t]) for t in tasks],
            fmt(backbone["mean"]),
            fmt(backbone["mean_offline_mae"], 3),
        ]
    ]
    bc = [p["bc_reference"] for p in pre.values() if p.get("bc_reference")]
    if bc:
        rows.append(
            [
                "BC MLP, state only (reference)",
                len(bc),
                *[fmt(_stats([b["tasks"][t]["success"] for b in bc])) for t in tasks],
                fmt(_stats([sum(b["tasks"][t]["success"] for t in tasks) / len(tasks) for b in bc])),
                fmt(_stats([sum(b["tasks"][t]["offline_mae"] for t in tasks) / len(tasks) for b in bc]), 3),
            ]
        )
    return [
        "## The backbone on its own pre-training tasks (diagnosis)",
        "",
        (
            "Closed-loop success per pre-training task before any continual stage, mean ± sample std over "
            "seeds (n = seeds); offline error = mean |action - expert action| on held-out episodes (mean over "
            "tasks). The BC MLP is trained on the same data (docs/results/l2m-diagnosis.md also has the DT "
            "with binned actions)."
        ),
        "",
        md_table(["policy", "n", *[_short(t) for t in tasks], "mean", "offline abs error"], rows),
        "",
    ]


def stage_table(cfg: L2MConfig, summary: dict[str, Any], records: dict[str, Any]) -> list[str]:
    """Calibrated stage lengths: the calibrating method's steps per stage and its just-learned success."""
    c = cfg.continual
    ref = records.get(c.calibrate_with) or {}
    if c.until_success <= 0 or not ref:
        return []
    tasks = list(cfg.data.continual_tasks)
    diag = summary[c.calibrate_with]["success_matrix"]
    rows = [
        [
            _short(t),
            " / ".join(str(r.stages[i]["steps"]) for r in ref.values()),
            "-" if diag[t][i + 1] is None else f"{diag[t][i + 1]:.2f}",
        ]
        for i, t in enumerate(tasks)
    ]
    return [
        "## Stage lengths",
        "",
        (
            f"{c.calibrate_with} trains each stage until its closed-loop success on that task reaches "
            f"{c.until_success} (checked every {c.check_every} steps on {cfg.eval.episodes} episodes from start "
            f"positions disjoint from the reported ones) or {c.max_steps_per_task} steps; every other method "
            "then trains each stage exactly as many steps as it did for that seed. Steps per seed "
            f"(n={len(ref)}), and {c.calibrate_with}'s reported success right after the stage (mean over seeds)."
        ),
        "",
        md_table(["task", "steps (per seed)", f"{c.calibrate_with} just-learned success"], rows),
        "",
    ]


def matrices(summary: dict[str, Any], pretrain_tasks: list[str]) -> list[str]:
    out = []
    for k, s in summary.items():
        rows = [
            [
                _short(t) + (" (pre-train)" if t in pretrain_tasks else ""),
                *[("-" if v is None else f"{v:.2f}") for v in vals],
            ]
            for t, vals in s["success_matrix"].items()
        ]
        out += [
            f"### {k} (mean over n={s['n_seeds']} seeds)",
            "",
            md_table(["task", *s["columns"]], rows),
            "",
        ]
    return out


def report(
    cfg: L2MConfig,
    summary: dict[str, Any],
    thr: dict[str, Any],
    pre: dict[Any, Any],
    data: dict[str, Any],
    second: dict[str, Any] | None = None,
    backbone: dict[str, Any] | None = None,
) -> str:
    """The markdown body: protocol, backbone diagnosis, summary table (and the second order's), stage
    lengths, success matrices, keys, throughput, verdict."""
    records = {
        m: {int(s): ContinualRecord.from_json(r) for s, r in rs.items()}
        for m, rs in (data.get("records") or {}).items()
    }
    backbone_params = next(iter(pre.values())).get("params") if pre else None
    lines = [
        "## Protocol",
        "",
        protocol(cfg, pre, data),
        "",
        *(backbone_table(backbone, pre, cfg.data.pretrain_tasks) if backbone else []),
        "## Summary (mean ± sample std over seeds, n = seeds)",
        "",
        summary_table(summary, backbone_params),
        "",
        (
            "Forgetting = max success at earlier stages minus final success, mean over all but the last task "
            "(negative = improved later). Just-learned success = each task's success right after its own stage "
            "(how well a method learns; final mean success also depends on the last task, which only it "
            "keeps under full fine-tuning). Mean over stages = average success over the tasks seen so far, "
            "averaged over the stages. Retention = pre-training-task success after the sequence / before."
        ),
        "",
        *(
            [
                "## Second task order (mean ± sample std over seeds, n = seeds)",
                "",
                f"The same tasks in the order {' -> '.join(_short(t) for t in cfg.second_order_tasks())}.",
                "",
                summary_table(second, backbone_params),
                "",
            ]
            if second
            else []
        ),
        *stage_table(cfg, summary, records),
        f"## Success matrices (task x stage, mean over n={len(cfg.bench.seeds)} seeds)",
        "",
        *matrices(summary, cfg.data.pretrain_tasks),
    ]
    keyed = {k: s for k, s in summary.items() if any(any(x) for x in s["keys"].values())}
    if keyed:
        rows = [
            [k, _short(t), " / ".join(_keys(x) for x in s["keys"][t])]
            for k, s in keyed.items()
            for t in s["keys"]
        ]
        lines += [
            "## Keys selected at the end",
            "",
            (
                f"Share of held-out windows per key (top two), one entry per seed (n={len(cfg.bench.seeds)}); "
                "-1 = unmodulated backbone."
            ),
            "",
            md_table(["method", "task", "keys"], rows),
            "",
        ]
    lines += [
        "## Throughput (one core, torch 1 thread)",
        "",
        (
            f"Rates pooled over every run of the n={len(cfg.bench.seeds)} seeds (pre-training: the mean over "
            "seeds); the data are collected once."
        ),
        "",
        md_table(["figure", "value"], [[k, v] for k, v in thr.items()]),
        "",
        _verdict(summary, backbone["mean"]["mean"] if backbone else None)[0],
        "",
    ]
    return "\n".join(lines)


def _keys(hist: dict[str, float] | None) -> str:
    if not hist:
        return "-"
    top = sorted(hist.items(), key=lambda kv: -kv[1])[:2]
    return ", ".join(f"{k}: {v:.2f}" for k, v in top)


BASELINES = ("ft", "lora", "lora-pool", "ewc", "l2", "l2p")  # the list; ft and lora are required
GOAL_FINAL, GOAL_FORGETTING, GOAL_RETENTION, GOAL_BACKBONE = 0.6, 0.05, 0.9, 0.8


def _verdict(summary: dict[str, Any], backbone: float | None = None) -> tuple[str, bool]:
    """Says plainly whether L2M met the issue's goals on this run: the backbone solves its pre-training tasks
    (>= 0.8 mean success, when measured); L2M's final mean success >= 0.6 and above every baseline that ran
    (full fine-tuning and shared LoRA must have) by more than the two methods' seed sample standard
    deviations added (one seed: no spread, no verdict); forgetting near zero (<= 0.05); pre-training tasks
    retained (>= 0.9 of their success before). Low forgetting only means something for tasks that were
    learned, so L2M must also reach at least half of full fine-tuning's just-learned success."""
    if "l2m" not in summary:
        return "## Verdict\n\nL2M was not run.", False
    ours = summary["l2m"]
    compared = [k for k in BASELINES if k in summary]
    lines, clear = [], {"ft", "lora"} <= set(compared)
    if not clear:
        lines.append("- ft and lora were not both run: no comparison, so no verdict on the goal.")
    if backbone is not None:
        ok = backbone >= GOAL_BACKBONE
        clear &= ok
        lines.append(
            f"- Backbone on its pre-training tasks: mean success {backbone:.2f} "
            f"({'>=' if ok else 'BELOW'} {GOAL_BACKBONE})."
        )
    final = ours["final_mean_success"]["mean"]
    if final is not None:
        ok = final >= GOAL_FINAL
        clear &= ok
        lines.append(f"- L2M final mean success {final:.2f} ({'>=' if ok else 'BELOW'} {GOAL_FINAL}).")
    for k in compared:
        a, b = ours["final_mean_success"], summary[k]["final_mean_success"]
        diff = a["mean"] - b["mean"]
        if a["std"] is None or b["std"] is None:  # one seed: no spread, so no margin can be shown beyond it
            clear = False
            lines.append(
                f"- vs {k}: final mean success {a['mean']:.2f} vs {b['mean']:.2f} ({diff:+.2f}; a single "
                "seed, so no seed spread to judge the margin by)."
            )
            continue
        spread = a["std"] + b["std"]
        beyond = diff > spread
        clear &= beyond
        lines.append(
            f"- vs {k}: final mean success {a['mean']:.2f} vs {b['mean']:.2f} ({diff:+.2f}; "
            f"{'beyond the' if beyond else 'within the' if diff > 0 else 'L2M is lower; the'} summed seed "
            f"spread (sample std) is {spread:.2f})."
        )
    if "ft" in summary:
        a, b = ours["just_learned"]["mean"], summary["ft"]["just_learned"]["mean"]
        if a is not None and b is not None:
            learned = a >= 0.5 * b
            clear &= learned
            lines.append(
                f"- Just-learned success (each task right after its stage): L2M {a:.2f} vs ft {b:.2f}"
                + (
                    " -- full fine-tuning learns each task better; L2M's margin comes from keeping them."
                    if learned and b > a
                    else "."
                    if learned
                    else " -- L2M learns the tasks less than half as well as full fine-tuning, so its low "
                    "forgetting says little (what is not learned cannot be forgotten)."
                )
            )
    forg, ret = ours["forgetting"]["mean"], ours["pretrain_retention"]["mean"]
    forg_ok = forg is not None and forg <= GOAL_FORGETTING
    ret_ok = ret is not None and ret >= GOAL_RETENTION
    lines.append(
        f"- L2M forgetting {forg:.3f} ({'near zero' if forg_ok else 'NOT near zero'}, goal <= "
        f"{GOAL_FORGETTING}); pre-training retention {ret:.2f} ({'retained' if ret_ok else 'NOT retained'}, "
        f"goal >= {GOAL_RETENTION})."
        if forg is not None and ret is not None
        else "- L2M forgetting / retention not measured."
    )
    met = clear and forg_ok and ret_ok
    lines.append(
        "- Goal met on this run." if met else "- Goal NOT met convincingly on this run (see the lines above)."
    )
    return "## Verdict\n\n" + "\n".join(lines), met
