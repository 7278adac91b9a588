"""Checks shared by the bench-report tests: every table states n, and a re-rendered report equals the one
written with the measurements."""

import json
import re
from pathlib import Path


def tables_without_n(md: str) -> list[str]:
    """Markdown tables that do not state n: by an ``n`` column, a ``seed`` column (one row per seed), an
    ``n_*`` headline row, or ``n=`` in the table or in the paragraph or heading just above it."""
    lines, bad, i = md.splitlines(), [], 0
    while i < len(lines):
        if not lines[i].startswith("|"):
            i += 1
            continue
        j = i
        while j < len(lines) and lines[j].startswith("|"):
            j += 1
        table = "\n".join(lines[i:j])
        above = [x for x in lines[max(0, i - 4) : i] if x.strip()][-2:]
        heads = [c.strip().lower() for c in lines[i].strip("|").split("|")]
        ok = any(h == "n" or h.startswith("n (") or h == "seed" for h in heads) or re.search(
            r"\bn\s*=|\| n_\w+ \|", table + "\n" + "\n".join(above)
        )
        if not ok:
            bad.append(table)
        i = j
    return bad


def body_of(md: str) -> str:
    """The report below the provenance line and any re-rendering note: what a re-render must reproduce."""
    return md[md.index("## Headline") :]


def assert_rerender_equals(md_path: Path, again_dir: Path, rerender_fn) -> dict:
    """Re-render a freshly written results file: the same report, headline and derived fields, the run's
    provenance kept, nothing listed as changed."""
    out = json.loads(md_path.with_suffix(".json").read_text())
    again = rerender_fn(md_path.with_suffix(".json"), again_dir)
    redo = json.loads(again.with_suffix(".json").read_text())
    assert body_of(again.read_text()) == body_of(md_path.read_text())
    assert redo["headline"] == out["headline"]
    assert {k: v for k, v in redo.items() if k != "provenance"} == {
        k: v for k, v in out.items() if k != "provenance"
    }
    assert redo["provenance"]["date"] == out["provenance"]["date"]
    assert redo["provenance"]["rerendered"]["changes"] == []
    assert "No headline figure and no verdict differs" in again.read_text()
    return out
