"""One training loop for every system, readable top to bottom.

The trained module's ``forward(batch)`` returns ``(loss, metrics)`` (a TaskMix wrapped with its backbone,
a language model, a Decision Transformer...). Randomness inside a step (masks, dropout) is reseeded from
(seed, step, rank, micro-step), so a resumed run draws the same masks as an uninterrupted one.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from pretrainkit.core import checkpoint as ckpt
from pretrainkit.core import distributed as dist_
from pretrainkit.core.device import autocast
from pretrainkit.core.rundir import RunDir
from pretrainkit.errors import CheckpointError, ConfigError, NonFiniteLossError


@dataclass
class TrainConfig:
    max_steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.1
    grad_accum: int = 1
    grad_clip: float = 0.0  # 0 = no clipping
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the end
    ckpt_every: int = 0  # 0 = only at the end
    keep_last: int = 3
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    parallel: Literal["none", "ddp", "fsdp"] = "none"
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        for name in ("max_steps", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key 'train.{name}' must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"config key 'train.lr' must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"config key 'train.min_lr_ratio' must be in [0, 1], got {self.min_lr_ratio}")


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` (or constant)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    t = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def default_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)


def step_seed(seed: int, step: int, rank: int, micro: int) -> int:
    return (seed * 1_000_003 + step * 7919 + rank * 104_729 + micro * 13) % (2**63 - 1)


EvalHook = Callable[[nn.Module, int], dict[str, float]]
StepHook = Callable[[nn.Module, int], None]


class Trainer:
    """Train ``model`` on ``batches`` with optional DDP/FSDP2, checkpoints and exact resume."""

    def __init__(
        self,
        model: nn.Module,
        batches: Iterator[Any],
        cfg: TrainConfig,
        run_dir: RunDir | str | Path | None = None,
        optimizer: Callable[[nn.Module, TrainConfig], torch.optim.Optimizer] = default_optimizer,
        eval_hooks: list[EvalHook] | tuple[EvalHook, ...] = (),
        step_hooks: list[StepHook] | tuple[StepHook, ...] = (),
        fsdp_units: Callable[[nn.Module], list[nn.Module]] | None = None,
        dist_info: dist_.DistInfo | None = None,
        unit: str = "samples",
    ):
        self.cfg = cfg
        self.info = dist_info or dist_.DistInfo()
        self.raw_model = model.to(self.info.device)
        self.model = self._parallelise(self.raw_model, fsdp_units)
        self.batches = batches
        self.run_dir = RunDir(run_dir) if isinstance(run_dir, (str, Path)) else run_dir
        self.optimizer = optimizer(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        self.eval_hooks, self.step_hooks = list(eval_hooks), list(step_hooks)
        self.unit = unit
        self.step = 0
        self.last_checkpoint: Path | None = None

    # ---- parallelism -------------------------------------------------------------------------------
    def _parallelise(self, model: nn.Module, fsdp_units) -> nn.Module:
        if not self.info.enabled or self.cfg.parallel == "none":
            return model
        if self.cfg.parallel == "ddp":
            return dist_.apply_ddp(model, self.info)
        return dist_.apply_fsdp(model, fsdp_units(model) if fsdp_units else None)

    def _autocast(self):
        return autocast(self.info.device, self.cfg.precision)

    # ---- state -------------------------------------------------------------------------------------
    def _full_states(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if self.cfg.parallel == "fsdp" and self.info.enabled:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions, get_model_state_dict, get_optimizer_state_dict)

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return (get_model_state_dict(self.model, options=opts),
                    get_optimizer_state_dict(self.model, self.optimizer, options=opts))
        return self.raw_model.state_dict(), self.optimizer.state_dict()

    def save(self) -> Path | None:
        """Checkpoint now (every rank must call it under FSDP; only rank 0 writes)."""
        if self.run_dir is None:
            return None
        model_state, optim_state = self._full_states()
        if not self.info.is_main:
            dist_.barrier()
            return None
        state = {
            "step": self.step,
            "optimizer": optim_state,
            "scheduler": self.scheduler.state_dict(),
            "data": self.batches.state_dict() if hasattr(self.batches, "state_dict") else None,
            "rng": {"torch": torch.get_rng_state(), "numpy": _np_state(), "python": _py_state()},
        }
        self.last_checkpoint = ckpt.save_checkpoint(self.run_dir.checkpoints, self.step, model_state, state,
                                                    keep_last=self.cfg.keep_last)
        dist_.barrier()
        return self.last_checkpoint

    def load(self, path: Path) -> None:
        model_state, state = ckpt.load_checkpoint(path)
        if self.cfg.parallel == "fsdp" and self.info.enabled:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions, set_model_state_dict, set_optimizer_state_dict)

            opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
            set_model_state_dict(self.model, model_state, options=opts)
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=opts)
        else:
            missing, unexpected = self.raw_model.load_state_dict(model_state, strict=False)
            if missing or unexpected:
                raise CheckpointError(f"checkpoint {path} does not fit this model (missing {missing[:3]}, "
                                      f"unexpected {unexpected[:3]})")
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("data") is not None and hasattr(self.batches, "load_state_dict"):
            self.batches.load_state_dict(state["data"])
        torch.set_rng_state(state["rng"]["torch"])
        self.step = int(state["step"])
        self.last_checkpoint = path

    def resume(self, resume: str | Path | None) -> None:
        """``None``: fresh (an earlier run's checkpoints and metrics in the run dir are removed first);
        ``"auto"``: newest valid checkpoint in the run dir, if any, refusing when every one found is bad;
        else a checkpoint path."""
        if resume is None:
            # a trainer that already loaded a checkpoint (resume() called before fit(None)) keeps its run dir
            if self.run_dir is not None and self.info.is_main and self.last_checkpoint is None and self.step == 0:
                self.run_dir.clear_for_fresh_start()
            dist_.barrier()
            return
        if str(resume) == "auto":
            if self.run_dir is None:
                raise ConfigError("--resume auto needs a run directory")
            found = ckpt.list_checkpoints(self.run_dir.checkpoints)
            path = ckpt.latest_valid(self.run_dir.checkpoints)
            if path is None:
                if found:
                    raise CheckpointError(
                        f"none of the {len(found)} checkpoint(s) under {self.run_dir.checkpoints} verifies, so "
                        "--resume auto will not start over silently; delete that folder (or use another --out) "
                        "to start over")
                return
        else:
            path = Path(resume)
        self.load(path)
        if self.run_dir is not None and self.info.is_main:
            self.run_dir.truncate_metrics_after(self.step)

    # ---- loop --------------------------------------------------------------------------------------
    def fit(self, resume: str | Path | None = None) -> dict[str, float]:
        cfg = self.cfg
        if self.run_dir is not None and self.info.is_main:
            self.run_dir.lock()  # one writer per run directory
        try:
            return self._fit(resume)
        finally:
            if self.run_dir is not None and self.info.is_main:
                self.run_dir.unlock()

    def _fit(self, resume: str | Path | None) -> dict[str, float]:
        cfg = self.cfg
        self.resume(resume)
        self.model.train()
        bar = None
        if cfg.progress and self.info.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step", mininterval=1.0,
                       dynamic_ncols=True)
        items = getattr(self.batches, "items_per_batch", 0) * cfg.grad_accum * max(1, self.info.world)
        last: dict[str, float] = {}
        t0, steps_since = time.perf_counter(), 0
        try:
            while self.step < cfg.max_steps:
                metrics = self._train_step()
                self.step += 1
                steps_since += 1
                for hook in self.step_hooks:
                    hook(self.raw_model, self.step)
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    dt = time.perf_counter() - t0
                    metrics.update(lr=self.scheduler.get_last_lr()[0],
                                   throughput=items * steps_since / dt if dt > 0 else 0.0)
                    t0, steps_since = time.perf_counter(), 0
                    if self.run_dir is not None and self.info.is_main:
                        self.run_dir.log({"step": self.step, **metrics})
                    if bar is not None:
                        bar.set_postfix(loss=f"{metrics['loss']:.4g}",
                                        **{f"{self.unit}/s": f"{metrics['throughput']:.0f}"})
                last = metrics
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps:
                    self.evaluate()
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and self.step < cfg.max_steps:
                    self.save()
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        last.update(self.evaluate())
        self.save()
        if self.run_dir is not None and self.info.is_main:
            self.run_dir.plot_metrics()
        return last

    def _train_step(self) -> dict[str, float]:
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        agg: dict[str, float] = {}
        loss_sum = torch.zeros((), device=self.info.device)
        for micro in range(cfg.grad_accum):
            batch = _to_device(next(self.batches), self.info.device)
            seed = step_seed(cfg.seed, self.step, self.info.rank, micro)
            torch.manual_seed(seed)
            sync = micro == cfg.grad_accum - 1 or not hasattr(self.model, "no_sync")
            with (nullcontext() if sync else self.model.no_sync()), self._autocast():
                loss, metrics = self.model(batch)
            finite = dist_.all_true(bool(torch.isfinite(loss.detach()).all()), self.info.device)
            if not finite:
                where = self.last_checkpoint or "none written yet"
                raise NonFiniteLossError(f"loss became {float(loss.detach())} at step {self.step}; training stopped, "
                                         f"last good checkpoint kept: {where}")
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
            for k, v in metrics.items():
                agg[k] = agg.get(k, 0.0) + float(v) / cfg.grad_accum
        if cfg.grad_clip > 0:
            agg["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        agg["loss"] = float(dist_.all_reduce_mean(loss_sum / cfg.grad_accum))
        return agg

    def evaluate(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if not self.eval_hooks:
            return out
        self.model.eval()
        for hook in self.eval_hooks:
            out.update(hook(self.raw_model, self.step))
        self.model.train()
        if out and self.run_dir is not None and self.info.is_main:
            self.run_dir.log({"step": self.step, **{f"eval/{k}": v for k, v in out.items()}})
        return out


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _np_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached": float(cached)}


def _py_state() -> list[int]:
    return list(random.getstate()[1])
