"""`pretrainkit phe <verb>`: pretrain, evaluate, finetune, search-weights, bench (also `pretrainkit bench phe`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pretrainkit.core.config import load_config, save_config
from pretrainkit.core.profiles import add_config_args, profile_path
from pretrainkit.errors import ConfigError

VERBS = {
    "pretrain": "pre-train the HGT/RGCN encoder with L_sem + 0.1 L_struct (resumable run directory)",
    "evaluate": "HeCo's protocol: frozen embeddings -> logistic regression at 20/40/60 labels per class "
    "(Macro-F1, Micro-F1, AUC on the test nodes)",
    "finetune": "few-label fine-tuning of the whole encoder (--mode full) or LoRA adapters on the frozen HGT "
    "(--mode lora); --encoder none trains from scratch",
    "search-weights": "Bayesian search of the two task weights; objective: in-budget Macro-F1 (labelled budget only)",
}
NOT_YET: tuple[str, ...] = ()
BENCH_HELP = (
    "every graph x method x seed (features, random encoder, supervised HGT, edge contrast, each PHE task, "
    "PHE, PHE fine-tune/LoRA) plus the scale study; writes docs/results/phe.{md,json}"
)


def add_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, help_ in VERBS.items():
        p = sub.add_parser(verb, help=help_, description=help_)
        add_config_args(p, "phe", "quick")
        p.add_argument(
            "--data",
            default=None,
            metavar="NAME|FOLDER",
            help="acm, dblp, aminer, imdb, or a folder with a graph.yaml (see the README's PHE section)",
        )
        p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
        if verb == "pretrain":
            p.add_argument(
                "--resume",
                default=None,
                metavar="auto|PATH",
                help="continue from the newest good checkpoint (auto) or a checkpoint folder",
            )
        if verb in ("evaluate", "finetune"):
            p.add_argument(
                "--encoder",
                default=None,
                metavar="FILE|none",
                help="encoder weights (default: <out>/encoder.safetensors; none: random / from scratch)",
            )
        if verb == "evaluate":
            p.add_argument(
                "--raw", action="store_true", help="score the raw-feature floor instead of an encoder"
            )
            p.add_argument(
                "--links",
                action="store_true",
                help="link prediction on held-out edges of link.relation (MRR, AUC) instead",
            )
        if verb == "finetune":
            p.add_argument(
                "--mode", default="full", choices=["full", "lora"], help="what is trained (default full)"
            )
            p.add_argument("--budget", type=int, default=20, help="labels per class (default 20)")
            p.add_argument("--seed", type=int, default=0, help="head / training seed")
        p.set_defaults(func=_run)
    b = sub.add_parser("bench", help=BENCH_HELP, description=BENCH_HELP)
    _bench_args(b)
    b.set_defaults(func=_bench)


def _bench_args(p: argparse.ArgumentParser) -> None:
    from pretrainkit.core.benchkit import add_bench_args

    add_bench_args(p, "phe", "bench", default_name="phe")
    p.add_argument("--threads", type=int, default=1, help="torch threads in this process (default 1)")


def _bench(args: argparse.Namespace) -> int:
    from pretrainkit.systems.phe import bench

    if args.rerender is not None:
        from pretrainkit.core.results import rerender

        print(f"wrote {rerender(args.rerender, bench.render, out_dir=args.results_dir, kind=bench.KIND)}")
        return 0
    torch.set_num_threads(args.threads)
    cfg = bench.bench_config(args)
    print(f"wrote {bench.run_bench(cfg, out_dir=args.results_dir, profile=args.config)}")
    return 0


def bench_main(argv: list[str]) -> int:
    """`pretrainkit bench phe [--config PROFILE|FILE] [--set k=v] [--seeds 0,1] [--results-dir D] [--name N]
    [--rerender JSON]`."""
    p = argparse.ArgumentParser(prog="pretrainkit bench phe", description=BENCH_HELP)
    _bench_args(p)
    return _bench(p.parse_args(argv))


def load(args: argparse.Namespace):
    from pretrainkit.systems.phe.pipeline import PHEConfig

    overrides = []
    if args.data:
        overrides.append(f"data={args.data}")
    if args.out:
        overrides.append(f"out={args.out}")
    return load_config(PHEConfig, profile_path("phe", args.config), [*overrides, *args.set])


def _run(args: argparse.Namespace) -> int:
    if args.verb in NOT_YET:
        raise ConfigError(f"'pretrainkit phe {args.verb}' is not yet implemented")
    torch.set_num_threads(args.threads)
    cfg = load(args)
    from pretrainkit.systems.phe import pipeline

    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    if args.verb == "pretrain":
        save_config(cfg, Path(cfg.out) / "config.yaml")
        r = pipeline.pretrain(cfg, resume=args.resume)
        print(
            f"pre-trained {r['steps_run']} steps (loss {r.get('loss', float('nan')):.4f}); encoder: "
            f"{Path(cfg.out) / 'encoder.safetensors'}"
        )
        return 0
    if args.verb == "search-weights":
        save_config(cfg, Path(cfg.out) / "config.yaml")
        r = pipeline.search_weights(cfg)
        print(
            f"best weights: {json.dumps(r['best_weights'])} ({r['objective']}: {100 * r['best_value']:.2f}); "
            f"study: {Path(cfg.out) / 'search'}"
        )
        return 0
    if args.verb == "finetune":
        r = pipeline.finetune(cfg, args.budget, mode=args.mode, seed=args.seed, encoder=args.encoder)
        print(
            f"{r['graph']} finetune ({r['mode']}, {r['encoder']}), {r['budget']} labels/class: Macro-F1 "
            f"{r['macro_f1']:.2f}  Micro-F1 {r['micro_f1']:.2f}  AUC {r['auc']:.2f} (epoch {r['epoch']}, "
            f"{r['trainable_params']} trainable parameters)"
        )
        return 0
    if args.links:
        r = pipeline.link_prediction(cfg, encoder=args.encoder)
        print(
            f"{r['graph']} link prediction on {r['edges']} held-out {r['relation']} edges ({r['encoder']}): "
            f"MRR {r['mrr']:.2f}  AUC {r['auc']:.2f}"
        )
        return 0
    r = pipeline.evaluate(cfg, encoder=args.encoder, raw=args.raw)
    print(f"{r['graph']} ({r['embeddings']}):")
    for b, s in r["scores"].items():
        print(
            f"  {b} labels/class: Macro-F1 {s['macro_f1']:.2f}  Micro-F1 {s['micro_f1']:.2f}  AUC {s['auc']:.2f}"
        )
    print(json.dumps(r["scores"]))
    return 0
