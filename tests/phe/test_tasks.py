"""PHE's two tasks: leak-free structure query, distinct perturbations that leave the encoder alone, queues that
validation never touches, gradients only where intended, and the weighted mix."""

import copy

import pytest
import torch

from pretrainkit.systems.phe.model import EncoderConfig, HeteroEncoder
from pretrainkit.systems.phe.pipeline import make_mix
from pretrainkit.systems.phe.sampler import FullGraphBatches
from pretrainkit.systems.phe.tasks import (
    SemanticConfig,
    SemanticTask,
    StructureConfig,
    StructureTask,
    mask_edges,
    masked_relations,
    perturbed_params,
)

H = 16


@pytest.fixture
def setup(tiny_graph):
    torch.manual_seed(0)
    data = tiny_graph.data
    enc = HeteroEncoder.for_graph(data, EncoderConfig(hidden=H, heads=2, layers=2))
    rels = masked_relations(data.metadata(), "paper")
    batch = FullGraphBatches(data, "paper", 30, seed=0).batch(0)
    return enc, rels, batch


def test_mask_edges_drops_reverse_and_leaves_input(setup):
    _, rels, batch = setup
    before = {et: batch[et].edge_index.clone() for et in batch.edge_types}
    kept, masked = mask_edges(batch, "paper", rels, 0.5, torch.Generator().manual_seed(0))
    assert all(torch.equal(batch[et].edge_index, before[et]) for et in batch.edge_types)
    seeds = set(batch["paper"].seed.tolist())
    for et in rels:
        m = masked[et]
        assert len(m.src) > 0 and set(m.dst.tolist()) <= seeds
        dropped = set(zip(m.src.tolist(), m.dst.tolist()))
        kept_pairs = set(map(tuple, kept[et].edge_index.t().tolist()))
        rev = (et[2], et[1][4:], et[0])
        kept_rev = {(b, a) for a, b in kept[rev].edge_index.t().tolist()}
        assert not dropped & kept_pairs and not dropped & kept_rev
        assert len(kept_pairs) + len(dropped) == before[et].shape[1]


@pytest.mark.parametrize("mode", ["kept", "masked"])
def test_leak_free_query_never_sees_its_positive(setup, mode):
    enc, rels, batch = setup
    task = StructureTask(
        rels, H, "paper", StructureConfig(schema_edges=mode, schema_samples={"author": 4})
    ).eval()
    kept, masked = mask_edges(batch, "paper", rels, 0.5, torch.Generator().manual_seed(1))
    inputs = task.schema_inputs(kept, masked, torch.Generator().manual_seed(2))
    seeds = batch["paper"].seed
    slot = {int(t): i for i, t in enumerate(seeds)}
    seen_positive = False
    for et in rels:
        ids, valid = inputs[et]
        for s, t in zip(masked[et].src.tolist(), masked[et].dst.tolist()):
            agg = set(ids[slot[t]][valid[slot[t]]].tolist())
            seen_positive |= s in agg
            if mode == "kept":
                assert s not in agg
    assert seen_positive == (mode == "masked")  # the code's reading does leak
    # behaviour: changing the embeddings of t's own positives leaves t's leak-free query unchanged
    et = ("author", "rev_writes", "paper")
    m = masked[et]
    changed = []
    with torch.no_grad():
        h = {t: v.detach() for t, v in enc.eval()(kept).items()}
        q0 = task.schema_query(h, seeds, inputs)
        for t in sorted(set(m.dst.tolist()))[:8]:
            h2 = copy.copy(h)
            h2["author"] = h["author"].clone()
            h2["author"][m.src[m.dst == t]] += 10.0
            q1 = task.schema_query(h2, seeds, inputs)
            changed.append(not torch.allclose(q0[slot[t]], q1[slot[t]]))
    if mode == "kept":
        assert not any(changed)
    else:
        assert any(changed)


def test_perturbations_distinct_and_live_weights_untouched(setup):
    enc, rels, batch = setup
    live = {k: v.clone() for k, v in enc.state_dict().items()}
    dicts = perturbed_params(enc, 5, 0.15, torch.Generator().manual_seed(0))
    assert len({id(d) for d in dicts}) == 5  # five dicts, not one shared object
    name = "proj.paper.weight"
    for i in range(5):
        for j in range(i + 1, 5):
            assert not torch.equal(dicts[i][name], dicts[j][name])
        assert not dicts[i][name].requires_grad
        noise = dicts[i][name] - enc.proj["paper"].weight
        bound = 0.5 * 0.15 * enc.proj["paper"].weight.std()
        assert float(noise.abs().max().detach()) <= float(bound.detach()) + 1e-6
    task = SemanticTask(rels, H, "paper", SemanticConfig(perturbations=3))
    enc.train()
    keys = task.perturbed_keys(enc, batch, torch.Generator().manual_seed(0))
    assert all(not v.requires_grad for v in keys.values())
    assert enc.training and all(m.training for m in enc.modules())  # modes restored
    assert all(torch.equal(v, live[k]) for k, v in enc.state_dict().items())
    assert all(p.grad is None for p in enc.parameters())
    # scale 0 in eval mode: the ensemble is exactly the encoder
    task0 = SemanticTask(
        rels, H, "paper", SemanticConfig(perturbations=2, noise_scale=0.0, perturbed_mode="eval")
    )
    k0 = task0.perturbed_keys(enc, batch)
    with torch.no_grad():
        ref = enc.eval()(batch)
    assert all(torch.allclose(k0[t], ref[t], atol=1e-6) for t in ref)
    # with noise the ensemble differs from the encoder
    assert not torch.allclose(keys["paper"], ref["paper"])


@pytest.mark.parametrize("cls", [SemanticTask, StructureTask])
def test_eval_never_updates_queue(setup, cls):
    enc, rels, batch = setup
    cfg = SemanticConfig(perturbations=1) if cls is SemanticTask else StructureConfig()
    task = cls(rels, H, "paper", cfg)
    task.eval()
    enc.eval()
    with torch.no_grad():
        task(batch, enc, torch.Generator().manual_seed(0))
    assert all(int(n.queue_filled) == 0 for n in task.contrast.nce.values())
    task.train()
    loss, _ = task(batch, enc, torch.Generator().manual_seed(0))
    loss.backward()  # the queue update after the loss must not break its backward
    assert all(int(n.queue_filled) > 0 for n in task.contrast.nce.values())


def test_gradients_flow_only_where_intended(setup):
    enc, rels, batch = setup
    sem = SemanticTask(rels, H, "paper", SemanticConfig(perturbations=2))
    struct = StructureTask(rels, H, "paper")
    loss, _ = sem(batch, enc, torch.Generator().manual_seed(0))
    loss.backward()
    assert enc.proj["paper"].weight.grad is not None
    assert all(p.grad is not None for p in sem.contrast.matchers.parameters())
    assert all(p.grad is None for p in struct.parameters())
    enc.zero_grad(set_to_none=True)
    loss, _ = struct(batch, enc, torch.Generator().manual_seed(0))
    loss.backward()
    assert struct.schema.type_att.grad is not None and struct.schema.type_fc.weight.grad is not None
    assert enc.proj["paper"].weight.grad is not None
    # keys are detached: scaling the loss through keys only changes nothing (the key path has no gradient)
    kept, masked = mask_edges(batch, "paper", rels, 0.5, torch.Generator().manual_seed(0))
    h = enc(kept)
    keys = {t: v.detach() for t, v in h.items()}
    assert not any(v.requires_grad for v in keys.values())


def test_mix_is_the_weighted_sum(setup):
    enc, rels, batch = setup
    sem = SemanticTask(rels, H, "paper", SemanticConfig(perturbations=1, queue_size=0))
    struct = StructureTask(rels, H, "paper", StructureConfig(queue_size=0))
    for m in (enc, sem, struct):
        m.eval()  # no dropout: the three runs below see the same numbers
    mix = make_mix([sem, struct], {"phe.semantic": 1.0, "phe.structure": 0.1})
    torch.manual_seed(3)
    total, metrics = mix(batch, enc)
    torch.manual_seed(3)
    ls, _ = sem(batch, enc)
    lt, _ = struct(batch, enc)
    assert torch.allclose(total, ls + 0.1 * lt)
    assert torch.allclose(metrics["loss/phe.semantic"], ls) and metrics["weight/phe.structure"] == 0.1
