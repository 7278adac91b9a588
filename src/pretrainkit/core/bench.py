"""`pretrainkit bench core`: the trainer's overhead against a bare PyTorch loop, 2-process DDP on CPU, and a task
mix whose three tasks share one backbone forward against the same tasks on three forwards."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pretrainkit.core import benchkit
from pretrainkit.core.data import EpochBatches
from pretrainkit.core.results import fmt_mean_std, md_table, mean_std, publish, rerender
from pretrainkit.core.task import MixModel, PretrainTask, TaskMix
from pretrainkit.core.trainer import TrainConfig, Trainer
from pretrainkit.errors import ConfigError

KIND, TITLE = "core.bench", "Core trainer"


@dataclass
class CoreBenchConfig:
    steps: int = 60
    warmup: int = 3
    batch: int = 32
    repeats: int = 3
    seed: int = 0
    name: str = "core"


class BenchModel(nn.Module):
    """A small transformer encoder regression model: step time of tens of ms on one core."""

    def __init__(self, d: int = 128, layers: int = 2):
        super().__init__()
        self.enc = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True), layers
        )
        self.out = nn.Linear(d, 1)

    def forward(self, batch):
        loss = ((self.out(self.enc(batch["x"])).squeeze(-1) - batch["y"]) ** 2).mean()
        return loss, {}


def bench_data(n: int = 2048, seq: int = 32, d: int = 128) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"x": torch.randn(n, seq, d, generator=g), "y": torch.randn(n, seq, generator=g)}


def _model(seed: int) -> BenchModel:
    torch.manual_seed(seed)
    return BenchModel()


def time_bare(steps: int, batch: int, warmup: int = 3, seed: int = 0) -> float:
    data = bench_data()
    return benchkit.time_bare(
        lambda: _model(seed), lambda: EpochBatches(data, batch, seed=seed), steps, warmup
    )


def time_trainer(
    steps: int, batch: int, run_dir: Path | None = None, warmup: int = 3, seed: int = 0
) -> float:
    data = bench_data()

    def trainer(stream, max_steps: int) -> Trainer:
        cfg = TrainConfig(max_steps=max_steps, lr=1e-3, log_every=10, progress=True, seed=seed)
        return Trainer(_model(seed), stream, cfg, run_dir=run_dir)

    return benchkit.time_trainer(trainer, lambda: EpochBatches(data, batch, seed=seed), steps, warmup)


def ddp_speedup(steps: int, batch: int) -> tuple[float, float]:
    """Seconds per global step of the same global batch with 1 and 2 gloo processes (1 thread each)."""
    worker = Path(__file__).with_name("bench_ddp_worker.py")
    out = []
    for n in (1, 2):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={n}",
            str(worker),
            str(steps),
            str(batch),
        ]
        for _attempt in range(2):  # one retry: gloo's rendezvous on a busy machine occasionally aborts a rank
            r = subprocess.run(
                cmd, capture_output=True, text=True, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"}
            )
            if r.returncode == 0:
                break
        else:
            raise RuntimeError(r.stderr[-2000:])
        out.append(float(r.stdout.strip().splitlines()[-1]))
    return out[0], out[1]


class _BenchEncoder(nn.Module):
    """BenchModel's encoder as a mix backbone: batch -> hidden states (B, seq, d)."""

    def __init__(self, d: int = 128, layers: int = 2):
        super().__init__()
        self.enc = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True), layers
        )

    def forward(self, batch):
        return self.enc(batch["x"])


class _HeadTask(PretrainTask):
    """Regress ``y`` through a linear head of its own; it leaves the input unchanged, so it shares the forward."""

    def __init__(self, name: str, d: int = 128):
        super().__init__()
        self.name = name
        self.out = nn.Linear(d, 1)

    def loss(self, batch, h):
        return ((self.out(h).squeeze(-1) - batch["y"]) ** 2).mean(), {}


class _OwnForwardHeadTask(_HeadTask):
    """The same task forced onto a backbone forward of its own (what every task paid before sharing)."""

    shares_input = False


def time_mix(steps: int, batch: int, shared: bool, warmup: int = 3, seed: int = 0) -> float:
    """Seconds per training step (the bare loop, AdamW) of a 3-task mix on the bench encoder, sharing one
    forward or not."""
    data = bench_data()

    def model() -> MixModel:
        torch.manual_seed(seed)
        cls = _HeadTask if shared else _OwnForwardHeadTask
        return MixModel(_BenchEncoder(), TaskMix([cls(f"head{i}") for i in range(3)]))

    return benchkit.time_bare(model, lambda: EpochBatches(data, batch, seed=seed), steps, warmup)


def shared_forward_speedup(steps: int, batch: int, repeats: int, warmup: int = 3, seed: int = 0) -> dict:
    """Three tasks sharing one forward against the same three on three forwards, interleaved in one process.

    Returns each repeat's seconds per step for both and ``speedup`` = best separate / best shared."""
    shared, separate = [], []
    for _ in range(repeats):  # interleaved so drift on a shared machine hits both alike
        shared.append(time_mix(steps, batch, True, warmup, seed))
        separate.append(time_mix(steps, batch, False, warmup, seed))
    return {
        "shared_s_per_step": shared,
        "separate_s_per_step": separate,
        "speedup": min(separate) / min(shared),
    }


def run(
    steps: int = 60,
    batch: int = 32,
    repeats: int = 3,
    out_dir: Path | None = None,
    cfg: CoreBenchConfig | None = None,
    profile: str | None = None,
) -> Path:
    cfg = cfg or CoreBenchConfig(steps=steps, batch=batch, repeats=repeats)
    torch.set_num_threads(1)
    bare, trainer = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(cfg.repeats):  # interleaved so drift on a shared machine hits both alike
            bare.append(time_bare(cfg.steps, cfg.batch, cfg.warmup, cfg.seed))
            trainer.append(time_trainer(cfg.steps, cfg.batch, Path(tmp) / f"r{r}", cfg.warmup, cfg.seed))
    one, two = ddp_speedup(cfg.steps // 2, cfg.batch)
    mix = shared_forward_speedup(cfg.steps, cfg.batch, cfg.repeats, cfg.warmup, cfg.seed)
    data = {
        "bare_s_per_step": bare,
        "trainer_s_per_step": trainer,
        "ddp_s_per_step": {"1": one, "2": two},
        "mix_s_per_step": {"shared": mix["shared_s_per_step"], "separate": mix["separate_s_per_step"]},
    }
    return publish(
        cfg.name,
        data,
        render,
        kind=KIND,
        seeds=[cfg.seed],
        out_dir=out_dir,
        title=TITLE,
        config=cfg,
        profile=profile,
    )


def render(payload: dict[str, Any]) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Headline and report from a stored core results JSON (older files without a config: the stored
    command's options against today's defaults)."""
    c = payload.get("config") or vars(_legacy_config(payload))
    bare, trainer = payload["bare_s_per_step"], payload["trainer_s_per_step"]
    one, two = payload["ddp_s_per_step"]["1"], payload["ddp_s_per_step"]["2"]
    b, t = min(bare), min(trainer)
    headline = {
        "trainer_overhead_ratio": round(t / b, 4),
        "ddp_2proc_speedup": round(one / two, 3),
        "n_repeats": len(bare),
    }
    body = "\n".join(
        [
            "## Trainer against a bare loop",
            "",
            (
                f"Same model (2-layer transformer encoder, d=128), same batches (batch {c['batch']}, seq 32), AdamW, "
                f"{c['steps']} timed steps after {c.get('warmup', 3)} warm-up steps, best of {len(bare)} interleaved "
                "repeats, 1 thread. The trainer run includes its progress bar, metrics.jsonl logging every 10 steps, "
                "per-step reseeding and the final checkpoint is outside the timed window."
            ),
            "",
            md_table(
                ["loop", "s/step (best)", "mean ± std", "n", "all repeats"],
                [
                    [
                        "bare PyTorch",
                        b,
                        fmt_mean_std(mean_std(bare), 4, n=False),
                        len(bare),
                        ", ".join(f"{v:.4f}" for v in bare),
                    ],
                    [
                        "pretrainkit Trainer",
                        t,
                        fmt_mean_std(mean_std(trainer), 4, n=False),
                        len(trainer),
                        ", ".join(f"{v:.4f}" for v in trainer),
                    ],
                ],
            ),
            "",
            f"Goal: overhead ratio <= 1.05; measured {t / b:.3f}.",
            "",
            "## DDP on CPU (gloo)",
            "",
            (
                "The same global batch split over 2 processes (1 thread each) against 1 process; the machine has 2 "
                "cores. One timed run each (n=1)."
            ),
            "",
            md_table(["processes", "s/global step", "n"], [[1, one, 1], [2, two, 1]]),
            "",
            f"Speed-up {one / two:.2f}x.",
        ]
    )
    mix = payload.get("mix_s_per_step")  # absent from results written before the task mix shared forwards
    if mix is not None:
        sh, sep = mix["shared"], mix["separate"]
        headline["shared_forward_speedup"] = round(min(sep) / min(sh), 3)
        body += "\n" + "\n".join(
            [
                "",
                "## Task mix: one shared backbone forward",
                "",
                (
                    f"A TaskMix of three tasks (a linear head each) on the same encoder and batches, AdamW, {c['steps']} "
                    f"timed steps after {c.get('warmup', 3)} warm-up steps, best of {len(sh)} interleaved repeats: the "
                    "tasks share one encoder forward, against the same tasks forced onto one forward each."
                ),
                "",
                md_table(
                    ["backbone forwards per step", "s/step (best)", "mean ± std", "n", "all repeats"],
                    [
                        [
                            1,
                            min(sh),
                            fmt_mean_std(mean_std(sh), 4, n=False),
                            len(sh),
                            ", ".join(f"{v:.4f}" for v in sh),
                        ],
                        [
                            3,
                            min(sep),
                            fmt_mean_std(mean_std(sep), 4, n=False),
                            len(sep),
                            ", ".join(f"{v:.4f}" for v in sep),
                        ],
                    ],
                ),
                "",
                f"Speed-up {min(sep) / min(sh):.2f}x.",
            ]
        )
    return headline, body, {}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pretrainkit bench core", description=__doc__.splitlines()[0])
    benchkit.add_bench_args(p, "core", "bench", default_name="core")
    p.add_argument("--steps", type=int, default=None, help="timed steps (shortcut for --set steps=N)")
    return p


def _legacy_config(payload: dict[str, Any]) -> CoreBenchConfig:
    args = benchkit.replay_args(_parser(), payload["provenance"]["command"], 3)
    cfg = CoreBenchConfig()
    if args.steps:
        cfg.steps = args.steps
    return cfg


def load(args: argparse.Namespace) -> CoreBenchConfig:
    seeds = benchkit.parse_seeds(args.seeds)
    if seeds is not None and len(seeds) != 1:
        raise ConfigError(f"the core bench times one model: give one seed, got {args.seeds}")
    extra = [f"seed={seeds[0]}"] if seeds else []
    extra += [f"steps={args.steps}"] if args.steps is not None else []
    extra += [f"name={args.name}"] if args.name else []
    cfg = benchkit.load_bench_config(CoreBenchConfig, "core", args, extra)
    for k in ("steps", "batch", "repeats"):
        if getattr(cfg, k) < 1:
            raise ConfigError(f"config key '{k}' must be >= 1, got {getattr(cfg, k)}")
    return cfg


def bench_main(argv: list[str]) -> int:
    """`pretrainkit bench core [--config PROFILE|FILE] [--set k=v] [--steps N] [--results-dir D] [--name N]
    [--rerender JSON]`."""
    args = _parser().parse_args(argv)
    if args.rerender is not None:
        print(f"wrote {rerender(args.rerender, render, out_dir=args.results_dir, kind=KIND, title=TITLE)}")
        return 0
    cfg = load(args)
    print(f"wrote {run(cfg=cfg, out_dir=args.results_dir, profile=args.config)}")
    return 0
