"""`pretrainkit l2m diagnose`: does the pre-trained backbone solve its own pre-training tasks, and if not, why?

On the same collected pre-training data, per task: closed-loop success and offline action error of
``bc-mlp`` (a state-only behaviour-cloning MLP, ``bc.py``: the reference the DT must at least match),
``dt-continuous`` (the profile's DT with one action token and a tanh head) and ``dt-discrete`` (the profile's
DT with per-dimension bins decoded autoregressively). The DT variants are the profile's own pre-training
(``pipeline.pretrain``) with only ``model.head`` changed; the variant whose head is the profile's trains into
the profile's own run folder, so a bench that follows reuses that backbone. Evaluation uses the same start
positions as the bench (``pipeline.evaluate``). Writes ``<name>.{md,json}`` through ``core/results.py``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch

from pretrainkit.core.config import from_dict
from pretrainkit.core.results import fmt_mean_std, load_results, md_table, mean_std, publish
from pretrainkit.core.results import rerender as rerender_results
from pretrainkit.errors import ConfigError, DataError
from pretrainkit.systems.l2m.bc import BCPolicy, bc_offline_mae, train_bc
from pretrainkit.systems.l2m.collect import collect
from pretrainkit.systems.l2m.config import L2MConfig
from pretrainkit.systems.l2m.envs import MT50
from pretrainkit.systems.l2m.pipeline import (
    close_envs,
    evaluate_backbone,
    load_tasks,
    pretrain,
    setup_torch,
    vector_env,
)
from pretrainkit.systems.l2m.rollout import evaluate_task

KIND, TITLE = "l2m.diagnosis", "L2M diagnosis"
VARIANTS = ("bc-mlp", "dt-continuous", "dt-discrete", "dt-cross-layer")
_HEAD = {"dt-continuous": "continuous", "dt-discrete": "discrete"}


def check_variants(variants: list[str]) -> list[str]:
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise ConfigError(f"diagnose.variants must name some of {list(VARIANTS)}, got {variants}")
    return list(variants)


def variant_config(cfg: L2MConfig, variant: str) -> L2MConfig:
    """The profile with the DT's head set for ``variant``; a head other than the profile's trains in its own
    run folder (``<out>/diagnose/<variant>``)."""
    v = copy.deepcopy(cfg)
    if variant == "dt-cross-layer":  # the profile's DT with blocks 1.. in CR-Net's form (issue 16, item 4)
        v.model.cross_layer_rank = cfg.diagnose.cross_layer_rank
        v.out = str(Path(cfg.out) / "diagnose" / variant)
        return v
    head = _HEAD[variant]
    if head != cfg.model.head:
        v.model.head = head
        v.out = str(Path(cfg.out) / "diagnose" / variant)
    return v


def _bc_seed(cfg: L2MConfig, seed: int, log) -> dict[str, Any]:
    splits = load_tasks(cfg, cfg.data.pretrain_tasks)
    dev = setup_torch(cfg)
    torch.manual_seed(seed)
    b = cfg.diagnose.bc
    policy = BCPolicy(cfg.model.state_dim, cfg.model.act_dim, b.hidden, b.layers)
    stats = train_bc(policy, [s.train for s in splits.values()], b, seed, str(dev))
    tasks = {}
    for t, s in splits.items():
        base = 7919 * (seed + 1) + 101 * MT50.index(t)  # the bench's start positions (pipeline.evaluate)
        env = vector_env(t, cfg.eval.episodes) if cfg.eval.reuse_envs else None
        r = evaluate_task(
            policy, t, cfg.eval.episodes, s.target_return, seed=base, device=dev,
            stop_on_success=cfg.eval.stop_on_success, env=env,
        )  # fmt: skip
        tasks[t] = {"success": r["success"], "offline_mae": bc_offline_mae(policy, s.val, str(dev))}
    log(f"[bc-mlp seed {seed}] trained {b.steps} steps in {stats['seconds']:.0f} s")
    return {"tasks": tasks, "train": stats}


def _dt_seed(cfg: L2MConfig, variant: str, seed: int, log) -> dict[str, Any]:
    v = variant_config(cfg, variant)
    stats = pretrain(v, seed, log=log, progress=False)
    res = evaluate_backbone(v, seed, list(cfg.data.pretrain_tasks))
    tasks = {t: {"success": r["success"], "offline_mae": r.get("offline_mae")} for t, r in res.items()}
    train = {k: stats.get(k) for k in ("steps", "params", "seconds", "cpu_seconds")}
    return {"tasks": tasks, "train": train}


def run_diagnosis(
    cfg: L2MConfig,
    out_dir: Path | None = None,
    name: str | None = None,
    profile: str | None = None,
    log=print,
) -> Path:
    """Collect the pre-training tasks' data if missing, run every variant for every seed, publish."""
    variants = check_variants(cfg.diagnose.variants)
    cfg.diagnose.bc.validate()
    setup_torch(cfg)
    d = cfg.data
    collect(d.pretrain_tasks, d.dir, d.episodes_per_task, d.noise_levels, d.workers, d.seed, progress=False)
    records: dict[str, dict[str, Any]] = {v: {} for v in variants}
    wall0 = time.perf_counter()
    try:
        for seed in cfg.bench.seeds:
            for v in variants:
                one = _bc_seed(cfg, seed, log) if v == "bc-mlp" else _dt_seed(cfg, v, seed, log)
                records[v][str(seed)] = one
                mean = sum(r["success"] for r in one["tasks"].values()) / len(one["tasks"])
                log(f"[{v} seed {seed}] mean closed-loop success {mean:.2f}")
    finally:
        close_envs()
    data = {"variants": variants, "records": records, "wall_seconds": round(time.perf_counter() - wall0, 1)}
    return publish(
        name or cfg.diagnose.name,
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
    """Headline (mean success per variant), the per-task table and the per-seed table, from the stored JSON."""
    cfg = from_dict(L2MConfig, payload["config"])
    records, variants = payload["records"], payload["variants"]
    tasks = list(cfg.data.pretrain_tasks)
    seeds = sorted({s for v in variants for s in records[v]}, key=int)
    n = len(seeds)

    def task_stat(v: str, t: str, key: str):
        return mean_std(records[v][s]["tasks"][t][key] for s in records[v])

    def mean_success(v: str, s: str) -> float:
        return sum(records[v][s]["tasks"][t]["success"] for t in tasks) / len(tasks)

    means = {v: mean_std(mean_success(v, s) for s in records[v]) for v in variants}
    headline = {
        "mean_success": {v: None if m.mean is None else round(m.mean, 3) for v, m in means.items()},
        "min_task_success": {
            v: round(min(task_stat(v, t, "success").mean for t in tasks), 3) for v in variants
        },
        "n_seeds": n,
    }
    rows = []
    for v in variants:
        rows.append(
            [v, n]
            + [fmt_mean_std(task_stat(v, t, "success"), 2, n=False) for t in tasks]
            + [fmt_mean_std(means[v], 2, n=False)]
            + [fmt_mean_std(mean_std(
                sum(records[v][s]["tasks"][t]["offline_mae"] or 0.0 for t in tasks) / len(tasks)
                for s in records[v]), 3, n=False)]  # fmt: skip
            + [records[v][seeds[0]]["train"].get("params"),
               fmt_mean_std(mean_std(records[v][s]["train"].get("seconds") for s in records[v]), 0, n=False)]
        )  # fmt: skip
    short = [t.removesuffix("-v3") for t in tasks]
    m = cfg.model
    body = "\n".join(
        [
            "## What this measures",
            "",
            (
                f"Pre-training tasks {', '.join(short)}; data: {cfg.data.episodes_per_task} scripted-expert "
                f"episodes per task at action noise {cfg.data.noise_levels}, labels = {cfg.data.action_source} "
                f"actions. Closed loop: {cfg.eval.episodes} episodes per task (success = any step succeeds; the "
                f"bench's start positions). Offline error: mean |action - label| on held-out episodes "
                f"(DT: {cfg.eval.offline_windows} windows, every step of each; MLP: every held-out step). "
                f"bc-mlp: state -> action MLP, {cfg.diagnose.bc.layers} x {cfg.diagnose.bc.hidden}, tanh, "
                f"MSE, {cfg.diagnose.bc.steps} steps of batch {cfg.diagnose.bc.batch_size}. DT: d={m.d_model}, "
                f"{m.n_layer} layers, context {m.context}, return conditioning {'on' if m.condition_on_rtg else 'off'}, "
                f"timestep embedding {'on' if m.timestep_embedding else 'off'}, dropout {m.dropout}, "
                f"{cfg.pretrain.train.max_steps} steps of batch {cfg.pretrain.batch_size}; dt-continuous = "
                f"one action token and a tanh head (MSE), dt-discrete = {m.n_bins} bins per action dimension, "
                "autoregressive (CE)"
                + (
                    f"; dt-cross-layer = the profile's DT with blocks 1.. in CR-Net's cross-layer form "
                    f"(`adapt.cross_layer.to_cross_layer`, rank {cfg.diagnose.cross_layer_rank} on "
                    f"{', '.join(m.cross_layer_projections)}; block 0 full rank)"
                    if "dt-cross-layer" in variants
                    else ""
                )
                + ". Train seconds = wall time of training only."
            ),
            "",
            "## Closed-loop success per pre-training task (mean ± sample std over seeds, n = seeds)",
            "",
            md_table(["variant", "n", *short, "mean", "offline abs error", "params", "train seconds"], rows),
            "",
            "## Per seed",
            "",
            md_table(
                ["variant", "seed", *short, "mean"],
                [
                    [
                        v,
                        s,
                        *[f"{records[v][s]['tasks'][t]['success']:.2f}" for t in tasks],
                        f"{mean_success(v, s):.2f}",
                    ]
                    for v in variants
                    for s in records[v]
                ],
            ),  # fmt: skip
            "",
        ]
    )
    return headline, body, {}


def rerender(results_json: str | Path, out_dir: Path | None = None) -> Path:
    """Re-write a diagnosis report from its stored JSON (nothing re-run)."""
    payload = load_results(results_json, "an L2M diagnosis")
    if payload.get("kind") != KIND or "records" not in payload:
        raise DataError(f"{results_json} is not an L2M diagnosis results file")
    return rerender_results(results_json, render, out_dir, KIND, TITLE, "an L2M diagnosis")
