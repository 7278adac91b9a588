"""`pretrainkit bench phe` / `pretrainkit phe bench`: every graph x method x seed in one harness (HeCo's fixed
label splits, the same probe), the scale study, then docs/results/phe.{md,json} through core/results.publish.

Methods (each one job per (graph, seed); pre-training jobs probe at every budget):

- ``features``: the target type's row-normalised features -> logistic regression (the floor; none for a graph
  without target features).
- ``random``: a randomly initialised encoder (the seed's init) -> the same probe (no pre-training).
- ``supervised``: the HGT trained from scratch on each budget's labels, early-stopped on validation.
- ``edge_contrast``: GPT-GNN-style masked-edge contrast alone (one unperturbed copy in eval mode as the keys,
  no structure task).
- ``semantic`` / ``structure``: each PHE task alone.
- ``phe``: both tasks, the configured weights; ``phe_finetune`` / ``phe_lora``: that encoder fine-tuned on each
  budget (all weights / LoRA adapters on the frozen HGT), in the same job as ``phe``.

Every job seeds its own pre-training (``train.seed`` and the sampler seed = the bench seed), so results do not
depend on which worker ran it. HeCo's published numbers are quoted beside the table, not re-run. Nothing is
chosen on test nodes: the probe's C and the embedding layer come from the profile / validation nodes only.
"""

from __future__ import annotations

import copy
import time
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pretrainkit.core.config import apply_overrides, from_dict, to_dict
from pretrainkit.core.parallel import executor
from pretrainkit.core.results import fmt_mean_std, md_table, mean_std, publish
from pretrainkit.errors import ConfigError
from pretrainkit.systems.phe.scale import ScaleSection

KIND, TITLE = "phe.bench", "PHE"
METHODS = (
    "features",
    "random",
    "supervised",
    "edge_contrast",
    "semantic",
    "structure",
    "phe",
    "phe_finetune",
    "phe_lora",
)
PRETRAINED = ("edge_contrast", "semantic", "structure", "phe")
FROM_PHE = ("phe_finetune", "phe_lora")
# Config overrides per pre-trained method (on top of the bench profile and the graph's own overrides).
METHOD_OVERRIDES: dict[str, list[str]] = {
    "edge_contrast": [
        'pretrain.weights={"phe.semantic": 1.0, "phe.structure": 0.0}',
        "pretrain.semantic.perturbations=1",
        "pretrain.semantic.noise_scale=0.0",
        "pretrain.semantic.perturbed_mode=eval",
    ],
    "semantic": ['pretrain.weights={"phe.semantic": 1.0, "phe.structure": 0.0}'],
    "structure": ['pretrain.weights={"phe.semantic": 0.0, "phe.structure": 1.0}'],
    "phe": [],
}
# HeCo (Wang et al., KDD 2021), Macro-F1 at 20/40/60 labels per class, as quoted in ../shared/papers/phe.md
# (GammaGL's README for ACM, DiffGraph's README for DBLP and AMiner): quoted, not re-run.
HECO_QUOTED = {
    "acm": {"20": 88.56, "40": 87.61, "60": 89.04},
    "dblp": {"20": 91.28, "40": 90.34, "60": 90.64},
    "aminer": {"20": 71.38, "40": 73.75, "60": 75.80},
}


@dataclass
class BenchSection:
    graphs: list[str] = field(default_factory=lambda: ["acm", "dblp", "aminer", "imdb"])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    budgets: list[int] = field(default_factory=lambda: [20, 40, 60])
    # budgets at which phe_finetune / phe_lora run (full-graph fine-tuning is the bench's costliest part)
    finetune_budgets: list[int] = field(default_factory=lambda: [20, 40, 60])
    # graphs on which phe_finetune / phe_lora run (empty: every graph)
    finetune_graphs: list[str] = field(default_factory=list)
    workers: int = 2
    # pre-training steps per graph (a graph not named uses pretrain.train.max_steps)
    steps: dict[str, int] = field(default_factory=dict)
    # extra config overrides per graph ("key=value", as --set), e.g. mini-batch sampling on the larger ones
    graph_overrides: dict[str, list[str]] = field(default_factory=dict)
    scale: ScaleSection = field(default_factory=ScaleSection)
    run_scale: bool = True
    name: str = "phe"


def check_bench(b: BenchSection) -> None:
    unknown = [m for m in b.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"config key 'bench.methods' has unknown {unknown}; allowed: {', '.join(METHODS)}")
    if any(m in b.methods for m in FROM_PHE) and "phe" not in b.methods:
        raise ConfigError("config key 'bench.methods': phe_finetune / phe_lora need 'phe' in the list")
    if len(b.seeds) < 1 or b.workers < 1:
        raise ConfigError("config keys 'bench.seeds' (at least one) and 'bench.workers' (>= 1) required")


def job_config(cfg, graph: str, method: str, seed: int):
    """The resolved config of one job: the bench config, the graph's overrides, the method's, the seed."""
    d = to_dict(cfg)
    d["data"] = graph
    b = cfg.bench
    over = list(b.graph_overrides.get(graph, [])) + list(METHOD_OVERRIDES.get(method, []))
    if graph in b.steps:
        over.append(f"pretrain.train.max_steps={int(b.steps[graph])}")
    over += [f"pretrain.train.seed={seed}", f"pretrain.sampler.seed={seed}", "pretrain.train.progress=false"]
    return from_dict(type(cfg), apply_overrides(d, over))


_GRAPHS: dict[str, Any] = {}


def _graph(name: str):
    """Each worker loads a graph once."""
    from pretrainkit.systems.phe.data import load_graph

    if name not in _GRAPHS:
        _GRAPHS[name] = load_graph(name)
    return _GRAPHS[name]


def _probe_features(z, graph, cfg) -> dict[str, dict[str, float]]:
    from pretrainkit.systems.phe.pipeline import logreg_scores

    return {
        str(b): logreg_scores(z, graph, b, cfg.evaluate.c_grid, cfg.evaluate.max_iter)
        for b in cfg.bench.budgets
    }


def _probe(enc, graph, cfg) -> dict[str, dict[str, Any]]:
    from pretrainkit.systems.phe.pipeline import probe

    return probe(enc, graph, cfg, cfg.bench.budgets)


def _finetuned(graph, cfg, enc_state, mode: str, seed: int, budgets) -> dict[str, dict[str, float]]:
    from pretrainkit.systems.phe import downstream
    from pretrainkit.systems.phe.model import HeteroEncoder

    out = {}
    for b in budgets:
        torch.manual_seed(seed)
        enc = HeteroEncoder.for_graph(graph.data, cfg.model)
        if enc_state is not None:
            enc.load_state_dict(enc_state)
        out[str(b)] = downstream.finetune(graph, enc, b, cfg.finetune, mode=mode, seed=seed)
    return out


def run_job(cfg, graph_name: str, method: str, seed: int) -> dict[str, Any]:
    """One (graph, method, seed): returns {method: scores per budget} (``phe`` also carries its fine-tunes)
    and timings. Runs in a worker with one torch thread."""
    from pretrainkit.systems.phe import pipeline

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    graph = _graph(graph_name)
    c = job_config(cfg, graph_name, method, seed)
    rec: dict[str, Any] = {"graph": graph_name, "seed": seed, "job": method, "scores": {}, "info": {}}
    if method == "features":
        if "x" not in graph.data[graph.target]:
            rec["info"]["features"] = "no features on the target type"
        else:
            rec["scores"]["features"] = _probe_features(pipeline.raw_features(graph), graph, c)
    elif method == "random":
        torch.manual_seed(seed)
        enc = pipeline.HeteroEncoder.for_graph(graph.data, c.model)
        rec["scores"]["random"] = _probe(enc, graph, c)
    elif method == "supervised":
        rec["scores"]["supervised"] = _finetuned(graph, c, None, "full", seed, c.bench.budgets)
    else:
        model, trainer, result = pipeline._train(graph, c, None)
        enc = model.backbone
        rec["info"]["pretrain"] = {
            "steps": int(trainer.step),
            "loss": float(result.get("loss", float("nan"))),
            "seconds": time.perf_counter() - t0,
        }
        rec["scores"][method] = _probe(enc, graph, c)
        if method == "phe":
            state = {k: v.clone() for k, v in enc.state_dict().items()}
            fb = [b for b in c.bench.finetune_budgets if b in c.bench.budgets]
            if c.bench.finetune_graphs and graph_name not in c.bench.finetune_graphs:
                fb = []
                rec["info"]["finetune"] = "phe_finetune / phe_lora not run on this graph (bench time)"
            for m, mode in (("phe_finetune", "full"), ("phe_lora", "lora")):
                if fb and m in cfg.bench.methods and (mode == "full" or c.model.conv == "hgt"):
                    rec["scores"][m] = _finetuned(graph, c, state, mode, seed, fb)
    rec["seconds"] = time.perf_counter() - t0
    return rec


def _jobs(cfg) -> list[tuple[str, str, int]]:
    b = cfg.bench
    own = [m for m in b.methods if m not in FROM_PHE]
    # the longest jobs (pre-training) first, so the two workers finish together
    order = sorted(own, key=lambda m: (m not in PRETRAINED, m != "supervised"))
    return [(g, m, s) for g in b.graphs for m in order for s in b.seeds]


def run_bench(cfg, out_dir: Path | None = None, log=print, profile: str | None = None) -> Path:
    """Scale study (alone, so its timings are not shared with a worker), then every job on
    ``bench.workers`` processes; returns the markdown path."""
    from pretrainkit.systems.phe import scale

    check_bench(cfg.bench)
    t0 = time.perf_counter()
    scale_points: list[dict[str, Any]] = []
    if cfg.bench.run_scale:
        scale_points = scale.run_scale(cfg.bench.scale, log=log)
    jobs = _jobs(cfg)
    log(f"[phe bench] {len(jobs)} jobs on {cfg.bench.workers} worker(s)")
    records: list[dict[str, Any]] = []

    def done(j, r) -> None:
        records.append(r)
        f20 = {m: round(s["20"]["macro_f1"], 2) for m, s in r["scores"].items() if "20" in s}
        log(
            f"[phe bench] {len(records)}/{len(jobs)} {j[0]} {j[1]} seed {j[2]}: Macro-F1@20 {f20} "
            f"({r['seconds']:.0f} s; {time.perf_counter() - t0:.0f} s elapsed)"
        )

    if cfg.bench.workers <= 1:  # one after another here, each reported as it finishes
        for j in jobs:
            done(j, run_job(cfg, *j))
    else:
        with executor(cfg.bench.workers) as pool:
            pending = {pool.submit(run_job, cfg, *j): j for j in jobs}
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    done(pending.pop(f), f.result())
    records.sort(key=lambda r: (r["graph"], r["job"], r["seed"]))
    data = {
        "records": records,
        "scale": scale_points,
        "heco_quoted": HECO_QUOTED,
        "wall_minutes": round((time.perf_counter() - t0) / 60, 2),
    }
    md = publish(
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
    if scale_points:
        scale.plot(scale_points, Path(md).with_name(f"{cfg.bench.name}_scale.png"))
    return md


# ------------------------------------------------------------------------------------------------ report
def collect(records: list[dict]) -> dict[str, dict[str, dict[str, dict[str, list[float]]]]]:
    """graph -> method -> budget -> metric -> values over seeds."""
    out: dict = {}
    for r in records:
        for m, per_b in r["scores"].items():
            for b, s in per_b.items():
                for k in ("macro_f1", "micro_f1", "auc"):
                    out.setdefault(r["graph"], {}).setdefault(m, {}).setdefault(b, {}).setdefault(k, [])
                    out[r["graph"]][m][b][k].append(s[k])
    return out


def _beyond(a: dict, b: dict) -> bool | None:
    """a above b by more than the two seed spreads together (sample std), or None without spreads."""
    if a["mean"] is None or b["mean"] is None or a["std"] is None or b["std"] is None:
        return None
    return a["mean"] - b["mean"] > a["std"] + b["std"]


def _round(v, digits):
    return None if v is None else round(v, digits)


def render(payload: dict[str, Any]) -> tuple[dict[str, Any], str, dict[str, Any]]:
    from pretrainkit.systems.phe import scale

    vals = collect(payload["records"])
    stats = {
        g: {
            m: {b: {k: mean_std(v).as_dict() for k, v in ks.items()} for b, ks in bs.items()}
            for m, bs in ms.items()
        }
        for g, ms in vals.items()
    }
    graphs = [g for g in payload["config"]["bench"]["graphs"] if g in stats]
    methods = [m for m in METHODS if any(m in stats[g] for g in graphs)]
    budgets = [str(b) for b in payload["config"]["bench"]["budgets"]]
    at20 = "20" if "20" in budgets else budgets[0]

    def ms(g, m, b=at20, k="macro_f1"):
        return stats[g].get(m, {}).get(b, {}).get(k, {"mean": None, "std": None, "n": 0})

    macro = {
        g: {m: round(ms(g, m)["mean"], 2) for m in methods if ms(g, m)["mean"] is not None} for g in graphs
    }

    def diff(g, other):
        a, b = ms(g, "phe")["mean"], ms(g, other)["mean"]
        return None if a is None or b is None else round(a - b, 2)

    sc = scale.summarise(payload.get("scale") or [])
    headline = {
        "macro_f1": macro,
        "phe_minus_no_pretrain": {g: diff(g, "random") for g in graphs},
        "phe_minus_edge_contrast": {g: diff(g, "edge_contrast") for g in graphs},
        "scaling_exponent_time": _round(sc.get("scaling_exponent_time"), 3),
        "peak_memory_growth": _round(sc.get("peak_memory_growth"), 3),
    }
    v_sup = {g: _beyond(ms(g, "phe"), ms(g, "supervised")) for g in graphs}
    v_edge = {g: _beyond(ms(g, "phe"), ms(g, "edge_contrast")) for g in graphs}
    v_heco = {
        g: (ms(g, "phe")["mean"] >= HECO_QUOTED[g][at20])
        if g in HECO_QUOTED and ms(g, "phe")["mean"]
        else None
        for g in graphs
    }
    exp_t, growth = sc.get("scaling_exponent_time"), sc.get("peak_memory_growth")
    verdicts = {
        "phe_above_supervised_beyond_spread": v_sup,
        "phe_above_edge_contrast_beyond_spread": v_edge,
        "phe_at_or_above_heco_quoted": v_heco,
        "epoch_time_exponent_le_1_1": None if exp_t is None else exp_t <= 1.1,
        "peak_memory_flat_growth_le_1_5": None if growth is None else growth <= 1.5,
        "data_loading_below_half_of_step": None if not sc else sc["max_load_share"] < 0.5,
    }

    def yesno(v):
        return "n/a" if v is None else ("yes" if v else "**no**")

    lines = [
        "Smoke-sized pre-training on 2 CPU cores (steps per graph in the stored config); every figure is "
        "mean ± sample std (ddof 1) over the bench seeds, n stated. Probe: logistic regression on frozen "
        "target-node embeddings, C chosen on HeCo's validation nodes, scored on its test nodes. "
        "`random` = randomly initialised encoder under the same probe (the no-pre-training point of "
        "`phe_minus_no_pretrain`); `supervised` = HGT trained from scratch on the budget's labels, "
        "early-stopped on validation. HeCo = published numbers, **quoted, not re-run**. "
        '"Beyond spread": the mean difference exceeds the sum of the two sample stds.',
        "",
        "## Verdicts",
        "",
    ]
    for g in graphs:
        lines.append(
            f"- {g}: PHE above supervised beyond spread: {yesno(v_sup[g])}; above edge-contrast beyond "
            f"spread: {yesno(v_edge[g])}; at or above HeCo (quoted): {yesno(v_heco[g])}"
        )
    lines += [
        f"- scale: epoch time exponent vs edges {exp_t if exp_t is None else round(exp_t, 3)} (goal <= 1.1): "
        f"{yesno(verdicts['epoch_time_exponent_le_1_1'])}; peak step memory growth largest/smallest "
        f"{growth if growth is None else round(growth, 2)} (goal flat, <= 1.5): "
        f"{yesno(verdicts['peak_memory_flat_growth_le_1_5'])}; data loading below half the step: "
        f"{yesno(verdicts['data_loading_below_half_of_step'])}",
        "- Where a goal is missed: what was tried is in docs/phe-diagnosis.md (smoke runs).",
        "",
    ]
    for k, title in (("macro_f1", "Macro-F1"), ("micro_f1", "Micro-F1"), ("auc", "AUC")):
        lines += [f"## {title} (%)", ""]
        for g in graphs:
            rows = []
            for m in methods:
                if m not in stats[g]:
                    continue
                rows.append([m, *[fmt_mean_std(ms(g, m, b, k)) for b in budgets]])
            if k == "macro_f1" and g in HECO_QUOTED:
                rows.append(
                    ["HeCo (quoted, not re-run)", *[str(HECO_QUOTED[g].get(b, "—")) for b in budgets]]
                )
            lines += [f"### {g}", "", md_table(["method", *[f"{b}/class" for b in budgets]], rows), ""]
    notes = sorted(
        {f"{r['graph']}: {v}" for r in payload["records"] for v in r["info"].values() if isinstance(v, str)}
    )
    if notes:
        lines += ["Not run: " + "; ".join(notes), ""]
    pre = [r for r in payload["records"] if "pretrain" in r["info"]]
    if pre:
        rows = []
        for g in graphs:
            for m in PRETRAINED:
                rs = [r["info"]["pretrain"] for r in pre if r["graph"] == g and r["job"] == m]
                if rs:
                    rows.append(
                        [
                            g,
                            m,
                            rs[0]["steps"],
                            fmt_mean_std(mean_std([x["loss"] for x in rs]), 3),
                            fmt_mean_std(mean_std([x["seconds"] for x in rs]), 0),
                        ]
                    )
        lines += [
            "## Pre-training",
            "",
            md_table(["graph", "method", "steps", "final loss", "job s"], rows),
            "",
        ]
    if payload.get("scale"):
        timed = (payload.get("config") or {}).get("bench", {}).get("scale", {}).get("steps", "?")
        rows = [
            [
                f"{p['nodes']:,}",
                f"{p['edges']:,}",
                timed,
                round(p["step_seconds"], 4),
                f"{100 * p['load_share']:.0f} %",
                round(p["epoch_seconds"], 1),
                round(p["peak_step_memory_mb"], 1),
            ]
            for p in payload["scale"]
        ]
        lines += [
            "## Scale (generated graphs, mini-batch, fixed batch)",
            "",
            "Peak step memory = highest RSS (psutil, sampled every 2 ms) during the timed steps minus the RSS "
            "before them; epoch time = steps per epoch x measured step time. One run per size; step time = the "
            "mean of its n timed steps after the warm-up. Plot: phe_scale.png.",
            "",
            md_table(
                ["nodes", "edges", "n (timed steps)", "step s", "loading", "epoch s", "peak step MB"], rows
            ),
            "",
        ]
    derived = {"summary": stats, "verdicts": verdicts, "scale_summary": sc}
    return headline, "\n".join(lines), derived


def bench_config(args):
    """The bench's resolved config from the parsed bench flags."""
    from pretrainkit.core.benchkit import load_bench_config, seed_overrides
    from pretrainkit.systems.phe.pipeline import PHEConfig

    over = seed_overrides(args, "bench.seeds")
    if args.name:
        over.append(f"bench.name={args.name}")
    cfg = load_bench_config(PHEConfig, "phe", args, over)
    check_bench(cfg.bench)
    return copy.deepcopy(cfg)
