"""CR-Net end to end: pre-train a LLaMA-style LM (any method) with the core Trainer, evaluate, generate, export.

A run directory holds ``config.yaml`` (resolved), ``model.json`` (the LlamaConfig), ``tokenizer.json``,
``data/tokens-*.npz`` (token cache), ``metrics.jsonl``, ``checkpoints/step-N/`` and ``results.json``.
Methods: the model's projection types (full, lowrank, cola, lora, relora, crnet) plus ``galore`` (the full-rank
model trained with GaLoreAdamW). ReLoRA = LoRA-from-scratch whose products are merged into the frozen weights
every ``relora.reset_every`` steps, with their optimiser state cleared and the lr re-warmed.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from pretrainkit.core import distributed as dist_
from pretrainkit.core.checkpoint import (
    MODEL_FILE,
    check_resume,
    latest_valid,
    list_checkpoints,
    load_weights,
    verify,
)
from pretrainkit.core.config import load_config
from pretrainkit.core.data import EpochBatches
from pretrainkit.core.device import autocast, resolve_device, uses_bf16
from pretrainkit.core.rundir import RunDir
from pretrainkit.core.task import MixModel, TaskMix
from pretrainkit.core.trainer import SchedulerFactory, StepHook, TrainConfig, Trainer, lr_factor
from pretrainkit.errors import CheckpointError, ConfigError, PretrainkitError
from pretrainkit.systems.crnet.config import CRNetConfig, galore_rank, llama_config, replace
from pretrainkit.systems.crnet.data import TextData, corpus_as_validation, prepare_text_data
from pretrainkit.systems.crnet.galore import GaLoreAdamW, galore_param_groups
from pretrainkit.systems.crnet.model import LlamaConfig, LlamaLM
from pretrainkit.systems.crnet.tasks import NextTokenTask
from pretrainkit.systems.crnet.tokenizer import TextTokenizer

Log = Callable[[str], None]


class LMObjective(MixModel):
    """What the core Trainer trains: a LlamaLM under a task mix (``crnet.next_token`` alone by default);
    ``forward(batch) -> (weighted loss, metrics)``.

    The LM stays under the attribute ``lm`` (checkpoint keys ``lm.…``, as before the task mix), so earlier run
    directories resume and load unchanged."""

    def __init__(self, lm: LlamaLM, mix: TaskMix | None = None):
        super().__init__(lm, mix if mix is not None else TaskMix([NextTokenTask()]), backbone_name="lm")

    def forward(
        self, batch: dict[str, torch.Tensor], sum_loss: bool = False
    ) -> tuple[torch.Tensor, dict | int]:
        """``sum_loss``: (summed token NLL, scored-token count) for perplexity. Evaluation goes through this
        forward too, so FSDP2's root hooks gather the embedding and head like in training."""
        if sum_loss:
            return self.lm.loss_sum_and_count(batch["input_ids"].long(), batch["labels"].long())
        return super().forward(batch)


class TokenBatches(EpochBatches):
    """EpochBatches of packed sequences: items are sequences, and each holds ``seq_len`` tokens, so the trainer
    reports tokens/s too (per process here; the trainer multiplies by grad_accum and processes)."""

    unit = "seq"

    def __init__(
        self, tensors: dict[str, torch.Tensor], batch_size: int, seed: int = 0, rank: int = 0, world: int = 1
    ):
        super().__init__(tensors, batch_size, seed=seed, rank=rank, world=world)
        self.seq_len = tensors["input_ids"].shape[1]

    @property
    def tokens_per_batch(self) -> int:
        return self.items_per_batch * self.seq_len


def unwrap_lm(model: nn.Module) -> LlamaLM:
    """The LlamaLM inside an LMObjective, a DDP wrapper of one, or the model itself."""
    m = getattr(model, "module", model)
    return m.lm if isinstance(m, LMObjective) else m


# --------------------------------------------------------------------------------------------------- training parts
def make_optimizer(
    method: str, cfg: CRNetConfig, mcfg: LlamaConfig
) -> Callable[[nn.Module, TrainConfig], torch.optim.Optimizer]:
    """AdamW (no decay on norms and CR-Net's betas), or GaLoreAdamW on the block projections for ``galore``."""

    def build(model: nn.Module, tcfg: TrainConfig) -> torch.optim.Optimizer:
        lm = unwrap_lm(model)
        betas = (tcfg.beta1, tcfg.beta2)
        if method == "galore":
            g = cfg.galore
            return GaLoreAdamW(
                galore_param_groups(lm, tcfg.weight_decay),
                lr=tcfg.lr,
                betas=betas,
                weight_decay=tcfg.weight_decay,
                rank=galore_rank(cfg, mcfg),
                update_proj_gap=g.update_proj_gap,
                scale=g.scale,
            )
        groups = lm.param_groups(
            tcfg.weight_decay, lr=tcfg.lr, block_lr_scale=cfg.block_lr_scale, beta_lr_scale=cfg.beta_lr_scale
        )
        return torch.optim.AdamW(groups, lr=tcfg.lr, betas=betas)

    return build


class ReLoRAHook:
    """Step hook: every ``every`` steps merge each LoRA product into its frozen weight, restart A and B and
    drop their optimiser state (ReLoRA). The new A is drawn from a generator seeded by (seed, step), so every
    data-parallel replica and a resumed run draw the same values. Its lr re-warm is ``relora_schedule``, given
    to the Trainer as its scheduler (``relora_scheduler``)."""

    def __init__(self, every: int, max_steps: int, seed: int):
        self.every, self.max_steps, self.seed = every, max_steps, seed
        self.resets: list[int] = []

    def __call__(self, trainer: Trainer, step: int) -> None:
        if step % self.every or step >= self.max_steps:
            return
        lm = unwrap_lm(trainer.raw_model)
        devices = [lm.embed_tokens.weight.device] if lm.embed_tokens.weight.is_cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed * 1_000_003 + step)
            params = lm.merge_and_reset()
        for p in params:
            trainer.optimizer.state.pop(p, None)
        self.resets.append(step)


def relora_schedule(tcfg: TrainConfig, every: int, rewarm: int) -> Callable[[int], float]:
    """Warm-up + cosine, times a linear re-warm over ``rewarm`` steps after each merge (ReLoRA's jagged lr)."""

    def factor(s: int) -> float:
        base = lr_factor(s, tcfg)
        if rewarm <= 0 or s < every:
            return base
        return base * min(1.0, (s % every + 1) / rewarm)

    return factor


def relora_scheduler(every: int, rewarm: int) -> SchedulerFactory:
    """The Trainer's scheduler factory for ReLoRA: ``relora_schedule`` as a LambdaLR."""

    def build(opt: torch.optim.Optimizer, tcfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.LambdaLR(opt, relora_schedule(tcfg, every, rewarm))

    return build


def time_limit(seconds: float, log: Log = print) -> StepHook:
    """Step hook that stops training (``request_stop``) once ``seconds`` have passed since it was made: the
    bench's safety net for an arm far slower than expected. Single-process only (a local clock decides)."""
    t_end = time.perf_counter() + seconds

    def hook(trainer: Trainer, step: int) -> None:
        if time.perf_counter() > t_end and step < trainer.cfg.max_steps:
            log(f"time limit reached after {step} of {trainer.cfg.max_steps} steps")
            trainer.request_stop()

    return hook


@torch.no_grad()
def perplexity(
    lm: LlamaLM | LMObjective,
    val: dict[str, torch.Tensor],
    batch_size: int,
    device: torch.device | str = "cpu",
    bf16: bool = False,
    dist_info: dist_.DistInfo | None = None,
) -> dict[str, float]:
    """exp(sum of token NLL / number of scored tokens) over every validation sequence.

    The divisor counts labels != -100 exactly (no per-batch averaging, no n+1). Under data parallelism each rank
    scores every world-th batch (a rank without one runs an all-ignored batch, so FSDP's collectives line up)
    and the sums are all-reduced."""
    info = dist_info or dist_.DistInfo(device=torch.device(device))
    ids_all, lab_all = val["input_ids"], val["labels"]
    n_batches = math.ceil(len(ids_all) / batch_size)
    total = torch.zeros((), dtype=torch.float64, device=info.device)
    count = torch.zeros((), dtype=torch.int64, device=info.device)
    was_training = lm.training
    lm.eval()
    ctx = autocast(info.device, "bf16" if bf16 else "fp32")
    for k in range(math.ceil(n_batches / info.world)):
        b = k * info.world + info.rank
        sl = slice(b * batch_size, (b + 1) * batch_size) if b < n_batches else slice(0, batch_size)
        ids = ids_all[sl].long().to(info.device)
        labels = lab_all[sl].long().to(info.device)
        if b >= n_batches:
            labels = torch.full_like(labels, -100)
        with ctx:
            if isinstance(lm, LMObjective):
                s, c = lm({"input_ids": ids, "labels": labels}, sum_loss=True)
            else:
                s, c = lm.loss_sum_and_count(ids, labels)
        total += s
        count += c
    lm.train(was_training)
    if info.enabled:
        import torch.distributed as dist

        dist.all_reduce(total)
        dist.all_reduce(count)
    n = int(count)
    loss = float(total) / n if n else float("nan")
    return {"val_loss": loss, "val_ppl": math.exp(loss) if n else float("nan"), "val_tokens": n}


def build_lm(mcfg: LlamaConfig, seed: int) -> LlamaLM:
    """A freshly initialised model; the seed fixes its weights independently of anything run before."""
    torch.manual_seed(seed)
    return LlamaLM(mcfg)


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes held by optimiser state tensors (Adam moments, GaLore projectors)."""
    return sum(
        v.numel() * v.element_size()
        for s in opt.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor) and v.ndim > 0
    )


def train_lm(
    cfg: CRNetConfig,
    data: TextData,
    method: str | None = None,
    run_dir: Path | None = None,
    resume: str | Path | None = None,
    dist_info: dist_.DistInfo | None = None,
    step_hooks: Sequence[StepHook] = (),
    mcfg: LlamaConfig | None = None,
    time_limit_s: float = 0.0,
    log: Log = print,
) -> dict:
    """Train one model of ``method`` (default ``cfg.model.method``) on ``data``; returns its numbers.

    With ``run_dir`` the run checkpoints, logs and resumes like any core run; without it (the bench) nothing is
    written. The returned dict has validation perplexity, parameter counts, optimiser-state bytes, tokens/s."""
    method = method or cfg.model.method
    info = dist_info or dist_.DistInfo(device=torch.device(_device(cfg.device)))
    mcfg = mcfg or llama_config(cfg, data.tokenizer.vocab_size, method=method)
    tcfg = cfg.train
    model = LMObjective(build_lm(mcfg, tcfg.seed))
    train = data.train_tensors(cfg.seq_len)
    val = data.val_tensors(cfg.seq_len, cfg.data.val_max_tokens)
    batches = TokenBatches(train, cfg.batch_size, seed=tcfg.seed, rank=info.rank, world=info.world)
    bf16 = uses_bf16(info.device, tcfg.precision)

    def eval_hook(trainer: Trainer, step: int) -> dict[str, float]:
        m = trainer.raw_model
        return perplexity(getattr(m, "module", m), val, cfg.eval_batch_size, bf16=bf16, dist_info=info)

    hooks: list[StepHook] = []
    relora, scheduler = None, None
    if method == "relora":
        relora = ReLoRAHook(cfg.relora.reset_every, tcfg.max_steps, tcfg.seed)
        hooks.append(relora)
        scheduler = relora_scheduler(cfg.relora.reset_every, cfg.relora.rewarm_steps)
    if time_limit_s > 0:
        hooks.append(time_limit(time_limit_s, log=lambda s: log(f"{method}: {s}")))
    hooks += list(step_hooks)
    trainer = Trainer(
        model,
        batches,
        tcfg,
        run_dir=run_dir,
        optimizer=make_optimizer(method, cfg, mcfg),
        scheduler=scheduler,
        eval_hooks=[eval_hook],
        step_hooks=hooks,
        fsdp_units=lambda m: list(m.lm.layers),
        dist_info=info,
    )
    last = trainer.fit(resume=resume)
    lm = unwrap_lm(trainer.raw_model)
    tokens_per_step = cfg.batch_size * tcfg.grad_accum * cfg.seq_len
    return {
        "method": method,
        "seed": tcfg.seed,
        "steps": trainer.step,
        "stopped_early": last["stopped_early"],
        "tokens": trainer.step * tokens_per_step,
        "train_loss": last.get("loss"),
        "val_loss": last.get("val_loss"),
        "val_ppl": last.get("val_ppl"),
        "val_tokens": last.get("val_tokens"),
        "trainable_params": lm.num_parameters(trainable_only=True),
        "total_params": lm.num_parameters(trainable_only=False),
        "optimizer_state_bytes": optimizer_state_bytes(trainer.optimizer),
        "tokens_per_s": last.get("tokens_per_s", float("nan")),
        "wall_s": last["wall_s"],
        "lr": tcfg.lr,
        "rank": mcfg.rank,
        "relora_resets": relora.resets if relora else [],
    }


def _device(name: str) -> str:
    return str(resolve_device(name))


# --------------------------------------------------------------------------------------------------- verbs
def pretrain(
    cfg: CRNetConfig,
    resume: str | Path | None = "auto",
    log: Log = print,
    step_hooks: Sequence[StepHook] = (),
    progress: bool = True,
) -> dict:
    """Tokenise (rank 0), train ``cfg.model.method`` in ``cfg.out`` with resume, write results.json; under
    torchrun with train.parallel=ddp|fsdp every process joins."""
    info = dist_.init_distributed(cfg.device)
    _device(cfg.device)
    run = RunDir(cfg.out)
    if info.is_main:
        run.lock()  # held until the process ends: nothing below may race another writer of this run
        if resume is not None:
            check_resumable(run.path, cfg)  # before anything in the run directory is written
        check_resume(resume, run.path / "checkpoints")  # refused here, before config.yaml is rewritten
        data = prepare_text_data(cfg.data, run.path, log=log)
    dist_.barrier()
    if not info.is_main:
        data = prepare_text_data(cfg.data, run.path, log=lambda s: None)  # reads rank 0's tokenizer and cache
    mcfg = llama_config(cfg, data.tokenizer.vocab_size)
    if info.is_main:
        run.save_config(cfg)
        from pretrainkit.core.checkpoint import atomic_write_text

        atomic_write_text(
            run.path / "model.json",
            json.dumps({**mcfg.to_dict(), "pipeline_method": cfg.model.method}, indent=2),
        )
        s = data.summary()
        log(
            f"{cfg.model.method}: {s['train_tokens']:,} training tokens in {s['train_documents']} documents, "
            f"{s['val_tokens']:,} validation tokens in {s['val_documents']} documents, vocabulary {s['vocab_size']}"
        )
    cfg = replace(cfg, train=replace(cfg.train, progress=progress and cfg.train.progress))
    try:
        out = train_lm(
            cfg,
            data,
            run_dir=run.path,
            resume=resume,
            dist_info=info,
            step_hooks=step_hooks,
            mcfg=mcfg,
            log=log,
        )
        out["data"] = data.summary()
        if info.is_main:
            run.write_results(out)
        return out
    finally:
        dist_.shutdown()


def check_resumable(run_dir: Path, cfg: CRNetConfig) -> None:
    """Refuse, before writing anything, a resume whose model or data would not fit the run's checkpoints.

    A run directory that holds checkpoints was trained with the model in its ``model.json`` on the data of its
    ``config.yaml``; a resume with another method, shape or corpus would overwrite both and then fail (or mix two
    runs). Training-schedule settings (steps, lr, logging) may change on resume."""
    if not list_checkpoints(run_dir / "checkpoints") or not (run_dir / "model.json").is_file():
        return
    try:
        old_model = json.loads((run_dir / "model.json").read_text())
        old_cfg = load_config(CRNetConfig, run_dir / "config.yaml")
        vocab = TextTokenizer.load(run_dir / "tokenizer.json").vocab_size
    except (OSError, ValueError, ConfigError, PretrainkitError) as e:
        raise CheckpointError(
            f"{run_dir} holds checkpoints but its config.yaml, model.json or tokenizer.json "
            f"cannot be read ({str(e).splitlines()[0]}); use another --out"
        ) from None
    new_model = {**llama_config(cfg, vocab).to_dict(), "pipeline_method": cfg.model.method}
    changed = sorted(k for k in set(old_model) | set(new_model) if old_model.get(k) != new_model.get(k))
    if changed:
        what = "; ".join(
            f"{k}: {old_model.get(k)!r} there, {new_model.get(k)!r} asked for" for k in changed[:3]
        )
        raise ConfigError(
            f"{run_dir} holds checkpoints of another model ({what}); resume with the run's own "
            "settings or use another --out"
        )
    for key in ("data", "seq_len"):
        if getattr(old_cfg, key) != getattr(cfg, key):
            raise ConfigError(
                f"{run_dir} holds checkpoints trained with other '{key}' settings; resume with the "
                "run's own settings or use another --out"
            )


def load_run(
    run_dir: str | Path, checkpoint: str | Path | None = None, overrides: Sequence[str] = ()
) -> tuple[CRNetConfig, LlamaLM, TextTokenizer, Path]:
    """(config, model with the newest valid checkpoint's weights, tokenizer, checkpoint path) of a run."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file() or not (run / "model.json").is_file():
        raise ConfigError(
            f"{run} is not a CR-Net run directory (no config.yaml / model.json); "
            "run `pretrainkit crnet pretrain --out DIR` first"
        )
    cfg = load_config(CRNetConfig, run / "config.yaml", list(overrides))
    fields = json.loads((run / "model.json").read_text())
    fields.pop("pipeline_method", None)
    lm = LlamaLM(LlamaConfig(**fields))
    path = Path(checkpoint) if checkpoint else latest_valid(run / "checkpoints")
    if path is None:
        raise CheckpointError(f"no complete checkpoint under {run / 'checkpoints'}; train (or resume) first")
    verify(path)
    state = {k.removeprefix("lm."): v for k, v in load_weights(path / MODEL_FILE, verified=True).items()}
    missing, unexpected = lm.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not fit {run / 'model.json'} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    lm.eval()
    return cfg, lm, TextTokenizer.load(run / "tokenizer.json"), path


def evaluate(
    run_dir: str | Path,
    data: str | Path | None = None,
    checkpoint: str | Path | None = None,
    overrides: Sequence[str] = (),
    log: Log = print,
) -> dict:
    """Validation perplexity of a run's checkpoint: on its held-out documents, or on every document of ``data``."""
    cfg, lm, tok, path = load_run(run_dir, checkpoint, overrides)
    device = torch.device(_device(cfg.device))
    lm.to(device)
    if data is not None:
        td = corpus_as_validation(data, cfg.data, tok)
    else:
        td = prepare_text_data(cfg.data, run_dir, log=log)
    val = td.val_tensors(cfg.seq_len, cfg.data.val_max_tokens)
    out = perplexity(
        lm, val, cfg.eval_batch_size, device, bf16=device.type == "cuda" and cfg.train.precision != "fp32"
    )
    return {
        **out,
        "checkpoint": str(path),
        "documents": len(td.val_docs),
        "source": str(data) if data is not None else "validation split",
    }


def generate(
    run_dir: str | Path,
    prompt: str = "",
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int | None = 50,
    greedy: bool = False,
    seed: int = 0,
    checkpoint: str | Path | None = None,
) -> str:
    """Continue ``prompt`` with the run's model and tokenizer (an empty prompt starts after an EOS)."""
    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    _, lm, tok, _ = load_run(run_dir, checkpoint)
    ids = [tok.eos_id, *tok.encode(prompt)] if prompt else [tok.eos_id]
    ctx = lm.cfg.max_seq_len
    x = torch.tensor([ids[-ctx:]], dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    out = lm.generate(x, max_new_tokens, temperature=temperature, top_k=top_k, greedy=greedy, generator=g)
    return prompt + tok.decode(out[0, x.shape[1] :].tolist())


def export_hf(run_dir: str | Path, out: str | Path, checkpoint: str | Path | None = None) -> Path:
    """Write a full-rank run as a Hugging Face LLaMA folder (model.safetensors, config.json, tokenizer.json)."""
    from pretrainkit.systems.crnet.model import save_hf

    _, lm, tok, _ = load_run(run_dir, checkpoint)
    folder = save_hf(lm, out, bos_token_id=tok.eos_id, eos_token_id=tok.eos_id)
    tok.save(Path(folder) / "tokenizer.json")
    return Path(folder)
