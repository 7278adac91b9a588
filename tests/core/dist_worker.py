"""Run under torchrun by the distributed tests: train the toy model with DDP or FSDP2 and save weights."""

import sys

import torch

from pretrainkit.core import distributed as dist_
from pretrainkit.core.checkpoint import save_weights
from pretrainkit.core.data import EpochBatches
from pretrainkit.core.trainer import TrainConfig, Trainer

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from toy import ToyRegressor, toy_data  # noqa: E402

torch.set_num_threads(1)
parallel, out, run_dir = sys.argv[1], sys.argv[2], sys.argv[3]
trackers = sys.argv[4].split(",") if len(sys.argv) > 4 else []  # test_tracking: only rank 0 writes them
info = dist_.init_distributed("cpu")
torch.manual_seed(0)
model = ToyRegressor()
cfg = TrainConfig(
    max_steps=6, lr=0.05, parallel=parallel, progress=False, log_every=1, ckpt_every=3, trackers=trackers
)
batches = EpochBatches(toy_data(), batch_size=16, seed=1, rank=info.rank, world=info.world)
trainer = Trainer(
    model, batches, cfg, run_dir=run_dir, dist_info=info, fsdp_units=lambda m: [m.net[0], m.net[2]]
)
trainer.fit()
state, _ = trainer._full_states()
if info.is_main:
    save_weights(out, {k: v.detach().cpu() for k, v in state.items()})
dist_.shutdown()
