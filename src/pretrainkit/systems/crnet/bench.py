"""`pretrainkit bench crnet`: every method on the same data, tokens and seeds; memory, recompute, HF throughput.

Arms are interleaved (all methods for seed 0, then all in reverse order for seed 1, ...) so a slow spell of a
shared machine does not fall on one method. This module measures and stores the records; report.py draws the
summary, verdict and markdown from them (also later, from the stored JSON alone). Writes
docs/results/<name>.{md,json} through core.results.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import torch

from pretrainkit.core.benchkit import best_time
from pretrainkit.core.results import publish
from pretrainkit.errors import ConfigError
from pretrainkit.systems.crnet import report
from pretrainkit.systems.crnet.config import CRNetConfig, llama_config, replace
from pretrainkit.systems.crnet.data import prepare_text_data
from pretrainkit.systems.crnet.model import LlamaConfig, count_parameters
from pretrainkit.systems.crnet.pipeline import _device, build_lm, make_optimizer, train_lm
from pretrainkit.systems.crnet.recompute import peak_memory


# --------------------------------------------------------------------------------------------------- arms
def aligned_rank(cfg: CRNetConfig, vocab: int, method: str, target: int, trainable: bool = False) -> int:
    """Smallest uniform rank whose model has at least ``target`` parameters (trainable ones if ``trainable``:
    LoRA's frozen weights are not a learning budget)."""
    base = llama_config(cfg, vocab, method=method)
    lo, hi = 1, min(base.hidden, base.intermediate)
    if count_parameters(llama_config(cfg, vocab, method=method, rank=hi), trainable) < target:
        return hi
    while lo < hi:
        mid = (lo + hi) // 2
        if count_parameters(llama_config(cfg, vocab, method=method, rank=mid), trainable) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def arm_configs(cfg: CRNetConfig, vocab: int) -> dict[str, LlamaConfig]:
    """Each method's model config. With bench.align_params every low-rank method gets the smallest uniform rank
    at which it *trains* at least CR-Net's parameters (align_by=trainable: lowrank, CoLA, LoRA, ReLoRA), or, as
    the first bench did, has at least CR-Net's total (align_by=total: lowrank and CoLA only)."""
    arms = {m: llama_config(cfg, vocab, method=m, recompute="none") for m in cfg.bench.methods}
    if cfg.bench.align_params and "crnet" in arms and not isinstance(cfg.model.rank, list):
        trainable = cfg.bench.align_by == "trainable"
        target = count_parameters(arms["crnet"], trainable)
        for m in ALIGNED[cfg.bench.align_by]:
            if m in arms:
                rank = aligned_rank(cfg, vocab, m, target, trainable)
                arms[m] = llama_config(cfg, vocab, method=m, recompute="none", rank=rank)
    return arms


# The methods each alignment rule moves (GaLore trains every weight at full rank: its rank is the optimiser's).
ALIGNED = {"trainable": ("lowrank", "cola", "lora", "relora"), "total": ("lowrank", "cola")}


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

        def step(lm=lm, opt=opt, ids=ids, labels=labels) -> None:
            for _ in range(cfg.train.grad_accum):
                with _autocast(device):
                    _, loss = lm(ids, labels)
                loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        # best of 3 steps after 2 warm-up steps
        worst = max(
            worst,
            best_time({m: step}, rounds=1, steps=3, warmup=2, per_call=True, sync=lambda: _sync(device))[m],
        )
        del lm, opt, step
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

    def fwd_bwd(model) -> None:
        with _autocast(device):
            _, loss = model(ids, labels)
        loss.backward()

    # the first call of each round re-warms caches; gradients cleared after each round
    best = best_time(
        {m: (lambda model=models[m]: fwd_bwd(model)) for m in modes},
        rounds,
        steps,
        warmup=1,
        per_call=True,
        reset=lambda m: models[m].zero_grad(set_to_none=True),
        sync=lambda: _sync(device),
    )
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
    best = best_time(fns, rounds, steps, sync=lambda: _sync(device))
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


# --------------------------------------------------------------------------------------------------- bench
def other_regime(path: str) -> dict:
    """What the report sets beside this run: another bench's per-method perplexity, its budget and model,
    read (verified as a results file) when this bench starts, so the comparison is stored with the run."""
    from pretrainkit.core.results import load_results

    other = load_results(path, what="a CR-Net bench")
    cfg = other.get("config") or {}
    return {
        "path": str(path),
        "ppl": other["headline"]["ppl"],
        "ppl_std": other["headline"].get("ppl_std", {}),
        "preset": (cfg.get("model") or {}).get("preset"),
        "tokens_per_step": (cfg.get("batch_size") or 0)
        * (cfg.get("seq_len") or 0)
        * ((cfg.get("train") or {}).get("grad_accum") or 1),
        "steps": other.get("steps_per_arm"),
    }


def _fmt_rank(r) -> str:
    return "—" if r is None else str(r)


def run_bench(
    cfg: CRNetConfig,
    results_dir: Path | None = None,
    name: str = "crnet",
    log=print,
    profile: str | None = None,
) -> Path:
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
        tcfg = report.bench_train(cfg, calibrate_steps(cfg, arms, device, log))

    # ---- training arms, interleaved over seeds
    rows: list[dict] = []
    n_arms = len(b.seeds) * len(arms)
    for i, seed in enumerate(b.seeds):
        order = list(arms) if i % 2 == 0 else list(arms)[::-1]
        for m in order:
            lr, scale = arm_lr(cfg, m)
            r = train_lm(
                arm_cfg(replace(cfg, train=tcfg), m, seed, lr, scale),
                data,
                method=m,
                mcfg=arms[m],
                time_limit_s=b.time_limit_s,
                log=log,
            )
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

    wall = time.time() - t_start
    data_out = {
        **({"other_regime": other_regime(b.compare_with)} if b.compare_with else {}),
        "runs": rows,
        "ranks": {m: mc.rank for m, mc in arms.items()},
        "memory": memory,
        "recompute": probes,
        "hf": hf,
        "data": data.summary(),
        "wall_s": wall,
        "steps_per_arm": tcfg.max_steps,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
    }
    path = publish(
        name,
        data_out,
        report.render,
        kind=report.KIND,
        seeds=list(b.seeds),
        out_dir=results_dir,
        title="CR-Net" if name == "crnet" else name,
        config=cfg,
        profile=profile,
    )
    log(f"bench done in {wall / 60:.1f} min")
    return path
