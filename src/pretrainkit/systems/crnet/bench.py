"""`pretrainkit bench crnet`: every method on the same data, tokens and seeds; memory, recompute, HF throughput.

Arms are interleaved (all methods for seed 0, then all in reverse order for seed 1, ...) so a slow spell of a
shared machine does not fall on one method. Writes docs/results/<name>.{md,json} through core.results.
"""

from __future__ import annotations

import math
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from pretrainkit.core.results import md_table, write_results
from pretrainkit.errors import ConfigError
from pretrainkit.systems.crnet.config import CRNetConfig, llama_config, replace
from pretrainkit.systems.crnet.data import prepare_text_data
from pretrainkit.systems.crnet.model import LlamaConfig, count_parameters
from pretrainkit.systems.crnet.pipeline import _device, build_lm, make_optimizer, train_lm
from pretrainkit.systems.crnet.recompute import peak_memory

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


# --------------------------------------------------------------------------------------------------- arms
def aligned_rank(cfg: CRNetConfig, vocab: int, method: str, target: int) -> int:
    """Smallest uniform rank whose model has at least ``target`` parameters (the paper's parameter alignment)."""
    base = llama_config(cfg, vocab, method=method)
    lo, hi = 1, min(base.hidden, base.intermediate)
    if count_parameters(llama_config(cfg, vocab, method=method, rank=hi), False) < target:
        return hi
    while lo < hi:
        mid = (lo + hi) // 2
        if count_parameters(llama_config(cfg, vocab, method=method, rank=mid), False) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def arm_configs(cfg: CRNetConfig, vocab: int) -> dict[str, LlamaConfig]:
    """Each method's model config; with bench.align_params, lowrank/cola get CR-Net's parameter count or more."""
    arms = {m: llama_config(cfg, vocab, method=m, recompute="none") for m in cfg.bench.methods}
    if cfg.bench.align_params and "crnet" in arms and not isinstance(cfg.model.rank, list):
        target = count_parameters(arms["crnet"], False)
        for m in ("lowrank", "cola"):
            if m in arms:
                arms[m] = llama_config(
                    cfg, vocab, method=m, recompute="none", rank=aligned_rank(cfg, vocab, m, target)
                )
    return arms


def arm_cfg(cfg: CRNetConfig, method: str, seed: int, lr: float, block_scale: float) -> CRNetConfig:
    """The config one training arm runs with. ``block_scale`` multiplies the lr of the blocks' projections;
    for GaLore it is galore.scale, which plays that role (its embeddings, head and norms keep ``lr``)."""
    out = replace(cfg, train=replace(cfg.train, seed=seed, lr=lr, progress=False))
    if method == "galore":
        return replace(out, galore=replace(cfg.galore, scale=block_scale))
    return replace(out, block_lr_scale=block_scale)


def arm_lr(cfg: CRNetConfig, method: str) -> tuple[float, float]:
    """(lr, block scale) of ``method`` in the bench: bench.lr / bench.block_lr_scale, else the defaults."""
    b = cfg.bench
    default_scale = cfg.galore.scale if method == "galore" else cfg.block_lr_scale
    return b.lr.get(method, cfg.train.lr), b.block_lr_scale.get(method, default_scale)


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _batch(
    vocab: int, batch: int, seq: int, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq + 1), generator=g)
    return ids[:, :-1].contiguous().to(device), ids[:, 1:].contiguous().to(device)


def calibrate_steps(cfg: CRNetConfig, arms: dict[str, LlamaConfig], device: torch.device, log=print) -> int:
    """Steps that let the slowest arm train within bench.arm_budget_s (same steps, so same tokens, for all)."""
    worst = 0.0
    for m, mcfg in arms.items():
        lm = build_lm(mcfg, 0).to(device)
        opt = make_optimizer(m, cfg, mcfg)(lm, cfg.train)
        ids, labels = _batch(mcfg.vocab_size, cfg.batch_size, cfg.seq_len, device)
        times = []
        for i in range(5):
            _sync(device)
            t = time.perf_counter()
            for _ in range(cfg.train.grad_accum):
                with _autocast(device):
                    _, loss = lm(ids, labels)
                loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(device)
            if i >= 2:
                times.append(time.perf_counter() - t)
        worst = max(worst, min(times))
        del lm, opt
    # 30 % margin for evaluation and the trainer's own work
    steps = max(10, min(cfg.train.max_steps, int(cfg.bench.arm_budget_s / (worst * 1.3))))
    log(f"calibration: slowest arm {worst * 1000:.0f} ms/step -> {steps} steps per arm")
    return steps


# --------------------------------------------------------------------------------------------------- measurements
def memory_and_time(
    mcfg: LlamaConfig,
    batch: int,
    seq: int,
    device: torch.device,
    modes: tuple[str, ...],
    rounds: int = 3,
    steps: int = 2,
) -> dict[str, dict[str, float]]:
    """Peak activation memory (one fwd+bwd) and best step time of one model config under each recompute mode."""
    out: dict[str, dict[str, float]] = {}
    models = {}
    ids, labels = _batch(mcfg.vocab_size, batch, seq, device)
    for mode in modes:
        models[mode] = build_lm(replace(mcfg, recompute=mode), 0).to(device)
        with _autocast(device):
            out[mode] = {"peak_bytes": float(peak_memory(models[mode], ids, labels))}
    best = {m: math.inf for m in modes}
    for r in range(rounds):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            model = models[mode]
            for i in range(steps + 1):
                _sync(device)
                t = time.perf_counter()
                with _autocast(device):
                    _, loss = model(ids, labels)
                loss.backward()
                _sync(device)
                if i:  # the first call of each round re-warms caches
                    best[mode] = min(best[mode], time.perf_counter() - t)
            model.zero_grad(set_to_none=True)
    for m in modes:
        out[m]["step_s"] = best[m]
    return out


def hf_throughput(
    mcfg: LlamaConfig, batch: int, seq: int, device: torch.device, rounds: int, steps: int
) -> dict:
    """Training tokens/s (fwd + bwd + AdamW step) of our full-rank LlamaLM and of transformers'
    LlamaForCausalLM with the same weights, timed in interleaved rounds; the best round of each counts."""
    try:
        import transformers
        from transformers import LlamaConfig as HFLlamaConfig
        from transformers import LlamaForCausalLM
    except ImportError as e:
        return {
            "available": False,
            "reason": f"transformers is not installed (pip install 'pretrainkit[crnet-hf]'): {e}",
        }
    from pretrainkit.systems.crnet.model import hf_config, to_hf_state_dict

    transformers.logging.set_verbosity_error()
    ours = build_lm(replace(mcfg, method="full", rank=None, recompute="none"), 0).to(device)
    hfc = HFLlamaConfig(**hf_config(ours.cfg))
    hfc._attn_implementation = "sdpa"  # the same fused attention our model calls
    hf = LlamaForCausalLM(hfc).to(device)
    hf.load_state_dict(to_hf_state_dict(ours), strict=True)
    ids, labels = _batch(mcfg.vocab_size, batch, seq, device)
    hf_labels = ids  # HF shifts inside; ours takes targets already shifted: the same T-1 (+1) predictions
    with torch.no_grad(), _autocast(device):
        lo = ours(ids)[0].float()
        lh = hf(input_ids=ids).logits.float()
    max_diff = float((lo - lh).abs().max())
    opt_o = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    opt_h = torch.optim.AdamW(hf.parameters(), lr=1e-4)

    def step_ours() -> None:
        with _autocast(device):
            _, loss = ours(ids, labels)
        loss.backward()
        opt_o.step()
        opt_o.zero_grad(set_to_none=True)

    def step_hf() -> None:
        with _autocast(device):
            loss = hf(input_ids=ids, labels=hf_labels).loss
        loss.backward()
        opt_h.step()
        opt_h.zero_grad(set_to_none=True)

    fns = {"ours": step_ours, "hf": step_hf}
    for f in fns.values():  # warm-up: allocator, AdamW state
        f()
        f()
    best = {k: math.inf for k in fns}
    for r in range(rounds):
        for k in ("ours", "hf") if r % 2 == 0 else ("hf", "ours"):
            _sync(device)
            t = time.perf_counter()
            for _ in range(steps):
                fns[k]()
            _sync(device)
            best[k] = min(best[k], (time.perf_counter() - t) / steps)
    tok = batch * seq
    return {
        "available": True,
        "transformers": transformers.__version__,
        "max_logit_diff": max_diff,
        "ours_tokens_per_s": tok / best["ours"],
        "hf_tokens_per_s": tok / best["hf"],
        "ratio": best["hf"] / best["ours"],
        "batch": batch,
        "seq_len": seq,
        "rounds": rounds,
        "steps_per_round": steps,
    }


# --------------------------------------------------------------------------------------------------- summary
def _mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None


def summarise(rows: list[dict], arms: dict[str, LlamaConfig], memory: dict[str, float]) -> dict[str, dict]:
    """Per method: ppl mean/std over seeds, parameters, memory, tokens/s."""
    out = {}
    for m, mcfg in arms.items():
        rs = [r for r in rows if r["method"] == m]
        if not rs:
            continue
        ppl, ppl_sd = _mean_std([r["val_ppl"] for r in rs])
        tps, _ = _mean_std([r["tokens_per_s"] for r in rs])
        r0 = rs[0]
        out[m] = {
            "label": LABELS.get(m, m),
            "rank": mcfg.rank if m not in ("full", "galore") else None,
            "ppl_mean": ppl,
            "ppl_std": ppl_sd,
            "ppl_by_seed": {r["seed"]: r["val_ppl"] for r in rs},
            "train_loss_mean": _mean_std([r["train_loss"] for r in rs])[0],
            "trainable_params": r0["trainable_params"],
            "total_params": r0["total_params"],
            "optimizer_state_bytes": r0["optimizer_state_bytes"],
            "peak_activation_bytes": memory.get(m),
            "tokens_per_s": tps,
            "steps": r0["steps"],
            "tokens": r0["tokens"],
            "lr": r0["lr"],
            "block_lr_scale": r0.get("block_lr_scale", 1.0),
            "stopped_early": any(r["stopped_early"] for r in rs),
        }
    return out


def verdict(summary: dict[str, dict]) -> dict:
    """CR-Net's gap to full rank and, against each low-rank method whose budget is >= CR-Net's, win or loss."""
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
        eligible = o["total_params"] >= c["total_params"]
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


# --------------------------------------------------------------------------------------------------- bench
def run_bench(cfg: CRNetConfig, results_dir: Path | None = None, name: str = "crnet", log=print) -> Path:
    """Train every bench method for every seed, measure memory and throughput, write the results files."""
    t_start = time.time()
    b = cfg.bench
    if "crnet" not in b.methods:
        raise ConfigError("bench.methods must include crnet (the method under test)")
    device = torch.device(_device(cfg.device))
    data = prepare_text_data(cfg.data, Path(cfg.out), log=log)
    vocab = data.tokenizer.vocab_size
    arms = arm_configs(cfg, vocab)
    for m, mc in arms.items():
        log(
            f"{m:>8}: rank {_fmt_rank(mc.rank if m not in ('full', 'galore') else None)}, "
            f"{count_parameters(mc, False):,} parameters ({count_parameters(mc, True):,} trainable)"
        )
    tcfg = cfg.train
    if b.arm_budget_s > 0:
        steps = calibrate_steps(cfg, arms, device, log)
        if steps < tcfg.max_steps:
            tcfg = replace(
                tcfg, max_steps=steps, warmup_steps=max(1, round(tcfg.warmup_steps * steps / tcfg.max_steps))
            )

    # ---- training arms, interleaved over seeds
    rows: list[dict] = []
    n_arms = len(b.seeds) * len(arms)
    for i, seed in enumerate(b.seeds):
        order = list(arms) if i % 2 == 0 else list(arms)[::-1]
        for m in order:
            lr, scale = arm_lr(cfg, m)
            r = train_lm(arm_cfg(replace(cfg, train=tcfg), m, seed, lr, scale), data, method=m, mcfg=arms[m],
                         time_limit_s=b.time_limit_s, log=log)
            r["block_lr_scale"] = scale
            rows.append(r)
            elapsed = time.time() - t_start
            log(
                f"[{len(rows)}/{n_arms}] {m} seed {seed}: val ppl {r['val_ppl']:.2f}, {r['tokens_per_s']:.0f} tok/s, "
                f"{r['wall_s']:.0f} s (elapsed {elapsed / 60:.1f} min)"
            )

    # ---- activation memory of every method at the bench shape, and the recompute probes
    shape0 = b.memory_shapes[0] if b.memory_shapes else None
    memory: dict[str, float] = {}
    mb, ms = (shape0.batch_size, shape0.seq_len) if shape0 else (cfg.batch_size, cfg.seq_len)
    ids, labels = _batch(vocab, mb, ms, device)
    for m, mc in arms.items():
        lm = build_lm(replace(mc, n_layers=shape0.n_layers or mc.n_layers) if shape0 else mc, 0).to(device)
        with _autocast(device):
            memory[m] = float(peak_memory(lm, ids, labels))
        del lm
    probes = []
    for s in b.memory_shapes:
        crnet_cfg = replace(
            arms["crnet"],
            n_layers=s.n_layers or arms["crnet"].n_layers,
            max_seq_len=max(arms["crnet"].max_seq_len, s.seq_len),
        )
        res = memory_and_time(crnet_cfg, s.batch_size, s.seq_len, device, ("none", "checkpoint", "crnet"))
        none = res["none"]
        probes.append(
            {
                "n_layers": crnet_cfg.n_layers,
                "seq_len": s.seq_len,
                "batch_size": s.batch_size,
                "checkpoint_every": crnet_cfg.checkpoint_every,
                **{f"{k}_peak_bytes": v["peak_bytes"] for k, v in res.items()},
                **{f"{k}_step_s": v["step_s"] for k, v in res.items()},
                "recompute_memory_ratio": res["crnet"]["peak_bytes"] / none["peak_bytes"],
                "checkpoint_memory_ratio": res["checkpoint"]["peak_bytes"] / none["peak_bytes"],
                "recompute_step_time_ratio": res["crnet"]["step_s"] / none["step_s"],
                "checkpoint_step_time_ratio": res["checkpoint"]["step_s"] / none["step_s"],
            }
        )
        log(
            f"recompute probe L{crnet_cfg.n_layers} T{s.seq_len} B{s.batch_size}: memory ratio "
            f"{probes[-1]['recompute_memory_ratio']:.3f} (checkpoint {probes[-1]['checkpoint_memory_ratio']:.3f}), "
            f"step time x{probes[-1]['recompute_step_time_ratio']:.2f} (checkpoint "
            f"x{probes[-1]['checkpoint_step_time_ratio']:.2f})"
        )

    # ---- our full-rank model against transformers' LlamaForCausalLM
    full_cfg = arms.get("full") or llama_config(cfg, vocab, method="full", recompute="none")
    hf = hf_throughput(full_cfg, cfg.batch_size, cfg.seq_len, device, b.hf_rounds, b.hf_steps)
    log(
        "HF comparison: "
        + (
            f"ours {hf['ours_tokens_per_s']:.0f} tok/s vs transformers {hf['hf_tokens_per_s']:.0f} "
            f"tok/s -> ratio {hf['ratio']:.3f}"
            if hf["available"]
            else hf["reason"]
        )
    )

    summary = summarise(rows, arms, memory)
    v = verdict(summary)
    p0 = probes[0] if probes else {}
    headline = {
        "ppl": {m: round(s["ppl_mean"], 3) for m, s in summary.items()},
        "ppl_std": {m: None if s["ppl_std"] is None else round(s["ppl_std"], 3) for m, s in summary.items()},
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
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
    }
    wall = time.time() - t_start
    body = _body(cfg, tcfg, data, summary, v, probes, hf, wall)
    data_out = {
        "summary": summary,
        "runs": rows,
        "verdict": v,
        "recompute": probes,
        "hf": hf,
        "data": data.summary(),
        "wall_s": wall,
        "config": _cfg_dict(cfg),
        "steps_per_arm": tcfg.max_steps,
    }
    path = write_results(
        name,
        headline,
        body,
        data_out,
        seeds=list(b.seeds),
        out_dir=results_dir,
        title="CR-Net" if name == "crnet" else name,
    )
    log(f"bench done in {wall / 60:.1f} min")
    return path


def _body(
    cfg: CRNetConfig, tcfg, data, summary: dict, v: dict, probes: list[dict], hf: dict, wall: float
) -> str:
    ds = data.summary()
    tokens = cfg.batch_size * tcfg.grad_accum * cfg.seq_len * tcfg.max_steps
    val_scope = (
        "all validation tokens"
        if cfg.data.val_max_tokens <= 0
        else f"evenly spaced validation sequences up to {cfg.data.val_max_tokens:,} tokens"
    )
    align = (
        "lowrank and CoLA get the smallest uniform rank whose model has at least CR-Net's parameters "
        "(the paper's parameter-aligned comparison)."
        if cfg.bench.align_params
        else "off (all methods at the model rank)."
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
        seeds = ", ".join(f"{p:.2f}" for p in s["ppl_by_seed"].values())
        rows.append(
            [
                s["label"],
                _fmt_rank(s["rank"]),
                f"{s['trainable_params']:,}",
                f"{s['total_params']:,}",
                f"{s['ppl_mean']:.2f}" + ("" if s["ppl_std"] is None else f" ± {s['ppl_std']:.2f}"),
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
                "total params",
                "val ppl (mean ± sd)",
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
            f"{summary['crnet']['total_params'] / summary['full']['total_params']:.2f}x its parameters."
        )
    for m, c in v["comparisons"].items():
        word = "lower" if c["crnet_better"] else "higher"
        budget = (
            "the other has >= CR-Net's parameters"
            if c["other_params_ge_crnet"]
            else "the other has FEWER parameters, so this pair is not at an equal budget"
        )
        if c["sum_of_stds"] is None:
            noise = "one seed, so no spread to judge noise by"
        else:
            noise = (
                f"{'beyond' if c['beyond_noise'] else 'within'} the sum of the two seed standard deviations, "
                f"{c['sum_of_stds']:.2f}"
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
            else "CR-Net beats every low-rank method whose parameter budget is >= its own."
            if b
            else "CR-Net does NOT beat every low-rank method at an equal or larger "
            "budget (see the lines above)."
        )
    )
    lines += ["", "## Recomputation (CR-Net model, no training)", ""]
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
                ["model", "training tokens/s"],
                [
                    ["pretrainkit LlamaLM (full rank)", f"{hf['ours_tokens_per_s']:.0f}"],
                    [
                        f"transformers {hf['transformers']} LlamaForCausalLM (sdpa)",
                        f"{hf['hf_tokens_per_s']:.0f}",
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


def _cfg_dict(cfg: CRNetConfig) -> dict:
    from pretrainkit.core.config import to_dict

    return to_dict(cfg)
