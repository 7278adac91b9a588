"""CR-Net's bench report: per-method summary over seeds, the verdict, the markdown body, and ``render``, which
draws all of it from a stored results JSON alone (so a report can be re-written without re-running anything).
The measurements themselves are in bench.py."""

from __future__ import annotations

from typing import Any

from pretrainkit.core.config import from_dict
from pretrainkit.core.results import MeanStd, fmt_mean_std, md_table, mean_std
from pretrainkit.systems.crnet.config import CRNetConfig, replace

KIND = "crnet.bench"
LOW_RANK = ("lowrank", "cola", "lora", "relora", "galore")  # the parameter- or memory-efficient competitors
LABELS = {
    "full": "full-rank AdamW",
    "lowrank": "low-rank W = AB",
    "cola": "CoLA B·SiLU(A·x)",
    "lora": "LoRA from scratch",
    "relora": "ReLoRA (periodic merge)",
    "galore": "GaLore (full weights, low-rank optimiser)",
    "crnet": "CR-Net",
}


# --------------------------------------------------------------------------------------------------- summary
def _nan(v: float | None) -> float:
    return float("nan") if v is None else v  # a method whose every run diverged


def summarise(rows: list[dict], ranks: dict[str, int | None], memory: dict[str, float]) -> dict[str, dict]:
    """Per method (in the order of ``ranks``, the arms): ppl mean ± sample std over seeds (n = finite runs),
    parameters, memory, tokens/s."""
    out = {}
    for m, rank in ranks.items():
        rs = [r for r in rows if r["method"] == m]
        if not rs:
            continue
        ppl = mean_std(r["val_ppl"] for r in rs)
        r0 = rs[0]
        out[m] = {
            "label": LABELS.get(m, m),
            "rank": rank if m not in ("full", "galore") else None,
            "ppl_mean": _nan(ppl.mean),
            "ppl_std": ppl.std,
            "ppl_n": ppl.n,
            "ppl_by_seed": {r["seed"]: r["val_ppl"] for r in rs},
            "train_loss_mean": _nan(mean_std(r["train_loss"] for r in rs).mean),
            "trainable_params": r0["trainable_params"],
            "total_params": r0["total_params"],
            "optimizer_state_bytes": r0["optimizer_state_bytes"],
            "peak_activation_bytes": memory.get(m),
            "tokens_per_s": _nan(mean_std(r["tokens_per_s"] for r in rs).mean),
            "steps": r0["steps"],
            "tokens": r0["tokens"],
            "lr": r0["lr"],
            "block_lr_scale": r0.get("block_lr_scale", 1.0),
            "stopped_early": any(r["stopped_early"] for r in rs),
        }
    return out


def verdict(summary: dict[str, dict]) -> dict:
    """CR-Net's gap to full rank and, against each low-rank method whose budget is >= CR-Net's, win or loss.

    The budget is the number of trainable parameters: LoRA's and ReLoRA's frozen random weights cost memory but
    are not learned, so counting them would call a method that learns fewer parameters an equal-budget rival."""
    out: dict = {
        "crnet_gap_to_full_pct": None,
        "crnet_beats_low_rank_at_equal_or_smaller_params": None,
        "comparisons": {},
    }
    c = summary.get("crnet")
    if c is None:
        return out
    if "full" in summary:
        out["crnet_gap_to_full_pct"] = 100 * (c["ppl_mean"] / summary["full"]["ppl_mean"] - 1)
    wins = []
    for m in LOW_RANK:
        o = summary.get(m)
        if o is None:
            continue
        eligible = o["trainable_params"] >= c["trainable_params"]
        diff = c["ppl_mean"] - o["ppl_mean"]
        noise = None if c["ppl_std"] is None or o["ppl_std"] is None else c["ppl_std"] + o["ppl_std"]
        out["comparisons"][m] = {
            "crnet_minus_other_ppl": diff,
            "sum_of_stds": noise,
            "crnet_better": diff < 0,
            "beyond_noise": None if noise is None else abs(diff) > noise,
            "other_params_ge_crnet": eligible,
        }
        if eligible:
            wins.append(diff < 0)
    out["crnet_beats_low_rank_at_equal_or_smaller_params"] = all(wins) if wins else None
    return out


def _mb(x: float | None) -> str:
    return "—" if x is None else f"{x / 2**20:.1f}"


def _fmt_rank(r) -> str:
    return "—" if r is None else str(r)


def body(
    cfg: CRNetConfig, tcfg, ds: dict, summary: dict, v: dict, probes: list[dict], hf: dict, wall: float
) -> str:
    """The markdown report: protocol, methods table, CR-Net against the others, recomputation, HF."""
    tokens = cfg.batch_size * tcfg.grad_accum * cfg.seq_len * tcfg.max_steps
    val_scope = (
        "all validation tokens"
        if cfg.data.val_max_tokens <= 0
        else f"evenly spaced validation sequences up to {cfg.data.val_max_tokens:,} tokens"
    )
    align = (
        "off (all methods at the model rank)."
        if not cfg.bench.align_params
        else "lowrank, CoLA, LoRA and ReLoRA each get the smallest uniform rank at which they *train* at least "
        "CR-Net's parameters (frozen weights not counted); GaLore trains every weight (its rank is the "
        "optimiser's projection)."
        if cfg.bench.align_by == "trainable"
        else "lowrank and CoLA get the smallest uniform rank whose model has at least CR-Net's parameters "
        "(the paper's parameter-aligned comparison)."
    )
    data_line = (
        f"- Data: {ds['train_tokens']:,} training / {ds['val_tokens']:,} validation tokens; "
        f"{ds['train_documents']} training and {ds['val_documents']} held-out documents (whole files, "
        f"split seed {cfg.data.split_seed}); byte-level BPE with {ds['vocab_size']} ids trained on the "
        "training documents only."
    )
    arm_line = (
        f"- Every arm: {tcfg.max_steps} steps x {cfg.batch_size} x {cfg.seq_len} tokens = {tokens:,} tokens, "
        f"warm-up {tcfg.warmup_steps} steps then cosine to {tcfg.min_lr_ratio:g} x lr, grad clip "
        f"{tcfg.grad_clip:g}, weight decay {tcfg.weight_decay:g}, model preset `{cfg.model.preset}`."
    )
    lr_line = (
        f"- Learning rates (see the table; embeddings, head and norms train at lr, the blocks' projections "
        f"at lr x block scale, which for GaLore is its scale alpha): "
        f"{cfg.bench.lr_note or 'as configured in bench.lr'}. No sweep runs inside the bench. GaLore: rank "
        f"{cfg.galore.rank or 'as the model'}, projector refresh every {cfg.galore.update_proj_gap} steps. "
        "ReLoRA: merge every "
        f"{cfg.relora.reset_every} steps, optimiser state of A, B cleared, lr re-warmed over "
        f"{cfg.relora.rewarm_steps} steps. LoRA/ReLoRA: alpha {cfg.model.lora_alpha:g}, dropout "
        f"{cfg.model.lora_dropout:g}, frozen random W. CR-Net: init {cfg.model.crnet_init}, beta init "
        f"{cfg.model.crnet_beta_init:g}, betas at "
        + ("the blocks' lr" if cfg.beta_lr_scale is None else f"lr x {cfg.beta_lr_scale:g}")
        + f", layer 1 {cfg.model.crnet_anchor}-rank."
    )
    mem_line = (
        "- Peak activation memory: one forward + backward on a fixed batch (CPU: the profiler's allocation "
        "events; GPU: max_memory_allocated), gradients already allocated. Weights + optimiser state are "
        "listed apart."
    )
    lines = [
        "## Protocol",
        "",
        data_line,
        arm_line,
        f"- Validation perplexity = exp(sum of token NLL / number of scored tokens) over {val_scope}.",
        lr_line,
        f"- Parameter alignment: {align}",
        mem_line,
        "",
        "## Methods",
        "",
    ]
    rows = []
    for m, s in summary.items():
        s = {**s, "n": s.get("ppl_n", len(s["ppl_by_seed"]))}
        seeds = ", ".join(f"{p:.2f}" for p in s["ppl_by_seed"].values())
        rows.append(
            [
                s["label"],
                _fmt_rank(s["rank"]),
                f"{s['trainable_params']:,}",
                f"{s['total_params'] - s['trainable_params']:,}",
                f"{s['total_params']:,}",
                fmt_mean_std(MeanStd(s["ppl_mean"], s["ppl_std"], s["n"]), 2, n=False),
                s["n"],
                seeds,
                f"{s['tokens_per_s']:.0f}",
                _mb(s["peak_activation_bytes"]),
                _mb(s["optimizer_state_bytes"]),
                f"{s['lr']:g} x {s['block_lr_scale']:g}",
                s["steps"] if not s["stopped_early"] else f"{s['steps']} (time limit)",
            ]
        )
    lines.append(
        md_table(
            [
                "method",
                "rank",
                "trainable params",
                "frozen params",
                "total params",
                "val ppl (mean ± sample sd)",
                "n",
                "per seed",
                "train tok/s",
                "peak act. MB",
                "optim. state MB",
                "lr x block scale",
                "steps",
            ],
            rows,
        )
    )
    lines += ["", "## CR-Net against the others", ""]
    if v["crnet_gap_to_full_pct"] is not None:
        lines.append(
            f"- Gap to full rank: CR-Net's perplexity is {v['crnet_gap_to_full_pct']:+.2f} % relative to "
            f"full-rank AdamW ({summary['crnet']['ppl_mean']:.2f} vs {summary['full']['ppl_mean']:.2f}) with "
            f"{summary['crnet']['trainable_params'] / summary['full']['trainable_params']:.2f}x its trainable "
            "parameters."
        )
    for m, c in v["comparisons"].items():
        word = "lower" if c["crnet_better"] else "higher"
        budget = (
            "the other trains >= CR-Net's parameters"
            if c["other_params_ge_crnet"]
            else "the other trains FEWER parameters (its frozen weights not counted), so this pair is not at an "
            "equal budget"
        )
        if c["sum_of_stds"] is None:
            noise = "a single finite run, so no spread to judge noise by"
        else:
            noise = (
                f"{'beyond' if c['beyond_noise'] else 'within'} the sum of the two seed sample standard "
                f"deviations, {c['sum_of_stds']:.2f}"
            )
        lines.append(
            f"- vs {LABELS.get(m, m)}: CR-Net {word} by {abs(c['crnet_minus_other_ppl']):.2f} ppl "
            f"({noise}); {budget}."
        )
    b = v["crnet_beats_low_rank_at_equal_or_smaller_params"]
    lines.append(
        "- Verdict: "
        + (
            "no eligible comparison."
            if b is None
            else "CR-Net beats every low-rank method whose trainable-parameter budget is >= its own."
            if b
            else "CR-Net does NOT beat every low-rank method at an equal or larger "
            "budget (see the lines above)."
        )
    )
    lines += [
        "",
        "## Recomputation (CR-Net model, no training)",
        "",
        (
            "One measurement per shape and mode (n=1): peak memory of one forward + backward, the best step "
            "time of interleaved rounds."
        ),
        "",
    ]
    prow = []
    for p in probes:
        prow.append(
            [
                f"L{p['n_layers']} T{p['seq_len']} B{p['batch_size']} (keep every {p['checkpoint_every']})",
                _mb(p["none_peak_bytes"]),
                _mb(p["checkpoint_peak_bytes"]),
                _mb(p["crnet_peak_bytes"]),
                f"{p['recompute_memory_ratio']:.3f}",
                f"{p['checkpoint_memory_ratio']:.3f}",
                f"{p['none_step_s'] * 1000:.0f}",
                f"{p['recompute_step_time_ratio']:.2f}",
                f"{p['checkpoint_step_time_ratio']:.2f}",
            ]
        )
    lines.append(
        md_table(
            [
                "shape",
                "none MB",
                "checkpoint MB",
                "crnet MB",
                "crnet / none",
                "checkpoint / none",
                "none ms/step",
                "crnet time x",
                "checkpoint time x",
            ],
            prow,
        )
    )
    lines += [
        "",
        "The headline ratio is the first row (the bench's model shape).",
        "",
        "## Throughput against Hugging Face transformers",
        "",
    ]
    if hf["available"]:
        lines.append(
            md_table(
                ["model", "training tokens/s (best round)", "n (rounds)"],
                [
                    ["pretrainkit LlamaLM (full rank)", f"{hf['ours_tokens_per_s']:.0f}", hf["rounds"]],
                    [
                        f"transformers {hf['transformers']} LlamaForCausalLM (sdpa)",
                        f"{hf['hf_tokens_per_s']:.0f}",
                        hf["rounds"],
                    ],
                ],
            )
        )
        lines.append(
            f"\nSame config and weights (max logit difference {hf['max_logit_diff']:.2e}), batch "
            f"{hf['batch']} x {hf['seq_len']}, forward + backward + AdamW step, {hf['rounds']} interleaved "
            f"rounds of {hf['steps_per_round']} steps, best round each. Ratio {hf['ratio']:.3f}."
        )
    else:
        lines.append(f"Not measured: {hf['reason']}.")
    lines += ["", f"Wall time of the whole bench: {wall / 60:.1f} min.", ""]
    return "\n".join(lines)


def regime_table(other: dict, summary: dict, preset: str, tokens: int, steps: int) -> str:
    """Each method's perplexity and rank (1 = best) in the other regime and in this one."""

    def ranks(ppl: dict) -> dict:
        return {m: i + 1 for i, m in enumerate(sorted(ppl, key=ppl.get))}

    ours = {m: s["ppl_mean"] for m, s in summary.items()}
    theirs = {m: p for m, p in other["ppl"].items() if m in ours}
    r_ours, r_theirs = ranks(ours), ranks(theirs)
    rows = [
        [m, f"{theirs[m]:.2f}" if m in theirs else "—", r_theirs.get(m, "—"), f"{ours[m]:.2f}", r_ours[m]]
        for m in sorted(ours, key=ours.get)
    ]
    head = (
        f"old: {other.get('preset')}, {other.get('tokens_per_step'):,} tokens/step x {other.get('steps')} steps "
        f"(`{other['path']}`); new: {preset}, {tokens:,} tokens/step x {steps} steps"
    )
    moved = [m for m in r_ours if m in r_theirs and r_ours[m] != r_theirs[m]]
    return "\n".join(
        [
            "",
            "## How the ranking moves between the regimes",
            "",
            f"{head}. Perplexities are on the same validation documents but not comparable across regimes in "
            "absolute terms (other models, budgets and tokenizer runs); the ranks are the point. Means over each "
            "bench's seeds (see each report for n and spread).",
            "",
            md_table(["method", "old ppl", "old rank", "new ppl", "new rank"], rows),
            "",
            f"Methods whose rank moved: {', '.join(moved) if moved else 'none'}.",
            "",
        ]
    )


def bench_train(cfg: CRNetConfig, steps: int):
    """The arms' train config: the profile's, shortened to ``steps`` by the calibration (warm-up scaled)."""
    t = cfg.train
    if steps < t.max_steps:
        return replace(t, max_steps=steps, warmup_steps=max(1, round(t.warmup_steps * steps / t.max_steps)))
    return t


def headline(summary: dict, v: dict, probes: list[dict], hf: dict, device: str) -> dict[str, Any]:
    p0 = probes[0] if probes else {}
    return {
        "ppl": {m: round(s["ppl_mean"], 3) for m, s in summary.items()},
        "ppl_std": {m: None if s["ppl_std"] is None else round(s["ppl_std"], 3) for m, s in summary.items()},
        "ppl_n": {m: s["ppl_n"] for m, s in summary.items()},
        "trainable_params": {m: s["trainable_params"] for m, s in summary.items()},
        "frozen_params": {m: s["total_params"] - s["trainable_params"] for m, s in summary.items()},
        "crnet_gap_to_full_pct": None
        if v["crnet_gap_to_full_pct"] is None
        else round(v["crnet_gap_to_full_pct"], 2),
        "crnet_beats_low_rank_at_equal_or_smaller_params": v[
            "crnet_beats_low_rank_at_equal_or_smaller_params"
        ],
        "recompute_memory_ratio": round(p0["recompute_memory_ratio"], 3) if p0 else None,
        "checkpoint_memory_ratio": round(p0["checkpoint_memory_ratio"], 3) if p0 else None,
        "recompute_step_time_ratio": round(p0["recompute_step_time_ratio"], 3) if p0 else None,
        "checkpoint_step_time_ratio": round(p0["checkpoint_step_time_ratio"], 3) if p0 else None,
        "tokens_per_s_vs_hf": round(hf["ratio"], 3) if hf["available"] else None,
        "equal_tokens_all_arms": not any(s["stopped_early"] for s in summary.values()),
        "goal_recompute_memory_below_0_7": bool(p0 and p0["recompute_memory_ratio"] < 0.7),
        "goal_tokens_per_s_vs_hf_at_least_1": bool(hf["available"] and hf["ratio"] >= 1.0),
        "device": device,
    }


def render(payload: dict[str, Any]) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Headline, report and the derived summary/verdict from a stored CR-Net bench JSON. Older files carry
    no ``ranks``/``memory``: those come from their stored summary (measurements, not statistics)."""
    cfg = from_dict(CRNetConfig, payload["config"])
    if "align_by" not in payload["config"].get("bench", {}):  # written before the rule was named: by total
        cfg = replace(cfg, bench=replace(cfg.bench, align_by="total"))
    tcfg = bench_train(cfg, payload["steps_per_arm"])
    old = payload.get("summary") or {}
    ranks = payload.get("ranks") or {m: s["rank"] for m, s in old.items()}
    memory = payload.get("memory") or {m: s["peak_activation_bytes"] for m, s in old.items()}
    summary = summarise(payload["runs"], ranks, memory)
    v = verdict(summary)
    device = payload.get("device") or (payload.get("headline") or {}).get("device", "cpu")
    head = headline(summary, v, payload["recompute"], payload["hf"], device)
    text = body(
        cfg, tcfg, payload["data"], summary, v, payload["recompute"], payload["hf"], payload["wall_s"]
    )
    if payload.get("other_regime"):
        tokens = cfg.batch_size * cfg.seq_len * tcfg.grad_accum
        text += regime_table(payload["other_regime"], summary, cfg.model.preset, tokens, tcfg.max_steps)
    return head, text, {"summary": summary, "verdict": v}
