"""The system contract: one ``System`` object per system, found through the ``pretrainkit.systems`` entry
point group, so a new system (ours or one from a user's own package) is added without editing ``cli.py``.

A package declares, in its pyproject.toml::

    [project.entry-points."pretrainkit.systems"]
    mysys = "mypkg.mysys:SYSTEM"

and ``mypkg/mysys/__init__.py`` defines ``SYSTEM = System(name="mysys", help=..., add_commands=...)``. The
callables should import their heavy modules when called, so listing the systems stays cheap and a missing
optional dependency only affects that one system.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from pretrainkit.errors import PretrainkitError

GROUP = "pretrainkit.systems"


@dataclass(frozen=True)
class System:
    """What the CLI needs to know about a system.

    ``add_commands(parser)`` registers the system's verbs on its ``pretrainkit <name>`` parser;
    ``bench_main(argv)`` runs ``pretrainkit bench <name> ...`` and returns an exit status (None: no bench);
    ``extra`` names the optional dependency group of ``package`` the system needs, for the install hint.
    """

    name: str
    help: str
    add_commands: Callable[[argparse.ArgumentParser], None]
    bench_main: Callable[[list[str]], int] | None = None
    extra: str = ""
    package: str = "pretrainkit"

    @property
    def install_hint(self) -> str:
        return (
            f"pip install '{self.package}[{self.extra}]'" if self.extra else f"pip install '{self.package}'"
        )

    def missing(self, err: BaseException) -> PretrainkitError:
        """The one-line error for a system whose dependencies are not installed."""
        return PretrainkitError(f"the '{self.name}' system needs its extra: {self.install_hint} ({err})")


def lazy(module: str, attr: str) -> Callable:
    """A callable that imports ``module`` only when called and forwards to its ``attr``."""

    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    call.__qualname__ = call.__name__ = f"lazy({module}:{attr})"
    return call


def broken_system(name: str, err: BaseException) -> System:
    """A stand-in for an entry point that failed to load: listed, and every use says why in one line."""

    def fail(*_args, **_kw):
        raise PretrainkitError(f"the '{name}' system failed to load: {type(err).__name__}: {err}")

    def add_commands(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        parser.set_defaults(func=fail)

    return System(
        name=name, help=f"(failed to load: {type(err).__name__})", add_commands=add_commands, bench_main=fail
    )


def discover() -> dict[str, System]:
    """Every installed system by name, in name order. An entry point that fails to import, or does not
    point at a ``System``, becomes a ``broken_system`` so the others keep working."""
    found: dict[str, System] = {}
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        if ep.name in found:  # the same name from two distributions (e.g. an editable and a wheel install)
            continue
        try:
            obj = ep.load()
        except Exception as e:  # any failure in a third-party import must stay local to that system
            found[ep.name] = broken_system(ep.name, e)
            continue
        if not isinstance(obj, System):
            found[ep.name] = broken_system(ep.name, TypeError(f"{ep.value} is not a pretrainkit System"))
        elif obj.name != ep.name:
            found[ep.name] = broken_system(
                ep.name, ValueError(f"entry point '{ep.name}' names a System called '{obj.name}'")
            )
        else:
            found[ep.name] = obj
    return found
