"""`pretrainkit bench core`: the trainer's overhead against a bare PyTorch loop, and 2-process DDP on CPU."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from pretrainkit.core.data import EpochBatches
from pretrainkit.core.results import md_table, write_results
from pretrainkit.core.trainer import TrainConfig, Trainer


class BenchModel(nn.Module):
    """A small transformer encoder regression model: step time of tens of ms on one core."""

    def __init__(self, d: int = 128, layers: int = 2):
        super().__init__()
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True),
                                         layers)
        self.out = nn.Linear(d, 1)

    def forward(self, batch):
        loss = ((self.out(self.enc(batch["x"])).squeeze(-1) - batch["y"]) ** 2).mean()
        return loss, {}


def bench_data(n: int = 2048, seq: int = 32, d: int = 128) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"x": torch.randn(n, seq, d, generator=g), "y": torch.randn(n, seq, generator=g)}


def time_bare(steps: int, batch: int) -> float:
    torch.manual_seed(0)
    model, data = BenchModel(), EpochBatches(bench_data(), batch, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):  # warm-up
        loss, _ = model(next(data))
        loss.backward()
        opt.step()
        opt.zero_grad()
    t = time.perf_counter()
    for _ in range(steps):
        loss, _ = model(next(data))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t) / steps


def time_trainer(steps: int, batch: int, run_dir: Path | None = None) -> float:
    torch.manual_seed(0)
    cfg = TrainConfig(max_steps=steps + 3, lr=1e-3, log_every=10, progress=True)
    times = []
    trainer = Trainer(BenchModel(), EpochBatches(bench_data(), batch, seed=0), cfg, run_dir=run_dir,
                      step_hooks=[lambda t, s: times.append(time.perf_counter())])
    trainer.fit()
    return (times[-1] - times[2]) / steps  # after the same 3 warm-up steps


def ddp_speedup(steps: int, batch: int) -> tuple[float, float]:
    """Seconds per global step of the same global batch with 1 and 2 gloo processes (1 thread each)."""
    worker = Path(__file__).with_name("bench_ddp_worker.py")
    out = []
    for n in (1, 2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
               str(worker), str(steps), str(batch)]
        for _attempt in range(2):  # one retry: gloo's rendezvous on a busy machine occasionally aborts a rank
            r = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ,
                                                                         "OMP_NUM_THREADS": "1"})
            if r.returncode == 0:
                break
        else:
            raise RuntimeError(r.stderr[-2000:])
        out.append(float(r.stdout.strip().splitlines()[-1]))
    return out[0], out[1]


def run(steps: int = 60, batch: int = 32, repeats: int = 3, out_dir: Path | None = None) -> Path:
    torch.set_num_threads(1)
    bare, trainer = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):  # interleaved so drift on a shared machine hits both alike
            bare.append(time_bare(steps, batch))
            trainer.append(time_trainer(steps, batch, Path(tmp) / f"r{r}"))
    b, t = min(bare), min(trainer)
    one, two = ddp_speedup(steps // 2, batch)
    headline = {"trainer_overhead_ratio": round(t / b, 4), "ddp_2proc_speedup": round(one / two, 3)}
    body = "\n".join([
        "## Trainer against a bare loop", "",
        f"Same model (2-layer transformer encoder, d=128), same batches (batch {batch}, seq 32), AdamW, {steps} "
        f"timed steps after 3 warm-up steps, best of {repeats} interleaved repeats, 1 thread. The trainer run "
        "includes its progress bar, metrics.jsonl logging every 10 steps, per-step reseeding and the final checkpoint"
        " is outside the timed window.", "",
        md_table(["loop", "s/step (best)", "all repeats"],
                 [["bare PyTorch", b, ", ".join(f"{v:.4f}" for v in bare)],
                  ["pretrainkit Trainer", t, ", ".join(f"{v:.4f}" for v in trainer)]]),
        "", f"Goal: overhead ratio <= 1.05; measured {t / b:.3f}.", "",
        "## DDP on CPU (gloo)", "",
        "The same global batch split over 2 processes (1 thread each) against 1 process; the machine has 2 cores.",
        "", md_table(["processes", "s/global step"], [[1, one], [2, two]]), "",
        f"Speed-up {one / two:.2f}x.",
    ])
    return write_results("core", headline, body, {"bare_s_per_step": bare, "trainer_s_per_step": trainer,
                                                  "ddp_s_per_step": {"1": one, "2": two}},
                         seeds=[0], out_dir=out_dir, title="Core trainer")
