"""L2M end to end: collect expert data, pre-train the DT, run one continual method over the task sequence.

Run layout under ``cfg.out``::

    data/<task>.npz, collection.json                   (``collect_data``; cfg.data.dir)
    pretrain/seed-S/{backbone.safetensors, backbone.json, checkpoints/, metrics.jsonl}
    continual/seed-S/<method>/{record.json, stage-I/{checkpoints/, method.safetensors}}

Every step is resumable: collection skips finished tasks, training resumes from the newest checkpoint,
the continual loop restarts after the last completed stage.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrainkit.adapt.continual import ContinualRecord, run_stages
from pretrainkit.core.checkpoint import atomic_write_text, check_resume, load_weights, save_weights
from pretrainkit.core.device import resolve_device
from pretrainkit.core.distributed import DistInfo
from pretrainkit.core.rundir import RunDir
from pretrainkit.core.task import MixModel, TaskMix
from pretrainkit.core.trainer import FIT_MEASUREMENTS, TrainConfig, Trainer
from pretrainkit.errors import CheckpointError, ConfigError, DataError
from pretrainkit.systems.l2m.collect import collect, task_file
from pretrainkit.systems.l2m.config import L2MConfig
from pretrainkit.systems.l2m.data import ContextWindowDataset, TaskData, load_task_dataset, split_episodes
from pretrainkit.systems.l2m.envs import MT50, make_vector_env
from pretrainkit.systems.l2m.methods import METHODS, PRETRAIN, FullFineTune, Method
from pretrainkit.systems.l2m.model import DecisionTransformer, DTConfig, encode_actions
from pretrainkit.systems.l2m.rollout import evaluate_task
from pretrainkit.systems.l2m.tasks import ActionTask

Log = Callable[[str], None]


def setup_torch(cfg: L2MConfig) -> torch.device:
    """Apply the thread count and resolve ``cfg.device`` (auto = CUDA when present)."""
    torch.set_num_threads(cfg.threads)
    return resolve_device(cfg.device)


# ---- data ------------------------------------------------------------------------------------------
def collect_data(cfg: L2MConfig, progress: bool = True) -> dict[str, Any]:
    """Collect scripted-expert datasets for the pre-training and continual tasks (finished ones skipped)."""
    d = cfg.data
    return collect(
        [*d.pretrain_tasks, *d.continual_tasks],
        d.dir,
        d.episodes_per_task,
        d.noise_levels,
        workers=d.workers,
        seed=d.seed,
        progress=progress,
    )


@dataclass
class TaskSplit:
    """One task's training and held-out episodes, and the evaluation target return."""

    train: TaskData
    val: TaskData
    target_return: float


def load_tasks(cfg: L2MConfig, tasks: list[str]) -> dict[str, TaskSplit]:
    """Load and split every task's dataset; a missing file says how to make it."""
    out = {}
    for t in tasks:
        f = task_file(cfg.data.dir, t)
        if not f.is_file():
            raise DataError(
                f"no dataset for task '{t}' at {f}; run `pretrainkit l2m collect` with this config first"
            )
        data = load_task_dataset(f, t)
        if (data.state_dim, data.act_dim) != (cfg.model.state_dim, cfg.model.act_dim):
            raise DataError(
                f"{f}: states/actions are {data.state_dim}/{data.act_dim}-d, the model expects "
                f"{cfg.model.state_dim}/{cfg.model.act_dim}"
            )
        if cfg.data.action_source == "expert":
            if "expert_actions" not in data.extras:
                raise DataError(
                    f"{f} has no 'expert_actions'; set data.action_source=executed to use 'actions'"
                )
            data.actions = data.extras["expert_actions"].astype(np.float32)
        train, val = split_episodes(data, cfg.data.val_fraction, seed=cfg.data.seed)
        target = float(np.quantile(train.episode_returns, cfg.eval.target_quantile))
        out[t] = TaskSplit(train, val, target)
    return out


class WindowBatches:
    """Endless random batches of DT windows; the generator state is checkpointed for exact resume."""

    def __init__(self, data: ContextWindowDataset, batch_size: int, seed: int):
        self.data, self.batch_size = data, int(batch_size)
        self.gen = torch.Generator().manual_seed(int(seed))

    @property
    def items_per_batch(self) -> int:
        return self.batch_size

    def __iter__(self) -> WindowBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return self.data.sample_batch(self.batch_size, self.gen)

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])


def windows(cfg: L2MConfig, data: TaskData | list[TaskData]) -> ContextWindowDataset:
    return ContextWindowDataset(data, context=cfg.model.context)


# ---- pre-training ----------------------------------------------------------------------------------
class BehaviourCloning(MixModel):
    """``forward(batch) -> (loss, metrics)`` for the Trainer: the DT under the ``l2m.action`` task (its action
    loss). The DT stays under the attribute ``dt`` (checkpoint keys ``dt.…``, as before the task mix)."""

    def __init__(self, dt: DecisionTransformer):
        super().__init__(dt, TaskMix([ActionTask.for_model(dt.cfg)]), backbone_name="dt")


def backbone_path(cfg: L2MConfig, seed: int) -> Path:
    return Path(cfg.out) / "pretrain" / f"seed-{seed}" / "backbone.safetensors"


def pretrain(
    cfg: L2MConfig, seed: int = 0, resume: str | None = "auto", log: Log = print, progress: bool = True
) -> dict[str, Any]:
    """Pre-train the DT on all pre-training tasks jointly; returns stats. Skips a finished backbone."""
    dev = setup_torch(cfg)
    path = backbone_path(cfg, seed)
    stats_path = path.with_name("pretrain.json")
    if resume is not None and path.is_file() and stats_path.is_file():
        try:
            load_weights(path)  # checked against its checksum before it is reused
            log(f"pre-trained backbone exists: {path} (delete it to train again)")
            return json.loads(stats_path.read_text())
        except CheckpointError as e:  # rebuilt below from the run's newest good checkpoint
            log(f"{e}; rebuilding it from the newest good checkpoint")
            path.unlink()
    check_resume(resume, path.parent / "checkpoints")  # before the run directory is written to
    splits = load_tasks(cfg, cfg.data.pretrain_tasks)
    ds = windows(cfg, [s.train for s in splits.values()])
    torch.manual_seed(seed)
    dt = DecisionTransformer(cfg.model)
    tcfg = TrainConfig(**{**asdict(cfg.pretrain.train), "seed": seed, "progress": progress})
    run = RunDir(path.parent)
    run.save_config(cfg)
    trainer = Trainer(
        BehaviourCloning(dt),
        WindowBatches(ds, cfg.pretrain.batch_size, seed),
        tcfg,
        run,
        dist_info=_dist(dev),
        unit="windows",
    )
    last = trainer.fit(resume)
    wall, cpu, steps = last["wall_s"], last["cpu_s"], last["steps_run"]
    save_weights(path, dt.state_dict())
    atomic_write_text(path.with_suffix(".json"), json.dumps(asdict(dt.cfg), indent=1))
    stats = {
        "seed": seed,
        "tasks": cfg.data.pretrain_tasks,
        "steps": tcfg.max_steps,
        "params": dt.num_params(),
        "timed_steps": steps,
        "seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
        "steps_per_s": round(steps / wall, 3) if steps else None,
        "steps_per_cpu_s": round(steps / cpu, 3) if steps and cpu > 0 else None,
        "final": {k: v for k, v in last.items() if isinstance(v, float) and k not in FIT_MEASUREMENTS},
    }
    atomic_write_text(stats_path, json.dumps(stats, indent=1))
    log(f"pre-trained {steps} steps in {wall:.0f} s -> {path}")
    return stats


def _dist(device: torch.device) -> DistInfo:
    return DistInfo(device=device)  # single process: the continual harness runs one method at a time


def load_backbone(path: str | Path) -> DecisionTransformer:
    """A DT from ``backbone.safetensors`` and its ``backbone.json`` config."""
    path = Path(path)
    side = path.with_suffix(".json")
    if not side.is_file():
        raise CheckpointError(
            f"no backbone config {side} next to {path}; run `pretrainkit l2m pretrain` first"
        )
    dt = DecisionTransformer(DTConfig(**json.loads(side.read_text())))
    missing, unexpected = dt.load_state_dict(load_weights(path), strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit its config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return dt


def pretrain_queries(
    dt: DecisionTransformer, splits: dict[str, TaskSplit], cfg: L2MConfig, n: int = 1024
) -> torch.Tensor:
    """L2M's fixed pre-training keys: ``cfg.method.pretrain_keys`` k-means centres of each pre-training
    task's queries (mean state-token embeddings of its windows), ``[tasks * k, d]``."""
    out = []
    dev = next(dt.parameters()).device
    with torch.no_grad():
        for i, t in enumerate(cfg.data.pretrain_tasks):
            b = windows(cfg, splits[t].train).sample_batch(n, torch.Generator().manual_seed(i))
            q = dt.state_embedding(b["states"].to(dev), b["timesteps"].to(dev), b["mask"].to(dev))
            out.append(spherical_kmeans(q, cfg.method.pretrain_keys, seed=i))
    return torch.cat(out)


def spherical_kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
    """``k`` unit-norm centres of the rows of ``x`` by cosine k-means (several keys tile a task's queries
    better than its mean, which matters when tasks' query clouds are close)."""
    x = torch.nn.functional.normalize(x.float(), dim=-1)
    k = min(int(k), len(x))
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(len(x), generator=g)[:k].to(x.device)]
    for _ in range(iters):
        assign = (x @ centres.T).argmax(1)
        for j in range(k):
            members = x[assign == j]
            if len(members):  # an empty cluster keeps its old centre
                centres[j] = torch.nn.functional.normalize(members.mean(0), dim=0)
    return centres


# ---- evaluation ------------------------------------------------------------------------------------
@dataclass
class Throughput:
    """CPU-time tallies for the throughput lines (one thread, so CPU seconds = core seconds)."""

    eval_env_steps: int = 0
    eval_cpu: float = 0.0
    eval_sim_wall: float = 0.0
    train_steps: int = 0
    train_cpu: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, other: Throughput) -> None:
        for k in ("eval_env_steps", "eval_cpu", "eval_sim_wall", "train_steps", "train_cpu"):
            setattr(self, k, getattr(self, k) + getattr(other, k))


_ENVS: dict[tuple[str, int], Any] = {}
CALIBRATION_STARTS = (
    500_000  # far beyond every task's reported start seeds (101 apart per task, 7919 per seed)
)


def vector_env(task: str, episodes: int):
    """A cached lock-step vector env per (task, episodes): evaluations reset it with their own seed."""
    if (task, episodes) not in _ENVS:
        _ENVS[(task, episodes)] = make_vector_env(task, episodes)
    return _ENVS[(task, episodes)]


def close_envs() -> None:
    """Close every cached evaluation env."""
    while _ENVS:
        _ENVS.popitem()[1].close()


def evaluate(
    method: Method,
    task: str,
    task_id: int,
    split: TaskSplit,
    cfg: L2MConfig,
    seed: int,
    device: torch.device,
    tally: Throughput | None = None,
    calibration: bool = False,
) -> dict[str, Any]:
    """Closed-loop success on ``cfg.eval.episodes`` episodes plus offline accuracy on held-out windows.
    ``calibration``: success only, from start positions disjoint from the reported ones (a stage-length
    check must not pick its stopping step on the episodes it is then scored on)."""
    method.eval()
    actor = method.actor(task_id)
    cpu = time.process_time()
    base = 7919 * (seed + 1) + 101 * MT50.index(task)  # same start positions at every stage and method
    base += CALIBRATION_STARTS if calibration else 0
    env = vector_env(task, cfg.eval.episodes) if cfg.eval.reuse_envs else None
    r = evaluate_task(
        actor,
        task,
        cfg.eval.episodes,
        split.target_return,
        seed=base,
        device=device,
        stop_on_success=cfg.eval.stop_on_success,
        env=env,
    )
    if tally is not None:
        tally.eval_env_steps += r["env_steps"]
        tally.eval_cpu += time.process_time() - cpu
        tally.eval_sim_wall += r["seconds"] - r["policy_seconds"]
    out: dict[str, Any] = {"success": r["success"], "return": r["mean_return"]}
    if calibration:
        return out
    if actor.usage:
        total = sum(actor.usage.values())
        out["keys_rollout"] = {str(k): round(v / total, 3) for k, v in sorted(actor.usage.items())}
    out.update(offline_metrics(method, split.val, task_id, cfg, device))
    return out


@torch.no_grad()
def offline_metrics(
    method: Method, val: TaskData, task_id: int, cfg: L2MConfig, device: torch.device
) -> dict[str, Any]:
    """Bin accuracy and CE of the method's predictions on held-out windows, and the keys they select."""
    if val.num_episodes == 0 or len(val) == 0:
        return {}
    method.eval()
    b = windows(cfg, val).sample_batch(cfg.eval.offline_windows, torch.Generator().manual_seed(0))
    b = {k: v.to(device) for k, v in b.items()}
    pred, _ = method.predict(b, task_id)
    _, m = method.dt.action_loss(pred, b["actions"], b["mask"])
    if "bin_acc" not in m:  # continuous head: share of predictions in the label's bin (comparable to binned)
        n_bins, valid = method.dt.cfg.n_bins, b["mask"].bool()
        hit = encode_actions(pred[valid], n_bins) == encode_actions(b["actions"][valid], n_bins)
        m["bin_acc"] = float(hit.float().mean())
    out: dict[str, Any] = {"offline_acc": m["bin_acc"], "offline_mae": m["action_mae"]}
    idx = method.selected_keys(b, task_id)
    if idx is not None:
        keys, counts = torch.unique(idx.flatten(), return_counts=True)
        out["keys"] = {str(int(k)): round(int(c) / idx.numel(), 3) for k, c in zip(keys, counts)}
        out["key"] = int(keys[counts.argmax()])
    return out


# ---- continual learning ----------------------------------------------------------------------------
def build_method(
    name: str, cfg: L2MConfig, backbone: str | Path, seed: int, queries: torch.Tensor | None = None
) -> Method:
    """A fresh copy of the pre-trained DT wrapped by method ``name`` (adapters seeded by ``seed``)."""
    cls = METHODS.get(name)
    dt = load_backbone(backbone)
    if dt.cfg.cross_layer_rank and cls.frozen_backbone:
        # adapters wrap nn.Linear by name; blocks 1.. of a cross-layer DT hold chain layers instead, so a
        # pattern would silently adapt block 0 alone
        raise ConfigError(
            f"method '{name}' injects adapters into nn.Linear projections, and {backbone} is a cross-layer "
            "backbone (model.cross_layer_rank > 0) whose blocks 1.. have none; use a full-rank backbone"
        )
    torch.manual_seed(10_000 + seed)
    return cls(dt, cfg.method, len(cfg.data.continual_tasks), queries)


def order_config(cfg: L2MConfig, order: str) -> L2MConfig:
    """The profile with its continual tasks in ``order``: "" = data.continual_tasks, "order2" =
    bench.second_order's order of the same tasks."""
    if not order:
        return cfg
    if order != "order2":
        raise ConfigError(f"unknown task order {order!r}: '' (data.continual_tasks) or 'order2'")
    from dataclasses import replace

    return replace(cfg, data=replace(cfg.data, continual_tasks=cfg.second_order_tasks()))


class ContinualRun:
    """One method over the continual sequence (a ``StageLearner`` for ``run_stages``), resumable by stage.
    ``order``: "" for data.continual_tasks, "order2" for bench.second_order (its own run folder)."""

    def __init__(
        self,
        cfg: L2MConfig,
        method: str,
        seed: int = 0,
        log: Log = print,
        progress: bool = False,
        order: str = "",
    ):
        cfg = order_config(cfg, order)
        self.cfg, self.name, self.seed, self.log, self.progress = cfg, method, seed, log, progress
        self.order = order
        self.device = setup_torch(cfg)
        self.backbone = backbone_path(cfg, seed)
        if not self.backbone.is_file():
            raise DataError(
                f"no pre-trained backbone at {self.backbone}; run `pretrainkit l2m pretrain` first"
            )
        folder = "continual" + (f"-{order}" if order else "")
        self.dir = Path(cfg.out) / folder / f"seed-{seed}" / method
        self.splits = load_tasks(cfg, [*cfg.data.continual_tasks, *cfg.data.pretrain_tasks])
        queries = None
        if METHODS.get(method).needs_pretrain_queries and cfg.method.pretrain_eval == "routed":
            queries = pretrain_queries(load_backbone(self.backbone), self.splits, cfg)
        self.method = build_method(method, cfg, self.backbone, seed, queries).to(self.device)
        self.tally = Throughput()

    # ---- stage lengths ----------------------------------------------------------------------------------
    @property
    def calibrating(self) -> bool:
        """Whether this run sets the stage lengths (trains each stage until the task is learned)."""
        c = self.cfg.continual
        return c.until_success > 0 and self.name == c.calibrate_with

    def stage_steps(self, stage: int) -> int:
        """Steps to train ``stage``: fixed; the cap while calibrating (a check stops it earlier; once stopped,
        the stage's marker holds the step, so a resumed stage does not train on); else the calibrating
        method's steps on that stage (same seed, same order)."""
        c = self.cfg.continual
        if c.until_success <= 0:
            return c.steps_per_task
        if self.calibrating:
            marker = self.dir / f"stage-{stage}" / "calibrated.json"
            return int(json.loads(marker.read_text())["steps"]) if marker.is_file() else c.max_steps_per_task
        return self.plan()[stage]

    def plan(self) -> list[int]:
        """The calibrating method's steps per stage, from its finished record beside this run's folder."""
        c = self.cfg.continual
        ref = self.dir.parent / c.calibrate_with / "record.json"
        rec = ContinualRecord.load(ref) if ref.is_file() else None
        if rec is None or rec.done < len(rec.tasks):
            raise ConfigError(
                f"continual.until_success={c.until_success} takes each stage's length from "
                f"{c.calibrate_with}'s run of seed {self.seed}; finish it first ({ref} is "
                f"{'missing' if rec is None else 'unfinished'})"
            )
        return [int(s["steps"]) for s in rec.stages]

    def _until_learned(self, stage: int, task: str, checks: list[list[float]]):
        """Step hook: every ``check_every`` steps, closed-loop success on the stage's task (calibration
        starts); stop the stage once it reaches ``until_success``."""
        c = self.cfg.continual
        task_id = self.cfg.data.continual_tasks.index(task)

        def hook(trainer: Trainer, step: int) -> None:
            if step % c.check_every:
                return
            r = evaluate(
                self.method, task, task_id, self.splits[task], self.cfg, self.seed, self.device,
                self.tally, calibration=True,
            )  # fmt: skip
            self.method.train()
            checks.append([step, r["success"]])
            if r["success"] >= c.until_success:
                trainer.request_stop()

        return hook

    def learn(self, stage: int, task: str) -> dict[str, Any]:
        cfg, c = self.cfg, self.cfg.continual
        data = windows(cfg, self.splits[task].train)
        self.method.begin_task(stage, data)
        self.method.train()
        steps = self.stage_steps(stage)
        marker = self.dir / f"stage-{stage}" / "calibrated.json"
        checks: list[list[float]] = []
        hooks = (
            [self._until_learned(stage, task, checks)] if self.calibrating and not marker.is_file() else []
        )
        tcfg = TrainConfig(
            max_steps=steps,
            lr=self.method.lr,
            schedule="constant",
            log_every=c.log_every,
            ckpt_every=c.ckpt_every,
            keep_last=1,
            seed=1000 * self.seed + stage,
            progress=self.progress,
        )
        trainer = Trainer(
            self.method,
            WindowBatches(data, c.batch_size, 1000 * self.seed + stage),
            tcfg,
            RunDir(self.dir / f"stage-{stage}"),
            dist_info=_dist(self.device),
            unit="windows",
            optimizer=lambda m, t: torch.optim.AdamW(m.param_groups(), weight_decay=0.0),
            step_hooks=hooks,
        )
        last = trainer.fit("auto")
        wall, cpu = last["wall_s"], last["cpu_s"]
        if self.calibrating:
            old = json.loads(marker.read_text()) if marker.is_file() else {}
            checks = old.get("checks", []) + checks  # a resumed stage keeps the checks made before
            atomic_write_text(marker, json.dumps({"steps": trainer.step, "checks": checks}))
        self.method.end_task(stage, data)
        self.tally.train_steps += last["steps_run"]
        self.tally.train_cpu += cpu
        return {
            "steps": trainer.step,
            "seconds": round(wall, 2),
            "cpu_seconds": round(cpu, 2),
            **({"checks": checks} if self.calibrating else {}),
            **{k: round(v, 4) for k, v in last.items() if k in ("loss", "bin_acc", "aux_loss", "penalty")},
        }

    def evaluate(self, task: str, stage: int) -> dict[str, Any]:
        tasks = self.cfg.data.continual_tasks
        task_id = tasks.index(task) if task in tasks else PRETRAIN
        return evaluate(
            self.method, task, task_id, self.splits[task], self.cfg, self.seed, self.device, self.tally
        )

    # ---- stage checkpoints ----------------------------------------------------------------------------
    def _save_stage(self, stage: int, record: ContinualRecord) -> None:
        state = {
            **self.method.state_dict(),
            **{f"extra::{k}": v for k, v in self.method.extra_state_dict().items()},
        }
        save_weights(self.dir / f"stage-{stage}" / "method.safetensors", state)
        record.save(self.dir / "record.json")
        row = record.rows[-1]
        seen = ", ".join(f"{t.removesuffix('-v3')} {row[t]['success']:.2f}" for t in row)
        self.log(
            f"[{self.name} seed {self.seed}] stage {stage + 1}/{len(record.tasks)} "
            f"({record.tasks[stage]}, {record.stages[-1]['seconds']:.0f} s): success {seen}"
        )

    def load_stage(self, stage: int) -> None:
        """Restore the method as it was at the end of ``stage`` (weights, pool counts, regulariser state)."""
        state = load_weights(self.dir / f"stage-{stage}" / "method.safetensors")
        extra = {k[7:]: v for k, v in state.items() if k.startswith("extra::")}
        own = {k: v for k, v in state.items() if not k.startswith("extra::")}
        try:
            self.method.load_state_dict(own)
        except RuntimeError as e:
            raise CheckpointError(
                f"stage {stage} of {self.dir} does not fit this method: {str(e).splitlines()[0]}"
            ) from None
        self.method.load_extra_state_dict(extra)

    def run(self, initial: dict[str, dict[str, Any]] | None = None, resume: bool = True) -> ContinualRecord:
        """Run (or finish) the sequence; ``initial`` = a shared evaluation of the backbone before any stage."""
        cfg = self.cfg
        extra = cfg.data.pretrain_tasks if cfg.eval.pretrain_tasks else []
        rec_path = self.dir / "record.json"
        if not resume and self.dir.is_dir():
            shutil.rmtree(self.dir)  # a fresh run must not pick up old stage checkpoints
        self.dir.mkdir(parents=True, exist_ok=True)
        record = ContinualRecord.load(rec_path) if resume and rec_path.is_file() else None
        if record is not None and record.done:
            self.load_stage(record.done - 1)
            self.log(f"[{self.name} seed {self.seed}] resuming after stage {record.done}")
        if record is None and initial is not None:
            record = ContinualRecord(list(cfg.data.continual_tasks), list(extra), initial=dict(initial))
        return run_stages(
            cfg.data.continual_tasks,
            self,
            self.evaluate,
            extra,
            record,
            initial=True,
            on_stage_end=self._save_stage,
            extra_every_stage=cfg.eval.pretrain_every_stage,
        )


def evaluate_backbone(
    cfg: L2MConfig,
    seed: int,
    tasks: list[str] | None = None,
    tally: Throughput | None = None,
    backbone: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate the pre-trained DT as is (no method) on ``tasks``: the shared 'before' row of a bench."""
    dev = setup_torch(cfg)
    tasks = tasks or [*cfg.data.continual_tasks, *cfg.data.pretrain_tasks]
    splits = load_tasks(cfg, tasks)
    m = FullFineTune(load_backbone(backbone or backbone_path(cfg, seed)), cfg.method, 1).to(dev)
    seq = cfg.data.continual_tasks
    return {
        t: evaluate(m, t, seq.index(t) if t in seq else PRETRAIN, splits[t], cfg, seed, dev, tally)
        for t in tasks
    }
