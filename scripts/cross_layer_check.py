"""Smoke check: L2M's Decision Transformer pre-trained full rank vs in cross-layer (CR-Net) form.

Both models are pre-trained by L2M's own harness pieces (task files, window batches, the behaviour-cloning
task, the core Trainer) on the same data for the same steps and seeds, then scored on held-out windows
(bin accuracy, action CE and mean |action error|). Without ``--data`` it writes small synthetic task files
(no simulator, no collected Meta-World data needed): states ~ N(offset, 0.3), expert actions a task-specific
tanh of four state dimensions. A smoke check of the transformation, not a result.

    .venv/bin/python scripts/cross_layer_check.py --steps 300 --rank 8
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from pretrainkit.adapt.cross_layer import to_cross_layer
from pretrainkit.core.config import load_config
from pretrainkit.core.rundir import RunDir
from pretrainkit.core.trainer import TrainConfig, Trainer
from pretrainkit.systems.l2m.config import L2MConfig
from pretrainkit.systems.l2m.model import DecisionTransformer
from pretrainkit.systems.l2m.pipeline import BehaviourCloning, WindowBatches, _dist, load_tasks, windows

TASKS = ["drawer-close-v3", "button-press-topdown-v3", "dial-turn-v3"]
PROJECTIONS = ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "mlp.fc1", "mlp.fc2"]


def write_synthetic(data: Path, tasks: list[str], episodes: int = 60, length: int = 32) -> None:
    for i, task in enumerate(tasks):
        g = np.random.default_rng(100 + i)
        n = episodes * length
        offset = i - 1.0
        states = g.normal(offset, 0.3, (n, 39)).astype(np.float32)
        # The expert reads 4 state dims (a different sign pattern per task) and spans the whole action range.
        sign = np.array([1, -1, 1, -1] if i % 2 else [1, 1, -1, -1], np.float32)
        expert = np.tanh(3.0 * sign * (states[:, :4] - offset)).astype(np.float32)
        dones = np.zeros(n, bool)
        dones[length - 1 :: length] = True
        meta = {"task": task, "steps": n, "cpu_seconds": 0.0, "episodes": episodes}
        np.savez(
            data / f"{task}.npz",
            states=states,
            actions=expert,
            expert_actions=expert,
            rewards=np.ones(n, np.float32),
            dones=dones,
            success=np.ones(n, bool),
            task=np.array(task),
            meta_json=np.array(json.dumps(meta)),
        )


@torch.no_grad()
def held_out(dt: DecisionTransformer, cfg: L2MConfig, splits, n: int) -> dict[str, float]:
    dt.eval()
    out = {}
    for t, s in splits.items():
        b = windows(cfg, s.val).sample_batch(n, torch.Generator().manual_seed(0))
        pred = dt(b["states"], b["actions"], b["rtg"], b["timesteps"], b["mask"])
        _, m = dt.action_loss(pred, b["actions"], b["mask"])
        out[t] = m
    return {k: round(float(np.mean([m[k] for m in out.values()])), 4) for k in next(iter(out.values()))}


def train(cfg: L2MConfig, splits, seed: int, rank: int | None, run: Path) -> tuple[DecisionTransformer, dict]:
    torch.manual_seed(seed)
    dt = DecisionTransformer(cfg.model)
    info = None
    if rank is not None:
        info = to_cross_layer(dt, "blocks", PROJECTIONS, rank=rank)
    ds = windows(cfg, [s.train for s in splits.values()])
    tcfg = TrainConfig(**{**asdict(cfg.pretrain.train), "seed": seed, "progress": False})
    trainer = Trainer(
        BehaviourCloning(dt),
        WindowBatches(ds, cfg.pretrain.batch_size, seed),
        tcfg,
        RunDir(run),
        dist_info=_dist(torch.device("cpu")),
        unit="windows",
    )
    last = trainer.fit(None)
    return dt, {
        "params": dt.num_params(),
        "train_loss": round(float(last["loss"]), 4),
        "seconds": round(last["wall_s"], 1),
        "info": info,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="directory of <task>.npz files (default: synthetic ones in a temp dir)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--windows", type=int, default=256, help="held-out windows per task")
    a = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = Path(a.data) if a.data else tmp / "data"
        if not a.data:
            data.mkdir()
            write_synthetic(data, TASKS)
        cfg = load_config(
            L2MConfig,
            None,
            [
                f"data.dir={data}",
                f"out={tmp / 'run'}",
                f"data.pretrain_tasks={TASKS}",
                "data.val_fraction=0.2",
                f"pretrain.train.max_steps={a.steps}",
                "pretrain.train.warmup_steps=20",
                "pretrain.batch_size=32",
                f"pretrain.train.log_every={a.steps}",
                "pretrain.train.ckpt_every=0",
                "model.dropout=0.0",
            ],
        )
        splits = load_tasks(cfg, TASKS)
        print(
            f"data: {'synthetic' if not a.data else data}; tasks {TASKS}; DT d_model {cfg.model.d_model}, "
            f"{cfg.model.n_layer} layers; {a.steps} steps, batch {cfg.pretrain.batch_size}, seed {a.seed}"
        )
        for label, rank in (("full-rank", None), (f"cross-layer r={a.rank}", a.rank)):
            dt, st = train(cfg, splits, a.seed, rank, tmp / label.replace(" ", "_"))
            print(
                f"{label:>18}: params {st['params']:>7}  train loss {st['train_loss']}  "
                f"held-out {held_out(dt, cfg, splits, a.windows)}  ({st['seconds']} s)"
            )
            if st["info"] is not None:
                print(st["info"].summary())


if __name__ == "__main__":
    main()
