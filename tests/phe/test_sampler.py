"""The neighbour sampler against a brute-force reference; determinism and exact resume."""

import torch

from pretrainkit.systems.phe.sampler import FullGraphBatches, NeighbourBatches, build_csr, sample_subgraph


def brute_force(data, target, seeds, hops):
    """Nodes reached per type and, per relation, the edges into each hop's new frontier (sets of global ids)."""
    seen = {t: set() for t in data.node_types}
    seen[target] = set(seeds.tolist())
    frontier = {target: set(seeds.tolist())}
    edges = {et: set() for et in data.edge_types}
    for _ in range(hops):
        nxt = {}
        for et in data.edge_types:
            s, _, d = et
            for u, v in data[et].edge_index.t().tolist():
                if v in frontier.get(d, ()):
                    edges[et].add((u, v))
                    nxt.setdefault(s, set()).add(u)
        frontier = {t: ids - seen[t] for t, ids in nxt.items()}
        for t, ids in frontier.items():
            seen[t] |= ids
    return seen, edges


def global_edges(sub, et):
    s, _, d = et
    ei = sub[et].edge_index
    return {(int(sub[s].n_id[a]), int(sub[d].n_id[b])) for a, b in ei.t().tolist()}


def test_take_all_equals_brute_force(tiny_graph):
    data = tiny_graph.data
    seeds = torch.tensor([3, 17, 42])
    sub = sample_subgraph(data, build_csr(data), "paper", seeds, [-1, -1], torch.Generator().manual_seed(0))
    nodes, edges = brute_force(data, "paper", seeds, 2)
    assert torch.equal(sub["paper"].n_id[:3], seeds) and torch.equal(sub["paper"].seed, torch.arange(3))
    for t in data.node_types:
        assert set(sub[t].n_id.tolist()) == nodes[t]
        assert len(sub[t].n_id) == len(nodes[t])  # no duplicates
    for et in data.edge_types:
        assert global_edges(sub, et) == edges[et]
    assert torch.equal(sub["paper"].x, data["paper"].x[sub["paper"].n_id])
    assert torch.equal(sub["paper"].y, data["paper"].y[sub["paper"].n_id])


def test_fanout_respected_and_edges_real(tiny_graph):
    data = tiny_graph.data
    seeds = torch.arange(0, 60, 5)
    fanout = 2
    sub = sample_subgraph(
        data, build_csr(data), "paper", seeds, [fanout, fanout], torch.Generator().manual_seed(1)
    )
    nodes, _ = brute_force(data, "paper", seeds, 2)
    for t in data.node_types:
        assert set(sub[t].n_id.tolist()) <= nodes[t]
    for et in data.edge_types:
        real = {tuple(e) for e in data[et].edge_index.t().tolist()}
        got = global_edges(sub, et)
        assert got <= real  # no edge outside the graph
        indeg = torch.bincount(sub[et].edge_index[1], minlength=sub[et[2]].num_nodes)
        assert int(indeg.max()) <= fanout if len(indeg) else True
    # a seed with more than `fanout` authors gets exactly `fanout` of them
    et = ("author", "rev_writes", "paper")
    full_deg = torch.bincount(data[et].edge_index[1], minlength=60)[seeds]
    sub_deg = torch.bincount(sub[et].edge_index[1], minlength=len(sub["paper"].n_id))[: len(seeds)]
    assert torch.equal(sub_deg, full_deg.clamp_max(fanout))


def _same(a, b):
    return all(torch.equal(a[t].n_id, b[t].n_id) for t in a.node_types) and all(
        torch.equal(a[et].edge_index, b[et].edge_index) for et in a.edge_types
    )


def test_deterministic_and_resumable(tiny_graph):
    data = tiny_graph.data
    a = NeighbourBatches(data, "paper", 8, [3, 2], seed=5)
    first = [next(a) for _ in range(10)]  # crosses an epoch (7 batches of 8 in 60 seeds)
    b = NeighbourBatches(data, "paper", 8, [3, 2], seed=5)
    assert all(_same(x, next(b)) for x in first)
    c = NeighbourBatches(data, "paper", 8, [3, 2], seed=6)
    assert not all(_same(x, next(c)) for x in first)
    resumed = NeighbourBatches(data, "paper", 8, [3, 2], seed=5)
    state = NeighbourBatches(data, "paper", 8, [3, 2], seed=5)
    for _ in range(4):
        next(state)
    resumed.load_state_dict(state.state_dict())
    assert all(_same(x, next(resumed)) for x in first[4:])
    assert resumed.items_per_batch == 8
    # an epoch's seeds are a permutation: each target node once
    seeds = torch.cat([x["paper"].n_id[:8] for x in first[:7]])
    assert len(set(seeds.tolist())) == 56


def test_full_graph_stream(tiny_graph):
    s = FullGraphBatches(tiny_graph.data, "paper", 10, seed=0)
    x, y = next(s), next(s)
    assert len(x["paper"].seed) == 10 and not torch.equal(x["paper"].seed, y["paper"].seed)
    assert "seed" not in tiny_graph.data["paper"]  # the shared graph is not modified
    s2 = FullGraphBatches(tiny_graph.data, "paper", 10, seed=0)
    s2.load_state_dict({"index": 1})
    assert torch.equal(next(s2)["paper"].seed, y["paper"].seed)
