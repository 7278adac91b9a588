"""Bi-VLDoc end to end on the core Trainer: pre-train, fine-tune FUNSD entity labelling, evaluate (seqeval F1).

A pre-training run directory holds ``tokenizer.json``, ``model.json`` (the resolved ``ModelConfig``),
checkpoints (resumable with ``--resume auto``) and ``backbone.safetensors``; fine-tuning reads those three.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pretrainkit.core import checkpoint as ckpt
from pretrainkit.core import distributed as dist_
from pretrainkit.core.config import save_config, to_dict
from pretrainkit.core.losses import TokenCrossEntropy
from pretrainkit.core.rundir import RunDir
from pretrainkit.core.task import MixModel, TaskMix
from pretrainkit.core.trainer import Trainer
from pretrainkit.errors import CheckpointError, ConfigError, DataError
from pretrainkit.paths import shared_data_root
from pretrainkit.systems.bivldoc.config import BiVLDocConfig
from pretrainkit.systems.bivldoc.data import (
    BIO_TAGS,
    SROIE_FIELDS,
    SROIE_TAGS,
    Page,
    load_funsd,
    load_sroie_labelled,
    pretrain_pages,
)
from pretrainkit.systems.bivldoc.encoding import encode_pages, load_tokenizer, save_tokenizer, train_tokenizer
from pretrainkit.systems.bivldoc.model import BiVLDocModel, DocBatch, ModelConfig, collate, n_params
from pretrainkit.systems.bivldoc.stream import PageStream
from pretrainkit.systems.bivldoc.tasks import build_tasks

TOKENIZER, MODEL_JSON, BACKBONE = "tokenizer.json", "model.json", "backbone.safetensors"


def data_root(cfg: BiVLDocConfig) -> Path:
    return Path(cfg.data.root) if cfg.data.root else shared_data_root()


def _dist(cfg: BiVLDocConfig) -> dist_.DistInfo:
    return dist_.init_distributed(cfg.device)


def _write_model_config(path: Path, mcfg: ModelConfig) -> None:
    path.write_text(json.dumps(to_dict(mcfg), indent=1))


def read_model_config(run: Path) -> ModelConfig:
    p = Path(run) / MODEL_JSON
    if not p.is_file():
        raise CheckpointError(f"{run} is not a Bi-VLDoc run directory (no {MODEL_JSON})")
    d = json.loads(p.read_text())
    d["cnn_channels"] = tuple(d["cnn_channels"])
    return ModelConfig(**d)


def build_pretrain_model(cfg: BiVLDocConfig, mcfg: ModelConfig) -> MixModel:
    p = cfg.pretrain
    tasks = build_tasks(mcfg.d_model, mcfg.vocab_size, p.tipa_mode, p.tipa_grid, p.temperature)
    return MixModel(BiVLDocModel(mcfg), TaskMix(tasks, weights=p.task_weights()))


# ---- pre-training ------------------------------------------------------------------------------------------
def corpus(cfg: BiVLDocConfig, out: Path) -> list[Page]:
    root = data_root(cfg)
    extra: list[Page] = []
    if cfg.data.own_pages:
        from pretrainkit.systems.bivldoc.ocr import ocr_folder

        extra = ocr_folder(cfg.data.own_pages, cache_dir=out / "ocr_cache")
    return pretrain_pages(
        root,
        synthetic=cfg.data.synthetic_pages,
        seed=cfg.pretrain.train.seed,
        funsd_limit=cfg.data.funsd_limit,
        sroie_limit=cfg.data.sroie_limit,
        extra=extra,
        noise=cfg.data.synthetic_noise,
    )


def encode_corpus(pages: list[Page], tok, mcfg: ModelConfig, overflow: str):
    """(encoded pages, each one's source for ITM's same-source negatives, the truncation note): ``windows``
    splits a long page into windows of whole words (all its text is seen; they share the page's image and
    id, so no window is another's ITM negative), ``truncate`` keeps each page's first words."""
    if overflow != "windows":
        enc, note = encode_pages(pages, tok, mcfg, "pre-training", overflow)
        return enc, [p.source for p in pages], note
    enc, groups = [], []
    for p in pages:
        w, _ = encode_pages([p], tok, mcfg, "pre-training", "windows")
        enc += w
        groups += [p.source] * len(w)
    return enc, groups, None


def pretrain(cfg: BiVLDocConfig, resume: str | None = None) -> dict[str, Any]:
    """Pre-train the backbone on FUNSD-train + receipts + rendered (+ your OCR'd) pages with the task mix."""
    info = _dist(cfg)
    run = RunDir(cfg.out)
    pages = corpus(cfg, run.path)
    tok_path = run.path / TOKENIZER
    if resume and tok_path.is_file():  # a resumed run keeps its vocabulary
        tok = load_tokenizer(tok_path)
    else:
        tok = train_tokenizer(pages, cfg.pretrain.vocab_size)
    mcfg = cfg.model_config(vocab_size=tok.get_vocab_size())
    enc, groups, note = encode_corpus(pages, tok, mcfg, cfg.data.overflow)
    torch.manual_seed(cfg.pretrain.train.seed)  # the initial weights are a function of the seed
    model = build_pretrain_model(cfg, mcfg)
    stream = PageStream(
        enc,
        cfg.pretrain.batch_size,
        seed=cfg.pretrain.train.seed,
        layout=mcfg.layout,
        view=cfg.pretrain.view,
        vocab_size=mcfg.vocab_size,
        rank=info.rank,
        world=info.world,
        groups=groups,
    )
    trainer = Trainer(model, stream, cfg.pretrain.train, run_dir=run, dist_info=info, unit="pages")
    if info.is_main:  # before training, so a run killed mid-way resumes with the same vocabulary
        save_config(cfg, run.path / "config.yaml")
        save_tokenizer(tok, tok_path)
        _write_model_config(run.path / MODEL_JSON, mcfg)
    result = trainer.fit(resume)  # a fresh start clears the run's old checkpoints and metrics first
    if info.is_main:
        ckpt.save_weights(run.path / BACKBONE, trainer.raw_model.backbone.state_dict())
        result = {
            **result,
            "pages": len(pages),
            "params": n_params(model.backbone),
            "truncation": note,
            "sources": {s: sum(p.source == s for p in pages) for s in sorted({p.source for p in pages})},
        }
        run.write_results(result)
    return result


# ---- fine-tuning: FUNSD entity labelling -------------------------------------------------------------------
class EntityTagger(nn.Module):
    """Word-level BIO tagging on the fused text features; ``forward(batch) -> (loss, metrics)``."""

    def __init__(self, backbone: BiVLDocModel, tags: tuple[str, ...] = BIO_TAGS, dropout: float = 0.1):
        super().__init__()
        self.backbone, self.tags = backbone, tuple(tags)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.cfg.d_model, len(self.tags)))
        self.ce = TokenCrossEntropy(ignore_index=-100)

    def logits(self, batch: DocBatch) -> torch.Tensor:
        return self.head(self.backbone(batch).text)

    def forward(self, batch: DocBatch):
        return self.ce(self.logits(batch), batch.labels), {}


@torch.no_grad()
def predict_tags(
    model: EntityTagger, pages: list[Page], enc, batch_size: int = 8, device: torch.device | str = "cpu"
) -> list[list[str]]:
    """One BIO tag per word of every page (windows of long pages put back together; a word no window kept
    is predicted O)."""
    model.eval()
    by_id = {p.page_id: ["O"] * len(p.words) for p in pages}
    for i in range(0, len(enc), batch_size):
        chunk = enc[i : i + batch_size]
        b = collate(chunk, layout=model.backbone.cfg.layout).to(device)
        pred = model.logits(b).argmax(-1).cpu()
        for j, e in enumerate(chunk):
            wi = b.word_index[j].cpu()
            for t in (wi >= 0).nonzero().flatten().tolist():
                by_id[e.page_id][int(wi[t])] = model.tags[int(pred[j, t])]
    return [by_id[p.page_id] for p in pages]


def entity_scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Entity-level precision/recall/F1 (seqeval, the field's standard, default conlleval-style mode)."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    per = classification_report(gold, pred, output_dict=True, zero_division=0)
    out = {
        "f1": f1_score(gold, pred, zero_division=0),
        "precision": precision_score(gold, pred, zero_division=0),
        "recall": recall_score(gold, pred, zero_division=0),
    }
    out.update({f"f1/{k}": v["f1-score"] for k, v in per.items() if k in ("HEADER", "QUESTION", "ANSWER")})
    return out


def _init_backbone(cfg: BiVLDocConfig, train_pages: list[Page]) -> tuple[BiVLDocModel, Any, str]:
    init = cfg.finetune.init
    if init:
        run = Path(init)
        tok = load_tokenizer(run / TOKENIZER)
        mcfg = read_model_config(run)
        backbone = BiVLDocModel(mcfg)
        if not (run / BACKBONE).is_file():
            raise CheckpointError(f"{run} has no {BACKBONE}: its pre-training did not finish")
        state = ckpt.load_weights(run / BACKBONE)
        missing, unexpected = backbone.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{run / BACKBONE} does not fit the model (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]})"
            )
        return backbone, tok, f"pretrained:{run}"
    tok = train_tokenizer(
        train_pages, cfg.pretrain.vocab_size
    )  # from scratch: vocabulary of FUNSD train only
    return BiVLDocModel(cfg.model_config(vocab_size=tok.get_vocab_size())), tok, "scratch"


def finetune(
    cfg: BiVLDocConfig,
    resume: str | None = None,
    train_pages: list[Page] | None = None,
    eval_pages: list[Page] | None = None,
) -> dict[str, Any]:
    """Fine-tune entity labelling on the first ``finetune.train_forms`` FUNSD training forms (all by default),
    then score the 50 test forms (``results["test"]``) and draw one of them; writes results.json and the tagger
    (for ``evaluate``). ``finetune.task=sroie``: key-field tags on the training receipts, exact match per field
    on the 20 test receipts. ``train_pages``/``eval_pages``: other labelled pages instead (the weight search's
    in-budget split: then ``results["val"]`` and no picture)."""
    info = _dist(cfg)
    root = data_root(cfg)
    sroie = cfg.finetune.task == "sroie"
    if sroie and train_pages is None:
        train_pages = load_sroie_labelled(root, "train", cfg.finetune.train_forms)
        eval_pages = load_sroie_labelled(root, "test")
    if train_pages is None:
        train_pages = load_funsd(root, "train", cfg.finetune.train_forms)
        if cfg.finetune.train_forms is not None and len(train_pages) < cfg.finetune.train_forms:
            raise ConfigError(
                f"finetune.train_forms={cfg.finetune.train_forms} but FUNSD has {len(train_pages)}"
            )
    torch.manual_seed(cfg.finetune.train.seed)
    backbone, tok, origin = _init_backbone(cfg, train_pages)
    run = RunDir(cfg.out)
    enc, _ = encode_pages(train_pages, tok, backbone.cfg, "FUNSD train", overflow="windows")
    # the head's init does not depend on how the backbone was made
    torch.manual_seed(cfg.finetune.train.seed + 1)
    model = EntityTagger(backbone, tags=train_pages[0].tag_set)
    stream = PageStream(
        enc,
        cfg.finetune.batch_size,
        seed=cfg.finetune.train.seed,
        layout=backbone.cfg.layout,
        rank=info.rank,
        world=info.world,
    )
    trainer = Trainer(model, stream, cfg.finetune.train, run_dir=run, dist_info=info, unit="windows")
    if info.is_main:
        save_config(cfg, run.path / "config.yaml")
    fit = trainer.fit(resume)
    if not info.is_main:
        return fit
    save_tokenizer(tok, run.path / TOKENIZER)
    _write_model_config(run.path / MODEL_JSON, backbone.cfg)
    ckpt.save_weights(run.path / "tagger.safetensors", trainer.raw_model.state_dict())
    on_test = eval_pages is None or sroie
    pages = load_funsd(root, "test") if eval_pages is None else eval_pages
    if sroie:
        scores = sroie_scores(model, tok, pages, device=info.device)
    else:
        picture = run.path / "plots" / "entities.png" if on_test else None
        scores = evaluate_tagger(model, tok, pages, device=info.device, picture=picture)
    result = {
        "task": cfg.finetune.task,
        "init": origin,
        "train_forms": len(train_pages),
        "fit": fit,
        "test" if on_test else "val": scores,
        "layout": backbone.cfg.layout,
    }
    run.write_results(result)
    return result


def evaluate_tagger(
    model: EntityTagger,
    tok,
    pages: list[Page],
    device="cpu",
    picture: Path | None = None,
    picture_page: int = 0,
    enc=None,
) -> dict[str, Any]:
    """Entity F1 on labelled ``pages`` (the FUNSD test forms); ``picture``: also draw page ``picture_page``
    (gold beside predicted entities) to that PNG. ``enc``: the pages' windows, already encoded."""
    if enc is None:
        enc, _ = encode_pages(pages, tok, model.backbone.cfg, "evaluation", overflow="windows")
    pred = predict_tags(model.to(device), pages, enc, device=device)
    scores: dict[str, Any] = {**entity_scores([p.labels for p in pages], pred), "pages": len(pages)}
    if picture is not None:
        from pretrainkit.systems.bivldoc.report import entity_picture

        if not 0 <= picture_page < len(pages):
            raise ConfigError(f"picture page {picture_page} is not one of the {len(pages)} evaluated pages")
        scores["picture"] = str(entity_picture(pages[picture_page], pred[picture_page], picture))
    return scores


def sroie_scores(model: EntityTagger, tok, pages: list[Page], device="cpu", enc=None) -> dict[str, Any]:
    """Key-field extraction on receipts: a field's prediction is its tagged words in reading order; exact match
    with the gold string (case and spaces ignored), per field and averaged."""
    if enc is None:
        enc, _ = encode_pages(pages, tok, model.backbone.cfg, "evaluation", overflow="windows")
    pred = predict_tags(model.to(device), pages, enc, device=device)
    squash = lambda t: "".join(t.upper().split())  # noqa: E731
    out: dict[str, Any] = {}
    for key in SROIE_FIELDS:
        hits = [
            squash(" ".join(w for w, t in zip(p.words, tags) if t.endswith(f"-{key.upper()}")))
            == squash(p.fields.get(key, ""))
            for p, tags in zip(pages, pred)
        ]
        out[f"exact/{key}"] = sum(hits) / len(hits)
    out["exact"] = sum(out[f"exact/{k}"] for k in SROIE_FIELDS) / len(SROIE_FIELDS)
    out["pages"] = len(pages)
    return out


def load_tagger(run: str | Path) -> tuple[EntityTagger, Any]:
    run = Path(run)
    path = run / "tagger.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{run} has no fine-tuned tagger (tagger.safetensors); run `finetune` first")
    state = ckpt.load_weights(path)
    n = state["head.1.weight"].shape[0] if "head.1.weight" in state else len(BIO_TAGS)
    model = EntityTagger(
        BiVLDocModel(read_model_config(run)), tags=SROIE_TAGS if n == len(SROIE_TAGS) else BIO_TAGS
    )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model, load_tokenizer(run / TOKENIZER)


def evaluate(cfg: BiVLDocConfig, run: str | Path, picture_page: int = 0) -> dict[str, Any]:
    """Score a fine-tuned run's tagger on FUNSD test (entity F1, seqeval) and draw one test page's entities
    (``<run>/plots/entities.png``)."""
    model, tok = load_tagger(run)
    if model.tags == SROIE_TAGS:
        return sroie_scores(model, tok, load_sroie_labelled(data_root(cfg), "test"))
    scores = evaluate_tagger(
        model,
        tok,
        load_funsd(data_root(cfg), "test"),
        picture=Path(run) / "plots" / "entities.png",
        picture_page=picture_page,
    )
    if not scores["pages"]:
        raise DataError("no FUNSD test pages found")
    return scores


# ---- task-weight search ------------------------------------------------------------------------------------
def search_weights(cfg: BiVLDocConfig) -> dict[str, Any]:
    """The core's Bayesian (GP) search over the four task weights. Each trial pre-trains with its weights
    (``pretrain.train`` as configured), fine-tunes on the FUNSD training forms but the last
    ``finetune.val_forms`` and scores entity F1 on those: an in-budget objective (the test forms are never
    read). Trials live under ``<out>/trials``, the study under ``<out>/search`` (resumable)."""
    import dataclasses
    import hashlib

    from pretrainkit.search.task_weights import search_task_weights
    from pretrainkit.systems.bivldoc.config import SHORT_NAMES

    labelled = load_funsd(data_root(cfg), "train", cfg.finetune.train_forms)
    n_val = cfg.finetune.val_forms
    if not 0 < n_val < len(labelled):
        raise ConfigError(
            f"finetune.val_forms={n_val} must leave training forms: 0 < val_forms < {len(labelled)}"
        )
    fit_pages, val_pages = labelled[:-n_val], labelled[-n_val:]
    out = Path(cfg.out)

    def objective(weights: dict[str, float]) -> float:
        tag = hashlib.sha1(json.dumps(weights, sort_keys=True).encode()).hexdigest()[:10]
        pre = dataclasses.replace(
            cfg,
            out=str(out / "trials" / f"pre-{tag}"),
            pretrain=dataclasses.replace(cfg.pretrain, weights=dict(weights)),
        )
        pretrain(pre)
        ft = dataclasses.replace(
            cfg,
            out=str(out / "trials" / f"ft-{tag}"),
            finetune=dataclasses.replace(cfg.finetune, init=pre.out),
        )
        return float(finetune(ft, train_pages=fit_pages, eval_pages=val_pages)["val"]["f1"])

    res = search_task_weights(objective, list(SHORT_NAMES), cfg.search, run_dir=out / "search")
    result = {
        "best_weights": res.best_weights,
        "best_val_f1": res.best_value,
        "val_forms": n_val,
        "trials": cfg.search.n_trials,
    }
    RunDir(out).write_results(result)
    return result
