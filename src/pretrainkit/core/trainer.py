"""One training loop for every system, readable top to bottom.

The trained module's ``forward(batch)`` returns ``(loss, metrics)`` (a TaskMix wrapped with its backbone,
a language model, a Decision Transformer...); metric values may be Python numbers or 0-dim tensors. Randomness
inside a step (masks, dropout) is reseeded from (seed, step, rank, micro-step), so a resumed run draws the same
masks as an uninterrupted one.

Systems extend the loop through arguments, never by assigning to its internals: an optimizer and a scheduler
factory, step hooks and eval hooks called as ``hook(trainer, step)`` (``step`` = steps completed; the model is
``trainer.raw_model``, the optimizer ``trainer.optimizer``), and ``trainer.request_stop()``. ``fit()`` measures
its own throughput.

No host-device sync per step: the loss, the metrics and the grad norm stay tensors until the log interval, and
the non-finite-loss check reads a whole interval's losses at once, at every log step and before every evaluation
and checkpoint. A non-finite loss therefore raises ``NonFiniteLossError`` at the next of those points (naming the
step where it first happened), and no checkpoint is ever written from the weights it produced.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pretrainkit.core import checkpoint as ckpt
from pretrainkit.core import distributed as dist_
from pretrainkit.core import tracking
from pretrainkit.core.config import check_positive, check_range
from pretrainkit.core.data import BatchStream, to_device
from pretrainkit.core.device import autocast
from pretrainkit.core.rundir import RunDir
from pretrainkit.core.task import TaskMix
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
    # Where the logged metrics also go (core/tracking.py): "tensorboard", "mlflow"; metrics.jsonl always.
    trackers: list[str] = field(default_factory=list)
    mlflow_uri: str = ""  # "": $MLFLOW_TRACKING_URI if set, else sqlite:///<run dir>/mlflow.db

    def validate(self, prefix: str = "train.") -> None:
        """Ranges every system shares; ``prefix`` is where this section sits (``pretrain.train.``, ...)."""
        for name in ("max_steps", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key '{prefix}{name}' must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "ckpt_every", "keep_last"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config key '{prefix}{name}' must be >= 0, got {getattr(self, name)}")
        check_positive(self.lr, f"{prefix}lr")
        check_range(self.weight_decay, f"{prefix}weight_decay", low=0.0)
        check_range(self.grad_clip, f"{prefix}grad_clip", low=0.0)
        for name in ("beta1", "beta2"):
            check_range(getattr(self, name), f"{prefix}{name}", low=0.0, high=1.0, high_open=True)
        check_range(self.min_lr_ratio, f"{prefix}min_lr_ratio", low=0.0, high=1.0)
        tracking.validate_names(self.trackers)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` (or constant)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    t = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def default_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    """``lr_factor``: linear warm-up, then cosine decay (or constant), stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))


def default_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)


def step_seed(seed: int, step: int, rank: int, micro: int) -> int:
    return (seed * 1_000_003 + step * 7919 + rank * 104_729 + micro * 13) % (2**63 - 1)


StepHook = Callable[["Trainer", int], None]
EvalHook = Callable[["Trainer", int], dict[str, float]]
SchedulerFactory = Callable[[torch.optim.Optimizer, TrainConfig], torch.optim.lr_scheduler.LRScheduler]

# What fit() measures itself, next to the last logged metrics and the final evaluation (see Trainer.fit).
FIT_MEASUREMENTS = (
    "steps_run",
    "wall_s",
    "cpu_s",
    "steps_per_s",
    "items_per_s",
    "tokens_per_s",
    "stopped_early",
)


class Trainer:
    """Train ``model`` on ``batches`` with optional DDP/FSDP2, checkpoints and exact resume."""

    def __init__(
        self,
        model: nn.Module,
        batches: BatchStream | Iterator[Any],
        cfg: TrainConfig,
        run_dir: RunDir | str | Path | None = None,
        optimizer: Callable[[nn.Module, TrainConfig], torch.optim.Optimizer] = default_optimizer,
        eval_hooks: list[EvalHook] | tuple[EvalHook, ...] = (),
        step_hooks: list[StepHook] | tuple[StepHook, ...] = (),
        fsdp_units: Callable[[nn.Module], list[nn.Module]] | None = None,
        dist_info: dist_.DistInfo | None = None,
        unit: str | None = None,
        scheduler: SchedulerFactory | None = None,
        progress_lines: float = 0.0,
        name: str | None = None,
    ):
        """``batches``: a ``BatchStream`` (core/data.py) or any iterator of batches. ``scheduler(optimizer, cfg)``
        builds the lr scheduler (default ``default_scheduler``); it is stepped once per optimizer step and its
        state is checkpointed. ``unit``: the progress bar's name for an item (default: the stream's ``unit``,
        else "samples"). ``progress_lines`` > 0: where no bar is shown (``cfg.progress`` off, e.g. in worker
        processes whose bars would garble one terminal), print one plain line at most every that many seconds
        (step, loss, rate, time left), prefixed with ``name`` (default: the run directory's name)."""
        self.cfg = cfg
        self.progress_lines = progress_lines
        self.info = dist_info or dist_.DistInfo()
        self.raw_model = model.to(self.info.device)
        # task mixes inside the model learn the step from the trainer, so a weight schedule takes effect
        self._mixes = [
            m for m in self.raw_model.modules() if isinstance(m, TaskMix) and m.schedule is not None
        ]
        self.model = self._parallelise(self.raw_model, fsdp_units)
        self.batches = batches
        self.run_dir = RunDir(run_dir) if isinstance(run_dir, (str, Path)) else run_dir
        self.optimizer = optimizer(self.model, cfg)
        self.scheduler = (scheduler or default_scheduler)(self.optimizer, cfg)
        self.eval_hooks, self.step_hooks = list(eval_hooks), list(step_hooks)
        self.unit = unit or getattr(batches, "unit", None) or "samples"
        self.name = name or (self.run_dir.path.name if self.run_dir is not None else "train")
        self.step = 0
        self.last_checkpoint: Path | None = None
        self._stop = False
        self._unchecked: list[torch.Tensor] = []  # per-step losses not yet checked for finiteness
        self._unchecked_from = 0  # the step the first of them was taken at
        self._trackers: list[
            tracking.Tracker
        ] = []  # open during fit() on rank 0: metrics.jsonl and cfg.trackers

    def request_stop(self) -> None:
        """End ``fit()`` after the current step; it still logs that step, runs the final evaluation and saves.
        Under data parallelism every rank must ask at the same step (decide from the step, not a local clock)."""
        self._stop = True

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
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return (
                get_model_state_dict(self.model, options=opts),
                get_optimizer_state_dict(self.model, self.optimizer, options=opts),
            )
        return self.raw_model.state_dict(), self.optimizer.state_dict()

    def save(self) -> Path | None:
        """Checkpoint now (every rank must call it under FSDP; only rank 0 writes). Raises NonFiniteLossError
        instead when a loss since the last check was not finite, so the weights it produced are never saved."""
        self._check_finite()
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
        self.last_checkpoint = ckpt.save_checkpoint(
            self.run_dir.checkpoints, self.step, model_state, state, keep_last=self.cfg.keep_last
        )
        dist_.barrier()
        return self.last_checkpoint

    def load(self, path: Path) -> None:
        model_state, state = ckpt.load_checkpoint(path)
        if self.cfg.parallel == "fsdp" and self.info.enabled:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
            set_model_state_dict(self.model, model_state, options=opts)
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=opts)
        else:
            missing, unexpected = self.raw_model.load_state_dict(model_state, strict=False)
            if missing or unexpected:
                raise CheckpointError(
                    f"checkpoint {path} does not fit this model (missing {missing[:3]}, "
                    f"unexpected {unexpected[:3]})"
                )
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
            if (
                self.run_dir is not None
                and self.info.is_main
                and self.last_checkpoint is None
                and self.step == 0
            ):
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
                    raise ckpt.none_verifies(len(found), self.run_dir.checkpoints)
                return
        else:
            path = Path(resume)
        self.load(path)
        if self.run_dir is not None and self.info.is_main:
            self.run_dir.truncate_metrics_after(self.step)

    # ---- loop --------------------------------------------------------------------------------------
    def fit(self, resume: str | Path | None = None) -> dict[str, Any]:
        """Train from the current (or resumed) step to ``cfg.max_steps``, or until ``request_stop()``.

        Returns the metrics of the last logged step (the last step is always logged), the final evaluation and
        fit's own measurements (``FIT_MEASUREMENTS``): ``steps_run`` (steps done in this call, so a resumed run
        counts only the remaining ones), ``wall_s`` and ``cpu_s`` (the whole call: resume, loop, final evaluation
        and save), ``stopped_early``, and, when at least one step ran, ``steps_per_s``, ``items_per_s`` (global:
        the stream's ``items_per_batch`` x grad_accum x processes, when the stream says) and ``tokens_per_s``
        (likewise, when the stream has ``tokens_per_batch``). The rates leave out the first min(5, n // 4) of the
        n steps planned for this call (allocations, autotuning, caches) and are timed from the end of the
        warm-up to the end of the loop, with one device sync at each end, not per step.
        """
        if self.run_dir is not None and self.info.is_main:
            self.run_dir.lock()  # one writer per run directory
        failed = True
        try:
            out = self._fit(resume)
            failed = False
            return out
        finally:
            trackers, self._trackers = self._trackers, []
            try:
                tracking.close_all(trackers, failed=failed)
            finally:
                if self.run_dir is not None and self.info.is_main:
                    self.run_dir.unlock()

    def _fit(self, resume: str | Path | None) -> dict[str, Any]:
        cfg = self.cfg
        wall0, cpu0 = time.perf_counter(), time.process_time()
        self.resume(resume)
        tracking.validate_names(cfg.trackers)  # on every rank, so a bad name stops them all
        if (
            self.info.is_main
        ):  # opened after resuming: a resumed run appends to its own TensorBoard/MLflow history
            self._trackers = tracking.open_trackers(
                cfg.trackers, self.run_dir, resumed_at=self.step, mlflow_uri=cfg.mlflow_uri, config=cfg
            )
        self._stop, self._unchecked = False, []
        self.model.train()
        bar = None
        if cfg.progress and self.info.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=cfg.max_steps,
                initial=self.step,
                desc="train",
                unit="step",
                mininterval=1.0,
                dynamic_ncols=True,
            )
        lines = self.progress_lines if bar is None and self.info.is_main else 0.0
        t_line = time.perf_counter()
        per_step = cfg.grad_accum * max(1, self.info.world)
        items = getattr(self.batches, "items_per_batch", None)
        tokens = getattr(self.batches, "tokens_per_batch", None)
        last: dict[str, Any] = {}
        first_step, warm = self.step, min(5, max(0, cfg.max_steps - self.step) // 4)
        t_loop = self._clock()
        t_warm = t_loop if warm == 0 else None
        t0, steps_since = t_loop, 0
        try:
            while self.step < cfg.max_steps:
                loss, metrics = self._train_step()
                self.step += 1
                steps_since += 1
                if self.step - first_step == warm and t_warm is None:
                    t_warm = self._clock()
                for hook in self.step_hooks:
                    hook(self, self.step)
                final = self.step >= cfg.max_steps or self._stop
                if self.step % cfg.log_every == 0 or final:
                    self._check_finite()
                    dt = time.perf_counter() - t0
                    rate = steps_since / dt if dt > 0 else 0.0
                    last = {k: float(v) for k, v in metrics.items()}
                    last["loss"] = float(dist_.all_reduce_mean(loss))
                    last.update(lr=self.scheduler.get_last_lr()[0], throughput=(items or 0) * per_step * rate)
                    if tokens:
                        last["tokens_per_s"] = tokens * per_step * rate
                    t0, steps_since = time.perf_counter(), 0
                    self._log(last)
                    if bar is not None:
                        rates = {f"{self.unit}/s": f"{last['throughput']:.0f}"}
                        if tokens:
                            rates["tok/s"] = f"{last['tokens_per_s']:.0f}"
                        bar.set_postfix(loss=f"{last['loss']:.4g}", **rates)
                    if lines and (time.perf_counter() - t_line >= lines or final):
                        t_line = time.perf_counter()
                        self._print_line(last["loss"], time.perf_counter() - t_loop, first_step)
                if not final and cfg.eval_every and self.step % cfg.eval_every == 0:
                    self.evaluate()
                if not final and cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                    self.save()
                if bar is not None:
                    bar.update(1)
                if self._stop:
                    break
        finally:
            if bar is not None:
                bar.close()
        t_end = self._clock()
        done = self.step - first_step
        measured: dict[str, Any] = {
            "steps_run": done,
            "stopped_early": self._stop and self.step < cfg.max_steps,
        }
        if done:
            timed, dt = (
                (done - warm, t_end - t_warm)
                if t_warm is not None and done > warm
                else (done, t_end - t_loop)
            )
            rate = timed / dt if dt > 0 else float("nan")
            measured["steps_per_s"] = rate
            if items is not None:
                measured["items_per_s"] = items * per_step * rate
            if tokens:
                measured["tokens_per_s"] = tokens * per_step * rate
        last.update(self.evaluate())
        self.save()
        if self.run_dir is not None and self.info.is_main:
            self.run_dir.plot_metrics()
        measured.update(wall_s=time.perf_counter() - wall0, cpu_s=time.process_time() - cpu0)
        return {**last, **measured}

    def _print_line(self, loss: float, took: float, first_step: int) -> None:
        rate = (self.step - first_step) / took if took > 0 else 0.0
        left = f"~{(self.cfg.max_steps - self.step) / rate:.0f} s left" if rate > 0 else "time left unknown"
        print(
            f"{self.name}: step {self.step}/{self.cfg.max_steps}, loss {loss:.4g}, {rate:.1f} steps/s, "
            f"{took:.0f} s so far, {left}",
            flush=True,
        )

    def _clock(self) -> float:
        """A timestamp after the device has finished the queued work (used twice per fit, never per step)."""
        if self.info.device.type == "cuda":
            torch.cuda.synchronize(self.info.device)
        return time.perf_counter()

    def _train_step(self) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """One optimizer step; returns its mean loss (a tensor, this rank's) and its metrics, unsynced."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        agg: dict[str, torch.Tensor | float] = {}
        loss_sum = torch.zeros((), device=self.info.device)
        for mix in self._mixes:
            mix.current_step = self.step
        for micro in range(cfg.grad_accum):
            batch = to_device(next(self.batches), self.info.device)
            seed = step_seed(cfg.seed, self.step, self.info.rank, micro)
            torch.manual_seed(seed)
            sync = micro == cfg.grad_accum - 1 or not hasattr(self.model, "no_sync")
            with nullcontext() if sync else self.model.no_sync(), self._autocast():
                loss, metrics = self.model(batch)
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
            for k, v in metrics.items():
                if isinstance(v, torch.Tensor):
                    v = v.detach()
                    v = (v if v.is_floating_point() else v.float()) / cfg.grad_accum
                else:
                    v = float(v) / cfg.grad_accum
                agg[k] = agg[k] + v if k in agg else v
        if cfg.grad_clip > 0:
            agg["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip).detach()
        self.optimizer.step()
        self.scheduler.step()
        loss = loss_sum / cfg.grad_accum
        if not self._unchecked:
            self._unchecked_from = self.step
        self._unchecked.append(loss)
        return loss, agg

    def _check_finite(self) -> None:
        """Raise NonFiniteLossError if any rank's loss since the last check was not finite (one sync)."""
        if not self._unchecked:
            return
        losses = torch.stack(self._unchecked)
        self._unchecked = []
        n = len(losses)
        bad = torch.where(torch.isfinite(losses), n, torch.arange(n, device=losses.device)).min()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(bad, op=dist.ReduceOp.MIN)  # every rank stops, at the same step
        first = int(bad)
        if first < n:
            where = self.last_checkpoint or "none written yet"
            raise NonFiniteLossError(
                f"loss became {float(losses[first])} at step {self._unchecked_from + first}; "
                f"training stopped, last good checkpoint kept: {where}"
            )

    def evaluate(self) -> dict[str, float]:
        """Run every eval hook as ``hook(trainer, step)`` with the model in eval mode; log and return the union."""
        self._check_finite()  # never evaluate weights a non-finite loss produced
        out: dict[str, float] = {}
        if not self.eval_hooks:
            return out
        self.model.eval()
        for hook in self.eval_hooks:
            out.update(hook(self, self.step))
        self.model.train()
        if out:
            self._log({f"eval/{k}": v for k, v in out.items()})
        return out

    def _log(self, metrics: dict[str, Any]) -> None:
        """One logged record at the current step: to every open tracker, else (outside fit) metrics.jsonl."""
        if self.run_dir is None or not self.info.is_main:
            return
        if self._trackers:
            tracking.log_all(self._trackers, self.step, metrics)
        else:
            self.run_dir.log({"step": self.step, **metrics})


def _np_state() -> dict[str, Any]:
    _name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _py_state() -> list[int]:
    return list(random.getstate()[1])
