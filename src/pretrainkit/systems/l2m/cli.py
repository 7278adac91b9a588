"""`pretrainkit l2m collect | pretrain | continual | evaluate | routing | diagnose | bench`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pretrainkit.core.benchkit import add_bench_args, seed_overrides
from pretrainkit.core.config import load_config, to_dict
from pretrainkit.core.profiles import profile_path
from pretrainkit.systems.l2m.config import ALL_METHODS, L2MConfig

EPILOG = """Every verb reads --config (YAML; default: the quick CPU profile's values) and any number of
--set key=value overrides, e.g. --set continual.steps_per_task=200 --set model.d_model=128.
Typical order: collect -> pretrain -> continual -> evaluate; `bench` runs all of it for every seed and
method and writes docs/results/l2m.{md,json}. Every step resumes where it stopped."""


def load(args: argparse.Namespace) -> L2MConfig:
    """The validated config from --config (a profile under configs/l2m/ or a YAML file; none: the built-in
    defaults), the verb's options and --set (later wins)."""
    overrides = seed_overrides(args, "bench.seeds")
    if getattr(args, "methods", None):
        overrides.append(f"continual.methods=[{args.methods}]")
    if getattr(args, "name", None) and getattr(args, "verb", None) not in ("routing", "diagnose"):
        overrides.append(f"bench.name={args.name}")
    if getattr(args, "out", None):
        overrides.append(f"out={args.out}")
    path = profile_path("l2m", str(args.config)) if args.config else None
    return load_config(L2MConfig, path, [*overrides, *(args.set or [])])


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        default=None,
        metavar="PROFILE|FILE",
        help="a profile under configs/l2m/ (quick, paper) or a YAML file (default: built-in defaults)",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--out", default=None, metavar="DIR", help="run directory (overrides the config's 'out')")


def _parser(sub, name: str, help_: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help_,
        description=help_,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    return p


def add_commands(parser: argparse.ArgumentParser) -> None:
    """Register the L2M verbs under ``pretrainkit l2m``."""
    parser.epilog, parser.formatter_class = EPILOG, argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = _parser(sub, "collect", "collect scripted-expert Meta-World datasets (one .npz per task; resumable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_collect)

    p = _parser(sub, "pretrain", "pre-train the Decision Transformer on the pre-training tasks")
    p.add_argument("--seed", type=int, default=0, help="seed (run folder pretrain/seed-N)")
    p.add_argument(
        "--resume", default="auto", help="auto (default): newest checkpoint; none: start over; or a path"
    )
    p.set_defaults(func=_pretrain)

    p = _parser(
        sub, "continual", "train continual methods over the task sequence, evaluating after each task"
    )
    p.add_argument("--seed", type=int, default=0, help="which pre-trained backbone / seed")
    p.add_argument("--methods", help=f"comma-separated, from: {', '.join(ALL_METHODS)} (default: config)")
    p.add_argument("--fresh", action="store_true", help="discard earlier stages of these runs")
    p.add_argument(
        "--order",
        choices=["first", "second"],
        default="first",
        help="task order: first = data.continual_tasks (default), second = bench.second_order",
    )
    p.set_defaults(func=_continual)

    p = _parser(
        sub, "evaluate", "closed-loop success and offline accuracy of a backbone or a finished method"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", help="evaluate this method's final stage (default: the pre-trained backbone)")
    p.add_argument("--tasks", help="comma-separated tasks (default: continual + pre-training tasks)")
    p.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    p.set_defaults(func=_evaluate)

    help_ = (
        "from a finished run: does each task still reach the keys it trained? "
        "(writes docs/results/<bench.name>-routing.{md,json})"
    )
    p = sub.add_parser(
        "routing",
        help=help_,
        description=help_,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_bench_args(p, "l2m", "quick", default_name="<bench.name>-routing", results_alias=("--out-dir",))
    p.add_argument("--method", default="l2m", help="a pool method: l2m (default) or l2m-oracle")
    p.set_defaults(func=_routing)

    help_ = (
        "does the pre-trained DT solve its pre-training tasks? closed-loop success and offline error of a "
        "state-only BC MLP, the DT with continuous and with binned actions (writes <out>/l2m-diagnosis.{md,json})"
    )
    p = sub.add_parser(
        "diagnose",
        help=help_,
        description=help_,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_bench_args(p, "l2m", "quick", default_name="diagnose.name", results_alias=("--out",))
    p.set_defaults(func=_diagnose)

    help_ = "the full benchmark: every seed and method; writes docs/results/l2m.{md,json}"
    p = sub.add_parser(
        "bench",
        help=help_,
        description=help_,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _bench_args(p)
    p.set_defaults(func=lambda a: _bench(a))


def _bench_args(p: argparse.ArgumentParser) -> None:
    add_bench_args(p, "l2m", "quick", default_name="the profile's bench.name", results_alias=("--out-dir",))
    p.add_argument("--methods", help=f"comma-separated, from: {', '.join(ALL_METHODS)}")


def _collect(args: argparse.Namespace) -> int:
    from pretrainkit.systems.l2m.pipeline import collect_data

    s = collect_data(load(args), progress=not args.no_progress)
    for t, v in s["expert_success"].items():
        print(f"{t:28s} expert success {v}")
    print(f"env steps/s per core: {s['last_run']['env_steps_per_s_per_core']}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from pretrainkit.systems.l2m.pipeline import pretrain

    pretrain(load(args), args.seed, resume=None if args.resume == "none" else args.resume)
    return 0


def _continual(args: argparse.Namespace) -> int:
    from pretrainkit.systems.l2m.pipeline import ContinualRun

    cfg = load(args)
    c = cfg.continual
    methods = list(c.methods)
    if c.until_success > 0:  # the calibrating method sets every stage's length: it runs first
        methods.sort(key=lambda m: m != c.calibrate_with)
    order = "order2" if args.order == "second" else ""
    for m in methods:
        run = ContinualRun(cfg, m, args.seed, progress=True, order=order)
        rec = run.run(resume=not args.fresh)
        print(
            f"{m}: record in {run.dir / 'record.json'}; "
            f"final success " + ", ".join(f"{t} {rec.rows[-1][t]['success']:.2f}" for t in rec.rows[-1])
        )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from pretrainkit.adapt.continual import ContinualRecord
    from pretrainkit.errors import DataError
    from pretrainkit.systems.l2m.pipeline import ContinualRun, evaluate_backbone

    cfg = load(args)
    tasks = args.tasks.split(",") if args.tasks else None
    if args.method is None:
        res = evaluate_backbone(cfg, args.seed, tasks)
    else:
        run = ContinualRun(cfg, args.method, args.seed)
        rec_path = run.dir / "record.json"
        if not rec_path.is_file():
            raise DataError(
                f"no continual run at {run.dir}; run `pretrainkit l2m continual --methods "
                f"{args.method}` first"
            )
        run.load_stage(ContinualRecord.load(rec_path).done - 1)
        tasks = tasks or [*cfg.data.continual_tasks, *cfg.data.pretrain_tasks]
        res = {t: run.evaluate(t, -1) for t in tasks}
    for t, r in res.items():
        acc = f"{r['offline_acc']:.3f}" if "offline_acc" in r else "-"
        print(f"{t:28s} success {r['success']:.2f}  offline acc {acc}  key {r.get('key', '-')}")
    if args.json:
        args.json.write_text(json.dumps(to_dict(res), indent=1))
    return 0


def _routing(args: argparse.Namespace) -> int:
    from pretrainkit.systems.l2m.routing import rerender, routing_report

    if args.rerender is not None:
        print(f"wrote {rerender(args.rerender, out_dir=args.results_dir)}")
        return 0
    if args.method not in ("l2m", "l2m-oracle"):
        from pretrainkit.errors import ConfigError

        raise ConfigError(f"routing needs a modulation-pool method (l2m or l2m-oracle), got {args.method!r}")
    print(f"wrote {routing_report(load(args), args.method, args.name, args.results_dir)}")
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    from pretrainkit.systems.l2m import diagnose

    if args.rerender is not None:
        print(f"wrote {diagnose.rerender(args.rerender, out_dir=args.results_dir)}")
        return 0
    path = diagnose.run_diagnosis(load(args), out_dir=args.results_dir, name=args.name, profile=args.config)
    print(f"wrote {path}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from pretrainkit.core.results import load_results
    from pretrainkit.systems.l2m import bench, diagnose, routing

    if args.rerender is not None:  # a bench, a routing or a diagnosis results file
        kind = load_results(args.rerender).get("kind") or (
            "l2m.routing" if "owners" in load_results(args.rerender) else bench.KIND
        )
        again = {routing.KIND: routing.rerender, diagnose.KIND: diagnose.rerender}.get(kind, bench.rerender)
        print(f"wrote {again(args.rerender, out_dir=args.results_dir)}")
        return 0
    print(f"wrote {bench.run_bench(load(args), out_dir=args.results_dir, profile=args.config)}")
    return 0


def bench_main(argv: list[str]) -> int:
    """`pretrainkit bench l2m [--config PROFILE|FILE] [--set k=v] [--seeds 0,1,2] [--methods a,b]
    [--results-dir D] [--name N] [--rerender JSON]`."""
    p = argparse.ArgumentParser(
        prog="pretrainkit bench l2m",
        epilog=EPILOG,
        description="L2M benchmark: collect, pre-train, every continual method and seed; "
        "writes docs/results/l2m.{md,json}.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _bench_args(p)
    return _bench(p.parse_args(argv))
