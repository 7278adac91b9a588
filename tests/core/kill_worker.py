"""Trains the toy model slowly so a test can SIGKILL it mid-run, then resume with --resume auto."""

import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from toy import ToyRegressor, toy_data  # noqa: E402

from pretrainkit.core.data import EpochBatches  # noqa: E402
from pretrainkit.core.trainer import TrainConfig, Trainer  # noqa: E402

torch.set_num_threads(1)
run_dir, max_steps, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
torch.manual_seed(0)
trainer = Trainer(
    ToyRegressor(),
    EpochBatches(toy_data(), 16, seed=1),
    TrainConfig(max_steps=max_steps, lr=0.05, ckpt_every=2, keep_last=2, progress=False, log_every=1),
    run_dir=run_dir,
    step_hooks=[lambda t, s: time.sleep(delay)],
)
trainer.fit(resume="auto")
