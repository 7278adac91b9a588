"""Worker for the DDP bench: prints seconds per global step (rank 0)."""

import sys

import torch

from pretrainkit.core import distributed as dist_
from pretrainkit.core.bench import BenchModel, bench_data
from pretrainkit.core.benchkit import time_trainer
from pretrainkit.core.data import EpochBatches
from pretrainkit.core.trainer import TrainConfig, Trainer

torch.set_num_threads(1)
steps, batch = int(sys.argv[1]), int(sys.argv[2])
info = dist_.init_distributed("cpu")


def trainer(stream, max_steps: int) -> Trainer:
    torch.manual_seed(0)
    return Trainer(
        BenchModel(), stream, TrainConfig(max_steps=max_steps, progress=False, parallel="ddp"), dist_info=info
    )


s = time_trainer(
    trainer, lambda: EpochBatches(bench_data(), batch, seed=0, rank=info.rank, world=info.world), steps
)
if info.is_main:
    print(s)
dist_.shutdown()
