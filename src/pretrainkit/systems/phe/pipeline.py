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
from pretrainkit.search.task_weights import SearchConfig
from pretrainkit.systems.phe.bench import BenchSection
from pretrainkit.systems.phe.data import BUDGETS, Graph, check_budget, load_graph
from pretrainkit.systems.phe.downstream import FinetuneSection, LinkSection, holdout_edges
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
LAYERS = ("input", "last", "concat")  # the probe's readings of the encoder (EvaluateSection.layer)


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
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            max_steps=300, lr=1e-3, weight_decay=1e-2, grad_clip=0.5, log_every=10
        )
    )


@dataclass
class EvaluateSection:
    budgets: list[int] = field(default_factory=lambda: list(BUDGETS))
    # logistic regression's inverse regularisation, chosen per budget by validation Macro-F1
    c_grid: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])
    max_iter: int = 1000
    # which encoder output the probe reads: "last" layer, "concat" (input projection and every layer, each
    # L2-normalised, then joined), "input" (the per-type projection alone), or "auto": per budget the one of
    # those three with the best validation Macro-F1 (validation nodes only; docs/phe-diagnosis.md: the last
    # layer of an edge-contrast encoder is tuned to edge matching, and an earlier reading probes better)
    layer: Literal["auto", "last", "concat", "input"] = "auto"


@dataclass
class SearchSection:
    """``search-weights``: each trial pre-trains ``steps`` steps with the trial's weights; the objective is the
    Macro-F1 of logistic regression fitted on half of ``budget``'s training nodes (per class) and scored on the
    other half, so the search reads the labelled budget only, never the validation or test nodes."""

    budget: int = 20
    steps: int = 50
    seed: int = 0
    weights: SearchConfig = field(
        default_factory=lambda: SearchConfig(n_trials=8, n_startup_trials=3, space="box", low=0.0, high=1.0)
    )


@dataclass
class PHEConfig:
    data: str = "acm"  # acm | dblp | aminer | imdb | a folder with graph.yaml
    model: EncoderConfig = field(default_factory=EncoderConfig)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    link: LinkSection = field(default_factory=LinkSection)
    # pre-train without link.fraction of link.relation's edges, so link prediction scores unseen edges
    holdout_links: bool = False
    search: SearchSection = field(default_factory=lambda: SearchSection())
    bench: BenchSection = field(default_factory=BenchSection)
    out: str = "runs/phe"

    def validate(self) -> None:
        unknown = set(self.pretrain.weights) - set(TASK_NAMES)
        if unknown:
            raise ConfigError(
                f"config key 'pretrain.weights' names unknown tasks {sorted(unknown)}; "
                f"allowed: {', '.join(TASK_NAMES)}"
            )


def make_mix(tasks: list[PretrainTask], weights: dict[str, float]) -> TaskMix:
    """The core task mix; both PHE tasks own their step (several encoder forwards each)."""
    return TaskMix(tasks, weights)


def build_model(graph: Graph, cfg: PHEConfig) -> MixModel:
    if graph.target is None:
        raise DataError(f"graph '{graph.name}' names no target node type; set 'target' in its graph.yaml")
    enc = HeteroEncoder.for_graph(graph.data, cfg.model)
    rels = masked_relations(graph.data.metadata(), graph.target)
    if not rels:
        raise DataError(f"graph '{graph.name}' has no relation into its target type '{graph.target}'")
    tasks = [
        SemanticTask(rels, cfg.model.hidden, graph.target, cfg.pretrain.semantic),
        StructureTask(rels, cfg.model.hidden, graph.target, cfg.pretrain.structure),
    ]
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
    if cfg.holdout_links:
        graph = holdout_edges(graph, cfg.link)[0]
    out = Path(cfg.out)
    model, trainer, result = _train(graph, cfg, out / "pretrain", resume)
    ckpt.save_weights(
        out / "encoder.safetensors",
        model.backbone.state_dict(),
        metadata={"graph": graph.name, "steps": str(trainer.step)},
    )
    return result


def _train(graph: Graph, cfg: PHEConfig, run_dir: Path | None, resume: str | None = None):
    torch.manual_seed(cfg.pretrain.train.seed)  # the initial weights
    model = build_model(graph, cfg)
    trainer = Trainer(model, make_batches(graph, cfg), cfg.pretrain.train, run_dir=run_dir, unit="seeds")
    return model, trainer, trainer.fit(resume=resume)


def load_encoder(graph: Graph, model_cfg: EncoderConfig, path: str | Path) -> HeteroEncoder:
    enc = HeteroEncoder.for_graph(graph.data, model_cfg)
    state = ckpt.load_weights(path)
    missing, unexpected = enc.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit this encoder and graph (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); evaluate with the config it was trained with"
        )
    return enc


@torch.no_grad()
def embed(enc: HeteroEncoder, graph: Graph, layer: str = "last") -> np.ndarray:
    """Frozen target-node embeddings from one full-graph forward in eval mode (``layer``: see
    ``EvaluateSection.layer``)."""
    if layer not in LAYERS:
        raise ConfigError(f"config key 'evaluate.layer' must be last, concat or input, got {layer!r}")
    return embed_all(enc, graph)[layer]


@torch.no_grad()
def embed_all(enc: HeteroEncoder, graph: Graph) -> dict[str, np.ndarray]:
    """Every probe reading (``LAYERS``) from one full-graph forward in eval mode."""
    import torch.nn.functional as F

    enc.eval()
    outs = [h[graph.target] for h in enc(graph.data, all_layers=True)]
    return {
        "input": outs[0].numpy(),
        "last": outs[-1].numpy(),
        "concat": torch.cat([F.normalize(o, dim=-1) for o in outs], 1).numpy(),
    }


def probe(enc: HeteroEncoder, graph: Graph, cfg: PHEConfig, budgets=None) -> dict[str, dict[str, Any]]:
    """``logreg_scores`` per budget for the configured ``evaluate.layer``; with ``auto`` every reading is
    scored and the one with the best validation Macro-F1 is kept (its name under ``layer``)."""
    e = cfg.evaluate
    budgets = list(budgets if budgets is not None else e.budgets)
    layers = LAYERS if e.layer == "auto" else (e.layer,)
    every = embed_all(enc, graph)
    zs = {layer: every[layer] for layer in layers}
    out = {}
    for b in budgets:
        cands = {
            layer: {**logreg_scores(z, graph, b, e.c_grid, e.max_iter), "layer": layer}
            for layer, z in zs.items()
        }
        out[str(b)] = max(cands.values(), key=lambda s: s["val_macro_f1"])
    return out


def probe_report(enc: HeteroEncoder, graph: Graph, cfg: PHEConfig, budget: int = 20) -> dict[str, Any]:
    """Diagnosis: validation and test Macro-F1 of the probe at ``budget`` for every ``layer`` reading."""
    out = {}
    every = embed_all(enc, graph)
    for layer in LAYERS:
        s = logreg_scores(every[layer], graph, budget, cfg.evaluate.c_grid, cfg.evaluate.max_iter)
        out[layer] = {"val": round(s["val_macro_f1"], 2), "test": round(s["macro_f1"], 2), "C": s["C"]}
    return out


def raw_features(graph: Graph) -> np.ndarray:
    """The floor: the target type's own features, row-normalised (as HeCo's preprocessing)."""
    if "x" not in graph.data[graph.target]:
        raise DataError(
            f"graph '{graph.name}' has no features on '{graph.target}', so it has no raw-feature floor"
        )
    x = graph.data[graph.target].x
    x = x.to_dense() if x.is_sparse else x
    return (x / x.sum(1, keepdim=True).clamp_min(1e-12)).numpy()


def logreg_scores(
    z: np.ndarray, graph: Graph, budget: int, c_grid: list[float], max_iter: int
) -> dict[str, float]:
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
    val_f1, c, clf = best
    pred, proba = clf.predict(zs[te]), clf.predict_proba(zs[te])
    auc = (
        roc_auc_score(y[te], proba[:, 1])
        if proba.shape[1] == 2
        else roc_auc_score(y[te], proba, multi_class="ovr", labels=clf.classes_)
    )
    return {
        "macro_f1": 100 * f1_score(y[te], pred, average="macro"),
        "micro_f1": 100 * f1_score(y[te], pred, average="micro"),
        "auc": 100 * auc,
        "C": c,
        "val_macro_f1": 100 * val_f1,
    }


def evaluate(
    cfg: PHEConfig, encoder: str | Path | None = None, raw: bool = False, graph: Graph | None = None
) -> dict[str, Any]:
    """Scores per budget for the encoder at ``encoder`` (default ``<out>/encoder.safetensors``; ``"none"``: a
    randomly initialised one) or, with ``raw``, for the raw-feature floor; written to ``<out>/evaluate.json``."""
    graph = graph or load_graph(cfg.data)
    for b in cfg.evaluate.budgets:
        check_budget(graph, b)
    if raw:
        z, source = raw_features(graph), "raw features"
    else:
        from pretrainkit.systems.phe.downstream import encoder_or_scratch

        path = _encoder_path(cfg, encoder)
        torch.manual_seed(cfg.pretrain.train.seed)  # a random encoder (--encoder none) is the same every time
        enc = encoder_or_scratch(graph, cfg.model, path)
        source = str(path) if path else "random encoder (no pre-training)"
    if raw:
        scores = {
            str(b): logreg_scores(z, graph, b, cfg.evaluate.c_grid, cfg.evaluate.max_iter)
            for b in cfg.evaluate.budgets
        }
    else:
        scores = probe(enc, graph, cfg)
    result = {"graph": graph.name, "embeddings": source, "scores": scores}
    _write(cfg, "evaluate.json", result)
    return result


def _write(cfg: PHEConfig, name: str, result: dict) -> None:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(result, indent=2))


def _encoder_path(cfg: PHEConfig, encoder: str | Path | None) -> Path | None:
    """``None`` -> the run's encoder (which must exist); ``"none"`` -> no encoder (train from scratch)."""
    if encoder is not None and str(encoder) == "none":
        return None
    path = Path(encoder) if encoder else Path(cfg.out) / "encoder.safetensors"
    if not path.is_file():
        raise CheckpointError(
            f"no pre-trained encoder at {path}; run 'pretrainkit phe pretrain' first "
            f"(or pass --encoder FILE, or --encoder none to train from scratch)"
        )
    return path


def finetune(
    cfg: PHEConfig,
    budget: int,
    mode: str = "full",
    seed: int = 0,
    encoder: str | Path | None = None,
    graph: Graph | None = None,
) -> dict[str, Any]:
    """Few-label fine-tuning (full or LoRA) of the encoder (or, with ``encoder="none"``, from scratch);
    written to ``<out>/finetune.json``."""
    from pretrainkit.systems.phe import downstream

    graph = graph or load_graph(cfg.data)
    check_budget(graph, budget)
    path = _encoder_path(cfg, encoder)
    enc = downstream.encoder_or_scratch(graph, cfg.model, path)
    r = downstream.finetune(graph, enc, budget, cfg.finetune, mode=mode, seed=seed)
    result = {
        "graph": graph.name,
        "encoder": str(path) if path else "none (from scratch)",
        "budget": budget,
        "seed": seed,
        **r,
    }
    _write(cfg, "finetune.json", result)
    return result


def link_prediction(
    cfg: PHEConfig, encoder: str | Path | None = None, graph: Graph | None = None
) -> dict[str, Any]:
    """MRR/AUC on ``link.fraction`` held-out edges of ``link.relation``; written to ``<out>/links.json``. The
    encoder should have been pre-trained with ``holdout_links: true`` (else it has seen the test edges)."""
    from pretrainkit.systems.phe import downstream

    graph = graph or load_graph(cfg.data)
    without, test, et = holdout_edges(graph, cfg.link)
    path = _encoder_path(cfg, encoder)
    enc = downstream.encoder_or_scratch(without, cfg.model, path)
    if path is None:
        torch.manual_seed(cfg.link.seed)
    r = downstream.link_prediction(enc, without, test, et, cfg.link.negatives, cfg.link.seed)
    result = {
        "graph": graph.name,
        "relation": "__".join(et),
        "encoder": str(path) if path else "none (random)",
        "pretrained_without_test_edges": bool(cfg.holdout_links) if path else None,
        **r,
    }
    _write(cfg, "links.json", result)
    return result


def budget_halves(graph: Graph, budget: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The budget's training nodes split per class into a fitting half and a scoring half."""
    check_budget(graph, budget)
    train = graph.splits[budget][0].numpy()
    y = graph.labels.numpy()[train]
    rng = np.random.default_rng(seed)
    fit, score = [], []
    for c in np.unique(y):
        idx = rng.permutation(train[y == c])
        if len(idx) < 2:
            raise DataError(f"the weight search needs at least 2 labelled nodes of class {c} in the budget")
        half = len(idx) // 2
        fit.append(idx[:half])
        score.append(idx[half:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(score))


def search_weights(cfg: PHEConfig, graph: Graph | None = None, progress: bool = True) -> dict[str, Any]:
    """The core's Bayesian (GP) search over the two task weights against the in-budget objective of
    ``SearchSection``; the study (SQLite) and ``search.json`` live in ``<out>/search`` and a killed search
    resumes. Returns the best weights and value."""
    import copy

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    from pretrainkit.search.task_weights import search_task_weights

    graph = graph or load_graph(cfg.data)
    s = cfg.search
    fit, score = budget_halves(graph, s.budget, s.seed)
    y = graph.labels.numpy()

    def objective(weights: dict[str, float]) -> float:
        c = copy.deepcopy(cfg)
        c.pretrain.weights = dict(weights)
        c.pretrain.train.max_steps = s.steps
        c.pretrain.train.progress = False
        model, _, _ = _train(graph, c, None)
        z = embed(model.backbone, graph, "last" if cfg.evaluate.layer == "auto" else cfg.evaluate.layer)
        scaler = StandardScaler().fit(z[fit])
        clf = LogisticRegression(max_iter=cfg.evaluate.max_iter).fit(scaler.transform(z[fit]), y[fit])
        return float(f1_score(y[score], clf.predict(scaler.transform(z[score])), average="macro"))

    run_dir = Path(cfg.out) / "search"
    run_dir.mkdir(parents=True, exist_ok=True)
    r = search_task_weights(objective, list(TASK_NAMES), s.weights, run_dir=run_dir, progress=progress)
    return {
        "best_weights": r.best_weights,
        "best_value": r.best_value,
        "n_trials": r.n_trials,
        "objective": f"in-budget Macro-F1 ({s.budget} labels/class, half fit / half scored)",
    }
