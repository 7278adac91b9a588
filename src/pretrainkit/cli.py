"""`pretrainkit <system> <verb>`: the command line. User mistakes print one line and exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pretrainkit.core.system import System, discover
from pretrainkit.errors import PretrainkitError

# Commands of the CLI itself; a system may not take these names.
RESERVED = ("info", "bench", "core")


def _systems() -> dict[str, System]:
    return {n: s for n, s in discover().items() if n not in RESERVED}


def _info(args: argparse.Namespace) -> int:
    import torch

    from pretrainkit.core.results import machine_info

    print("pretrainkit", _version())
    for k, v in machine_info().items():
        print(f"{k:>10}: {v}")
    print(f"{'cuda':>10}: {torch.cuda.is_available()}")
    print(f"{'systems':>10}: {', '.join(_systems()) or '(none installed)'}")
    from pretrainkit.paths import data_root_origin, data_search_paths, shared_data_root

    print(f"data root: {shared_data_root()} ({data_root_origin()})")
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

        return int(bench_main(args.rest) or 0)
    system = args.systems[args.target]
    try:
        return int(system.bench_main(args.rest) or 0)
    except ModuleNotFoundError as e:
        _raise_missing(system, e)


def build_parser(
    load: str | None = None, systems: dict[str, System] | None = None
) -> argparse.ArgumentParser:
    """The whole parser. Only the system called ``load`` (all of them if None) has its verbs registered, so
    ``pretrainkit info`` imports no system and a system with a missing extra affects only its own commands."""
    systems = _systems() if systems is None else systems
    p = argparse.ArgumentParser(
        prog="pretrainkit",
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `pretrainkit <system> --help` for a system's verbs.",
    )
    p.set_defaults(systems=systems, system=None)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser(
        "info", help="versions, device, threads, installed systems and where data is looked for"
    )
    info.set_defaults(func=_info)
    bench = sub.add_parser(
        "bench",
        help="run a benchmark and write docs/results/<target>.{md,json}",
        description="run a benchmark; options after the target go to that benchmark "
        "(e.g. `pretrainkit bench core --help`)",
    )
    bench.add_argument(
        "target", choices=["core", *(n for n, s in systems.items() if s.bench_main)], help="which benchmark"
    )
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the benchmark")
    bench.set_defaults(func=_bench)
    for name, system in systems.items():
        sp = sub.add_parser(name, help=system.help, description=system.help)
        sp.set_defaults(system=system)
        if load is not None and name != load:
            continue
        try:
            system.add_commands(sp)
        except ImportError as e:
            sp.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            sp.set_defaults(func=_fails_with(system, e))
    return p


def _raise_missing(system: System, err: ImportError):
    """The one-line install hint, unless the missing module is one of pretrainkit's own (a bug to surface)."""
    if (getattr(err, "name", None) or "").split(".")[0] == "pretrainkit":
        raise err
    raise system.missing(err) from err


def _fails_with(system: System, err: ImportError):
    def run(_args: argparse.Namespace) -> int:
        _raise_missing(system, err)

    return run


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = sys.argv[1:] if argv is None else list(argv)
    systems = _systems()
    args = build_parser(load=argv[0] if argv and argv[0] in systems else "", systems=systems).parse_args(argv)
    if args.system is not None:
        from pretrainkit.core import tracking

        tracking.set_system(args.system.name)  # MLflow's experiment is named after the system
    try:
        try:
            return int(args.func(args) or 0)
        except ModuleNotFoundError as e:  # a system's optional dependency imported by one of its verbs
            if args.system is None:
                raise
            _raise_missing(args.system, e)
    except PretrainkitError as e:
        print(f"pretrainkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Only a verb with --resume can be told to use it; one without (it reuses finished work) is rerun.
        hint = (
            " (resume with --resume auto)"
            if hasattr(args, "resume")
            else "; run the same command to continue"
        )
        print(f"pretrainkit: interrupted; completed checkpoints are kept{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
