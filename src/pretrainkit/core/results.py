"""Results files: markdown for people and JSON for machines, carrying the same numbers plus the command,
seeds, git commit, machine, date and resolved config. Written only by bench commands, never by hand.

One statistic for every bench: mean ± *sample* standard deviation (ddof 1) with n stated; a single value has
no spread (std None, shown as "—"), never 0. A bench module renders its report from the stored JSON alone
(``render(payload)``), so any report can be re-written later without re-running anything (``rerender``)."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import torch

from pretrainkit.core.checkpoint import atomic_write_text

RESULTS_DIR = Path(os.environ.get("PRETRAINKIT_RESULTS", "docs/results"))


NO_SPREAD = "—"  # how a missing std (n < 2) or a missing value is shown


@dataclass(frozen=True)
class MeanStd:
    """Mean and sample std (ddof 1) of ``n`` values; std is None for n < 2 and mean is None for n = 0."""

    mean: float | None
    std: float | None
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MeanStd:
        return cls(d.get("mean"), d.get("std"), int(d.get("n", 0)))


def mean_std(values: Iterable[float | None]) -> MeanStd:
    """The project's one statistic. None and non-finite values (a diverged run) are left out, so ``n`` says
    how many values it rests on."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return MeanStd(None, None, 0)
    return MeanStd(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None, len(xs))


def fmt_mean_std(ms: MeanStd | dict[str, Any], digits: int = 2, n: bool | int = True) -> str:
    """ "0.85 ± 0.02 (n=3)"; a single value "0.85 ± — (n=1)"; nothing "—". ``n``: True always states n,
    False never (the table has an n column), an int states it only where it differs from that int."""
    if isinstance(ms, dict):
        ms = MeanStd.from_dict(ms)
    if ms.mean is None:
        return NO_SPREAD
    sd = NO_SPREAD if ms.std is None else f"{ms.std:.{digits}f}"
    show = n if isinstance(n, bool) else ms.n != n
    return f"{ms.mean:.{digits}f} ± {sd}" + (f" (n={ms.n})" if show else "")


def machine_info() -> dict[str, Any]:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": dev,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def git_commit() -> str:
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, check=False)

    try:
        out = git("rev-parse", "--short", "HEAD")
        # results files rewritten by an earlier bench do not make the code that produced them dirty
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", f":!{RESULTS_DIR.as_posix()}")
        return (
            out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
            if out.returncode == 0
            else "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(
    seeds: list[int] | None = None, command: str | None = None, commit: str | None = None
) -> dict[str, Any]:
    """``command``/``commit``: what to record when the caller is not the CLI (a script) or the copy it runs
    in has no git history (the device machine gets the files without .git)."""
    if command is None:
        command = " ".join(["pretrainkit", *sys.argv[1:]]) if sys.argv else ""
    found = git_commit()
    return {
        "command": command,
        "seeds": seeds or [],
        "git_commit": commit if commit and found == "unknown" else found,
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
    }


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


Render = Callable[[dict[str, Any]], tuple[dict[str, Any], str, dict[str, Any]]]
"""A bench's ``render(payload) -> (headline, body_md, derived)``: from the stored JSON alone; ``derived`` are the
summary fields (means, verdicts) the JSON carries beside the records, recomputed with the report."""


def config_dict(config: Any) -> dict[str, Any] | None:
    if config is None or isinstance(config, dict):
        return config
    if is_dataclass(config):
        from pretrainkit.core.config import to_dict

        return to_dict(config)
    raise TypeError(f"config must be a dataclass or a dict, got {type(config).__name__}")


def as_stored(data: Any) -> Any:
    """``data`` as it reads back from the JSON (string keys, lists for tuples): a report rendered from this
    is the report a later re-rendering gives."""
    return json.loads(json.dumps(data, default=str))


def write_results(
    name: str,
    headline: dict[str, Any],
    body_md: str,
    data: dict[str, Any],
    seeds: list[int] | None = None,
    out_dir: Path | None = None,
    title: str | None = None,
    original: dict[str, Any] | None = None,
    config: Any = None,
    profile: str | None = None,
    kind: str | None = None,
    changes: list[str] | None = None,
    command: str | None = None,
    commit: str | None = None,
) -> Path:
    """Write ``<name>.md`` and ``<name>.json`` with the same headline numbers and provenance.

    ``config``: the resolved config (dataclass or dict), stored under ``config``; ``profile`` names the profile
    or file it came from. ``kind`` ("<system>.<bench>") tells a later re-rendering which report to draw.
    ``original``: the provenance of the run whose stored records are being re-rendered (the report code
    changed, the measurements did not); it stays the provenance, and this call is added as ``rerendered``,
    with ``changes``: the figures that differ from the stored report."""
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    now = provenance(seeds, command, commit)
    if profile is not None:
        now["profile"] = profile
    again = None
    if original is not None:
        again = {k: now[k] for k in ("command", "date", "git_commit")}
        if changes is not None:
            again["changes"] = changes
    prov = now if original is None else {**original, "rerendered": again}
    cfg = config_dict(config)
    payload = {
        "headline": headline,
        **({"kind": kind} if kind else {}),
        **({"title": title} if title else {}),
        **data,
        **({"config": cfg} if cfg is not None else {}),
        "provenance": prov,
    }
    atomic_write_text(out_dir / f"{name}.json", json.dumps(payload, indent=2, default=str))
    m = prov["machine"]
    used = prov["seeds"]
    prof = prov.get("profile")
    head = [
        f"# {title or name} results",
        "",
        f"Written by `{prov['command']}` on {prov['date']}, commit `{prov['git_commit']}`; machine: "
        f"{m['cpu_cores']} cores, {m['device']}, torch {m['torch']}, {m['threads']} thread(s); "
        f"seeds {used} (n={len(used)})"
        + (
            f"; config: profile `{prof}`, resolved config stored in the JSON."
            if prof
            else "; resolved config stored in the JSON."
            if "config" in payload
            else "; no config stored (this results file predates stored configs)."
        )
        + (
            f" Report re-rendered from that run's stored records (nothing re-run) by `{again['command']}` on "
            f"{again['date']}, commit `{again['git_commit']}`."
            if again
            else ""
        ),
        "",
        *(_changes_md(changes) if again else []),
        "## Headline",
        "",
        f"Seeds: n={len(used)}; each table below states the n of its figures.",
        "",
        md_table(["figure", "value"], [[k, v] for k, v in headline.items()]),
        "",
        body_md.strip(),
        "",
    ]
    atomic_write_text(out_dir / f"{name}.md", "\n".join(head))
    return out_dir / f"{name}.md"


def _changes_md(changes: list[str] | None) -> list[str]:
    if not changes:
        return ["No headline figure and no verdict differs from the stored report.", ""]
    return [
        (
            "Figures and verdicts that differ from the stored report (the report code changed since it was "
            "written; the project's std is now the sample std, ddof 1, with n stated):"
        ),
        "",
        *[f"- {c}" for c in changes],
        "",
    ]


def publish(
    name: str,
    data: dict[str, Any],
    render: Render,
    *,
    kind: str,
    seeds: list[int] | None,
    out_dir: Path | None = None,
    title: str | None = None,
    config: Any = None,
    profile: str | None = None,
) -> Path:
    """A bench's last step: store ``data`` (records + config), draw the report from it as a re-rendering
    would, write both files."""
    stored = as_stored({**data, **({"config": config_dict(config)} if config is not None else {})})
    headline, body, derived = render(stored)
    return write_results(
        name,
        headline,
        body,
        {**stored, **derived},
        seeds=seeds,
        out_dir=out_dir,
        title=title,
        profile=profile,
        kind=kind,
    )


def load_results(path: str | Path, what: str = "a pretrainkit") -> dict[str, Any]:
    """A stored results JSON; ``what`` names the expected kind in the error ("an L2M bench")."""
    from pretrainkit.errors import DataError

    p = Path(path)
    try:
        payload = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read results file {p} ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or "provenance" not in payload or "headline" not in payload:
        raise DataError(f"{p} is not {what} results file (no headline / provenance)")
    return payload


def rerender(
    path: str | Path,
    render: Render,
    out_dir: Path | None = None,
    kind: str | None = None,
    title: str | None = None,
    what: str = "a pretrainkit bench",
) -> Path:
    """Re-write ``<name>.md/.json`` from the records stored in a results JSON (nothing re-run): the original
    command, date and commit stay its provenance; figures that differ from the stored ones are listed."""
    from pretrainkit.errors import DataError

    p = Path(path)
    payload = load_results(p, what)
    try:
        headline, body, derived = render(payload)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise DataError(
            f"{p} is not {what} results file its report can be drawn from ({type(e).__name__}: {e})"
        ) from None
    changes = [f"{k}: {a} -> {b}" for k, (a, b) in _diff(payload["headline"], headline).items()]
    changes += [
        f"{k}: {a} -> {b}"
        for k, (a, b) in _diff({k: payload.get(k) for k in derived}, derived).items()
        if isinstance(a, bool) or isinstance(b, bool)
    ]  # verdicts; moved stds are in the tables
    original = {k: v for k, v in payload["provenance"].items() if k != "rerendered"}
    data = {k: v for k, v in payload.items() if k not in ("headline", "provenance", "kind", "title")}
    return write_results(
        p.stem,
        headline,
        body,
        {**data, **derived},
        seeds=original.get("seeds"),
        out_dir=out_dir or p.parent,
        title=payload.get("title") or title,
        original=original,
        kind=payload.get("kind") or kind,
        changes=changes,
    )


def _diff(old: Any, new: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Leaf-by-leaf differences of two JSON values (keys only ``new`` has are additions, not changes)."""
    old, new = as_stored(old), as_stored(new)
    if isinstance(old, dict) and isinstance(new, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for k in old:
            out.update(_diff(old.get(k), new.get(k), f"{prefix}{k}."))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = {}
        for i, (a, b) in enumerate(zip(old, new)):
            out.update(_diff(a, b, f"{prefix}{i}."))
        return out
    return {} if old == new else {prefix.rstrip("."): (old, new)}
