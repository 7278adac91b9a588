"""`pretrainkit crnet <verb>`: pretrain, evaluate, generate, export-hf, sweep, bench."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from pretrainkit.core.benchkit import add_bench_args, replay_args, seed_overrides
from pretrainkit.core.config import check_at_least, check_positive, load_config
from pretrainkit.core.profiles import add_config_args, profile_path
from pretrainkit.systems.crnet.config import METHODS, CRNetConfig

EPILOG = f"""Methods: {", ".join(METHODS)} (galore = the full-rank model trained with the GaLore optimiser).
Config keys (set any with --set KEY=VALUE; see configs/crnet/*.yaml):
  data.*   source, documents (file|paragraphs), doc_chars, val_fraction, split_seed, val_max_tokens,
           vocab_size, tokenizer, text_field, hf_split, max_docs, strip_gutenberg, tokenizer_max_chars
  model.*  preset (tiny, cpu-small, cpu-base, 60m, 130m, 350m, 1b, 7b), method, rank (int or per-layer list),
           hidden, intermediate, n_heads, n_layers, max_seq_len, crnet_init (zero_b|cola), crnet_beta_init,
           crnet_anchor (full|lowrank), recompute (none|checkpoint|crnet), checkpoint_every, lora_alpha, ...
  train.*  max_steps, lr, warmup_steps, min_lr_ratio, grad_clip, weight_decay, grad_accum, precision,
           parallel (none|ddp|fsdp), seed, ckpt_every, eval_every, log_every
  seq_len, batch_size, eval_batch_size, galore.{{rank,update_proj_gap,scale}}, relora.{{reset_every,rewarm_steps}},
  device (auto|cpu|cuda), out
Several processes: torchrun --nproc_per_node N -m pretrainkit.cli crnet pretrain --set train.parallel=ddp
(or fsdp, with model.recompute=checkpoint instead of crnet)."""

VERBS = {
    "pretrain": "train a LLaMA-style LM with the chosen method on a text corpus; resumable run directory",
    "evaluate": "validation perplexity of a run's newest checkpoint (its held-out documents, or another corpus)",
    "generate": "sample a continuation of a prompt from a run's checkpoint with its tokenizer",
    "export-hf": "write a full-rank (full or galore) run as a Hugging Face LLaMA folder",
    "sweep": "the same lr x block-scale grid for every method, scored on a dev split of the training text; "
    "writes docs/results/crnet-sweep.{md,json} with each method's best setting for the bench",
    "bench": "every method x seed on the same tokens, memory, recompute and HF throughput; writes "
    "docs/results/crnet.{md,json}",
}


def _threads(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=default,
        help=f"torch CPU threads (default {default}; 0 = torch's default); 1 also makes the "
        "tokenizer single-threaded",
    )


def _bench_args(p: argparse.ArgumentParser, default_name: str) -> None:
    add_bench_args(p, "crnet", "bench", default_name=default_name)
    p.add_argument("--out", default=None, help="run directory (overrides the config's 'out')")
    p.add_argument("--data", default=None, metavar="PATH", help="corpus instead of the shared Gutenberg text")
    p.add_argument(
        "--methods", default=None, metavar="M1,M2", help=f"subset of methods ({', '.join(METHODS)})"
    )
    _threads(p, 1)


def add_commands(parser: argparse.ArgumentParser) -> None:
    """Register the CR-Net verbs under ``pretrainkit crnet``."""
    parser.epilog, parser.formatter_class = EPILOG, argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=VERBS[name],
            description=VERBS[name],
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = verb("pretrain")
    add_config_args(p, "crnet", "quick")
    p.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="corpus: a .txt/.jsonl file, a folder of them, a `datasets` save_to_disk folder, or "
        "hf:NAME[:CONFIG] to stream (needs data.max_docs); default: the shared Gutenberg text",
    )
    p.add_argument(
        "--method", default=None, help=f"one of {', '.join(METHODS)} (default: the profile's model.method)"
    )
    p.add_argument(
        "--resume",
        default="auto",
        metavar="auto|none|PATH",
        help="auto (default): continue from the newest complete checkpoint in --out; none: start over "
        "(refused if checkpoints exist); or a checkpoint folder",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _threads(p, 1)
    p.set_defaults(func=_pretrain)

    for name in ("evaluate", "generate", "export-hf"):
        p = verb(name)
        p.add_argument(
            "--run",
            default="runs/crnet-quick",
            metavar="DIR",
            help="run directory written by pretrain (default runs/crnet-quick, the quick profile's)",
        )
        p.add_argument(
            "--checkpoint", default=None, metavar="DIR", help="a checkpoints/step-N folder (default newest)"
        )
        _threads(p, 1)
        if name == "evaluate":
            p.add_argument(
                "--data",
                default=None,
                metavar="PATH",
                help="score every document of this corpus instead of the run's validation split",
            )
            p.add_argument(
                "--set",
                action="append",
                default=[],
                metavar="KEY=VALUE",
                help="override the run's config, e.g. --set data.val_max_tokens=0 (whole split) or "
                "--set eval_batch_size=64",
            )
            p.add_argument(
                "--json", default=None, metavar="FILE", help="also write the numbers to this JSON file"
            )
            p.set_defaults(func=_evaluate)
        elif name == "generate":
            p.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
            p.add_argument("--max-new-tokens", type=int, default=100, help="tokens to add (default 100)")
            p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (default 0.8)")
            p.add_argument(
                "--top-k", type=int, default=50, help="sample among the k likeliest tokens (default 50)"
            )
            p.add_argument("--greedy", action="store_true", help="always take the likeliest token")
            p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
            p.set_defaults(func=_generate)
        else:
            p.add_argument("--to", required=True, metavar="DIR", help="output folder for the HF model")
            p.set_defaults(func=_export)

    p = verb("bench")
    _bench_args(p, "crnet (the GPU profile uses crnet_gpu)")
    p.set_defaults(func=_bench)

    p = verb("sweep")
    _bench_args(p, "the profile's sweep.name")
    p.set_defaults(func=_sweep)


def _set_threads(n: int) -> None:
    check_at_least(n, "--threads", 0)
    if n > 0:
        torch.set_num_threads(n)
    if n == 1:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load(args: argparse.Namespace, default_profile: str) -> CRNetConfig:
    """The validated config from --config, the verb's options and --set (later wins)."""
    overrides = []
    if getattr(args, "data", None):
        # absolute, so evaluate / resume from another directory find the same corpus
        src = args.data if str(args.data).startswith("hf:") else Path(args.data).resolve()
        overrides.append(f"data.source={src}")
    if getattr(args, "method", None):
        overrides.append(f"model.method={args.method}")
    if getattr(args, "methods", None):
        overrides.append(f"bench.methods=[{args.methods}]")
    overrides += seed_overrides(args, "bench.seeds")
    if getattr(args, "out", None):
        overrides.append(f"out={args.out}")
    overrides += list(args.set or [])
    return load_config(CRNetConfig, profile_path("crnet", args.config or default_profile), overrides)


def _pretrain(args: argparse.Namespace) -> int:
    from pretrainkit.core.checkpoint import list_checkpoints
    from pretrainkit.errors import ConfigError
    from pretrainkit.systems.crnet.pipeline import pretrain

    _set_threads(args.threads)
    cfg = load(args, "quick")
    resume = None if args.resume == "none" else args.resume
    if resume is None and list_checkpoints(Path(cfg.out) / "checkpoints"):
        raise ConfigError(f"{cfg.out} already holds checkpoints; use --resume auto, or another --out")
    out = pretrain(cfg, resume=resume, progress=not args.no_progress)
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun only rank 0 reports
    print(
        f"{out['method']}: {out['steps']} steps, validation perplexity {out['val_ppl']:.3f} over "
        f"{out['val_tokens']:,} tokens, {out['trainable_params']:,} trainable parameters, "
        f"{out['tokens_per_s']:.0f} tokens/s; run: {cfg.out}"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from pretrainkit.systems.crnet.pipeline import evaluate

    _set_threads(args.threads)
    out = evaluate(args.run, data=args.data, checkpoint=args.checkpoint, overrides=args.set)
    print(
        f"perplexity {out['val_ppl']:.4f} (mean loss {out['val_loss']:.4f} over {out['val_tokens']:,} tokens, "
        f"{out['source']}, {out['checkpoint']})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from pretrainkit.systems.crnet.pipeline import generate

    check_at_least(args.top_k, "--top-k")
    check_at_least(args.max_new_tokens, "--max-new-tokens", 0)
    if not args.greedy:
        check_positive(args.temperature, "--temperature")
    _set_threads(args.threads)
    print(
        generate(
            args.run,
            args.prompt,
            args.max_new_tokens,
            args.temperature,
            args.top_k,
            args.greedy,
            args.seed,
            args.checkpoint,
        )
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from pretrainkit.systems.crnet.pipeline import export_hf

    _set_threads(args.threads)
    print(f"wrote {export_hf(args.run, args.to, args.checkpoint)}")
    return 0


def _rerender(path: Path, results_dir: Path | None) -> int:
    """Either CR-Net results file (bench or sweep) from its stored JSON; older sweep files, which carry no
    config, get the config of their stored command against today's profile (said so in the report)."""
    from pretrainkit.core.config import to_dict
    from pretrainkit.core.results import load_results, rerender
    from pretrainkit.systems.crnet import report, sweep

    payload = load_results(path)
    kind = payload.get("kind") or (report.KIND if "runs" in payload else sweep.KIND)
    if kind == report.KIND:
        title = "CR-Net" if Path(path).stem == "crnet" else Path(path).stem  # as run_bench names it
        out = rerender(path, report.render, results_dir, kind, title=title, what="a CR-Net bench")
    else:
        render = sweep.render
        if "config" not in payload:
            c = to_dict(_sweep_config(replay_args(_sweep_parser(), payload["provenance"]["command"], 3)))
            note = (
                "reconstructed at re-rendering from the stored command and the profile it names (this results "
                "file predates stored configs)"
            )

            def render(p: dict, c=c, note=note):
                head, body, derived = sweep.render({**p, "config": c, "config_source": note})
                return head, body, {**derived, "config": c, "config_source": note}

        out = rerender(path, render, results_dir, kind, title=sweep.TITLE, what="a CR-Net sweep")
    print(f"wrote {out}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from pretrainkit.systems.crnet.bench import run_bench

    if args.rerender is not None:
        return _rerender(args.rerender, args.results_dir)
    _set_threads(args.threads)
    cfg = load(args, "bench")
    print(
        f"wrote {run_bench(cfg, results_dir=args.results_dir, name=args.name or 'crnet', profile=args.config)}"
    )
    return 0


def _sweep_config(args: argparse.Namespace) -> CRNetConfig:
    from pretrainkit.core.benchkit import parse_seeds
    from pretrainkit.errors import ConfigError

    seeds = parse_seeds(args.seeds)
    if seeds is not None and len(seeds) != 1:
        raise ConfigError(f"the sweep trains each cell with one seed (sweep.seed); got --seeds {args.seeds}")
    cfg = load(args, "bench")
    if seeds:
        cfg.sweep.seed = seeds[0]
    if args.methods:
        cfg.sweep.methods = cfg.bench.methods
    if args.name:
        cfg.sweep.name = args.name
    return cfg


def _sweep(args: argparse.Namespace) -> int:
    from pretrainkit.systems.crnet.sweep import run_sweep

    if args.rerender is not None:
        return _rerender(args.rerender, args.results_dir)
    _set_threads(args.threads)
    print(f"wrote {run_sweep(_sweep_config(args), results_dir=args.results_dir, profile=args.config)}")
    return 0


def _sweep_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pretrainkit crnet sweep", description=VERBS["sweep"])
    _bench_args(p, "the profile's sweep.name")
    return p


def bench_main(argv: list[str]) -> int:
    """`pretrainkit bench crnet [options]`: the same as `pretrainkit crnet bench` (``--rerender`` takes a bench
    or a sweep results file)."""
    p = argparse.ArgumentParser(
        prog="pretrainkit bench crnet",
        description=VERBS["bench"],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _bench_args(p, "crnet (the GPU profile uses crnet_gpu)")
    return _bench(p.parse_args(argv))
