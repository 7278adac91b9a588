"""`pretrainkit bivldoc bench` (= `pretrainkit bench bivldoc`): every method x seed in one harness.

One corpus, one vocabulary and one encoding for every method (built here once, from the pre-training pages:
never FUNSD's test pages), so methods differ only in what the issue compares:

- ``bivldoc``: the co-attention model pre-trained with MVLM + TIPA + LGV + ITM (same-source negatives);
- ``mvlm-only``: the same model pre-trained with MVLM alone (LayoutLM-style);
- ``no-hybrid``: the same tasks, ``attention=concat`` (no cross-modal attention; late fusion by concatenation);
- ``text-only``: no image tower, pre-trained with the tasks that need no image (MVLM + TIPA);
- ``layoutlmv3``: HF LayoutLMv3's architecture at our size (random init), pre-trained with MLM + WPA (its own
  objectives, MIM left out: it needs a discrete image tokenizer);
- ``scratch``: the co-attention model fine-tuned from random weights.

Jobs run in ``bench.workers`` spawned processes (one torch thread each): a seed's pre-training, then its
fine-tunings (FUNSD entity labelling on all training forms, SROIE key fields, the few-label curve) as soon as
its backbone is ready. ``render`` draws the report from the stored JSON alone.
"""

from __future__ import annotations

import dataclasses
import pickle
import resource
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path
from typing import Any

import torch

from pretrainkit.core import checkpoint as ckpt
from pretrainkit.core.parallel import executor
from pretrainkit.core.results import RESULTS_DIR, fmt_mean_std, md_table, mean_std, publish
from pretrainkit.core.results import rerender as rerender_results
from pretrainkit.core.rundir import RunDir
from pretrainkit.core.task import MixModel, TaskMix
from pretrainkit.core.trainer import Trainer
from pretrainkit.errors import DataError
from pretrainkit.systems.bivldoc.config import BiVLDocConfig
from pretrainkit.systems.bivldoc.data import load_funsd, load_sroie_labelled
from pretrainkit.systems.bivldoc.encoding import encode_pages, train_tokenizer
from pretrainkit.systems.bivldoc.model import BiVLDocModel, n_params
from pretrainkit.systems.bivldoc.pipeline import (
    EntityTagger,
    corpus,
    data_root,
    encode_corpus,
    entity_scores,
    predict_tags,
    sroie_scores,
)
from pretrainkit.systems.bivldoc.stream import PageStream
from pretrainkit.systems.bivldoc.tasks import build_tasks

KIND, TITLE = "bivldoc.bench", "Bi-VLDoc"
PAPER_FUNSD_F1 = 93.44  # the paper's abstract (large model, millions of pages): the outside reference

ALL_TASKS = ("mvlm", "tipa", "lgv", "itm", "wpa")
# per method: model overrides, pre-training task weights (None: no pre-training), backbone kind
METHODS: dict[str, dict[str, Any]] = {
    "bivldoc": {"model": {}, "tasks": ("mvlm", "tipa", "lgv", "itm"), "arch": "bivldoc"},
    "mvlm-only": {"model": {}, "tasks": ("mvlm",), "arch": "bivldoc"},
    "no-hybrid": {
        "model": {"attention": "concat"},
        "tasks": ("mvlm", "tipa", "lgv", "itm"),
        "arch": "bivldoc",
    },
    "text-only": {"model": {"vision": False}, "tasks": ("mvlm", "tipa"), "arch": "bivldoc"},
    "layoutlmv3": {"model": {}, "tasks": ("mvlm", "wpa"), "arch": "layoutlmv3"},
    "scratch": {"model": {}, "tasks": None, "arch": "bivldoc"},
}


def log(msg: str) -> None:
    print(f"[bivldoc bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- shared data, built once by the parent and read by every worker ---------------------------------------
def prepare(cfg: BiVLDocConfig, work: Path) -> dict[str, Any]:
    """Corpus, vocabulary and every encoding, saved to ``work/data.pt`` for the workers."""
    root = data_root(cfg)
    pages = corpus(cfg, work)
    tok = train_tokenizer(pages, cfg.pretrain.vocab_size)
    mcfg = cfg.model_config(vocab_size=tok.get_vocab_size())
    pre, groups, note = encode_corpus(pages, tok, mcfg, cfg.data.overflow)
    tl, el = cfg.bench.train_limit, cfg.bench.eval_limit
    funsd_train = load_funsd(root, "train", tl)
    funsd_test = load_funsd(root, "test", el)
    sroie_train = load_sroie_labelled(root, "train", tl)
    sroie_test = load_sroie_labelled(root, "test", el)

    def windows(ps):
        return [encode_pages([p], tok, mcfg, "fine-tuning", overflow="windows")[0] for p in ps]

    data = {
        "tok": tok.to_str(),
        "vocab_size": tok.get_vocab_size(),
        "pretrain": pre,
        "groups": groups,
        "funsd_train": windows(funsd_train),  # per page: its windows (the few-label curve takes the first n)
        "funsd_train_pages": _strip(funsd_train),  # for a validation split cut from the training forms
        "funsd_test": (_strip(funsd_test), [e for w in windows(funsd_test) for e in w]),
        "sroie_train": windows(sroie_train),
        "sroie_test": (_strip(sroie_test), [e for w in windows(sroie_test) for e in w]),
    }
    torch.save(data, work / "data.pt")
    sources = {s: sum(p.source == s for p in pages) for s in sorted({p.source for p in pages})}
    return {
        "pretrain_pages": len(pages),
        "pretrain_windows": len(pre),
        "sources": sources,
        "vocab_size": tok.get_vocab_size(),
        "truncation": note,
        "funsd_train_forms": len(funsd_train),
        "funsd_test_forms": len(funsd_test),
        "sroie_train": len(sroie_train),
        "sroie_test": len(sroie_test),
    }


def _strip(pages):
    """Pages without their decoded images (the encodings carry them): small to pickle."""
    return [dataclasses.replace(p, _image=None) for p in pages]


_DATA: dict[str, Any] = {}


def _data(work: Path) -> dict[str, Any]:
    key = str(work)
    if key not in _DATA:
        _DATA.clear()
        # weights_only: the unpickler builds only tensors, containers and the allowlisted types below, so a
        # tampered work folder cannot run code (never unpickle with weights_only=False)
        try:
            with torch.serialization.safe_globals(_safe_types()):
                _DATA[key] = torch.load(work / "data.pt", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
            raise DataError(
                f"{work / 'data.pt'} is not a bench data file this version can read safely "
                f"({type(e).__name__}); delete {work} and run the bench again"
            ) from None
    return _DATA[key]


def _safe_types() -> list:
    """The classes data.pt holds besides tensors: pages, their encodings, numpy arrays and paths."""
    import pathlib

    import numpy as np

    from pretrainkit.systems.bivldoc.data import Page
    from pretrainkit.systems.bivldoc.model import EncodedPage

    numpy_core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return [
        Page,
        EncodedPage,
        numpy_core.multiarray._reconstruct,
        np.ndarray,
        np.dtype,
        *dtypes,
        pathlib.PosixPath,
        pathlib.WindowsPath,
    ]


def _tok(data):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(data["tok"])


def _backbone(cfg: BiVLDocConfig, method: str, vocab_size: int):
    spec = METHODS[method]
    mcfg = cfg.model_config(vocab_size=vocab_size, **spec["model"])
    if spec["arch"] == "layoutlmv3":
        from pretrainkit.systems.bivldoc.lmv3 import LayoutLMv3Backbone

        return LayoutLMv3Backbone(mcfg)
    return BiVLDocModel(mcfg)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---- jobs (module level: they run in spawned workers) -----------------------------------------------------
def pretrain_job(cfg: BiVLDocConfig, method: str, seed: int, work: str) -> dict[str, Any]:
    torch.set_num_threads(1)
    work_p = Path(work)
    data = _data(work_p)
    spec = METHODS[method]
    torch.manual_seed(seed)
    backbone = _backbone(cfg, method, data["vocab_size"])
    p = cfg.pretrain
    wpa = "wpa" in spec["tasks"]
    tasks = build_tasks(
        backbone.cfg.d_model, data["vocab_size"], p.tipa_mode, p.tipa_grid, p.temperature, wpa=wpa
    )
    weights = {f"bivldoc.{t}": float(t in spec["tasks"]) for t in ALL_TASKS if wpa or t != "wpa"}
    model = MixModel(backbone, TaskMix(tasks, weights))
    view = p.view
    if wpa:
        view = dataclasses.replace(view, wpa_prob=cfg.bench.lmv3_wpa_prob)
    stream = PageStream(
        data["pretrain"],
        p.batch_size,
        seed=seed,
        layout=backbone.cfg.layout,
        view=view,
        vocab_size=data["vocab_size"],
        groups=data["groups"],
    )
    run = RunDir(work_p / f"pre-{method}-{seed}")
    tcfg = dataclasses.replace(p.train, seed=seed, progress=False)
    t0 = time.perf_counter()
    Trainer(model, stream, tcfg, run_dir=run, unit="pages").fit()
    wall = time.perf_counter() - t0
    path = work_p / f"pre-{method}-{seed}.safetensors"
    ckpt.save_weights(path, backbone.state_dict())
    logs = run.read_metrics()
    curve = {}
    for t in spec["tasks"]:
        key = f"loss/bivldoc.{t}"
        vals = [r[key] for r in logs if key in r]
        if vals:
            k = max(1, len(vals) // 5)  # first and last fifth of the logged steps
            curve[t] = {"first": statistics.fmean(vals[:k]), "last": statistics.fmean(vals[-k:])}
        acc = [r[f"bivldoc.{t}/acc"] for r in logs if f"bivldoc.{t}/acc" in r]
        if acc:
            curve.setdefault(t, {})["last_acc"] = statistics.fmean(acc[-max(1, len(acc) // 5) :])
    steps = tcfg.max_steps
    return {
        "method": method,
        "seed": seed,
        "init": str(path),
        "params": n_params(backbone),
        "steps": steps,
        "wall_s": wall,
        "pages_per_s": steps * stream.batch_size / wall,
        "peak_rss_mib": _peak_mib(),
        "losses": curve,
    }


def finetune_job(
    cfg: BiVLDocConfig,
    method: str,
    seed: int,
    task: str,
    forms: int | None,
    init: str | None,
    work: str,
    val_forms: int = 0,
    lr: float | None = None,
) -> dict[str, Any]:
    """Fine-tune ``method``'s backbone (``init``: its pre-trained weights; None: random) on ``task`` (funsd /
    sroie) with the first ``forms`` training pages (None: all), and score its test pages. ``val_forms`` > 0
    (FUNSD, for choosing the lr): hold out the last ``val_forms`` training forms and score those instead of
    the test forms (which are then never read); ``lr``: instead of ``finetune.train.lr``."""
    torch.set_num_threads(1)
    work_p = Path(work)
    data = _data(work_p)
    torch.manual_seed(seed)
    backbone = _backbone(cfg, method, data["vocab_size"])
    if init:
        backbone.load_state_dict(ckpt.load_weights(init))
    train_w = data[f"{task}_train"][: forms if forms else None]
    test_pages, test_enc = data[f"{task}_test"]
    if val_forms:
        train_w = data["funsd_train"][:-val_forms][: forms if forms else None]
        test_pages = data["funsd_train_pages"][-val_forms:]
        test_enc = [e for w in data["funsd_train"][-val_forms:] for e in w]
    torch.manual_seed(seed + 1)  # the head's init does not depend on how the backbone was made
    model = EntityTagger(backbone, tags=test_pages[0].tag_set)
    enc = [e for w in train_w for e in w]
    f = cfg.finetune
    stream = PageStream(enc, f.batch_size, seed=seed, layout=backbone.cfg.layout)
    steps = f.train.max_steps if task == "funsd" else cfg.bench.sroie_steps
    tcfg = dataclasses.replace(f.train, seed=seed, progress=False, max_steps=steps, lr=lr or f.train.lr)
    tag = f"ft-{method}-{seed}-{task}-{forms or 'all'}" + (
        f"-val{val_forms}-lr{tcfg.lr:g}" if val_forms else ""
    )
    t0 = time.perf_counter()
    Trainer(model, stream, tcfg, run_dir=RunDir(work_p / tag), unit="windows").fit()
    wall = time.perf_counter() - t0
    if task == "sroie":
        scores = sroie_scores(model, None, test_pages, enc=test_enc)
    else:
        pred = predict_tags(model, test_pages, test_enc)
        scores = entity_scores([p.labels for p in test_pages], pred)
    return {
        "method": method,
        "seed": seed,
        "task": task,
        "forms": len(train_w),
        "steps": steps,
        "wall_s": wall,
        "lr": tcfg.lr,
        **({"val_forms": val_forms} if val_forms else {}),
        "scores": {k: float(v) for k, v in scores.items() if isinstance(v, (int, float))},
    }


# ---- the driver -------------------------------------------------------------------------------------------
def run_bench(
    cfg: BiVLDocConfig,
    out_dir: Path | None = None,
    name: str = "bivldoc",
    profile: str | None = None,
    work: Path | None = None,
) -> Path:
    t0 = time.perf_counter()
    b = cfg.bench
    out_dir = Path(out_dir or RESULTS_DIR)
    work = Path(work or Path(cfg.out) / "bench")
    work.mkdir(parents=True, exist_ok=True)
    log(f"preparing pages, vocabulary and encodings in {work}")
    info = prepare(cfg, work)
    log(
        f"{info['pretrain_pages']} pre-training pages {info['sources']}, vocabulary {info['vocab_size']}; "
        f"{len(b.methods)} methods x {len(b.seeds)} seeds on {b.workers} worker(s)"
    )
    pre: list[dict] = []
    fine: list[dict] = []
    val: list[dict] = []
    select = len(b.lr_grid) > 0
    chosen: dict[str, float] = {}  # method -> fine-tuning lr (from its first seed's validation runs)
    held: dict[str, list[tuple[int, str | None]]] = {m: [] for m in b.methods}  # (seed, init) waiting for it

    def ft_jobs(method: str, seed: int, init: str | None, lr: float | None = None) -> list[tuple]:
        common = (init, str(work), 0, lr)
        jobs = [(cfg, method, seed, "funsd", None, *common), (cfg, method, seed, "sroie", None, *common)]
        if method in b.few_label_methods:
            jobs += [
                (cfg, method, seed, "funsd", n, *common) for n in b.few_label if n < info["funsd_train_forms"]
            ]
        return jobs

    def val_jobs(method: str, seed: int, init: str | None) -> list[tuple]:
        return [(cfg, method, seed, "funsd", None, init, str(work), b.val_forms, lr) for lr in b.lr_grid]

    n_jobs = sum(METHODS[m]["tasks"] is not None for m in b.methods) * len(b.seeds)
    n_jobs += sum(len(ft_jobs(m, s, None)) for m in b.methods for s in b.seeds)
    n_jobs += len(b.methods) * len(b.lr_grid)
    done = 0
    with executor(b.workers) as pool:
        pending: dict[Any, str] = {}

        def ready(method: str, seed: int, init: str | None) -> None:
            """A backbone is ready: fine-tune it now, or first choose its method's lr on the validation forms."""
            if not select or method in chosen:
                lr = chosen.get(method)
                pending.update({pool.submit(finetune_job, *j): "ft" for j in ft_jobs(method, seed, init, lr)})
                return
            held[method].append((seed, init))
            if seed == b.seeds[0]:
                pending.update({pool.submit(finetune_job, *j): "val" for j in val_jobs(method, seed, init)})

        # pre-training first (longest), scratch fine-tunings fill the gaps
        for s in b.seeds:
            for m in b.methods:
                if METHODS[m]["tasks"] is not None:
                    pending[pool.submit(pretrain_job, cfg, m, s, str(work))] = "pre"
        for s in b.seeds:
            for m in b.methods:
                if METHODS[m]["tasks"] is None:
                    ready(m, s, None)
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                kind = pending.pop(fut)
                r = fut.result()
                done += 1
                el = time.perf_counter() - t0
                if kind == "pre":
                    pre.append(r)
                    last = ", ".join(f"{t} {v['first']:.2f}->{v['last']:.2f}" for t, v in r["losses"].items())
                    log(f"[{done}/{n_jobs}, {el:.0f} s] pre-trained {r['method']} seed {r['seed']}: {last}")
                    ready(r["method"], r["seed"], r["init"])
                elif kind == "val":
                    val.append(r)
                    m = r["method"]
                    log(
                        f"[{done}/{n_jobs}, {el:.0f} s] {m} lr {r['lr']:g}: validation F1 "
                        f"{r['scores']['f1']:.4f} ({b.val_forms} held-out training forms)"
                    )
                    mine = [v for v in val if v["method"] == m]
                    if len(mine) == len(b.lr_grid):  # ties: the smaller lr (the grid's order)
                        best = max(mine, key=lambda v: (v["scores"]["f1"], -v["lr"]))
                        chosen[m] = best["lr"]
                        log(f"{m}: fine-tuning lr {chosen[m]:g} for every seed")
                        for seed, init in held.pop(m):
                            ready(m, seed, init)
                else:
                    fine.append(r)
                    main = r["scores"].get("f1", r["scores"].get("exact"))
                    log(
                        f"[{done}/{n_jobs}, {el:.0f} s] {r['method']} seed {r['seed']} {r['task']} "
                        f"({r['forms']} forms): {main:.4f}"
                    )
    key = lambda r: (r["method"], r["seed"], r["task"] if "task" in r else "", r.get("forms", 0))  # noqa: E731
    data = {
        "pretrain": sorted(pre, key=key),
        "finetune": sorted(fine, key=key),
        "lr_selection": {
            "grid": list(b.lr_grid),
            "val_forms": b.val_forms,
            "runs": sorted(val, key=key),
            "chosen": chosen,
        },
        "data_info": info,
        "wall_s": time.perf_counter() - t0,
        "paper_funsd_f1": PAPER_FUNSD_F1,
    }
    path = publish(
        name,
        data,
        render,
        kind=KIND,
        seeds=b.seeds,
        out_dir=out_dir,
        title=TITLE,
        config=cfg,
        profile=profile,
    )
    log(f"wrote {path} in {data['wall_s']:.0f} s")
    return path


# ---- the report -------------------------------------------------------------------------------------------
def _beyond(a: dict, c: dict) -> bool:
    """a's mean exceeds c's by more than the larger of the two sample stds (n >= 2 both)."""
    if a["mean"] is None or c["mean"] is None or a["std"] is None or c["std"] is None:
        return False
    return a["mean"] - c["mean"] > max(a["std"], c["std"])


def render(payload: dict[str, Any]) -> tuple[dict[str, Any], str, dict[str, Any]]:
    fine, pre = payload["finetune"], payload["pretrain"]
    info = payload["data_info"]
    cfg = payload.get("config") or {}
    n_all = info["funsd_train_forms"]
    methods = list(dict.fromkeys(r["method"] for r in [*pre, *fine]))
    order = [m for m in METHODS if m in methods]

    def stat(m, task, forms, key):
        return mean_std(
            r["scores"].get(key)
            for r in fine
            if r["method"] == m and r["task"] == task and r["forms"] == forms
        ).as_dict()

    n_sroie = info["sroie_train"]
    funsd = {m: stat(m, "funsd", n_all, "f1") for m in order}
    sroie = {m: stat(m, "sroie", n_sroie, "exact") for m in order}
    params = {r["method"]: r["params"] for r in pre}
    headline = {
        "funsd_f1": {m: round(v["mean"], 4) if v["mean"] is not None else None for m, v in funsd.items()}
    }
    headline["sroie_exact"] = {
        m: round(v["mean"], 4) if v["mean"] is not None else None for m, v in sroie.items()
    }
    goals = {}
    if "bivldoc" in funsd:
        ref = funsd["bivldoc"]
        for other in ("mvlm-only", "no-hybrid", "scratch", "text-only"):
            if other in funsd:
                goals[f"above_{other}"] = _beyond(ref, funsd[other])
        if "layoutlmv3" in funsd and ref["mean"] is not None and funsd["layoutlmv3"]["mean"] is not None:
            sd = max(ref["std"] or 0.0, funsd["layoutlmv3"]["std"] or 0.0)
            goals["at_least_layoutlmv3"] = ref["mean"] >= funsd["layoutlmv3"]["mean"] - sd
    headline["goals_met"] = goals
    headline["n_seeds"] = len({r["seed"] for r in fine})
    rows = []
    for m in order:
        rows.append(
            [
                m,
                params.get(m, params.get("bivldoc", "—")) if m == "scratch" else params.get(m, "—"),
                fmt_mean_std(funsd[m], 4),
                fmt_mean_std(sroie[m], 4),
            ]
        )
    sizes = sorted({r["forms"] for r in fine if r["task"] == "funsd"})
    curve_methods = [
        m
        for m in order
        if any(r["method"] == m and r["task"] == "funsd" and r["forms"] != n_all for r in fine)
    ]
    curve_rows = [[m, *[fmt_mean_std(stat(m, "funsd", n, "f1"), 4) for n in sizes]] for m in curve_methods]
    cost_rows = []
    for m in order:
        rs = [r for r in pre if r["method"] == m]
        if rs:
            cost_rows.append(
                [
                    m,
                    rs[0]["steps"],
                    fmt_mean_std(mean_std(r["pages_per_s"] for r in rs), 2),
                    f"{max(r['peak_rss_mib'] for r in rs):.0f}",
                ]
            )
    loss_rows = []
    for m in order:
        rs = [r for r in pre if r["method"] == m]
        for t in sorted({t for r in rs for t in r["losses"]}):
            first = mean_std(r["losses"][t]["first"] for r in rs if t in r["losses"])
            last = mean_std(r["losses"][t]["last"] for r in rs if t in r["losses"])
            acc = mean_std(r["losses"][t].get("last_acc") for r in rs if t in r["losses"])
            loss_rows.append([m, t, fmt_mean_std(first, 3), fmt_mean_std(last, 3), fmt_mean_std(acc, 3)])
    verdicts = []
    for g, ok in goals.items():
        other = g.removeprefix("above_").removeprefix("at_least_")
        rule = (
            "mean within the larger std of LayoutLMv3's or above"
            if g.startswith("at_least")
            else "mean above by more than the larger std"
        )
        verdicts.append(
            f"- `{g}`: **{'met' if ok else 'not met'}** ({rule}): bivldoc {fmt_mean_std(funsd['bivldoc'], 4)} "
            f"against {other} {fmt_mean_std(funsd[other], 4)}."
        )
    pc, fc = cfg.get("pretrain", {}), cfg.get("finetune", {})
    sel = payload.get("lr_selection") or {}
    lr_lines = []
    if sel.get("grid"):
        grid = sel["grid"]
        f1 = {(r["method"], r["lr"]): r["scores"]["f1"] for r in sel["runs"]}
        lr_rows = [
            [m, *[f"{f1[(m, lr)]:.4f}" if (m, lr) in f1 else "—" for lr in grid], sel["chosen"].get(m, "—")]
            for m in order
        ]
        lr_lines = [
            "## Fine-tuning lr (chosen on held-out training forms)",
            "",
            f"Each method's first seed fine-tuned FUNSD on the training forms but the last {sel['val_forms']}, once "
            f"per lr, and scored entity F1 on those {sel['val_forms']} held-out training forms (the test forms are "
            "never read for this); the best lr then serves all its seeds, FUNSD, SROIE and the few-label curve "
            "(one run per lr, n=1).",
            "",
            md_table(["method", *[f"lr {lr:g}" for lr in grid], "chosen"], lr_rows),
            "",
        ]
    best = max((v["mean"] for v in funsd.values() if v["mean"] is not None), default=None)
    body = "\n".join(
        [
            "## Protocol",
            "",
            f"- Pre-training corpus: {info['pretrain_pages']} pages {info['sources']} (FUNSD test pages never seen); "
            f"one WordPiece vocabulary of {info['vocab_size']} built from it and shared by every method "
            "(also `scratch`, so methods differ only in pre-training and architecture).",
            f"- Pre-training: {pc.get('train', {}).get('max_steps')} steps of {pc.get('batch_size')} pages per method "
            "and seed; fine-tuning FUNSD entity labelling: "
            f"{fc.get('train', {}).get('max_steps')} steps of {fc.get('batch_size')} windows at lr "
            + ("chosen per method (below)" if sel.get("grid") else f"{fc.get('train', {}).get('lr')}")
            + f"; SROIE key fields: {cfg.get('bench', {}).get('sroie_steps')} steps "
            f"({info['sroie_train']} training receipts, {info['sroie_test']} test receipts).",
            "- FUNSD metric: entity-level F1 by seqeval (default conlleval mode) over word-level BIO tags "
            "(HEADER/QUESTION/ANSWER, 'other' = O; the first sub-word carries the word's tag), on the "
            f"{info['funsd_test_forms']} test forms, word-level boxes. SROIE: exact match per key field (case and spaces ignored), mean of 4 fields.",
            "- Statistic: mean ± sample std (ddof 1) over seeds, n stated; a goal is met when the difference of means "
            "exceeds the larger of the two stds.",
            "- Baselines: `mvlm-only` (MVLM alone), `no-hybrid` (same tasks, no cross-modal attention: streams "
            "concatenated per token after separate self-attention), `text-only` (no image tower; MVLM + TIPA), "
            "`layoutlmv3` (HF transformers LayoutLMv3 architecture, same hidden size/depth/heads/FFN, random init, "
            "MLM + WPA; MIM left out: it needs a discrete image tokenizer), `scratch` (no pre-training).",
            "",
            *lr_lines,
            "## FUNSD entity F1 and SROIE field accuracy",
            "",
            md_table(["method", "params", f"FUNSD F1 ({n_all} forms)", "SROIE exact"], rows),
            "",
            f"Outside reference: the paper's Bi-VLDoc reaches FUNSD F1 {PAPER_FUNSD_F1} (0.9344) with a large model "
            "pre-trained on millions of pages; "
            + (
                f"the best CPU-sized model here gets {best:.4f}, {PAPER_FUNSD_F1 / 100 - best:.2f} below it."
                if best is not None
                else ""
            ),
            "",
            "## Few-label curve (FUNSD entity F1 against training forms)",
            "",
            md_table(["method", *[f"{n} forms" for n in sizes]], curve_rows) if curve_rows else "(not run)",
            "",
            "## Pre-training cost and losses",
            "",
            "Pages/s: pre-training pages per second of one worker (one torch thread); peak RSS: the worker "
            "process's peak resident memory (a worker runs several jobs: an upper bound).",
            "",
            md_table(["method", "steps", "pages/s", "peak RSS MiB"], cost_rows) if cost_rows else "(none)",
            "",
            "Task losses averaged over the first and the last fifth of the logged steps (accuracy: last fifth).",
            "",
            md_table(["method", "task", "loss first", "loss last", "acc last"], loss_rows)
            if loss_rows
            else "(none)",
            "",
            "## Verdicts",
            "",
            *(verdicts or ["- (no goal computable: Bi-VLDoc not run)"]),
            "",
            f"Wall time of the whole bench: {payload.get('wall_s', 0):.0f} s.",
        ]
    )
    return headline, body, {"funsd_f1": funsd, "sroie_exact": sroie}


def rerender(results_json: str | Path, out_dir: Path | None = None) -> Path:
    return rerender_results(results_json, render, out_dir, KIND, TITLE, "a Bi-VLDoc bench")
