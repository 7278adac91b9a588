"""PHE end to end: pre-train the encoder with the two tasks on the core trainer, then HeCo's protocol
(frozen encoder -> target-node embeddings -> logistic regression at 20/40/60 labels per class; Macro-F1,
Micro-F1 and AUC on the fixed test nodes).

Run directory (``out``): ``config.yaml``; ``pretrain/`` (the trainer's run: metrics, checkpoints, resumable
with ``--resume auto``); ``encoder.safetensors`` (the pre-trained encoder alone, hash-checked);
``evaluate.json`` (the scores of the last evaluation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from pretrainkit.core import checkpoint as ckpt
from pretrainkit.core.task import MixModel, PretrainTask, TaskMix
from pretrainkit.core.trainer import TrainConfig, Trainer
from pretrainkit.errors import CheckpointError, ConfigError, DataError
from pretrainkit.systems.phe.data import BUDGETS, Graph, check_budget, load_graph
from pretrainkit.systems.phe.model import EncoderConfig, HeteroEncoder
from pretrainkit.systems.phe.sampler import FullGraphBatches, NeighbourBatches
from pretrainkit.systems.phe.tasks import (
    SemanticConfig,
    SemanticTask,
    StructureConfig,
    StructureTask,
    masked_relations,
)

TASK_NAMES = ("phe.semantic", "phe.structure")


@dataclass
class SamplerSection:
    mode: Literal["auto", "full", "neighbour"] = "auto"  # auto: the whole graph when it has <= full_max_nodes
    full_max_nodes: int = 100_000
    batch_size: int = 256  # seed (query) nodes per step
    fanouts: list[int] = field(default_factory=lambda: [10, 5])  # per hop; -1 = every neighbour
    seed: int = 0


@dataclass
class PretrainSection:
    # The official code's objective: L_sem + 0.1 * L_struct.
    weights: dict[str, float] = field(default_factory=lambda: {"phe.semantic": 1.0, "phe.structure": 0.1})
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    structure: StructureConfig = field(default_factory=StructureConfig)
    sampler: SamplerSection = field(default_factory=SamplerSection)
    # AdamW lr 1e-3, weight decay 1e-2, grad-clip 0.5 as the code; a cosine schedule instead of OneCycle.
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=300, lr=1e-3, weight_decay=1e-2,
                                                                   grad_clip=0.5, log_every=10))


@dataclass
class EvaluateSection:
    budgets: list[int] = field(default_factory=lambda: list(BUDGETS))
    # logistic regression's inverse regularisation, chosen per budget by validation Macro-F1
    c_grid: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])
    max_iter: int = 1000


@dataclass
class PHEConfig:
    data: str = "acm"  # acm | dblp | aminer | imdb | a folder with graph.yaml
    model: EncoderConfig = field(default_factory=EncoderConfig)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    out: str = "runs/phe"

    def validate(self) -> None:
        unknown = set(self.pretrain.weights) - set(TASK_NAMES)
        if unknown:
            raise ConfigError(f"config key 'pretrain.weights' names unknown tasks {sorted(unknown)}; "
                              f"allowed: {', '.join(TASK_NAMES)}")


class _OwnStepMix(TaskMix):
    """Until core v2's task mix (v2-taskmix) lands: the weighted sum over tasks that run their own step
    (``task(batch, backbone)``). Drop it once ``PretrainTask`` has ``shares_input``."""

    def forward(self, batch, backbone, step=None, generator=None):
        w = self.weights_at(step)
        total, metrics = None, {}
        for name in self.active(step):
            loss, m = self.task(name)(batch, backbone, generator=generator)
            metrics[f"loss/{name}"] = loss.detach()
            metrics[f"weight/{name}"] = w[name]
            metrics.update({f"{name}/{k}": v.detach() if torch.is_tensor(v) else v for k, v in m.items()})
            total = w[name] * loss if total is None else total + w[name] * loss
        if total is None:
            raise ConfigError("every task weight is zero; at least one task needs a positive weight")
        metrics["loss"] = total.detach()
        return total, metrics


def make_mix(tasks: list[PretrainTask], weights: dict[str, float]) -> TaskMix:
    own_step_ready = hasattr(PretrainTask, "shares_input")  # core v2 task mix: tasks may own their step
    return (TaskMix if own_step_ready else _OwnStepMix)(tasks, weights)


def build_model(graph: Graph, cfg: PHEConfig) -> MixModel:
    if graph.target is None:
        raise DataError(f"graph '{graph.name}' names no target node type; set 'target' in its graph.yaml")
    enc = HeteroEncoder.for_graph(graph.data, cfg.model)
    rels = masked_relations(graph.data.metadata(), graph.target)
    if not rels:
        raise DataError(f"graph '{graph.name}' has no relation into its target type '{graph.target}'")
    tasks = [SemanticTask(rels, cfg.model.hidden, graph.target, cfg.pretrain.semantic),
             StructureTask(rels, cfg.model.hidden, graph.target, cfg.pretrain.structure)]
    return MixModel(enc, make_mix(tasks, cfg.pretrain.weights))


def make_batches(graph: Graph, cfg: PHEConfig):
    s = cfg.pretrain.sampler
    n_nodes = sum(int(graph.data[t].num_nodes) for t in graph.data.node_types)
    mode = s.mode if s.mode != "auto" else ("full" if n_nodes <= s.full_max_nodes else "neighbour")
    bs = min(s.batch_size, int(graph.data[graph.target].num_nodes))
    if mode == "full":
        return FullGraphBatches(graph.data, graph.target, bs, seed=s.seed)
    return NeighbourBatches(graph.data, graph.target, bs, s.fanouts, seed=s.seed)


def pretrain(cfg: PHEConfig, resume: str | None = None, graph: Graph | None = None) -> dict[str, Any]:
    """Pre-train on ``cfg.data``; the trainer's run lives in ``<out>/pretrain``, the encoder is saved alone in
    ``<out>/encoder.safetensors``. Returns ``fit()``'s result."""
    graph = graph or load_graph(cfg.data)
    torch.manual_seed(cfg.pretrain.train.seed)  # the initial weights
    model = build_model(graph, cfg)
    out = Path(cfg.out)
    trainer = Trainer(model, make_batches(graph, cfg), cfg.pretrain.train, run_dir=out / "pretrain", unit="seeds")
    result = trainer.fit(resume=resume)
    ckpt.save_weights(out / "encoder.safetensors", model.backbone.state_dict(),
                      metadata={"graph": graph.name, "steps": str(trainer.step)})
    return result


def load_encoder(graph: Graph, cfg: PHEConfig, path: str | Path) -> HeteroEncoder:
    enc = HeteroEncoder.for_graph(graph.data, cfg.model)
    state = ckpt.load_weights(path)
    missing, unexpected = enc.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit this encoder and graph (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}); evaluate with the config it was trained with")
    return enc


@torch.no_grad()
def embed(enc: HeteroEncoder, graph: Graph) -> np.ndarray:
    """Frozen target-node embeddings from one full-graph forward in eval mode."""
    enc.eval()
    return enc(graph.data)[graph.target].numpy()


def raw_features(graph: Graph) -> np.ndarray:
    """The floor: the target type's own features, row-normalised (as HeCo's preprocessing)."""
    if "x" not in graph.data[graph.target]:
        raise DataError(f"graph '{graph.name}' has no features on '{graph.target}', so it has no raw-feature floor")
    x = graph.data[graph.target].x
    x = x.to_dense() if x.is_sparse else x
    return (x / x.sum(1, keepdim=True).clamp_min(1e-12)).numpy()


def logreg_scores(z: np.ndarray, graph: Graph, budget: int, c_grid: list[float], max_iter: int) -> dict[str, float]:
    """HeCo's protocol at one budget: logistic regression on the budget's training nodes, C chosen by
    validation Macro-F1, then Macro-F1, Micro-F1 and (one-vs-rest, macro) AUC on the test nodes, in %."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score, roc_auc_score
    from sklearn.preprocessing import StandardScaler

    check_budget(graph, budget)
    y = graph.labels.numpy()
    tr, va, te = (p.numpy() for p in graph.splits[budget])
    scaler = StandardScaler().fit(z[tr])
    zs = scaler.transform(z)
    best = None
    for c in c_grid:
        clf = LogisticRegression(C=c, max_iter=max_iter).fit(zs[tr], y[tr])
        f1 = f1_score(y[va], clf.predict(zs[va]), average="macro")
        if best is None or f1 > best[0]:
            best = (f1, c, clf)
    _, c, clf = best
    pred, proba = clf.predict(zs[te]), clf.predict_proba(zs[te])
    auc = (roc_auc_score(y[te], proba[:, 1]) if proba.shape[1] == 2
           else roc_auc_score(y[te], proba, multi_class="ovr", labels=clf.classes_))
    return {"macro_f1": 100 * f1_score(y[te], pred, average="macro"),
            "micro_f1": 100 * f1_score(y[te], pred, average="micro"), "auc": 100 * auc, "C": c}


def evaluate(cfg: PHEConfig, encoder: str | Path | None = None, raw: bool = False,
             graph: Graph | None = None) -> dict[str, Any]:
    """Scores per budget for the encoder at ``encoder`` (default ``<out>/encoder.safetensors``) or, with
    ``raw``, for the raw-feature floor; written to ``<out>/evaluate.json``."""
    graph = graph or load_graph(cfg.data)
    for b in cfg.evaluate.budgets:
        check_budget(graph, b)
    if raw:
        z, source = raw_features(graph), "raw features"
    else:
        path = Path(encoder) if encoder else Path(cfg.out) / "encoder.safetensors"
        if not path.is_file():
            raise CheckpointError(f"no pre-trained encoder at {path}; run 'pretrainkit phe pretrain' first "
                                  f"(or pass --encoder)")
        z, source = embed(load_encoder(graph, cfg, path), graph), str(path)
    scores = {str(b): logreg_scores(z, graph, b, cfg.evaluate.c_grid, cfg.evaluate.max_iter)
              for b in cfg.evaluate.budgets}
    result = {"graph": graph.name, "embeddings": source, "scores": scores}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluate.json").write_text(json.dumps(result, indent=2))
    return result
