"""`pretrainkit saga <verb>`: demo, pretrain, search-weights, finetune, evaluate, bench."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from pretrainkit.core.benchkit import add_bench_args, seed_overrides
from pretrainkit.core.config import check_at_least, load_config, save_config
from pretrainkit.core.profiles import add_config_args, profile_path
from pretrainkit.errors import ConfigError
from pretrainkit.systems.saga.config import LABEL_SPLITS, SagaConfig

VERBS = {
    "demo": "the README's main job: pre-train on HAPT, search task weights, classify with 5-100 labels per class, "
    "print a table against the baselines and write a report (quick profile, about 10 min on 2 cores)",
    "pretrain": "pre-train the encoder(s) of the chosen reading on a split's training windows",
    "search-weights": "search the four task weights for one downstream task and label budget",
    "finetune": "train the classifier at one label budget with given or searched weights and report test accuracy",
    "evaluate": "run the configured grid (tasks x splits x budgets x seeds x methods) and write a report",
    "bench": "run the benchmark profile and write docs/results/saga.{md,json}",
    "length-curve": "accuracy at 20 and 100 labels/class against pre-training length (one task, both labels, "
    "random split); writes docs/results/saga-length.{md,json}",
}


def add_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, help_ in VERBS.items():
        p = sub.add_parser(verb, help=help_, description=help_)
        if verb == "bench":
            _bench_args(p)
            p.set_defaults(func=_bench)
            continue
        if verb == "length-curve":
            _length_args(p)
            p.set_defaults(func=_length_curve)
            continue
        add_config_args(p, "saga", "quick")
        _data_args(p)
        if verb in ("search-weights", "finetune", "pretrain"):
            p.add_argument(
                "--split",
                default="random",
                choices=["random", "subject", "time"],
                help="window split (default random: LIMU-BERT's 80/10/10)",
            )
        if verb in ("search-weights", "finetune"):
            p.add_argument("--label", default="activity", choices=list(LABEL_SPLITS), help="downstream task")
            p.add_argument("--budget", type=int, default=100, help="labelled units per class (default 100)")
            p.add_argument("--seed", type=int, default=0, help="label-draw seed")
        if verb == "finetune":
            p.add_argument(
                "--weights",
                default="search",
                metavar="search|W1,W2,W3,W4",
                help="task weights (sensor, point, sub-period, period), or 'search' (default)",
            )
        p.set_defaults(func=_run)


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="your own data: a HAPT npz/npy folder, HAPT.pkl.gz or RawData/ folder, or (with "
        "--set data.format=limu) a LIMU-BERT folder; default: shared data, then the PyPI package",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads per process (default 1: fastest here)"
    )


def _bench_args(p: argparse.ArgumentParser) -> None:
    add_bench_args(p, "saga", "bench", default_name="saga")
    p.add_argument("--out", default=None, help="run directory (overrides the config's 'out')")
    _data_args(p)


def load(args: argparse.Namespace) -> SagaConfig:
    overrides = seed_overrides(args, "downstream.seeds") if hasattr(args, "seeds") else []
    if args.data:
        overrides.append(f"data.source={args.data}")
    if args.out:
        overrides.append(f"out={args.out}")
    return load_config(SagaConfig, profile_path("saga", args.config), [*overrides, *args.set])


def _check_args(args: argparse.Namespace) -> None:
    """Option ranges, checked before anything is read or written."""
    check_at_least(args.threads, "--threads")
    if getattr(args, "budget", None) is not None:
        check_at_least(args.budget, "--budget", 2)  # one unit per class to fit, one to validate
    if getattr(args, "label", None) is not None and args.split not in LABEL_SPLITS[args.label]:
        raise ConfigError(
            f"split '{args.split}' does not suit label '{args.label}'; allowed: "
            f"{', '.join(LABEL_SPLITS[args.label])}"
        )


def _weights(text: str, tasks: list[str]) -> list[float]:
    """``--weights W1,...``: one non-negative number per pre-training task (one encoder each), not all zero."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"--weights must be 'search' or {len(tasks)} comma-separated numbers") from None
    if (
        len(values) != len(tasks)
        or min(values) < 0
        or sum(values) == 0
        or not all(map(math.isfinite, values))
    ):
        raise ConfigError(f"--weights needs {len(tasks)} non-negative numbers, not all zero; got {text}")
    return values


def _run(args: argparse.Namespace) -> int:
    from pretrainkit.systems.saga.pipeline import SagaPipeline

    _check_args(args)
    torch.set_num_threads(args.threads)
    cfg = load(args)
    if getattr(args, "weights", "search") != "search":
        _weights(args.weights, cfg.pretrain.tasks)  # a bad --weights fails before any training
    pipe = SagaPipeline(cfg)
    pipe.windows  # noqa: B018 - bad data fails here, before the run directory is written to
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    save_config(cfg, Path(cfg.out) / "config.yaml")
    if args.verb in ("demo", "evaluate"):
        return _grid(cfg, demo=args.verb == "demo", pipe=pipe)
    if args.verb == "pretrain":
        pipe.cfg.downstream.splits = [args.split]
        pipe.pretrain_all(with_a=cfg.pretrain.reading == "A")
        print(f"encoders saved under {Path(cfg.out) / 'pretrain' / pipe.pool_name}")
        return 0
    from pretrainkit.systems.saga.features import mix_features, unit_index

    pipe.cfg.downstream.splits = [args.split]
    feats = {t: pipe.unit_features((t,), e) for t, e in pipe.encoders_b().items()}
    fit, val = pipe.budget(args.label, args.split, args.budget, args.seed)
    idx = sorted([*fit, *val])
    if args.verb == "search-weights" or args.weights == "search":
        w, cv = pipe.search_b(feats, args.label, args.split, args.budget, args.seed, idx)
        print(f"best weights: {json.dumps(w)} (cross-validated probe accuracy inside the budget {cv:.3f})")
        if args.verb == "search-weights":
            return 0
    else:
        w = dict(zip(feats, _weights(args.weights, cfg.pretrain.tasks)))
    test = unit_index(pipe.split(args.split)[2], pipe.per_window)
    r = pipe.fit_gru(mix_features(feats, w), args.label, fit, val, test, args.seed)
    print(
        f"{args.label} / {args.split} / {args.budget} per class: test accuracy {r['acc']:.4f}, macro-F1 {r['f1']:.4f}"
    )
    return 0


def _grid(cfg: SagaConfig, demo: bool, pipe=None) -> int:
    from pretrainkit.systems.saga import report
    from pretrainkit.systems.saga.experiment import DEMO_METHODS, METHODS, Grid
    from pretrainkit.systems.saga.pipeline import SagaPipeline

    t0 = time.time()
    grid = Grid(pipe or SagaPipeline(cfg), methods=DEMO_METHODS if demo else METHODS)
    rows = grid.run(workers=cfg.downstream.workers)
    out = Path(cfg.out)
    plot = report.plot(rows, out / "plots" / "accuracy_vs_labels.png")
    head = report.headline(rows)
    text = report.tables(rows)
    md = [
        "# Saga report",
        "",
        f"Config: `{out / 'config.yaml'}`; wall time {time.time() - t0:.0f} s.",
        "",
        "Headline: " + ", ".join(f"{k} = {v}" for k, v in head.items()),
        "",
        text,
        "",
        f"![accuracy against labels per class]({plot.relative_to(out)})",
        "",
    ]
    (out / "report.md").write_text("\n".join(md))
    print(text)
    print("\nheadline:", json.dumps(head))
    print(f"report: {out / 'report.md'}  plot: {plot}  ({time.time() - t0:.0f} s)")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from pretrainkit.systems.saga import bench

    if args.rerender is not None and _stored_kind(args.rerender) == "saga.length":
        return _length_curve(args)  # `bench saga --rerender` takes every Saga results file
    if args.rerender is not None:
        from pretrainkit.core.results import load_results, rerender
        from pretrainkit.systems.saga.report import plot

        name = Path(args.rerender).stem
        path = rerender(
            args.rerender,
            lambda p: bench.render(p, plot_name=f"{name}_accuracy.png"),
            out_dir=args.results_dir,
            kind=bench.KIND,
            title=bench.TITLE,
            what="a Saga bench",
        )
        plot(load_results(path.with_suffix(".json"))["rows"], path.parent / f"{name}_accuracy.png")
        print(f"wrote {path}")
        return 0
    _check_args(args)
    torch.set_num_threads(args.threads)
    cfg = load(args)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    save_config(cfg, Path(cfg.out) / "config.yaml")
    print(
        f"wrote {bench.run_bench(cfg, out_dir=args.results_dir, name=args.name or 'saga', profile=args.config)}"
    )
    return 0


def _stored_kind(path: Path) -> str | None:
    from pretrainkit.core.results import load_results

    return load_results(path, what="a Saga").get("kind")


def _length_args(p: argparse.ArgumentParser) -> None:
    add_bench_args(p, "saga", "bench", default_name="saga-length")
    p.add_argument("--steps", default="200,800,3200", metavar="N1,N2,...", help="pre-training lengths")
    p.add_argument("--task", default="saga.point", help="the one pre-training task (default saga.point)")
    p.add_argument("--budgets", default="20,100", metavar="B1,B2", help="labels per class (default 20,100)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default=None, help="run directory (default: the profile's out + /length)")
    p.add_argument("--data", default=None, metavar="PATH", help="your own HAPT copy (as for the other verbs)")


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated integers, got {text!r}") from None


def _length_curve(args: argparse.Namespace) -> int:
    from pretrainkit.core.task import TASKS
    from pretrainkit.systems.saga import length_curve

    if args.rerender is not None:
        from pretrainkit.core.results import load_results, rerender

        path = rerender(
            args.rerender,
            length_curve.render,
            out_dir=args.results_dir,
            kind=length_curve.KIND,
            title=length_curve.TITLE,
            what="a Saga length curve",
        )
        length_curve.plot(load_results(path.with_suffix(".json"))["rows"], path.with_suffix(".png"))
        print(f"wrote {path}")
        return 0
    check_at_least(args.threads, "--threads")
    lengths = length_curve.check_lengths(_ints(args.steps, "--steps"))
    budgets = _ints(args.budgets, "--budgets")
    if not budgets or min(budgets) < 2:
        raise ConfigError(
            f"--budgets must be integers >= 2 (one unit per class to fit, one to validate): {budgets}"
        )
    import pretrainkit.systems.saga.tasks  # noqa: F401  (registers the tasks)

    TASKS.get(args.task)  # one-line error naming the allowed tasks
    torch.set_num_threads(args.threads)
    cfg = load(args)
    if args.out is None:
        cfg.out = str(Path(cfg.out) / "length")
    name = args.name or "saga-length"
    print(
        f"wrote {length_curve.run_bench(cfg, lengths, args.task, budgets, args.results_dir, name, args.config)}"
    )
    return 0


def bench_main(argv: list[str]) -> int:
    """`pretrainkit bench saga [options]`: the same as `pretrainkit saga bench`."""
    p = argparse.ArgumentParser(prog="pretrainkit bench saga", description=VERBS["bench"])
    _bench_args(p)
    return _bench(p.parse_args(argv))
