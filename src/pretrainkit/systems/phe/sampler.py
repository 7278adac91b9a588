"""Batches for PHE in plain PyTorch: the whole graph (``FullGraphBatches``) or sampled subgraphs
(``NeighbourBatches``), both the core's ``BatchStream`` (``__next__``, ``items_per_batch``, ``state_dict``).

PyG's ``NeighborLoader``/``HGTLoader`` need pyg-lib or torch-sparse, which do not install usably with torch
2.13 on CPU, so the sampler is our own: one CSR per relation indexed by the target node, then per hop and
per relation at most ``fanout`` incoming edges of every frontier node, drawn without replacement (all of them
when the node has fewer). The subgraph keeps the sampled edges (as PyG's neighbour sampling does), the
sampled nodes' features and global ids (``n_id``), and marks the seed nodes: ``batch[target].seed`` holds
their local ids (the first ``len(seed)`` nodes of the target type).

Every batch is a pure function of (seed, batch index): the stream's whole state is that index, so a resumed
run draws the same batches as an uninterrupted one.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from pretrainkit.errors import ConfigError

EdgeType = tuple[str, str, str]


def _generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + index * 7919) % (2**63 - 1))


class CSR:
    """Incoming edges of one relation by target node: ``src[ptr[v]:ptr[v + 1]]`` are v's sources."""

    def __init__(self, edge_index: torch.Tensor, num_dst: int):
        order = torch.argsort(edge_index[1], stable=True)
        self.src = edge_index[0, order].contiguous()
        counts = torch.bincount(edge_index[1], minlength=num_dst)
        self.ptr = torch.zeros(num_dst + 1, dtype=torch.long)
        self.ptr[1:] = torch.cumsum(counts, 0)

    def degree(self, nodes: torch.Tensor) -> torch.Tensor:
        return self.ptr[nodes + 1] - self.ptr[nodes]

    def sample(
        self, nodes: torch.Tensor, fanout: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``fanout`` distinct incoming edges of each node in ``nodes`` -> (src ids, dst ids)."""
        deg = self.degree(nodes)
        total = int(deg.sum())
        if total == 0:
            empty = torch.zeros(0, dtype=torch.long)
            return empty, empty
        # every candidate edge: its segment (which frontier node) and its position in the CSR
        seg = torch.repeat_interleave(torch.arange(len(nodes)), deg)
        start = torch.repeat_interleave(self.ptr[nodes], deg)
        offset = torch.arange(total) - torch.repeat_interleave(torch.cumsum(deg, 0) - deg, deg)
        pos = start + offset
        if fanout >= 0:
            # a random key per candidate; the fanout smallest keys of each segment are its sample
            key = torch.rand(total, generator=gen)
            order = torch.argsort(seg.double() * 2 + key.double(), stable=True)  # segment-major, key-minor
            rank = offset  # after sorting within segments, position within segment is the same 0..deg-1 run
            keep = order[rank < fanout]
            pos, seg = pos[keep], seg[keep]
        return self.src[pos], nodes[seg]


def build_csr(data) -> dict[EdgeType, CSR]:
    return {et: CSR(data[et].edge_index, int(data[et[2]].num_nodes)) for et in data.edge_types}


def sample_subgraph(
    data,
    csr: dict[EdgeType, CSR],
    target: str,
    seeds: torch.Tensor,
    fanouts: Sequence[int],
    gen: torch.Generator,
):
    """The sampled subgraph around ``seeds`` (global ids of ``target`` nodes); ``fanout = -1`` takes every
    incoming edge of that hop."""
    from torch_geometric.data import HeteroData

    nodes: dict[str, list[torch.Tensor]] = {t: [] for t in data.node_types}
    local: dict[str, torch.Tensor] = {}
    count = {t: 0 for t in data.node_types}

    def add(t: str, ids: torch.Tensor) -> torch.Tensor:
        """Register ids of type t; return the ones not seen before (the next frontier)."""
        if t not in local:
            local[t] = torch.full((int(data[t].num_nodes),), -1, dtype=torch.long)
        ids = torch.unique(ids)
        new = ids[local[t][ids] < 0]
        local[t][new] = torch.arange(count[t], count[t] + len(new))
        count[t] += len(new)
        nodes[t].append(new)
        return new

    seeds = seeds.long()
    local[target] = torch.full((int(data[target].num_nodes),), -1, dtype=torch.long)
    local[target][seeds] = torch.arange(len(seeds))  # seeds first, in the given order
    count[target] = len(seeds)
    nodes[target].append(seeds)
    frontier = {target: seeds}
    edges: dict[EdgeType, list[tuple[torch.Tensor, torch.Tensor]]] = {et: [] for et in data.edge_types}
    for fanout in fanouts:
        nxt: dict[str, list[torch.Tensor]] = {}
        for et in data.edge_types:
            s, _, d = et
            if d not in frontier or len(frontier[d]) == 0:
                continue
            src, dst = csr[et].sample(frontier[d], fanout, gen)
            edges[et].append((src, dst))
            nxt.setdefault(s, []).append(src)
        frontier = {t: add(t, torch.cat(v)) for t, v in nxt.items()}
    sub = HeteroData()
    for t in data.node_types:
        n_id = torch.cat(nodes[t]) if nodes[t] else torch.zeros(0, dtype=torch.long)
        sub[t].n_id = n_id
        sub[t].num_nodes = len(n_id)
        for key in ("x", "y"):
            if key in data[t]:
                v = data[t][key]
                sub[t][key] = v.index_select(0, n_id)
    for et, parts in edges.items():
        s, _, d = et
        if parts:
            src = torch.cat([p[0] for p in parts])
            dst = torch.cat([p[1] for p in parts])
            ei = torch.stack([local[s][src], local[d][dst]])
            ei = torch.unique(ei, dim=1)  # an edge reached from two hops is kept once
        else:
            ei = torch.zeros(2, 0, dtype=torch.long)
        sub[et].edge_index = ei
    sub[target].seed = torch.arange(len(seeds))
    return sub


class _IndexedBatches:
    """A batch stream whose batch ``i`` is a pure function of (seed, i): its state is the index alone, so a
    resumed run draws exactly the batches an uninterrupted one would. Subclasses define ``batch(index)``."""

    unit = "seeds"
    index: int
    seed: int
    batch_size: int

    @property
    def items_per_batch(self) -> int:
        return self.batch_size

    def __iter__(self):
        return self

    def __next__(self):
        b = self.batch(self.index)
        self.index += 1
        return b

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index = int(state["index"])


class NeighbourBatches(_IndexedBatches):
    """Sampled subgraphs around ``batch_size`` seed nodes of ``target`` per batch; seeds run through a fresh
    permutation of all target nodes each epoch (the last incomplete batch of an epoch is dropped)."""

    def __init__(self, data, target: str, batch_size: int, fanouts: Sequence[int], seed: int = 0):
        n = int(data[target].num_nodes)
        if batch_size < 1 or batch_size > n:
            raise ConfigError(
                f"config key 'sampler.batch_size' must be in 1..{n} (the {target} nodes), got {batch_size}"
            )
        if not fanouts or any(f == 0 or f < -1 for f in fanouts):
            raise ConfigError(
                f"config key 'sampler.fanouts' needs one fan-out >= 1 (or -1: all) per hop, "
                f"got {list(fanouts)}"
            )
        self.data, self.target, self.batch_size, self.fanouts, self.seed = (
            data,
            target,
            batch_size,
            list(fanouts),
            seed,
        )
        self.csr = build_csr(data)
        self.per_epoch = n // batch_size
        self.index = 0

    def batch(self, index: int):
        epoch, pos = divmod(index, self.per_epoch)
        perm = torch.randperm(
            int(self.data[self.target].num_nodes), generator=_generator(self.seed, -1 - epoch)
        )
        seeds = perm[pos * self.batch_size : (pos + 1) * self.batch_size]
        return sample_subgraph(
            self.data, self.csr, self.target, seeds, self.fanouts, _generator(self.seed, index)
        )


class FullGraphBatches(_IndexedBatches):
    """The whole graph every step, with ``batch_size`` query (seed) nodes of ``target`` drawn afresh per step."""

    def __init__(self, data, target: str, batch_size: int, seed: int = 0):
        n = int(data[target].num_nodes)
        if batch_size < 1 or batch_size > n:
            raise ConfigError(
                f"config key 'sampler.batch_size' must be in 1..{n} (the {target} nodes), got {batch_size}"
            )
        self.data, self.target, self.batch_size, self.seed = data, target, batch_size, seed
        self.index = 0

    def batch(self, index: int):
        out = copy.copy(self.data)  # shares the tensors; only the seed attribute differs
        n = int(self.data[self.target].num_nodes)
        out[self.target].seed = torch.randperm(n, generator=_generator(self.seed, index))[: self.batch_size]
        return out
