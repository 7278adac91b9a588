"""L2M's configuration: data collection, the DT backbone, pre-training, continual methods, evaluation, bench."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pretrainkit.core.config import check_at_least, check_positive, check_range
from pretrainkit.core.trainer import TrainConfig
from pretrainkit.errors import ConfigError
from pretrainkit.systems.l2m.bc import BCConfig
from pretrainkit.systems.l2m.envs import check_tasks
from pretrainkit.systems.l2m.model import DTConfig

# CW10 tasks whose scripted expert succeeds >= 95 % at H=200 (paper note 5), kept in CW10 order.
CLEAN_CW10 = [
    "hammer-v3",
    "push-wall-v3",
    "faucet-close-v3",
    "handle-press-side-v3",
    "push-v3",
    "window-close-v3",
    "peg-unplug-side-v3",
]
# Quick profile: three of them with distinct objects (keys can tell them apart), in CW10 order.
QUICK_CONTINUAL = ["hammer-v3", "faucet-close-v3", "handle-press-side-v3"]
QUICK_PRETRAIN = ["drawer-close-v3", "button-press-topdown-v3", "dial-turn-v3", "door-open-v3"]
ALL_METHODS = ["ft", "lora", "lora-pool", "ia3", "l2p", "ewc", "l2", "l2m", "l2m-oracle"]


@dataclass
class DataSection:
    dir: str = "runs/l2m/data"  # one <task>.npz per task + collection.json
    pretrain_tasks: list[str] = field(default_factory=lambda: list(QUICK_PRETRAIN))
    continual_tasks: list[str] = field(default_factory=lambda: list(QUICK_CONTINUAL))
    episodes_per_task: int = 40
    noise_levels: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2])
    val_fraction: float = 0.1  # held-out episodes per task for offline action accuracy
    # expert: learn the clean expert action in the states the noisy rollouts visited (DART-style: noise buys
    # state coverage, labels stay clean); executed: the noisy action that was actually taken
    action_source: Literal["expert", "executed"] = "expert"
    workers: int = 1  # collection processes
    seed: int = 0


@dataclass
class PretrainSection:
    batch_size: int = 64
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            max_steps=3000,
            lr=1e-3,
            weight_decay=0.01,
            warmup_steps=200,
            grad_clip=1.0,
            log_every=50,
            ckpt_every=500,
        )
    )


@dataclass
class MethodSection:
    """Hyper-parameters of every continual method (each method reads the ones it needs)."""

    lr_full: float = 1e-3  # ft, ewc, l2 (whole backbone)
    lr_adapter: float = 3e-3  # lora, ia3, l2p, l2m (frozen backbone)
    key_lr: float = 1e-2  # keys of the L2M / L2P pools (short runs: keys must reach their queries)
    rank: int = 4
    lora_targets: list[str] = field(default_factory=lambda: ["attn.q_proj", "attn.v_proj", "mlp.fc1"])
    ia3_targets: list[str] = field(default_factory=lambda: ["attn.k_proj", "attn.v_proj", "mlp.fc1"])
    ewc_weight: float = 400.0  # L2M's code: lambda 400
    l2_weight: float = 1.0
    fisher_batches: int = 16
    fisher_batch_size: int = 8
    pool_size: int = 16  # L2M: modulators (paper: 30 for 10 tasks); oracle needs >= number of tasks
    key_coef: float = 0.5
    count_penalty: bool = True
    ff_placement: Literal["output", "parallel"] = (
        "output"  # output = L2M's code (h + B A h on the fc1 output)
    )
    # How L2M meets pre-training tasks at evaluation. routed (default): task-agnostic, as every other method
    # is: fixed keys per pre-training task (k-means centres of its queries) compete with the pool and winning
    # one means no modulation (L2M's n_pretrain_keys), so retention is measured. unmodulated: the bare
    # backbone, because the evaluation tells L2M the task is a pre-training task (retention exact by
    # construction; kept to compare with earlier results).
    pretrain_eval: Literal["routed", "unmodulated"] = "routed"
    pretrain_keys: int = 4
    prompt_pool: int = 10  # L2P
    prompt_len: int = 3
    prompt_top_k: int = 2


@dataclass
class ContinualSection:
    methods: list[str] = field(default_factory=lambda: list(ALL_METHODS))
    steps_per_task: int = 400  # every stage's length while until_success is 0
    # Stage lengths set by learning: with until_success > 0, ``calibrate_with`` (full fine-tuning) trains each
    # stage until its closed-loop success on that task reaches until_success (checked every check_every steps
    # on eval.episodes episodes from other start positions than the reported ones) or max_steps_per_task; every
    # other method then trains each stage exactly as many steps as it did (same seed, same order), so the
    # methods get equal compute and forgetting has something learned to forget.
    until_success: float = 0.0
    check_every: int = 250
    max_steps_per_task: int = 3000
    calibrate_with: str = "ft"
    batch_size: int = 32
    ckpt_every: int = 200
    log_every: int = 50


@dataclass
class EvalSection:
    episodes: int = 10  # closed-loop episodes per task (lock-step vector env)
    target_quantile: float = 0.9  # target return = this quantile of the task's training returns
    offline_windows: int = 512  # held-out windows per task for offline action accuracy
    stop_on_success: bool = True  # stop acting for episodes that already succeeded (same success, less CPU)
    reuse_envs: bool = True  # keep each task's vector env between evaluations (MuJoCo set-up is costly)
    pretrain_tasks: bool = True  # evaluate pre-training tasks (retention)
    pretrain_every_stage: bool = True  # False: before and after the sequence only (retention needs no more)


@dataclass
class BenchSection:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    name: str = "l2m"  # docs/results/<name>.md/.json
    workers: int = 1  # processes for the seeds' pre-training and the (seed, method) runs; same results
    # A second order of the same continual tasks, run for second_order_methods, so no conclusion rests on one
    # order: none, or reversed (a rule rather than a list, so it follows any data.continual_tasks override).
    second_order: Literal["none", "reversed"] = "none"
    second_order_methods: list[str] = field(default_factory=list)
    bc_reference: bool = True  # also train and roll out the state-only BC MLP per seed (diagnosis reference)


@dataclass
class DiagnoseSection:
    """`pretrainkit l2m diagnose`: which policies to compare on the pre-training tasks (diagnose.py)."""

    variants: list[str] = field(default_factory=lambda: ["bc-mlp", "dt-continuous", "dt-discrete"])
    bc: BCConfig = field(default_factory=BCConfig)
    name: str = "l2m-diagnosis"  # docs/results/<name>.md/.json
    cross_layer_rank: int = 16  # dt-cross-layer: the rank of blocks 1.. in CR-Net's form


@dataclass
class L2MConfig:
    data: DataSection = field(default_factory=DataSection)
    model: DTConfig = field(default_factory=lambda: DTConfig(d_model=64, n_layer=2, n_head=4))
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    continual: ContinualSection = field(default_factory=ContinualSection)
    method: MethodSection = field(default_factory=MethodSection)
    eval: EvalSection = field(default_factory=EvalSection)
    bench: BenchSection = field(default_factory=BenchSection)
    diagnose: DiagnoseSection = field(default_factory=DiagnoseSection)
    out: str = "runs/l2m"
    threads: int = 1  # torch threads per process (1 is fastest on small shared CPUs)
    device: str = "auto"  # auto = cuda if available

    def validate(self) -> None:
        from pretrainkit.systems.l2m.methods import METHODS

        pre, cont = check_tasks(self.data.pretrain_tasks), check_tasks(self.data.continual_tasks)
        if not pre or not cont:
            raise ConfigError("data.pretrain_tasks and data.continual_tasks must each name at least one task")
        clash = sorted(set(pre) & set(cont))
        if clash:
            raise ConfigError(
                f"tasks {clash} are both pre-training and continual tasks; keep the lists disjoint"
            )
        for m in self.continual.methods:
            METHODS.get(m)  # one-line error naming the registered methods
        if "l2m-oracle" in self.continual.methods and self.method.pool_size < len(cont):
            raise ConfigError(
                f"l2m-oracle needs method.pool_size >= number of continual tasks ({len(cont)}), "
                f"got {self.method.pool_size}"
            )
        if self.eval.episodes < 1 or self.continual.steps_per_task < 1:
            raise ConfigError("eval.episodes and continual.steps_per_task must be >= 1")
        self._validate_stages_and_orders(cont)
        if not self.bench.seeds:
            raise ConfigError("bench.seeds must list at least one seed")
        from pretrainkit.systems.l2m.diagnose import check_variants

        check_variants(self.diagnose.variants)
        self.diagnose.bc.validate()
        if self.bench.workers < 1:
            raise ConfigError(f"bench.workers must be >= 1, got {self.bench.workers}")
        for key in (
            "pretrain.batch_size",
            "continual.batch_size",
            "continual.log_every",
            "method.rank",
            "method.fisher_batch_size",
            "eval.offline_windows",
            "threads",
        ):
            section, _, name = key.rpartition(".")
            check_at_least(getattr(getattr(self, section) if section else self, name), key)
        check_at_least(self.continual.ckpt_every, "continual.ckpt_every", 0)
        for key in ("method.lr_full", "method.lr_adapter", "method.key_lr"):
            check_positive(getattr(self.method, key.split(".")[1]), key)
        check_range(self.data.val_fraction, "data.val_fraction", low=0.0, high=1.0, high_open=True)
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got '{self.device}'")

    def _validate_stages_and_orders(self, continual_tasks: list[str]) -> None:
        from pretrainkit.systems.l2m.methods import METHODS

        c, b = self.continual, self.bench
        check_range(c.until_success, "continual.until_success", low=0.0, high=1.0)
        check_at_least(c.check_every, "continual.check_every")
        check_at_least(c.max_steps_per_task, "continual.max_steps_per_task")
        METHODS.get(c.calibrate_with)
        if c.until_success > 0 and c.calibrate_with not in c.methods:
            raise ConfigError(
                f"continual.until_success={c.until_success} takes each stage's length from "
                f"continual.calibrate_with={c.calibrate_with!r}, which must be among continual.methods {c.methods}"
            )
        extra = [m for m in b.second_order_methods if m not in c.methods]
        if extra:
            raise ConfigError(
                f"bench.second_order_methods {extra} are not among continual.methods {c.methods}"
            )
        ordered = b.second_order != "none" and b.second_order_methods
        if ordered and c.until_success > 0 and c.calibrate_with not in b.second_order_methods:
            raise ConfigError(
                f"bench.second_order_methods must include continual.calibrate_with={c.calibrate_with!r}: "
                "it sets the stage lengths of that order too"
            )

    def second_order_tasks(self) -> list[str]:
        """The continual tasks in bench.second_order's order (a one-line error where it has none)."""
        tasks = list(self.data.continual_tasks)
        if self.bench.second_order == "none" or len(tasks) < 2:
            raise ConfigError(
                f"no second task order: bench.second_order={self.bench.second_order!r} with "
                f"{len(tasks)} continual task(s) (set bench.second_order=reversed and at least two tasks)"
            )
        return tasks[::-1]
