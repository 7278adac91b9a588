"""Tables, headline figures and the accuracy-against-labels plot from the grid's rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pretrainkit.core.results import MeanStd, fmt_mean_std, md_table, mean_std
from pretrainkit.systems.saga.experiment import DESCRIPTIONS, EQUAL_COMPUTE, FULL_LABEL, METHODS


def summarise(rows: list[dict]) -> dict[tuple, MeanStd]:
    """(label, split, budget, method) -> mean and sample std of the test accuracy over seeds."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["label"], r["split"], r["budget"], r["method"]), []).append(r["acc"])
    return {k: mean_std(v) for k, v in groups.items()}


def _cell(s: dict, key: tuple, n: int) -> str:
    return fmt_mean_std(s[key], 3, n=n) if key in s else "–"


def _mean(rows: list[dict], **match) -> float | None:
    return mean_std(r["acc"] for r in rows if all(r.get(k) == x for k, x in match.items())).mean


def full_label_reference(rows: list[dict], label: str = "activity", split: str = "random") -> str | None:
    """The full-label candidate with the best mean *validation* accuracy (never the test one): the
    denominator of every ratio. Old rows carry only the GRU, which is then the reference."""
    present = {
        m: [r.get("val_acc") for r in rows if (r["label"], r["split"], r["method"]) == (label, split, m)]
        for m in FULL_LABEL
    }
    present = {m: v for m, v in present.items() if v}
    if len(present) == 1:
        return next(iter(present))
    scored = [(float(np.mean(v)), m) for m, v in present.items() if None not in v]
    return max(scored, key=lambda t: t[0])[1] if scored else None


def headline(rows: list[dict], split: str = "random") -> dict[str, float | str | None]:
    """Headline figures on ``split`` (random for HAPT; a fixed-split archive has its own)."""
    ref = full_label_reference(rows, split=split)
    full = _mean(rows, label="activity", split=split, method=ref) if ref else None
    out: dict[str, float | str | None] = {"full_label_reference": ref}
    saga100 = _mean(rows, label="activity", split=split, budget=100, method="saga")
    for b in (100, 20):
        s = _mean(rows, label="activity", split=split, budget=b, method="saga")
        out[f"activity_ratio_at_{b}"] = round(s / full, 4) if s and full else None
    for lab in ("activity", "user"):
        s, lb = (_mean(rows, label=lab, split=split, budget=20, method=m) for m in ("saga", "limu-bert"))
        out[f"saga_minus_limubert_{lab}"] = (
            round(100 * (s - lb), 2) if s is not None and lb is not None else None
        )
    for lab in ("activity", "user"):
        # against the stronger of the two equal-compute variants (the conservative reading for Saga)
        s = _mean(rows, label=lab, split=split, budget=20, method="saga")
        ec = [_mean(rows, label=lab, split=split, budget=20, method=m) for m in EQUAL_COMPUTE.values()]
        ec = [v for v in ec if v is not None]
        out[f"saga_minus_limubert_equal_compute_{lab}"] = (
            round(100 * (s - max(ec)), 2) if s is not None and ec else None
        )

    def gap(a: str, b: str) -> float | None:
        x, y = (_mean(rows, label="activity", split=split, budget=20, method=m) for m in (a, b))
        return round(100 * (x - y), 2) if x is not None and y is not None else None

    out["searched_minus_equal"] = gap("saga", "equal")  # the main (GRU) pipeline
    out["searched_minus_equal_linear"] = gap("saga-linear", "equal-linear")  # the head the search optimises
    out["weight_grid_gain"] = gap("grid-oracle-linear", "equal-linear")  # test-label reference
    s, fl = (_mean(rows, label="user", split=split, budget=100, method=m) for m in ("saga", "floor"))
    out["saga_minus_floor_user_at_100"] = (
        round(100 * (s - fl), 2) if s is not None and fl is not None else None
    )
    out["saga_activity_acc_at_100"] = round(saga100, 4) if saga100 else None
    out["full_label_activity_acc"] = round(full, 4) if full else None
    for m in FULL_LABEL:
        acc = _mean(rows, label="activity", split=split, method=m)
        if acc is not None and m != ref:
            out[f"{m}_activity_acc"] = round(acc, 4)
    return out


def tables(rows: list[dict]) -> str:
    s = summarise(rows)
    n = len({r["seed"] for r in rows})  # cells over fewer seeds say so
    combos = sorted(
        {(r["label"], r["split"]) for r in rows}, key=lambda c: (c[0] != "activity", c[1] != "random")
    )
    budgets = sorted({r["budget"] for r in rows if r["budget"] > 0})
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    parts = []
    for lab, split in combos:
        parts.append(f"### {lab}, {split} split — test accuracy (mean ± sample std over n={n} seeds)\n")
        body = []
        for m in methods:
            if m in FULL_LABEL:
                body.append([m] + [_cell(s, (lab, split, 0, m), n)] * 1 + [""] * (len(budgets) - 1))
                continue
            body.append([m] + [_cell(s, (lab, split, b, m), n) for b in budgets])
        parts.append(md_table(["method \\ labels per class"] + [str(b) for b in budgets], body) + "\n")
        f1 = [r for r in rows if r["label"] == lab and r["split"] == split and r["method"] == "saga"]
        if f1:
            parts.append(
                f"Weights chosen by the search (mean over n={n} seeds; sensor, point, sub-period, period):\n"
            )
            wrows = []
            for b in budgets:
                ws = [r["weights"] for r in f1 if r["budget"] == b]
                if ws:
                    keys = list(ws[0])
                    wrows.append([b] + [f"{np.mean([w[k] for w in ws]):.2f}" for k in keys])
            parts.append(md_table(["budget"] + [k.split(".")[-1] for k in keys], wrows) + "\n")
    parts.append("### Methods\n")
    parts.append("\n".join(f"- **{m}**: {DESCRIPTIONS[m]}" for m in methods))
    return "\n".join(parts)


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarise(rows)
    combos = sorted(
        {(r["label"], r["split"]) for r in rows}, key=lambda c: (c[0] != "activity", c[1] != "random")
    )
    budgets = sorted({r["budget"] for r in rows if r["budget"] > 0})
    fig, axes = plt.subplots(1, len(combos), figsize=(4.2 * len(combos), 3.6), squeeze=False)
    for ax, (lab, split) in zip(axes[0], combos):
        for m in METHODS:
            if m in FULL_LABEL:
                if m == full_label_reference(rows, lab, split) and (lab, split, 0, m) in s:
                    ax.axhline(s[(lab, split, 0, m)].mean, color="k", ls="--", lw=1, label=f"{m} (reference)")
                continue
            # a single seed has no spread: no error bar (not a zero one)
            pts = [
                (b, s[(lab, split, b, m)].mean, s[(lab, split, b, m)].std or 0.0)
                for b in budgets
                if (lab, split, b, m) in s
            ]
            if pts:
                b, mu, sd = zip(*pts)
                ax.errorbar(
                    b, mu, yerr=sd, marker="o", ms=3, capsize=2, label=m, lw=1.5 if m == "saga" else 1
                )
        ax.set_xscale("log")
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("labels per class")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{lab}, {split} split", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
