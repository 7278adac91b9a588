"""PHE's scale study: time and peak memory of one mini-batch pre-training step on generated heterogeneous
graphs of growing size (fixed batch: the same seeds per batch and fan-outs at every size).

The graph (``generate``): a target type ``paper`` and two more types, ``author`` (as many nodes as papers) and
``venue`` (1 % of them), each with dense features (as OAG, where every type has features: a featureless type
would get a learnable embedding table, whose dense optimiser update and weight perturbation cost O(nodes) per
step, so a fixed batch would not have a fixed cost); ``edges_per_node`` x papers paper->author edges drawn
uniformly with torch (no Python loop) and one paper->venue edge per paper, plus every reverse. Each size runs
in a fresh spawned process (``measure_in_fresh_process``), so one size's allocations cannot hide another's.

Per size: seconds per step (the mean over ``steps`` after ``warmup``), the share of it spent drawing the batch
(the sampler), the extrapolated seconds per epoch (steps per epoch = papers / batch size, times the step time),
and the peak step memory: the highest resident set size (RSS, psutil, sampled every 2 ms by a thread) during
the timed steps minus the RSS just before them (the graph and its CSR are already built then).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ScaleSection:
    # graph sizes (papers + authors + venues)
    nodes: list[int] = field(default_factory=lambda: [10_000, 100_000, 1_000_000])
    edges_per_node: int = 10  # paper->author edges per paper (each also reversed): ~1e7 at 1e6 nodes
    feature_dim: int = 32
    batch_size: int = 256
    fanouts: list[int] = field(default_factory=lambda: [10, 5])
    perturbations: int = 1
    steps: int = 8
    warmup: int = 2
    seed: int = 0
    fresh_process: bool = True  # each size in its own spawned process (off only in the tiny test profile)


def generate(n_nodes: int, edges_per_node: int, feature_dim: int, seed: int = 0):
    """A random typed graph with about ``n_nodes`` nodes (papers : authors : venues = 1 : 1 : 0.02) and about
    ``edges_per_node`` x papers x 2 directed paper-author edges; returns (HeteroData, target type)."""
    from torch_geometric.data import HeteroData

    g = torch.Generator().manual_seed(seed)
    n_p = max(2, int(n_nodes / 2.02))
    n_a, n_v = n_p, max(2, n_p // 50)
    e = edges_per_node * n_p
    pa = torch.stack([torch.randint(0, n_p, (e,), generator=g), torch.randint(0, n_a, (e,), generator=g)])
    pv = torch.stack([torch.arange(n_p), torch.randint(0, n_v, (n_p,), generator=g)])
    data = HeteroData()
    for t, n in (("paper", n_p), ("author", n_a), ("venue", n_v)):
        data[t].num_nodes = n
        data[t].n_id = torch.arange(n)
    for t, n in (("paper", n_p), ("author", n_a), ("venue", n_v)):
        data[t].x = torch.randn(n, feature_dim, generator=g)
    data["paper", "writes", "author"].edge_index = pa
    data["author", "rev_writes", "paper"].edge_index = pa.flip(0)
    data["paper", "in_venue", "venue"].edge_index = pv
    data["venue", "rev_in_venue", "paper"].edge_index = pv.flip(0)
    return data, "paper"


def graph_size(data) -> tuple[int, int]:
    """(nodes, directed edges) of a HeteroData."""
    nodes = sum(int(data[t].num_nodes) for t in data.node_types)
    edges = sum(int(data[et].edge_index.shape[1]) for et in data.edge_types)
    return nodes, edges


class _RssPeak:
    """The highest RSS seen by a sampling thread between ``start`` and ``stop``."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self.proc, self.interval, self.peak, self._run = psutil.Process(), interval, 0, False

    def rss(self) -> int:
        return int(self.proc.memory_info().rss)

    def _loop(self) -> None:
        while self._run:
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak, self._run = self.rss(), True
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._run = False
        self.thread.join()
        self.peak = max(self.peak, self.rss())


def measure(n_nodes: int, cfg: ScaleSection) -> dict[str, Any]:
    """One size: build the graph and sampler, run warm-up then timed PHE steps (both tasks)."""
    from pretrainkit.core.task import MixModel, TaskMix
    from pretrainkit.systems.phe.model import EncoderConfig, HeteroEncoder
    from pretrainkit.systems.phe.sampler import NeighbourBatches
    from pretrainkit.systems.phe.tasks import (
        SemanticConfig,
        SemanticTask,
        StructureTask,
        masked_relations,
    )

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data, target = generate(n_nodes, cfg.edges_per_node, cfg.feature_dim, cfg.seed)
    batches = NeighbourBatches(data, target, cfg.batch_size, cfg.fanouts, seed=cfg.seed)
    build_s = time.perf_counter() - t0
    torch.manual_seed(cfg.seed)
    mcfg = EncoderConfig()
    enc = HeteroEncoder.for_graph(data, mcfg)
    rels = masked_relations(data.metadata(), target)
    tasks = [
        SemanticTask(rels, mcfg.hidden, target, SemanticConfig(perturbations=cfg.perturbations)),
        StructureTask(rels, mcfg.hidden, target),
    ]
    model = MixModel(enc, TaskMix(tasks, {"phe.semantic": 1.0, "phe.structure": 0.1}))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(timed: list | None):
        a = time.perf_counter()
        batch = next(batches)
        b = time.perf_counter()
        loss, _ = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        c = time.perf_counter()
        if timed is not None:
            timed.append((b - a, c - a))

    for _ in range(cfg.warmup):
        step(None)
    timed: list[tuple[float, float]] = []
    peak = _RssPeak()
    before = peak.rss()
    with peak:
        for _ in range(cfg.steps):
            step(timed)
    step_s = sum(t for _, t in timed) / len(timed)
    load_s = sum(d for d, _ in timed) / len(timed)
    nodes, edges = graph_size(data)
    per_epoch = int(data[target].num_nodes) // cfg.batch_size
    return {
        "nodes": nodes,
        "edges": edges,
        "build_seconds": build_s,
        "step_seconds": step_s,
        "load_seconds": load_s,
        "load_share": load_s / step_s,
        "steps_per_epoch": per_epoch,
        "epoch_seconds": per_epoch * step_s,
        "peak_step_memory_mb": (peak.peak - before) / 2**20,
        "rss_before_steps_mb": before / 2**20,
    }


def measure_in_fresh_process(n_nodes: int, cfg: ScaleSection) -> dict[str, Any]:
    """``measure`` in its own spawned process (one size's memory cannot leak into another's figure)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(measure, n_nodes, cfg).result()


def loglog_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) against log(x): the fitted exponent; None for fewer than 2 points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def run_scale(cfg: ScaleSection, log=print) -> list[dict[str, Any]]:
    out = []
    for n in cfg.nodes:
        r = measure_in_fresh_process(n, cfg) if cfg.fresh_process else measure(n, cfg)
        log(
            f"[scale] {r['nodes']:,} nodes, {r['edges']:,} edges: step {r['step_seconds']:.3f} s "
            f"(loading {100 * r['load_share']:.0f} %), epoch {r['epoch_seconds']:.1f} s, "
            f"peak step memory {r['peak_step_memory_mb']:.1f} MB"
        )
        out.append(r)
    return out


def summarise(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Fitted exponents (epoch time and step time against edges) and the peak-memory growth factor."""
    if not points:
        return {}
    edges = [p["edges"] for p in points]
    mem = [p["peak_step_memory_mb"] for p in points]
    lo, hi = min(points, key=lambda p: p["edges"]), max(points, key=lambda p: p["edges"])
    return {
        "scaling_exponent_time": loglog_slope(edges, [p["epoch_seconds"] for p in points]),
        "step_time_exponent": loglog_slope(edges, [p["step_seconds"] for p in points]),
        "peak_memory_growth": (
            hi["peak_step_memory_mb"] / lo["peak_step_memory_mb"] if lo["peak_step_memory_mb"] > 0 else None
        ),
        "max_load_share": max(p["load_share"] for p in points),
        "largest": {"nodes": hi["nodes"], "edges": hi["edges"]},
        "memory_mb": mem,
    }


def plot(points: list[dict[str, Any]], path) -> None:
    """Log-log plot of epoch time, step time and peak step memory against edges."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = [p["edges"] for p in points]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].loglog(edges, [p["epoch_seconds"] for p in points], "o-", label="epoch (s)")
    ax[0].loglog(edges, [p["step_seconds"] for p in points], "s-", label="step (s)")
    ax[0].set_xlabel("directed edges")
    ax[0].legend()
    ax[1].loglog(edges, [max(p["peak_step_memory_mb"], 1e-3) for p in points], "o-")
    ax[1].set_xlabel("directed edges")
    ax[1].set_ylabel("peak step memory (MB, RSS delta)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
