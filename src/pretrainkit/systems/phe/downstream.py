"""PHE's downstream modes beyond the frozen-embedding probe (pipeline.evaluate):

- ``finetune``: a linear head on the target nodes, trained with few labels together with the whole encoder
  (``mode="full"``, as PHE's fine-tuning scripts) or with LoRA adapters injected into the frozen HGT's typed
  linear layers (``mode="lora"``: K/Q/V and output maps, ``adapt/pyg.py``); ``encoder=None`` trains from
  scratch (the no-pre-training baseline). Model selection: the epoch with the best validation Macro-F1.
- ``link_prediction``: held-out edges of one relation (removed, with their reverse, before pre-training; see
  ``holdout_edges``) ranked by the cosine of frozen embeddings against random nodes of the target's type:
  MRR and AUC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pretrainkit.errors import ConfigError, DataError
from pretrainkit.systems.phe.data import Graph, check_budget
from pretrainkit.systems.phe.model import HeteroEncoder


@dataclass
class FinetuneSection:
    epochs: int = 100
    lr: float = 5e-3
    weight_decay: float = 1e-4
    patience: int = 20  # epochs without a better validation Macro-F1 before stopping
    lora_rank: int = 4
    lora_targets: list[str] = field(default_factory=lambda: ["kqv_lin", "out_lin"])


@dataclass
class LinkSection:
    relation: str = "writes"  # the relation (by name) whose edges are held out
    fraction: float = 0.1
    negatives: int = 99
    seed: int = 0


def _scores(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    from sklearn.metrics import f1_score, roc_auc_score

    pred = logits.argmax(1).numpy()
    proba = torch.softmax(logits, 1).numpy()
    yn = y.numpy()
    try:
        auc = (
            roc_auc_score(yn, proba[:, 1])
            if proba.shape[1] == 2
            else roc_auc_score(yn, proba, multi_class="ovr", labels=np.arange(proba.shape[1]))
        )
    except ValueError:  # a class absent from the evaluated nodes
        auc = float("nan")
    return {
        "macro_f1": 100 * f1_score(yn, pred, average="macro"),
        "micro_f1": 100 * f1_score(yn, pred, average="micro"),
        "auc": 100 * auc,
    }


def finetune(
    graph: Graph,
    enc: HeteroEncoder,
    budget: int,
    cfg: FinetuneSection,
    mode: Literal["full", "lora"] = "full",
    seed: int = 0,
) -> dict[str, Any]:
    """Train a head (and the encoder, or LoRA adapters) on the budget's training nodes; test at the best
    validation epoch. Returns the test scores, the epoch chosen and the trainable parameter count."""
    check_budget(graph, budget)
    if mode not in ("full", "lora"):
        raise ConfigError(f"finetune mode must be full or lora, got {mode!r}")
    torch.manual_seed(seed)
    if mode == "lora":
        if enc.cfg.conv != "hgt":
            raise ConfigError(
                "LoRA fine-tuning targets HGT's typed linear layers; use model.conv=hgt or mode full"
            )
        from pretrainkit.adapt.base import inject

        inject(enc, "lora", cfg.lora_targets, rank=cfg.lora_rank)
    head = nn.Linear(enc.cfg.hidden, graph.num_classes)
    params = [p for p in [*enc.parameters(), *head.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    tr, va, te = graph.splits[budget]
    y = graph.labels
    best: tuple[float, int, dict, dict] | None = None
    since = 0
    for epoch in range(cfg.epochs):
        enc.train()
        head.train()
        opt.zero_grad(set_to_none=True)
        z = enc(graph.data)[graph.target]
        F.cross_entropy(head(z[tr]), y[tr]).backward()
        opt.step()
        enc.eval()
        head.eval()
        with torch.no_grad():
            logits = head(enc(graph.data)[graph.target])
        f1 = _scores(logits[va], y[va])["macro_f1"]
        if best is None or f1 > best[0]:
            best = (
                f1,
                epoch,
                {k: v.clone() for k, v in enc.state_dict().items()},
                {k: v.clone() for k, v in head.state_dict().items()},
            )
            since = 0
        else:
            since += 1
            if since >= cfg.patience:
                break
    _, epoch, enc_state, head_state = best
    enc.load_state_dict(enc_state)
    head.load_state_dict(head_state)
    enc.eval()
    with torch.no_grad():
        logits = head(enc(graph.data)[graph.target])
    return {
        **_scores(logits[te], y[te]),
        "val_macro_f1": best[0],
        "epoch": epoch,
        "mode": mode,
        "trainable_params": sum(p.numel() for p in params),
    }


# ---- link prediction ----------------------------------------------------------------------------------
def _relation(graph: Graph, name: str) -> tuple[str, str, str]:
    found = [et for et in graph.data.edge_types if et[1] == name]
    if not found:
        have = sorted({et[1] for et in graph.data.edge_types if not et[1].startswith("rev_")})
        raise DataError(f"graph '{graph.name}' has no relation '{name}'; relations: {', '.join(have)}")
    return found[0]


def holdout_edges(graph: Graph, cfg: LinkSection) -> tuple[Graph, torch.Tensor, tuple[str, str, str]]:
    """The graph without a seeded ``fraction`` of one relation's edges (and their reverses), the held-out
    edges (2, E) and the relation. The same seed always holds out the same edges."""
    import copy

    if not 0 < cfg.fraction < 1:
        raise ConfigError(f"config key 'link.fraction' must be in (0, 1), got {cfg.fraction}")
    et = _relation(graph, cfg.relation)
    ei = graph.data[et].edge_index
    n_out = max(1, int(round(cfg.fraction * ei.shape[1])))
    perm = torch.randperm(ei.shape[1], generator=torch.Generator().manual_seed(cfg.seed))
    test, keep = ei[:, perm[:n_out]], ei[:, torch.sort(perm[n_out:]).values]
    data = copy.copy(graph.data)
    data[et].edge_index = keep
    rev = (et[2], f"rev_{et[1]}", et[0])
    if rev in data.edge_types:
        data[rev].edge_index = keep.flip(0)
    return Graph(graph.name, data, graph.target, graph.labels, graph.splits, graph.metapaths), test, et


@torch.no_grad()
def link_prediction(
    enc: HeteroEncoder,
    graph_without: Graph,
    test: torch.Tensor,
    et: tuple[str, str, str],
    negatives: int = 99,
    seed: int = 0,
) -> dict[str, float]:
    """MRR and AUC (in %) of the held-out edges (u -> v): v's cosine with u against ``negatives`` random nodes
    of v's type (unfiltered), from frozen embeddings of the graph without the held-out edges."""
    from sklearn.metrics import roc_auc_score

    enc.eval()
    h = enc(graph_without.data)
    zu, zv = F.normalize(h[et[0]][test[0]], dim=-1), F.normalize(h[et[2]][test[1]], dim=-1)
    n_v = h[et[2]].shape[0]
    neg = torch.randint(0, n_v, (test.shape[1], negatives), generator=torch.Generator().manual_seed(seed))
    zn = F.normalize(h[et[2]][neg], dim=-1)
    pos = (zu * zv).sum(-1)
    negs = torch.einsum("ed,ekd->ek", zu, zn)
    rank = 1 + (negs > pos[:, None]).sum(1) + 0.5 * (negs == pos[:, None]).sum(1)
    auc = roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(pos))], np.r_[pos.numpy(), negs[:, 0].numpy()])
    return {
        "mrr": 100 * float((1.0 / rank.double()).mean()),
        "auc": 100 * float(auc),
        "edges": int(test.shape[1]),
    }


def encoder_or_scratch(graph: Graph, model_cfg, path: str | Path | None) -> HeteroEncoder:
    """The pre-trained encoder at ``path``, or a freshly initialised one when ``path`` is None."""
    from pretrainkit.systems.phe.pipeline import load_encoder

    if path is None:
        return HeteroEncoder.for_graph(graph.data, model_cfg)
    return load_encoder(graph, model_cfg, path)
