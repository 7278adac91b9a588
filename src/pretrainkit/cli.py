"""`pretrainkit <system> <verb>`: the command line. User mistakes print one line and exit 2."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from pretrainkit.errors import PretrainkitError

# Each system module exposes add_commands(subparsers); imported lazily so `pretrainkit info` stays fast and
# a system whose optional extra is not installed does not break the others.
SYSTEMS = {
    "saga": ("pretrainkit.systems.saga.cli", "Saga: multi-level masked IMU pre-training with searched task weights"),
    "crnet": ("pretrainkit.systems.crnet.cli", "CR-Net: cross-layer low-rank LLM pre-training"),
    "l2m": ("pretrainkit.systems.l2m.cli", "L2M: a frozen Decision Transformer learning Meta-World tasks continually"),
}
BENCHES = ("core", *SYSTEMS)


def _info(args: argparse.Namespace) -> int:
    import torch

    from pretrainkit.core.results import machine_info

    print("pretrainkit", _version())
    for k, v in machine_info().items():
        print(f"{k:>10}: {v}")
    print(f"{'cuda':>10}: {torch.cuda.is_available()}")
    from pretrainkit.paths import data_search_paths

    print("data is looked for in (first match wins):")
    for name, paths in data_search_paths().items():
        for p in paths:
            print(f"  {name:>6}: {p} {'(found)' if Path(p).exists() else '(absent)'}")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pretrainkit")
    except PackageNotFoundError:
        return "unknown"


def _bench(args: argparse.Namespace) -> int:
    if args.target == "core":
        from pretrainkit.core.bench import bench_main

        return bench_main(args.rest)
    mod = importlib.import_module(SYSTEMS[args.target][0])
    return mod.bench_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pretrainkit", description=__doc__.splitlines()[0] if __doc__ else None,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Run `pretrainkit <system> --help` for a system's verbs.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser("info", help="versions, device, threads and where data is looked for")
    info.set_defaults(func=_info)
    bench = sub.add_parser("bench", help="run a benchmark and write docs/results/<target>.{md,json}")
    bench.add_argument("target", choices=BENCHES, help="which benchmark")
    bench.add_argument("rest", nargs=argparse.REMAINDER,
                       help="options passed to the target's bench (`pretrainkit bench TARGET --help` lists them)")
    bench.set_defaults(func=_bench)
    for name, (module, help_) in SYSTEMS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        try:
            importlib.import_module(module).add_commands(sp)
        except ImportError as e:
            sp.set_defaults(func=lambda a, e=e, n=name: _missing_extra(n, e))
    return p


def _missing_extra(name: str, err: Exception) -> int:
    raise PretrainkitError(f"the '{name}' system needs its extra: pip install 'pretrainkit[{name}]' ({err})")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PretrainkitError as e:
        print(f"pretrainkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pretrainkit: interrupted; completed checkpoints are kept (resume with --resume auto)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
