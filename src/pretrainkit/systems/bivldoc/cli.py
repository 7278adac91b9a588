"""`pretrainkit bivldoc <verb>`: pretrain, finetune, evaluate, search-weights, ocr, bench."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pretrainkit.core.benchkit import add_bench_args
from pretrainkit.core.config import load_config
from pretrainkit.core.profiles import add_config_args, profile_path
from pretrainkit.errors import ConfigError

VERBS = {
    "pretrain": "pre-train the backbone with the task mix (MVLM, TIPA, language-guided vision, ITM) on FUNSD "
    "train + SROIE receipts + rendered pages (+ --pages: your scans, OCR'd)",
    "finetune": "fine-tune FUNSD entity labelling (word-level BIO) from a pre-training run (--init) or from "
    "scratch, and report the test set's entity F1 (seqeval)",
    "evaluate": "score a fine-tuned run on the FUNSD test forms (entity F1, seqeval) and draw one test page's "
    "predicted entities beside the gold ones",
    "search-weights": "search the four task weights (the core's GP search); each trial pre-trains, fine-tunes on "
    "FUNSD train minus finetune.val_forms and scores entity F1 on those (never the test forms)",
    "ocr": "OCR a folder of page images with Tesseract (cached per page) and print a summary per page",
    "bench": "the Bi-VLDoc benchmark: Bi-VLDoc against MVLM-only, no-hybrid, text-only, LayoutLMv3 (same size) "
    "and from scratch, >= 3 seeds, FUNSD entity F1, SROIE field accuracy, few-label curve, pre-training cost; "
    "writes docs/results/bivldoc.{md,json}",
}


def add_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, help_ in VERBS.items():
        p = sub.add_parser(verb, help=help_, description=help_)
        if verb == "ocr":
            p.add_argument("folder", help="a folder of page images (png, jpg, tif, bmp)")
            p.add_argument("--cache", default=None, help="OCR cache folder (default: <folder>/.ocr_cache)")
            p.set_defaults(func=_ocr)
            continue
        if verb == "bench":
            _bench_args(p)
            p.set_defaults(func=_bench)
            continue
        add_config_args(p, "bivldoc", "quick")
        p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
        if verb in ("pretrain", "finetune"):
            p.add_argument("--resume", default=None, metavar="auto|PATH", help="resume from a checkpoint")
        if verb == "pretrain":
            p.add_argument(
                "--pages",
                default=None,
                metavar="FOLDER",
                help="also pre-train on your own scanned pages (OCR'd with Tesseract)",
            )
        if verb == "finetune":
            p.add_argument("--init", default=None, metavar="RUN", help="a pre-training run directory")
            p.add_argument(
                "--train-forms",
                type=int,
                default=None,
                help="use the first N FUNSD training forms (few-label curve: 10, 25, 50, 149)",
            )
        if verb == "evaluate":
            p.add_argument("run", help="a fine-tuning run directory")
            p.add_argument(
                "--picture-page",
                type=int,
                default=0,
                help="which FUNSD test page (0-49) to draw with its entities (default 0)",
            )
        p.set_defaults(func=_run)


def load(args: argparse.Namespace):
    from pretrainkit.systems.bivldoc.config import BiVLDocConfig

    overrides = []
    if getattr(args, "out", None):
        overrides.append(f"out={args.out}")
    if getattr(args, "pages", None):
        overrides.append(f"data.own_pages={args.pages}")
    if getattr(args, "init", None):
        overrides.append(f"finetune.init={args.init}")
    if getattr(args, "train_forms", None) is not None:
        overrides.append(f"finetune.train_forms={args.train_forms}")
    return load_config(BiVLDocConfig, profile_path("bivldoc", args.config), [*overrides, *args.set])


def _run(args: argparse.Namespace) -> int:
    from pretrainkit.systems.bivldoc import pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load(args)
    if args.verb == "pretrain":
        res = pipeline.pretrain(cfg, resume=args.resume)
        print(
            f"pre-trained {res.get('params', 0) / 1e6:.2f}M parameters on {res.get('pages')} pages; "
            f"final loss {res.get('loss', float('nan')):.4g}; run: {cfg.out}"
        )
    elif args.verb == "finetune":
        res = pipeline.finetune(cfg, resume=args.resume)
        t = res["test"]
        print(
            f"FUNSD test entity F1 {t['f1']:.4f} (P {t['precision']:.4f}, R {t['recall']:.4f}) after fine-tuning "
            f"on {res['train_forms']} forms from {res['init']}; run: {cfg.out}"
        )
    elif args.verb == "search-weights":
        res = pipeline.search_weights(cfg)
        w = ", ".join(f"{k} {v:.3f}" for k, v in res["best_weights"].items())
        print(
            f"best weights {w}: validation entity F1 {res['best_val_f1']:.4f} on {res['val_forms']} training "
            f"forms; run: {cfg.out}"
        )
    else:
        t = pipeline.evaluate(cfg, args.run, picture_page=args.picture_page)
        print(json.dumps(t, indent=1))
    return 0


def _ocr(args: argparse.Namespace) -> int:
    from pretrainkit.systems.bivldoc.ocr import ocr_folder

    cache = Path(args.cache) if args.cache else Path(args.folder) / ".ocr_cache"
    for p in ocr_folder(args.folder, cache):
        print(f"{p.image_path}: {len(p.words)} words in {len(p.seg_boxes)} lines")
    return 0


BENCH_PROFILES = {"default": "bench", "full": "bench-full", "smoke": "bench-smoke"}


def _bench_args(p: argparse.ArgumentParser) -> None:
    add_bench_args(p, "bivldoc", "bench", default_name="bivldoc")
    p.add_argument(
        "--profile",
        choices=sorted(BENCH_PROFILES),
        default=None,
        help="default: ~35 min on 2 cores (profile bench); full: the issue's 90-minute budget (bench-full); "
        "smoke: a tiny run of the same code (seconds; use with --results-dir)",
    )
    p.add_argument("--smoke", action="store_true", help="the same as --profile smoke")
    p.add_argument("--out", default=None, help="work directory (overrides the config's 'out')")


def _bench(args: argparse.Namespace) -> int:
    from pretrainkit.core.benchkit import load_bench_config, seed_overrides
    from pretrainkit.systems.bivldoc import bench
    from pretrainkit.systems.bivldoc.config import BiVLDocConfig

    if args.rerender is not None:
        print(f"wrote {bench.rerender(args.rerender, out_dir=args.results_dir)}")
        return 0
    profile = "smoke" if args.smoke else args.profile
    if profile is not None:
        if args.config not in ("bench", BENCH_PROFILES[profile]):
            raise ConfigError("give either --config or --profile/--smoke, not both")
        args.config = BENCH_PROFILES[profile]
    overrides = seed_overrides(args, "bench.seeds")
    if args.out:
        overrides.append(f"out={args.out}")
    cfg = load_bench_config(BiVLDocConfig, "bivldoc", args, overrides)
    torch.set_num_threads(1)  # each worker (and this process) one thread: bench.workers processes
    results_dir = args.results_dir
    if results_dir is None and profile == "smoke":  # smoke numbers mean nothing: never into docs/results
        results_dir = Path(cfg.out) / "results"
    path = bench.run_bench(cfg, out_dir=results_dir, name=args.name or "bivldoc", profile=args.config)
    print(f"wrote {path}")
    return 0


def bench_main(argv: list[str]) -> int:
    """`pretrainkit bench bivldoc [options]`: the same as `pretrainkit bivldoc bench`."""
    p = argparse.ArgumentParser(prog="pretrainkit bench bivldoc", description=VERBS["bench"])
    _bench_args(p)
    return _bench(p.parse_args(argv))
