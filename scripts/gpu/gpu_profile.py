"""GPU profile of every system in one short call: CR-Net's seven methods at 60M, the trainer's MFU, L2M's and
Saga's paper profiles shortened. Run through ``scripts/gpu/run_all.sh`` (which sets the machine up first).

Each part runs in its own process under a hard time limit (a stuck or crashed part is recorded, the others
still run) and appends one JSON row per finished measurement to a scratch file, so a part killed half-way
keeps what it measured. The parent writes ``<out>/<system>-gpu.{md,json}`` through ``core.results``.

Inputs are synthetic arrays of the real shapes (the device machine gets the repository only, not the shared
data): Zipf-distributed token ids for the LLaMA runs, random 39-d states / 4-d actions in 200-step episodes
for L2M's Decision Transformer, random 6-channel 120-step windows for Saga. The figures are throughput on
synthetic inputs; losses only show that training runs, they say nothing about quality.

``--dry-run``: every part for two steps on tiny shapes, on the CPU, into ``--out`` (tested in the default suite).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PARTS = ("crnet", "l2m", "saga", "core")  # run order: the main profile first, torch.compile (riskiest) last
RESULT_NAMES = {"crnet": "crnet-gpu", "l2m": "l2m-gpu", "saga": "saga-gpu", "core": "core-gpu"}
# Seconds of work per part on the GPU (sum 390 s, about 7.5 min with each part's start-up): one 10-minute device
# call with room to spare, and enough of a session's 15 device minutes left to rerun a failed part. The hard limit
# per part adds room for start-up and the final evaluation.
BUDGET_S = {"crnet": 180, "l2m": 60, "saga": 50, "core": 100}
DRY_BUDGET_S = {p: 60 for p in PARTS}
CRNET_METHODS = ("full", "lowrank", "cola", "lora", "relora", "galore", "crnet")
# Dense bf16 peak by the exact name torch reports (vendor datasheets, as the device notes' H200.md quotes them;
# the SXM parts: an H200 NVL or H100 PCIe has lower peaks and gets no figure rather than a wrong one).
PEAK_BF16 = {
    "NVIDIA H200": (989e12, "NVIDIA datasheet, H200 SXM dense bf16 (the H100 SXM's), per H200.md"),
    "NVIDIA H100 80GB HBM3": (989e12, "NVIDIA datasheet, H100 SXM dense bf16"),
}
PROFILES = {p: f"configs/{'crnet' if p == 'core' else p}/paper.yaml, shortened" for p in PARTS}
SYNTHETIC = "synthetic inputs of the real shapes (throughput only; losses are not quality figures)"


def hard_limit(part: str, dry: bool) -> float:
    return (DRY_BUDGET_S if dry else BUDGET_S)[part] * 1.2 + 30


# --------------------------------------------------------------------------------------------------- parent side
def run_guarded(
    cmd: list[str], timeout_s: float, log: Callable[[str], None] = print, env: dict[str, str] | None = None
) -> tuple[str, list[str]]:
    """Run ``cmd`` in its own process group, echoing its output; ("ok" | "error: rc N" | "timeout", tail)."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    tail: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("USDT:"):  # tracing noise some torch builds print
                continue
            log(line)
            tail.append(line)
            del tail[:-40]

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=max(1.0, timeout_s))
        status = "ok" if rc == 0 else f"error: exit {rc}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the part's own process group, started above
        proc.wait()
        status = f"timeout: killed after {timeout_s:.0f} s"
    reader.join(timeout=5)
    return status, tail


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by the kill
            continue
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="GPU profile of every system (see scripts/gpu/README.md)")
    ap.add_argument("--dry-run", action="store_true", help="two steps per part on tiny shapes, on the CPU")
    ap.add_argument(
        "--out", default=None, help="results folder (default docs/results; a dry run needs --out)"
    )
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--commit", default=None, help="git commit to record when the copy has no .git")
    ap.add_argument("--command", default=None, help="the command line to record (run_all.sh passes its own)")
    ap.add_argument(
        "--total-s", type=float, default=520.0, help="wall-clock cap over all parts (default 520)"
    )
    ap.add_argument("--child", choices=PARTS, help=argparse.SUPPRESS)
    ap.add_argument("--rows", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument(
        "--rerender", default=None, metavar="JSON", help="draw a stored results file's report again"
    )
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    if args.rerender:
        from pretrainkit.core.results import load_results, rerender

        payload = load_results(args.rerender, "a GPU profile")
        title = title_of(payload.get("part", "crnet"), bool(payload.get("dry_run")))
        print(f"wrote {rerender(args.rerender, render, out_dir=args.out, title=title, what='a GPU profile')}")
        return 0
    parts = [p for p in args.parts.split(",") if p]
    bad = sorted(set(parts) - set(PARTS))
    if bad:
        print(f"gpu_profile: unknown part(s) {bad}; allowed: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    if args.dry_run and args.out is None:
        print("gpu_profile: a dry run needs --out DIR (it never writes docs/results)", file=sys.stderr)
        return 2
    out = Path(args.out or REPO / "docs" / "results")
    if args.dry_run and out.resolve() == (REPO / "docs" / "results").resolve():
        print("gpu_profile: a dry run must not write docs/results; pass another --out", file=sys.stderr)
        return 2
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_profile: torch sees no CUDA device (use --dry-run on a CPU machine)", file=sys.stderr)
        return 2
    command = args.command or " ".join(
        ["scripts/gpu/gpu_profile.py", *(argv if argv is not None else sys.argv[1:])]
    )
    t_end = time.monotonic() + args.total_s
    failed = 0
    with tempfile.TemporaryDirectory(prefix="gpu-profile-") as work:
        for i, part in enumerate(parts):
            rows_path = Path(work) / f"{part}.rows.jsonl"
            reserve = 40.0 * (len(parts) - i - 1)  # later parts keep at least this much
            limit = min(hard_limit(part, args.dry_run), t_end - time.monotonic() - reserve)
            if limit < 40:
                status, tail = "skipped: no time left in the total budget", []
            else:
                # the part's own budget, shrunk when the total deadline leaves less, so it stops before the kill
                budget = min((DRY_BUDGET_S if args.dry_run else BUDGET_S)[part], (limit - 30) / 1.2)
                cmd = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--child",
                    part,
                    "--rows",
                    str(rows_path),
                    "--work",
                    str(Path(work) / part),
                    "--budget",
                    f"{budget:.1f}",
                ]
                cmd += ["--dry-run"] if args.dry_run else []
                t0 = time.monotonic()
                print(f"== {part}: hard limit {limit:.0f} s", flush=True)
                status, tail = run_guarded(cmd, limit, log=lambda s, p=part: print(f"[{p}] {s}", flush=True))
                print(f"== {part}: {status} after {time.monotonic() - t0:.0f} s", flush=True)
            rows = read_rows(rows_path)
            path = write_part(part, rows, status, tail, out, args.dry_run, command, args.commit)
            failed += status != "ok"
            print(f"== {part}: wrote {path}", flush=True)
    # last, so the device tool's output tail carries every part's headline
    for part in parts:
        head = json.loads((out / f"{RESULT_NAMES[part]}.json").read_text())["headline"]
        print(f"{part}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in head.items()), flush=True)
    print(f"gpu_profile: {len(parts) - failed} of {len(parts)} parts ok", flush=True)
    return 0 if failed == 0 else 1


# --------------------------------------------------------------------------------------------------- child side
class Ctx:
    """What a part needs: dry run or not, its device, its time budget, a scratch folder, a row sink."""

    def __init__(self, part: str, dry: bool, rows: Path, work: Path, budget: float | None = None):
        import torch

        self.part, self.dry, self.rows, self.work = part, dry, rows, work
        self.device = "cpu" if dry else "cuda"
        self.budget = budget if budget is not None else (DRY_BUDGET_S if dry else BUDGET_S)[part]
        self.t0 = time.monotonic()
        self.cuda = self.device == "cuda"
        work.mkdir(parents=True, exist_ok=True)
        if dry:
            torch.set_num_threads(1)

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def emit(self, row: dict) -> None:
        with open(self.rows, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k != "config"}, default=str), flush=True)

    def reset_peak(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_mib(self) -> float | None:
        if not self.cuda:
            return None
        import torch

        return torch.cuda.max_memory_allocated() / 2**20


def child(args) -> int:
    ctx = Ctx(args.child, args.dry_run, Path(args.rows), Path(args.work), args.budget)
    if ctx.cuda:
        import torch

        p = torch.cuda.get_device_properties(0)
        ctx.emit(
            {
                "kind": "card",
                "name": torch.cuda.get_device_name(0),
                "memory_gib": p.total_memory / 2**30,
                "capability": f"{p.major}.{p.minor}",
                "cuda": torch.version.cuda,
                "torch": torch.__version__,
            }
        )
    {"crnet": part_crnet, "l2m": part_l2m, "saga": part_saga, "core": part_core}[args.child](ctx)
    return 0


def config_dict(cfg) -> dict:
    from pretrainkit.core.results import config_dict as as_dict

    return as_dict(cfg)


def zipf_tokens(n: int, vocab: int, seed: int):
    """``n`` token ids with Zipf(1.1) frequencies over 1..vocab-1 (0 is EOS): a unigram model can learn it."""
    import numpy as np

    p = 1.0 / np.arange(1, vocab) ** 1.1
    return np.random.default_rng(seed).choice(np.arange(1, vocab, dtype=np.int32), size=n, p=p / p.sum())


class _Vocab:
    """Stands in for the tokenizer of a TextData built from synthetic ids (the pipeline reads these two)."""

    def __init__(self, vocab_size: int):
        self.vocab_size, self.eos_id = vocab_size, 0


def crnet_setup(ctx: Ctx, extra: list[str]):
    from pretrainkit.core.config import load_config
    from pretrainkit.core.profiles import profile_path
    from pretrainkit.systems.crnet.config import CRNetConfig

    tiny = [
        "model.preset=tiny",
        "seq_len=16",
        "batch_size=2",
        "eval_batch_size=2",
        "data.vocab_size=512",
        "data.val_max_tokens=64",
        "train.max_steps=2",
        "train.warmup_steps=1",
        "train.log_every=1",
        "relora.reset_every=1",
        "galore.update_proj_gap=1",
    ]
    sets = [f"device={ctx.device}", "train.progress=false", *(tiny if ctx.dry else []), *extra]
    cfg = load_config(CRNetConfig, profile_path("crnet", "paper"), sets)
    cfg.validate()
    return cfg, sets


def synthetic_text(cfg, steps: int):
    from pretrainkit.systems.crnet.data import TextData

    vocab = cfg.data.vocab_size
    n_train = steps * cfg.batch_size * cfg.train.grad_accum * cfg.seq_len + 1
    n_val = max(cfg.data.val_max_tokens, cfg.seq_len + 1)
    return TextData(_Vocab(vocab), zipf_tokens(n_train, vocab, 0), zipf_tokens(n_val, vocab, 1), [], [])


# 200 steps x 16,384 tokens; warm-up and ReLoRA's merge scaled from the paper profile's 400 steps
CRNET_GPU_SETS = [
    "train.max_steps=200",
    "train.warmup_steps=20",
    "train.log_every=50",
    "relora.reset_every=100",
]


def part_crnet(ctx: Ctx) -> None:
    """Every method at the 60M preset, the same steps, bf16 autocast, each inside an equal share of the budget."""
    from pretrainkit.systems.crnet.bench import arm_cfg, arm_configs, arm_lr
    from pretrainkit.systems.crnet.pipeline import train_lm

    cfg, sets = crnet_setup(ctx, [] if ctx.dry else CRNET_GPU_SETS)
    data = synthetic_text(cfg, cfg.train.max_steps)
    arms = arm_configs(cfg, cfg.data.vocab_size)
    ctx.emit(
        {
            "kind": "setup",
            "config": config_dict(cfg),
            "overrides": sets,
            "steps": cfg.train.max_steps,
            "seq_len": cfg.seq_len,
            "batch_size": cfg.batch_size,
            "preset": cfg.model.preset,
            "precision": cfg.train.precision,
        }
    )
    methods = [m for m in CRNET_METHODS if m in arms]
    for i, m in enumerate(methods):
        share = ctx.left() / (len(methods) - i) - 3  # the final evaluation and model build fit in the rest
        lr, scale = arm_lr(cfg, m)
        ctx.reset_peak()
        try:
            r = train_lm(
                arm_cfg(cfg, m, 0, lr, scale),
                data,
                method=m,
                mcfg=arms[m],
                time_limit_s=max(1.0, share),
                log=print,
            )
        except Exception as e:  # noqa: BLE001 - one method failing (any error) must not lose the others
            ctx.emit({"kind": "method", "method": m, "error": f"{type(e).__name__}: {e}"})
            continue
        keep = (
            "steps",
            "stopped_early",
            "tokens",
            "tokens_per_s",
            "train_loss",
            "val_loss",
            "wall_s",
            "trainable_params",
            "total_params",
            "optimizer_state_bytes",
            "lr",
            "rank",
        )
        ctx.emit({"kind": "method", "method": m, **{k: r.get(k) for k in keep}, "peak_mib": ctx.peak_mib()})


def matmul_tflops(ctx: Ctx) -> float:
    """The card's bf16 matrix rate as measured here (8192^3, random data, mean of 10 after 3 warm-ups)."""
    import torch

    n = 256 if ctx.dry else 8192
    dt = torch.bfloat16 if ctx.cuda else torch.float32
    a, b = (torch.randn(n, n, device=ctx.device, dtype=dt) for _ in range(2))
    for _ in range(3):
        a @ b
    if ctx.cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(10):
            a @ b
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1000
    else:
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        seconds = time.perf_counter() - t
    return 2 * n**3 * 10 / seconds / 1e12


def trainer_run(ctx: Ctx, cfg, data, compiled: bool, max_steps: int, limit_s: float) -> dict:
    """The core Trainer on the LLaMA 60M (full) model, timed by the trainer itself (``fit()``'s tokens/s, its
    warm-up steps left out); stopped through ``request_stop`` once ``limit_s`` has passed, never before step 20
    so a long compile still leaves steps to time."""
    import torch

    from pretrainkit.core.distributed import DistInfo
    from pretrainkit.core.trainer import Trainer
    from pretrainkit.systems.crnet.config import llama_config, replace
    from pretrainkit.systems.crnet.pipeline import LMObjective, TokenBatches, build_lm, make_optimizer

    mcfg = llama_config(cfg, cfg.data.vocab_size, method="full", recompute="none")
    lm = build_lm(mcfg, 0)
    if compiled:
        # inductor on the GPU; the dry run only traces (no C++ toolchain needed on the CPU)
        lm.compile(backend="eager" if ctx.dry else "inductor")
    tcfg = replace(cfg.train, max_steps=max_steps, log_every=max_steps, progress=False)
    batches = TokenBatches(data.train_tensors(cfg.seq_len), cfg.batch_size, seed=0)
    t_end = time.perf_counter() + limit_s

    def stop_in_time(trainer: Trainer, step: int) -> None:
        if step >= min(20, max_steps) and time.perf_counter() > t_end:
            trainer.request_stop()

    ctx.reset_peak()
    trainer = Trainer(
        LMObjective(lm),
        batches,
        tcfg,
        optimizer=make_optimizer("full", cfg, mcfg),
        step_hooks=[stop_in_time],
        dist_info=DistInfo(device=torch.device(ctx.device)),
    )
    out = trainer.fit()
    tps = out.get("tokens_per_s", float("nan"))
    n_matmul = sum(p.numel() for n, p in lm.named_parameters() if p.ndim == 2 and "embed_tokens" not in n)
    # 6N per token for the weight matmuls (forward + backward) plus attention's QK^T and AV, 12 L d T (PaLM's
    # count, no causal saving)
    flops_per_token = 6 * n_matmul + 12 * mcfg.n_layers * mcfg.hidden * cfg.seq_len
    return {
        "kind": "mfu",
        "compiled": compiled,
        "steps": out.get("steps_run"),
        "wall_s": out.get("wall_s"),
        "steps_per_s": out.get("steps_per_s"),
        "tokens_per_s": tps,
        "loss": out.get("loss"),
        "matmul_params": n_matmul,
        "flops_per_token": flops_per_token,
        "achieved_tflops": tps * flops_per_token / 1e12,
        "peak_mib": ctx.peak_mib(),
    }


def part_core(ctx: Ctx) -> None:
    """The trainer's model FLOP utilisation on the LLaMA 60M config, eager and under torch.compile."""
    import torch

    name = torch.cuda.get_device_name(0) if ctx.cuda else "cpu"
    peak = PEAK_BF16.get(name, (None, "no datasheet figure for this device"))
    ctx.emit(
        {
            "kind": "ceiling",
            "device": name,
            "peak_bf16_flops": peak[0],
            "peak_source": peak[1],
            "matmul_tflops_measured": matmul_tflops(ctx),
        }
    )
    cfg, sets = crnet_setup(ctx, [])
    steps = 2 if ctx.dry else 300
    data = synthetic_text(cfg, 2 * steps)
    ctx.emit(
        {
            "kind": "setup",
            "config": config_dict(cfg),
            "overrides": sets,
            "preset": cfg.model.preset,
            "seq_len": cfg.seq_len,
            "batch_size": cfg.batch_size,
            "precision": cfg.train.precision,
        }
    )
    # eager gets a quarter of the budget; torch.compile the rest (its compile time included)
    for compiled in (False, True):
        share = ctx.left() - 5 if compiled else ctx.left() / 4
        try:
            ctx.emit(trainer_run(ctx, cfg, data, compiled, steps, share))
        except Exception as e:  # noqa: BLE001 - a compile failure is a result; the eager row stays
            ctx.emit({"kind": "mfu", "compiled": compiled, "error": f"{type(e).__name__}: {e}"})


def metrics_throughput(run_dir: Path) -> float | None:
    """Median items/s over the logged intervals of a run's metrics.jsonl, the first (warm-up) left out."""
    rows = [r["throughput"] for r in read_rows(run_dir / "metrics.jsonl") if r.get("throughput")]
    rows = rows[1:] or rows
    return sorted(rows)[len(rows) // 2] if rows else None


def sized_steps(rate: float | None, seconds: float, cap: int, floor: int = 20) -> int:
    """Steps that fit ``seconds`` at ``rate`` steps/s with a 25 % margin, within [floor, cap]."""
    if not rate or not math.isfinite(rate):
        return floor
    return int(max(floor, min(cap, rate * seconds * 0.75)))


def write_episodes(folder: Path, tasks: list[str], episodes: int, seed: int) -> None:
    """Meta-World-shaped datasets (39-d states, 4-d actions, 200-step episodes) of random numbers."""
    import numpy as np

    from pretrainkit.systems.l2m.collect import task_file
    from pretrainkit.systems.l2m.envs import ACT_DIM, HORIZON, OBS_DIM

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n = episodes * HORIZON
    for t in tasks:
        dones = np.zeros(n, bool)
        dones[HORIZON - 1 :: HORIZON] = True
        acts = rng.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32)
        np.savez(
            task_file(folder, t),
            states=rng.normal(size=(n, OBS_DIM)).astype(np.float32),
            actions=acts,
            expert_actions=acts,
            rewards=rng.uniform(0, 10, n).astype(np.float32),
            dones=dones,
        )


def l2m_config(ctx: Ctx, name: str, steps: int, cont_steps: int = 1):
    """configs/l2m/paper.yaml with ``steps`` pre-training and ``cont_steps`` continual steps (tiny in a dry run)."""
    from pretrainkit.core.config import load_config
    from pretrainkit.core.profiles import profile_path
    from pretrainkit.systems.l2m.config import L2MConfig

    tiny = [
        "model.d_model=32",
        "model.n_layer=1",
        "model.n_head=2",
        "pretrain.batch_size=4",
        "continual.batch_size=4",
        "data.pretrain_tasks=[assembly-v3,basketball-v3]",
        "data.continual_tasks=[hammer-v3]",
        "threads=1",
    ]
    c = load_config(
        L2MConfig,
        profile_path("l2m", "paper"),
        [
            f"device={ctx.device}",
            f"data.dir={ctx.work / 'data'}",
            *(tiny if ctx.dry else []),
            f"out={ctx.work / name}",
            f"pretrain.train.max_steps={steps}",
            f"pretrain.train.warmup_steps={max(1, steps // 10)}",
            f"pretrain.train.log_every={max(1, steps // 10)}",
            f"continual.steps_per_task={cont_steps}",
            f"continual.log_every={max(1, cont_steps // 10)}",
        ],
    )
    c.validate()
    return c


def part_l2m(ctx: Ctx) -> None:
    """L2M's paper profile shortened: DT pre-training on the 40 MT tasks, then one continual stage of L2M."""
    from pretrainkit.systems.l2m import pipeline as l2m

    probe = l2m_config(ctx, "probe", 2 if ctx.dry else 60)
    write_episodes(
        ctx.work / "data",
        [*probe.data.pretrain_tasks, *probe.data.continual_tasks],
        2 if ctx.dry else 8,
        seed=0,
    )
    st = l2m.pretrain(probe, seed=0, resume=None, progress=False)
    rate = metrics_throughput(Path(probe.out) / "pretrain" / "seed-0")
    rate = rate / probe.pretrain.batch_size if rate else st.get("steps_per_s")
    # the paper's 50,000 / 5,000 steps cut to 60 % / 25 % of what is left (modulated steps cost more: margin)
    steps = 2 if ctx.dry else sized_steps(rate, ctx.left() * 0.6, 50000)
    cont = 2 if ctx.dry else sized_steps(rate, ctx.left() * 0.25, 5000)
    cfg = l2m_config(ctx, "main", steps, cont)
    ctx.emit(
        {
            "kind": "setup",
            "config": config_dict(cfg),
            "tasks": len(cfg.data.pretrain_tasks),
            "batch_size": cfg.pretrain.batch_size,
            "d_model": cfg.model.d_model,
            "n_layer": cfg.model.n_layer,
            "context": cfg.model.context,
            "probe_steps_per_s": rate,
        }
    )
    ctx.reset_peak()
    st = l2m.pretrain(cfg, seed=0, resume=None, progress=False)
    ctx.emit(
        {
            "kind": "pretrain",
            "steps": st["timed_steps"],
            "seconds": st["seconds"],
            "windows_per_s": metrics_throughput(Path(cfg.out) / "pretrain" / "seed-0"),
            "wall_steps_per_s": st["steps_per_s"],
            "loss": st["final"].get("loss"),
            "params": st["params"],
            "peak_mib": ctx.peak_mib(),
        }
    )
    ctx.reset_peak()
    run = l2m.ContinualRun(cfg, "l2m", seed=0, progress=False)
    task = cfg.data.continual_tasks[0]
    rec = run.learn(0, task)
    ctx.emit(
        {
            "kind": "continual",
            "method": "l2m",
            "task": task,
            "steps": rec["steps"],
            "seconds": rec["seconds"],
            "windows_per_s": metrics_throughput(run.dir / "stage-0"),
            "loss": rec.get("loss"),
            "batch_size": cfg.continual.batch_size,
            "peak_mib": ctx.peak_mib(),
        }
    )


def imu_windows(n: int, seed: int):
    """HAPT-shaped windows: (n, 120, 6) float32, a few sinusoids per channel plus noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(120) / 20.0
    freq = rng.uniform(0.5, 3.0, (n, 1, 6))
    x = np.sin(2 * np.pi * freq * t[None, :, None]) + 0.3 * rng.normal(size=(n, 120, 6))
    return x.astype(np.float32)


def saga_config(ctx: Ctx, steps: int):
    """configs/saga/paper.yaml with ``steps`` pre-training steps (batches of 4 in a dry run)."""
    from pretrainkit.core.config import load_config
    from pretrainkit.core.profiles import profile_path
    from pretrainkit.systems.saga.config import SagaConfig

    c = load_config(
        SagaConfig,
        profile_path("saga", "paper"),
        [
            *(["pretrain.batch_size=4"] if ctx.dry else []),
            f"pretrain.train.max_steps={steps}",
            f"pretrain.train.log_every={max(1, steps // 10)}",
            "pretrain.train.progress=false",
        ],
    )
    c.validate()
    return c


def saga_run(ctx: Ctx, cfg, x, task: str) -> dict:
    """One reading-B encoder, built as SagaPipeline.pretrain builds it (the task's TaskMix around a LIMU-BERT
    encoder, seeded the same), trained by the core Trainer on ``ctx.device`` and timed by ``fit()``. Saga's
    pipeline itself is not called: it has no device setting yet (its Trainer runs on the CPU) and it imports
    optuna, which the device image lacks."""
    import torch

    import pretrainkit.systems.saga.tasks  # noqa: F401  (registers the saga.* tasks)
    from pretrainkit.core.data import EpochBatches
    from pretrainkit.core.distributed import DistInfo
    from pretrainkit.core.task import TASKS, MixModel, TaskMix
    from pretrainkit.core.trainer import Trainer
    from pretrainkit.systems.saga.model import LimuBertEncoder

    m, tcfg = cfg.model, cfg.pretrain.train
    torch.manual_seed(tcfg.seed)
    mix = TaskMix([TASKS.build(task, hidden=m.hidden, n_channels=x.shape[2])], weights=None)
    enc = LimuBertEncoder(
        n_channels=x.shape[2],
        seq_len=x.shape[1],
        hidden=m.hidden,
        ff=m.ff,
        n_heads=m.n_heads,
        n_layers=m.n_layers,
        limu_code_compat=m.limu_code_compat,
    )
    batches = EpochBatches({"x": torch.from_numpy(x)}, cfg.pretrain.batch_size, seed=tcfg.seed)
    ctx.reset_peak()
    out = Trainer(
        MixModel(enc, mix), batches, tcfg, unit="windows", dist_info=DistInfo(device=torch.device(ctx.device))
    ).fit()
    return {
        "steps": out.get("steps_run"),
        "wall_s": out.get("wall_s"),
        "steps_per_s": out.get("steps_per_s"),
        "windows_per_s": out.get("items_per_s"),
        "loss": out.get("loss"),
        "trained_on": ctx.device,
        "peak_mib": ctx.peak_mib(),
    }


def part_saga(ctx: Ctx) -> None:
    """Saga's paper profile (reading B: one LIMU-BERT encoder per task), steps per task cut to the budget."""
    n = 64 if ctx.dry else 2090  # HAPT's window count
    x = imu_windows(n, seed=0)
    probe = saga_config(ctx, 2 if ctx.dry else 60)
    tasks = probe.pretrain.tasks
    rate = saga_run(ctx, probe, x, tasks[0])["steps_per_s"]
    steps = 2 if ctx.dry else sized_steps(rate, (ctx.left() - 4 * 2) / len(tasks), 40000)
    cfg = saga_config(ctx, steps)
    ctx.emit(
        {
            "kind": "setup",
            "config": config_dict(cfg),
            "windows": n,
            "window": [120, 6],
            "batch_size": cfg.pretrain.batch_size,
            "hidden": cfg.model.hidden,
            "n_layers": cfg.model.n_layers,
            "steps": steps,
            "probe_steps_per_s": rate,
            "trained_on": ctx.device,
        }
    )
    for task in tasks:
        try:
            ctx.emit({"kind": "task", "task": task, **saga_run(ctx, cfg, x, task)})
        except Exception as e:  # noqa: BLE001 - one task failing must not lose the others
            ctx.emit({"kind": "task", "task": task, "error": f"{type(e).__name__}: {e}"})


# --------------------------------------------------------------------------------------------------- results
def _fmt(v, digits: int = 4):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if math.isfinite(v) else "n/a"
    return v


KIND = "gpu.{part}"  # results kind: the part's name follows


def write_part(
    part: str,
    rows: list[dict],
    status: str,
    tail: list[str],
    out: Path,
    dry: bool,
    command: str,
    commit: str | None,
) -> Path:
    """``<out>/<system>-gpu.{md,json}`` from a part's rows, whatever its status (a failure is a result too).
    The report is drawn from the stored JSON alone (``render``), so ``--rerender`` can draw it again."""
    from pretrainkit.core.results import as_stored, write_results

    data = {
        "part": part,
        "status": status,
        "dry_run": dry,
        "budget_s": (DRY_BUDGET_S if dry else BUDGET_S)[part],
        "inputs": SYNTHETIC,
        "rows": rows,
        **({"log_tail": tail[-20:]} if status != "ok" else {}),
    }
    stored = as_stored(data)
    headline, body, derived = render(stored)
    setup = next((r for r in rows if r.get("kind") == "setup"), {})
    return write_results(
        RESULT_NAMES[part],
        headline,
        body,
        {**stored, **derived},
        seeds=[0],
        out_dir=out,
        title=title_of(part, dry),
        kind=KIND.format(part=part),
        config=setup.get("config"),
        profile=PROFILES[part],
        command=command,
        commit=commit,
    )


def title_of(part: str, dry: bool) -> str:
    return f"{RESULT_NAMES[part]}{' (dry run: tiny shapes, two steps, not a measurement)' if dry else ''}"


def render(payload: dict) -> tuple[dict, str, dict]:
    """(headline, markdown body, derived fields) of one part from its stored results."""
    from pretrainkit.core.results import md_table

    part, rows, dry = payload["part"], payload["rows"], payload["dry_run"]
    status, tail = payload["status"], payload.get("log_tail", [])
    card = next((r for r in rows if r.get("kind") == "card"), {})
    errors = [
        f"{r.get('method') or r.get('task') or r.get('kind')}: {r['error']}" for r in rows if "error" in r
    ]
    if status == "ok" and errors:
        status = "partial: " + "; ".join(errors)
    headline: dict = {
        "status": status,
        "device": card.get("name", "cpu (dry run)" if dry else "unknown"),
        "dry_run": dry,
        "inputs": "synthetic",
    }
    body: list[str] = []
    setup = next((r for r in rows if r.get("kind") == "setup"), {})
    if part == "crnet":
        ms = {r["method"]: r for r in rows if r.get("kind") == "method" and "error" not in r}
        for m in CRNET_METHODS:
            headline[f"tokens_per_s_{m}"] = ms.get(m, {}).get("tokens_per_s")
        headline["peak_mib_full"] = ms.get("full", {}).get("peak_mib")
        headline["peak_mib_crnet"] = ms.get("crnet", {}).get("peak_mib")
        body.append(
            f"CR-Net's paper profile (configs/crnet/paper.yaml: preset {setup.get('preset')}, seq "
            f"{setup.get('seq_len')} x batch {setup.get('batch_size')}, {setup.get('precision')} autocast, "
            f"eager) for {setup.get('steps')} steps per method on {SYNTHETIC}."
        )
        body.append(
            md_table(
                [
                    "method",
                    "steps",
                    "tokens/s",
                    "peak MiB",
                    "train loss",
                    "val loss",
                    "trainable",
                    "stopped early",
                ],
                [
                    [
                        m,
                        r.get("steps"),
                        _fmt(r.get("tokens_per_s")),
                        _fmt(r.get("peak_mib")),
                        _fmt(r.get("train_loss")),
                        _fmt(r.get("val_loss")),
                        r.get("trainable_params"),
                        r.get("stopped_early"),
                    ]
                    for m, r in ms.items()
                ],
            )
        )
    elif part == "core":
        ceil = next((r for r in rows if r.get("kind") == "ceiling"), {})
        runs = {
            ("compiled" if r["compiled"] else "eager"): r
            for r in rows
            if r.get("kind") == "mfu" and "error" not in r
        }
        peak, measured = ceil.get("peak_bf16_flops"), ceil.get("matmul_tflops_measured")
        headline.update(
            peak_bf16_tflops=peak / 1e12 if peak else None,
            peak_source=ceil.get("peak_source"),
            matmul_tflops_measured=measured,
        )
        for k in ("eager", "compiled"):
            r = runs.get(k, {})
            ach = r.get("achieved_tflops")
            headline[f"tokens_per_s_{k}"] = r.get("tokens_per_s")
            headline[f"mfu_{k}"] = ach * 1e12 / peak if ach and peak else None
            headline[f"mfu_{k}_vs_measured_matmul"] = ach / measured if ach and measured else None
        body.append(
            f"The core Trainer on the LLaMA {setup.get('preset')} config (CR-Net's full-rank model, "
            f"configs/crnet/paper.yaml shape: seq {setup.get('seq_len')} x batch {setup.get('batch_size')}, "
            f"{setup.get('precision')} autocast) on {SYNTHETIC}. Model FLOPs per token = 6 N (N = weight-"
            "matrix parameters, the embedding table left out, the output head counted) + 12 L d T "
            "(attention scores and values, PaLM's count); MFU = tokens/s x FLOPs per token / the peak "
            f"figure ({_fmt(headline['peak_bf16_tflops'])} TFLOP/s: {ceil.get('peak_source')}). The "
            "second MFU column divides by the bf16 matrix rate measured on this card in the same run."
        )
        body.append(
            md_table(
                [
                    "mode",
                    "steps",
                    "tokens/s",
                    "TFLOP/s",
                    "MFU",
                    "MFU vs measured",
                    "fit wall s",
                    "peak MiB",
                ],
                [
                    [
                        k,
                        r.get("steps"),
                        _fmt(r.get("tokens_per_s")),
                        _fmt(r.get("achieved_tflops")),
                        _fmt(headline[f"mfu_{k}"]),
                        _fmt(headline[f"mfu_{k}_vs_measured_matmul"]),
                        _fmt(r.get("wall_s")),
                        _fmt(r.get("peak_mib")),
                    ]
                    for k, r in runs.items()
                ],
            )
        )
    elif part == "l2m":
        pre = next((r for r in rows if r.get("kind") == "pretrain"), {})
        con = next((r for r in rows if r.get("kind") == "continual"), {})
        headline.update(
            pretrain_windows_per_s=pre.get("windows_per_s"),
            pretrain_steps=pre.get("steps"),
            continual_windows_per_s=con.get("windows_per_s"),
            continual_steps=con.get("steps"),
        )
        body.append(
            f"L2M's paper profile (configs/l2m/paper.yaml: DT d {setup.get('d_model')}, {setup.get('n_layer')} "
            f"layers, context {setup.get('context')}, {setup.get('tasks')} pre-training tasks, batch "
            f"{setup.get('batch_size')}), steps cut to the time budget, on {SYNTHETIC} (no Meta-World "
            "rollouts: no success rates). Then one continual stage of L2M's modulator pool."
        )
        body.append(
            md_table(
                ["phase", "steps", "windows/s", "seconds", "loss", "peak MiB"],
                [
                    [
                        k,
                        r.get("steps"),
                        _fmt(r.get("windows_per_s")),
                        _fmt(r.get("seconds")),
                        _fmt(r.get("loss")),
                        _fmt(r.get("peak_mib")),
                    ]
                    for k, r in (("pre-training", pre), ("continual (l2m, stage 1)", con))
                    if r
                ],
            )
        )
    else:
        ts = [r for r in rows if r.get("kind") == "task" and "error" not in r]
        rates = [r["windows_per_s"] for r in ts if r.get("windows_per_s")]
        trained_on = sorted({r.get("trained_on") for r in ts if r.get("trained_on")})
        headline.update(
            steps_per_task=setup.get("steps"),
            tasks_ok=len(ts),
            trained_on=",".join(trained_on),
            windows_per_s_mean=sum(rates) / len(rates) if rates else None,
        )
        body.append(
            f"Saga's paper profile (configs/saga/paper.yaml, reading B: one LIMU-BERT encoder per task, "
            f"hidden {setup.get('hidden')}, {setup.get('n_layers')} layers, batch {setup.get('batch_size')}), "
            f"{setup.get('steps')} steps per task instead of 40,000, on {SYNTHETIC} "
            f"({setup.get('windows')} HAPT-shaped windows of 120 x 6), trained on "
            f"{', '.join(trained_on) or 'n/a'} with bf16 autocast there. Each encoder is built as "
            "SagaPipeline.pretrain builds it (its task's TaskMix around LIMU-BERT, the same seed) and trained "
            "by the core Trainer, timed by fit() (warm-up steps left out); the pipeline itself has no device "
            "setting yet (its trainer runs on the CPU) and needs optuna, which the device image lacks."
        )
        body.append(
            md_table(
                ["task", "steps", "windows/s", "wall s", "last loss", "device", "peak MiB"],
                [
                    [
                        r["task"],
                        r["steps"],
                        _fmt(r.get("windows_per_s")),
                        _fmt(r.get("wall_s")),
                        _fmt(r.get("loss")),
                        r.get("trained_on"),
                        _fmt(r.get("peak_mib")),
                    ]
                    for r in ts
                ],
            )
        )
    if errors or status != "ok":
        body.append(
            "Status: "
            + status
            + (
                "\n\nLast lines of its log:\n\n```\n" + "\n".join(tail[-10:]) + "\n```"
                if tail and status != "ok"
                else ""
            )
        )
    return headline, "\n\n".join(body), {"status": status, "card": card}


if __name__ == "__main__":
    sys.exit(main())
