"""Worker for the DDP bench: prints seconds per global step (rank 0)."""

import sys
import time

import torch

from pretrainkit.core import distributed as dist_
from pretrainkit.core.bench import BenchModel, bench_data
from pretrainkit.core.data import EpochBatches
from pretrainkit.core.trainer import TrainConfig, Trainer

torch.set_num_threads(1)
steps, batch = int(sys.argv[1]), int(sys.argv[2])
info = dist_.init_distributed("cpu")
torch.manual_seed(0)
stamps: list[float] = []
trainer = Trainer(BenchModel(), EpochBatches(bench_data(), batch, seed=0, rank=info.rank, world=info.world),
                  TrainConfig(max_steps=steps + 3, progress=False, parallel="ddp"), dist_info=info,
                  step_hooks=[lambda t, s: stamps.append(time.perf_counter())])
trainer.fit()
if info.is_main:
    print((stamps[-1] - stamps[2]) / steps)
dist_.shutdown()
