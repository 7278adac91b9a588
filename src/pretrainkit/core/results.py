"""Results files: markdown for people and JSON for machines, carrying the same numbers plus the command,
seeds, git commit, machine and date. Written only by bench commands, never by hand."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from pretrainkit.core.checkpoint import atomic_write_text

RESULTS_DIR = Path(os.environ.get("PRETRAINKIT_RESULTS", "docs/results"))


def machine_info() -> dict[str, Any]:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"cpu_cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "device": dev, "python": platform.python_version(), "platform": platform.platform()}


def git_commit() -> str:
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, check=False)

    try:
        out = git("rev-parse", "--short", "HEAD")
        # results files rewritten by an earlier bench do not make the code that produced them dirty
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", f":!{RESULTS_DIR.as_posix()}")
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(seeds: list[int] | None = None) -> dict[str, Any]:
    return {"command": " ".join(["pretrainkit", *sys.argv[1:]]) if sys.argv else "", "seeds": seeds or [],
            "git_commit": git_commit(), "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine_info()}


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def write_results(name: str, headline: dict[str, Any], body_md: str, data: dict[str, Any],
                  seeds: list[int] | None = None, out_dir: Path | None = None, title: str | None = None,
                  original: dict[str, Any] | None = None) -> Path:
    """Write ``<name>.md`` and ``<name>.json`` with the same headline numbers and provenance.

    ``original``: the provenance of the run whose stored records are being re-rendered (the report code
    changed, the measurements did not); it stays the provenance, and this call is added as ``rerendered``."""
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    now = provenance(seeds)
    prov = now if original is None else {**original, "rerendered": {k: now[k] for k in ("command", "date",
                                                                                         "git_commit")}}
    payload = {"headline": headline, **data, "provenance": prov}
    atomic_write_text(out_dir / f"{name}.json", json.dumps(payload, indent=2, default=str))
    m = prov["machine"]
    again = prov.get("rerendered")
    head = [f"# {title or name} results", "",
            f"Written by `{prov['command']}` on {prov['date']}, commit `{prov['git_commit']}`; machine: "
            f"{m['cpu_cores']} cores, {m['device']}, torch {m['torch']}, {m['threads']} thread(s); "
            f"seeds {prov['seeds']}."
            + (f" Report re-rendered from that run's stored records (nothing re-run) by `{again['command']}` on "
               f"{again['date']}, commit `{again['git_commit']}`." if again else ""),
            "", "## Headline", "",
            md_table(["figure", "value"], [[k, v] for k, v in headline.items()]), "", body_md.strip(), ""]
    atomic_write_text(out_dir / f"{name}.md", "\n".join(head))
    return out_dir / f"{name}.md"
