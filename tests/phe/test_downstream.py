"""Fine-tuning (full, LoRA, from scratch), link prediction on held-out edges, and the in-budget weight search."""

import torch

from pretrainkit.adapt.base import adapter_tensors
from pretrainkit.systems.phe import downstream, pipeline
from pretrainkit.systems.phe.downstream import FinetuneSection, LinkSection, holdout_edges
from pretrainkit.systems.phe.model import EncoderConfig, HeteroEncoder
from pretrainkit.systems.phe.pipeline import PHEConfig


def _enc(graph, seed=0):
    torch.manual_seed(seed)
    return HeteroEncoder.for_graph(graph.data, EncoderConfig(hidden=8, heads=2, layers=1))


def test_finetune_full_trains_encoder_lora_leaves_it(tiny_graph):
    budget = min(tiny_graph.splits)
    cfg = FinetuneSection(epochs=4, patience=10, lora_rank=2)
    enc = _enc(tiny_graph)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    full = downstream.finetune(tiny_graph, enc, budget, cfg, mode="full")
    assert any(not torch.equal(before[k], v) for k, v in enc.state_dict().items())
    enc = _enc(tiny_graph)
    lora = downstream.finetune(tiny_graph, enc, budget, cfg, mode="lora")
    adapters = set(adapter_tensors(enc))
    assert adapters and lora["trainable_params"] < full["trainable_params"]
    # every base weight is exactly the pre-trained one; only the adapters (and the head) trained
    for name, p in enc.named_parameters():
        if name not in adapters:
            assert not p.requires_grad
    base = {k.replace(".base.", "."): v for k, v in enc.state_dict().items() if k not in adapters}
    assert all(torch.equal(before[k], v) for k, v in base.items() if k in before)
    assert sum(k in before for k in base) == len(before)
    for r in (full, lora):
        assert 0 <= r["macro_f1"] <= 100 and 0 <= r["epoch"] < 4


def test_holdout_edges_removed_both_ways_and_fixed(tiny_graph):
    cfg = LinkSection(relation="writes", fraction=0.2, seed=3)
    without, test, et = holdout_edges(tiny_graph, cfg)
    full = set(map(tuple, tiny_graph.data[et].edge_index.t().tolist()))
    held = set(map(tuple, test.t().tolist()))
    kept = set(map(tuple, without.data[et].edge_index.t().tolist()))
    rev = {(b, a) for a, b in without.data["author", "rev_writes", "paper"].edge_index.t().tolist()}
    assert held and not held & kept and not held & rev and held | kept == full
    assert torch.equal(holdout_edges(tiny_graph, cfg)[1], test)
    assert tiny_graph.data[et].edge_index.shape[1] == len(full)  # the input graph is not modified
    r = downstream.link_prediction(_enc(without), without, test, et, negatives=5)
    assert 0 < r["mrr"] <= 100 and 0 <= r["auc"] <= 100 and r["edges"] == len(held)


def test_search_reads_only_the_budget(tmp_path, tiny_graph):
    budget = min(tiny_graph.splits)
    fit, score = pipeline.budget_halves(tiny_graph, budget, 0)
    train = set(tiny_graph.splits[budget][0].tolist())
    assert set(fit) | set(score) == train and not set(fit) & set(score)
    cfg = PHEConfig(out=str(tmp_path / "s"))
    cfg.model = EncoderConfig(hidden=8, heads=2, layers=1)
    cfg.pretrain.semantic.perturbations = 1
    cfg.pretrain.sampler.batch_size = 16
    cfg.search.budget, cfg.search.steps = budget, 2
    cfg.search.weights.n_trials, cfg.search.weights.n_startup_trials = 2, 1
    r = pipeline.search_weights(cfg, graph=tiny_graph, progress=False)
    assert set(r["best_weights"]) == set(pipeline.TASK_NAMES) and r["n_trials"] == 2
    assert (tmp_path / "s" / "search" / "search.json").is_file()
