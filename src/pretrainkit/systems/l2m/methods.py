"""Continual-learning methods for the Decision Transformer, one small class each, in one registry.

Every method wraps a pre-trained ``DecisionTransformer`` and is an ``nn.Module`` whose ``forward(batch)``
returns ``(loss, metrics)``, so the core Trainer trains it. The harness calls ``begin_task`` / ``end_task``
around each task and ``actor(task_id)`` to act in closed loop. ``task_id`` is the index in the continual
sequence, or ``PRETRAIN`` (-1) for a pre-training task; only the oracle may use it at evaluation.
Adapter methods (lora, ia3, l2p, l2m, l2m-oracle) freeze the whole backbone.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from pretrainkit.adapt import EWC, L2Anchor, ModulationPool, PromptPool, inject
from pretrainkit.adapt.base import find_modules
from pretrainkit.registry import Registry
from pretrainkit.systems.l2m.config import MethodSection
from pretrainkit.systems.l2m.data import ContextWindowDataset
from pretrainkit.systems.l2m.model import DecisionTransformer

PRETRAIN = -1
METHODS: Registry[type[Method]] = Registry("continual method")


def register_method(name: str):
    """Class decorator: ``@register_method("ft") class FullFineTune(Method): ...``."""

    def deco(cls):
        cls.name = name
        return METHODS.register(name)(cls)

    return deco


def _window(batch: dict[str, torch.Tensor]) -> tuple:
    return batch["states"], batch["actions"], batch["rtg"], batch["timesteps"], batch.get("mask")


class Method(nn.Module):
    """Base: plain behaviour cloning of the whole DT (full fine-tuning). Subclasses override the hooks."""

    name: ClassVar[str] = "method"
    frozen_backbone: ClassVar[bool] = False
    needs_pretrain_queries: ClassVar[bool] = False  # wants the mean query of each pre-training task

    def __init__(
        self,
        dt: DecisionTransformer,
        cfg: MethodSection,
        n_tasks: int,
        pretrain_queries: torch.Tensor | None = None,
    ):
        super().__init__()
        self.dt, self.cfg, self.n_tasks = dt, cfg, int(n_tasks)
        self.task_id = 0
        self.setup(pretrain_queries)

    def setup(self, pretrain_queries: torch.Tensor | None) -> None:
        """Inject adapters / build regularisers (called once from ``__init__``)."""

    # ---- training -----------------------------------------------------------------------------------
    def begin_task(self, task_id: int, data: ContextWindowDataset) -> None:
        """Called before training on sequence task ``task_id``."""
        self.task_id = int(task_id)

    def end_task(self, task_id: int, data: ContextWindowDataset) -> None:
        """Called after training on task ``task_id`` (consolidation, key bookkeeping)."""

    def predict(
        self, batch: dict[str, torch.Tensor], task_id: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher-forced action predictions and an auxiliary loss to add (or None)."""
        return self.dt(*_window(batch)), None

    def penalty(self) -> torch.Tensor | None:
        """A regularisation term added to the training loss (EWC / L2)."""
        return None

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        pred, aux = self.predict(batch, self.task_id)
        loss, metrics = self.dt.action_loss(pred, batch["actions"], batch.get("mask"))
        for name, term in (("aux_loss", aux), ("penalty", self.penalty())):
            if term is not None:
                loss = loss + term
                metrics[name] = float(term.detach())
        return loss, metrics

    def param_groups(self, lr: float | None = None) -> list[dict[str, Any]]:
        """Optimiser groups: trainable parameters at the method's rate, pool keys at ``cfg.key_lr``."""
        lr = self.lr if lr is None else lr
        keys = [p for n, p in self.named_parameters() if p.requires_grad and n.endswith("keys")]
        ids = {id(p) for p in keys}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [
            g for g in ({"params": rest, "lr": lr}, {"params": keys, "lr": self.cfg.key_lr}) if g["params"]
        ]

    @property
    def lr(self) -> float:
        return self.cfg.lr_adapter if self.frozen_backbone else self.cfg.lr_full

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def info(self) -> dict[str, Any]:
        """Facts about this method's set-up worth stating in a report (e.g. a derived rank)."""
        return {}

    # ---- acting -------------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, states, rtgs, actions, timesteps, mask, task_id: int, usage: dict | None = None):
        """Next action ``[B, A]`` (see ``DecisionTransformer.act``); ``usage`` counts selected keys."""
        return self.dt.act(states, rtgs, actions, timesteps, mask)

    def selected_keys(self, batch: dict[str, torch.Tensor], task_id: int) -> torch.Tensor | None:
        """Key (modulator / prompt) index per sample at evaluation, for methods that select one."""
        return None

    def actor(self, task_id: int) -> MethodActor:
        """An object ``rollout.evaluate_task`` can drive, acting as this method does on ``task_id``."""
        return MethodActor(self, task_id)

    # ---- state beyond parameters and buffers (regularisers) ------------------------------------------
    def extra_state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_extra_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass


class MethodActor:
    """Adapts a method to the rollout ``Actor`` protocol and tallies the keys it selects."""

    def __init__(self, method: Method, task_id: int):
        self.method, self.task_id, self.cfg = method, task_id, method.dt.cfg
        self.usage: dict[int, int] = {}

    @property
    def training(self) -> bool:
        return self.method.training

    def eval(self) -> MethodActor:
        self.method.eval()
        return self

    def train(self, mode: bool = True) -> MethodActor:
        self.method.train(mode)
        return self

    def act(self, states, rtgs, actions, timesteps, mask=None) -> torch.Tensor:
        return self.method.act(states, rtgs, actions, timesteps, mask, self.task_id, self.usage)


def _tally(usage: dict | None, idx: torch.Tensor) -> None:
    if usage is not None:
        for k, n in zip(*torch.unique(idx.flatten(), return_counts=True)):
            usage[int(k)] = usage.get(int(k), 0) + int(n)


@register_method("ft")
class FullFineTune(Method):
    """Every backbone parameter trains on the current task (forgets earlier ones)."""


class _Regularised(Method):
    reg: L2Anchor

    def penalty(self) -> torch.Tensor | None:
        return self.reg.penalty() if self.reg.anchor else None

    def extra_state_dict(self) -> dict[str, torch.Tensor]:
        return self.reg.state_dict()

    def load_extra_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.reg.load_state_dict(state)


@register_method("ewc")
class EWCMethod(_Regularised):
    """Full fine-tuning plus EWC: squared distance to earlier solutions weighted by a diagonal Fisher."""

    def setup(self, pretrain_queries=None) -> None:
        self.reg = EWC(self.dt, weight=self.cfg.ewc_weight)

    def end_task(self, task_id: int, data: ContextWindowDataset) -> None:
        self.reg.consolidate(lambda: self._fisher_losses(data, task_id))

    def _fisher_losses(self, data: ContextWindowDataset, task_id: int) -> Iterator[torch.Tensor]:
        was, dev = self.training, next(self.dt.parameters()).device
        self.eval()  # deterministic (no dropout) gradients for the Fisher
        g = torch.Generator().manual_seed(1000 + task_id)
        try:
            for _ in range(self.cfg.fisher_batches):
                b = {k: v.to(dev) for k, v in data.sample_batch(self.cfg.fisher_batch_size, g).items()}
                yield self.dt.loss(b)[0]
        finally:
            self.train(was)


@register_method("l2")
class L2Method(_Regularised):
    """Full fine-tuning plus an unweighted squared distance to the parameters after the previous task."""

    def setup(self, pretrain_queries=None) -> None:
        self.reg = L2Anchor(self.dt, weight=self.cfg.l2_weight)

    def end_task(self, task_id: int, data: ContextWindowDataset) -> None:
        self.reg.consolidate()


@register_method("lora")
class SharedLoRA(Method):
    """One LoRA (q, v, MLP fc1 of every layer) shared by all tasks: keeps the backbone, overwrites itself."""

    frozen_backbone = True

    def setup(self, pretrain_queries=None) -> None:
        self.rank = self.lora_rank()
        # alpha = 2 * rank (scale 2, as in L2M's code); adapt's default is alpha = rank.
        inject(self.dt, "lora", self.cfg.lora_targets, rank=self.rank, alpha=2.0 * self.rank)

    def lora_rank(self) -> int:
        return self.cfg.rank  # one modulator's size


@register_method("lora-pool")
class PoolSizedLoRA(SharedLoRA):
    """Shared LoRA with at least as many trainable parameters as L2M's whole pool (its modulators and keys),
    so L2M's gain is not a gain of trainable parameters. Where that rank exceeds a target layer's width (a
    narrow backbone: 16 modulators of rank 8 on d = 64) no LoRA can have that many parameters without
    exceeding full rank, so the rank is capped at full rank, the most any shared update on those layers can
    express; ``info()`` states the rank the parameter count would need."""

    def lora_rank(self) -> int:
        self.rank_needed, self.pool_params = pool_matched_rank(self.dt, self.cfg, self.n_tasks)
        return min(self.rank_needed, full_rank(self.dt, self.cfg.lora_targets))

    def info(self) -> dict[str, Any]:
        return {"rank": self.rank, "rank_for_pool_params": self.rank_needed, "pool_params": self.pool_params}


def full_rank(dt: DecisionTransformer, targets: list[str]) -> int:
    """The largest LoRA rank every target Linear allows (min of its in and out features)."""
    return min(min(m.in_features, m.out_features) for m in _lora_targets(dt, targets))


def pool_matched_rank(dt: DecisionTransformer, cfg: MethodSection, n_tasks: int) -> tuple[int, int]:
    """(smallest shared-LoRA rank on ``cfg.lora_targets`` whose trainable parameters reach L2M's pool's, the
    pool's trainable parameters)."""
    import copy

    pool = L2MMethod(copy.deepcopy(dt), cfg, n_tasks).trainable_parameters()
    per_rank = sum(m.in_features + m.out_features for m in _lora_targets(dt, cfg.lora_targets))
    return -(-pool // per_rank), pool


def _lora_targets(dt: DecisionTransformer, targets: list[str]) -> list[nn.Module]:
    return list(find_modules(dt, targets).values())


@register_method("ia3")
class IA3Method(Method):
    """(IA)^3: learned output scales on k, v and MLP fc1 of every layer, shared by all tasks."""

    frozen_backbone = True

    def setup(self, pretrain_queries=None) -> None:
        inject(self.dt, "ia3", self.cfg.ia3_targets)


@register_method("l2p")
class L2PMethod(Method):
    """L2P-style prompt tuning: a pool of prompts picked by cosine(key, mean state embedding), prepended."""

    frozen_backbone = True

    def setup(self, pretrain_queries=None) -> None:
        self.dt.requires_grad_(False)
        c = self.cfg
        self.prompts = PromptPool(c.prompt_pool, c.prompt_len, self.dt.cfg.d_model, top_k=c.prompt_top_k)

    def _select(self, states, timesteps, mask):
        return self.prompts(self.dt.state_embedding(states, timesteps, mask))

    def predict(self, batch, task_id):
        sel = self._select(batch["states"], batch["timesteps"], batch.get("mask"))
        return self.dt(*_window(batch), prefix=sel.tokens), self.cfg.key_coef * sel.key_loss

    @torch.no_grad()
    def act(self, states, rtgs, actions, timesteps, mask, task_id, usage=None):
        K = self.dt.cfg.context
        sel = self._select(states[:, -K:], timesteps[:, -K:], None if mask is None else mask[:, -K:])
        _tally(usage, sel.indices)
        return self.dt.act(states, rtgs, actions, timesteps, mask, prefix=sel.tokens)

    def selected_keys(self, batch, task_id):
        return self._select(batch["states"], batch["timesteps"], batch.get("mask")).indices


@register_method("l2m")
class L2MMethod(Method):
    """L2M: a pool of (key, LoRA modulator) pairs on q, v and MLP fc1 of every layer; top-1 by cosine.

    Training adds the key pull loss (``key_coef * mean(1 - cos)``) and steers new tasks to unused keys
    (count penalty, committed at ``end_task``). At evaluation continual tasks are routed task-agnostically.
    Pre-training tasks (``cfg.pretrain_eval``): ``unmodulated`` runs the bare backbone; ``routed`` lets fixed
    keys per pre-training task (``pretrain_queries``, e.g. k-means centres of its queries) compete with the
    pool for every input, and winning one means no modulation (L2M's ``n_pretrain_keys``).
    """

    frozen_backbone = True
    needs_pretrain_queries = True  # used when cfg.pretrain_eval == "routed"
    oracle: ClassVar[bool] = False

    def setup(self, pretrain_queries=None) -> None:
        c, d = self.cfg, self.dt.cfg.d_model
        pool = ModulationPool(
            c.pool_size,
            d,
            rank=c.rank,
            alpha=2.0 * c.rank,
            count_penalty=c.count_penalty,  # scale 2 (L2M)
            oracle_tasks=self.n_tasks if self.oracle else None,
        )
        inject(
            self.dt, "modulation", ["attn.q_proj", "attn.v_proj"], pool=pool
        )  # registers dt.modulation_pool
        inject(self.dt, "modulation", ["mlp.fc1"], pool=pool, placement=c.ff_placement)
        routed = pretrain_queries is not None and c.pretrain_eval == "routed" and not self.oracle
        q = pretrain_queries.detach().reshape(-1, d) if routed else torch.zeros(0, d)
        self.register_buffer("pretrain_keys", q.clone())  # empty unless pre-training tasks are routed

    @property
    def pool(self) -> ModulationPool:
        return self.dt.modulation_pool

    def _query(self, states, timesteps, mask) -> torch.Tensor:
        return self.dt.state_embedding(states, timesteps, mask)

    def route(self, query: torch.Tensor, task_id: int) -> torch.Tensor:
        """Evaluation-time modulator index per sample (-1 = unmodulated backbone)."""
        n = query.shape[0]
        if task_id == PRETRAIN and (self.oracle or self.cfg.pretrain_eval == "unmodulated"):
            return torch.full((n,), -1, dtype=torch.long, device=query.device)
        sel = self.pool.select(query, task_id if self.oracle else None)
        idx = sel.indices[:, 0].clone()
        if not self.oracle and len(self.pretrain_keys):
            pre = F.normalize(query.float(), dim=-1) @ F.normalize(self.pretrain_keys.float(), dim=-1).T
            idx[pre.max(dim=1).values > sel.similarity.gather(1, sel.indices)[:, 0]] = -1
        return idx

    def predict(self, batch, task_id):
        q = self._query(batch["states"], batch["timesteps"], batch.get("mask"))
        if self.training:
            with self.pool.selecting(q, task_id if self.oracle else None) as sel:
                pred = self.dt(*_window(batch))
            return pred, self.cfg.key_coef * sel.key_loss
        with self.pool.using(self.route(q, task_id)):
            return self.dt(*_window(batch)), None

    @torch.no_grad()
    def act(self, states, rtgs, actions, timesteps, mask, task_id, usage=None):
        K = self.dt.cfg.context
        idx = self.route(
            self._query(states[:, -K:], timesteps[:, -K:], None if mask is None else mask[:, -K:]), task_id
        )
        _tally(usage, idx)
        with self.pool.using(idx):
            return self.dt.act(states, rtgs, actions, timesteps, mask)

    def selected_keys(self, batch, task_id):
        with torch.no_grad():
            return self.route(self._query(batch["states"], batch["timesteps"], batch.get("mask")), task_id)

    def end_task(self, task_id: int, data: ContextWindowDataset) -> None:
        self.pool.commit_task()


@register_method("l2m-oracle")
class L2MOracle(L2MMethod):
    """L2M with the task id given: task t may only use its own slice of the pool (pool_size // n_tasks)."""

    oracle = True
    needs_pretrain_queries = False  # the task id says when a task is a pre-training task
