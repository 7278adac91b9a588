"""Accuracy against pre-training length: is the bench's pre-training long enough to matter?

One encoder per pre-training seed is trained on one task to the longest length; after each shorter length it is
frozen, its features classified with the grid's GRU head at a few budgets (both downstream tasks, random
split), and training continues. Under the bench's constant learning rate, continuing a run is the same as
having asked for the longer run (the trainer resumes bit-exactly), so every length costs only its own steps.
Rows go to ``<out>/length-rows.jsonl`` as they are made, so an interrupted curve resumes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pretrainkit.core.results import fmt_mean_std, md_table, mean_std, publish
from pretrainkit.errors import ConfigError
from pretrainkit.systems.saga.config import SagaConfig
from pretrainkit.systems.saga.features import unit_index
from pretrainkit.systems.saga.pipeline import SagaPipeline

KIND, TITLE = "saga.length", "Saga: accuracy against pre-training length"


def check_lengths(lengths: list[int]) -> list[int]:
    if not lengths or any(n < 1 for n in lengths) or sorted(set(lengths)) != list(lengths):
        raise ConfigError(
            f"--steps must be increasing positive step counts, e.g. 200,800,3200; got {lengths}"
        )
    return lengths


def run_curve(
    cfg: SagaConfig, lengths: list[int], task: str, budgets: list[int], log=print
) -> list[dict[str, Any]]:
    """Rows {pretrain_seed, steps, label, budget, seed, acc, f1}; the downstream seeds are the config's."""
    check_lengths(lengths)
    if cfg.pretrain.train.schedule != "constant":
        raise ConfigError(
            "the length curve continues one run from length to length: it needs "
            "pretrain.train.schedule=constant (a cosine schedule depends on the final length)"
        )
    pipe = SagaPipeline(cfg, log=log, progress=False)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_file = out / "length-rows.jsonl"
    rows = (
        [json.loads(x) for x in rows_file.read_text().splitlines() if x.strip()] if rows_file.exists() else []
    )
    done = {(r["steps"], r["label"], r["budget"], r["seed"]) for r in rows}
    labels = cfg.downstream.labels  # both suit the random split
    test = unit_index(pipe.split("random")[2], pipe.per_window)
    t0 = time.time()
    for steps in lengths:
        wanted = [
            (lab, b, s)
            for lab in labels
            for b in budgets
            for s in cfg.downstream.seeds
            if (steps, lab, b, s) not in done
        ]
        if not wanted:
            continue
        enc = pipe.pretrain([task], None, tag=f"length-{task}", steps=steps)
        feats = pipe.unit_features((f"length-{steps}",), enc)
        for lab, b, s in wanted:
            fit, val = pipe.budget(lab, "random", b, s)
            r = pipe.fit_gru(feats, lab, fit, val, test, s)
            row = dict(
                pretrain_seed=cfg.pretrain.train.seed,
                steps=steps,
                label=lab,
                budget=b,
                seed=s,
                acc=r["acc"],
                f1=r["f1"],
            )
            rows.append(row)
            with open(rows_file, "a") as f:
                f.write(json.dumps(row) + "\n")
        log(f"length {steps}: evaluated ({time.time() - t0:.0f} s)")
    return rows


def render(payload: dict[str, Any], plot_name: str = "saga-length.png") -> tuple[dict, str, dict]:
    rows, task = payload["rows"], payload["task"]
    lengths = sorted({r["steps"] for r in rows})
    cells: dict[tuple, list[float]] = {}
    for r in rows:
        cells.setdefault((r["label"], r["budget"], r["steps"]), []).append(r["acc"])
    n = len({r["seed"] for r in rows})
    body_rows = []
    head: dict[str, Any] = {"task": task, "lengths": lengths}
    for lab, b in sorted({(r["label"], r["budget"]) for r in rows}):
        stats = [mean_std(cells.get((lab, b, s), [])) for s in lengths]
        body_rows.append(
            [lab, b] + [fmt_mean_std(m, 3, n=len(cells.get((lab, b, s), []))) for m, s in zip(stats, lengths)]
        )
        if len(lengths) >= 2 and stats[-1].mean is not None and stats[-2].mean is not None:
            head[f"{lab}_at_{b}_last_gain"] = round(100 * (stats[-1].mean - stats[-2].mean), 2)
    wall = payload.get("wall_s")
    body = "\n".join(
        [
            "## Protocol",
            "",
            f"- One `{task}` encoder (pre-training seed {rows[0]['pretrain_seed'] if rows else '-'}, the bench "
            "profile's batch, lr and constant schedule) is trained to each length in turn; at each length its frozen "
            "features get the grid's GRU head at each budget (random split), over the downstream seeds (n below). "
            "No validation- or test-split label chooses anything.",
            "- `*_last_gain` in the headline: accuracy points gained by the last length over the one before "
            "(the curve has flattened where this is within the seed spread).",
            "",
            f"## Test accuracy (mean ± sample std over n={n} downstream seeds)",
            "",
            md_table(["label", "labels per class"] + [f"{s} steps" for s in lengths], body_rows),
            "",
            f"![accuracy against pre-training length]({plot_name})",
            "",
            f"Wall time: {wall:.0f} s." if wall is not None else "",
        ]
    )
    return head, body, {}


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for lab, b in sorted({(r["label"], r["budget"]) for r in rows}):
        lengths = sorted({r["steps"] for r in rows if (r["label"], r["budget"]) == (lab, b)})
        ms = [
            mean_std([r["acc"] for r in rows if (r["label"], r["budget"], r["steps"]) == (lab, b, s)])
            for s in lengths
        ]
        ax.errorbar(
            lengths,
            [m.mean for m in ms],
            yerr=[m.std or 0.0 for m in ms],
            marker="o",
            ms=3,
            capsize=2,
            label=f"{lab}, {b}/class",
        )
    ax.set_xscale("log")
    ax.set_xlabel("pre-training steps")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_bench(
    cfg: SagaConfig,
    lengths: list[int],
    task: str,
    budgets: list[int],
    out_dir: Path | None,
    name: str,
    profile: str | None,
) -> Path:
    from pretrainkit.core.results import RESULTS_DIR

    t0 = time.time()
    rows = run_curve(cfg, lengths, task, budgets, log=lambda m: print(m, flush=True))
    plot(rows, Path(out_dir or RESULTS_DIR) / f"{name}.png")
    data = {"rows": rows, "task": task, "wall_s": time.time() - t0}
    return publish(
        name,
        data,
        lambda p: render(p, plot_name=f"{name}.png"),
        kind=KIND,
        seeds=cfg.downstream.seeds,
        out_dir=out_dir,
        title=TITLE,
        config=cfg,
        profile=profile,
    )
