"""L2M's modulation pool: learnable keys, each paired with LoRA modulators, picked per sample by a query.

Works on any backbone whose targeted Linears see the batch as their first input dimension::

    pool = ModulationPool(n_modulators=6, key_dim=d, rank=4)
    inject(model, "modulation", ["attn.q", "attn.v"], pool=pool)          # parallel LoRA: W x + s B_i A_i x
    inject(model, "modulation", ["mlp.fc"], pool=pool, placement="output")  # L2M's FF form: h + s B_i A_i h
    with pool.selecting(query) as sel:     # query (B, key_dim), e.g. the mean state-token embedding
        out = model(x)
    loss = task_loss + 0.5 * sel.key_loss  # key pull: mean(1 - cos(query, selected key))
    pool.commit_task()                     # at the end of each task: feeds the count penalty

Count penalty (training mode only, once some task is committed), as in L2M's code:
``score_i = (cos_i + 1) / 2 * w_i`` with ``w_i = u_i / max(u)``, ``u_i = 1 / (f_i + 1e-6)`` and ``f_i`` the
fraction of all committed selections that went to key i. Unused keys keep weight 1 while used keys get
~1e-6, so a new task settles on free keys. At evaluation the plain cosine decides (task-agnostic).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from pretrainkit.adapt.base import AdapterLayer, AdapterState, register_adapter
from pretrainkit.errors import ConfigError

PLACEMENTS = ("parallel", "output")


@dataclass
class Selection:
    """Result of one key lookup: per-sample modulator indices (B, k), cosine similarities (B, n), key loss."""

    indices: torch.Tensor
    similarity: torch.Tensor
    key_loss: torch.Tensor


class ModulationPool(AdapterState):
    """``n_modulators`` keys of size ``key_dim``; for each target Linear, n LoRA pairs A (n, r, in), B (n, out, r).

    ``oracle_tasks=T`` turns on L2M-oracle: task t may only use keys ``[t*s, (t+1)*s)`` with ``s = n // T``
    (with ``n == T`` the modulator index is the task id). With ``top_k > 1`` the selected deltas are averaged.
    """

    def __init__(
        self,
        n_modulators: int,
        key_dim: int,
        rank: int = 8,
        alpha: float | None = None,
        top_k: int = 1,
        count_penalty: bool = True,
        oracle_tasks: int | None = None,
    ):
        super().__init__()
        if n_modulators < 1 or key_dim < 1 or rank < 1:
            raise ConfigError(
                f"pool sizes must be positive: n_modulators={n_modulators}, key_dim={key_dim}, rank={rank}"
            )
        if oracle_tasks is not None and n_modulators < oracle_tasks:
            raise ConfigError(
                f"oracle mode needs at least one modulator per task: pool size {n_modulators} < {oracle_tasks} tasks"
            )
        per_task = n_modulators // oracle_tasks if oracle_tasks else n_modulators
        if not 1 <= top_k <= per_task:
            raise ConfigError(f"top_k must be in 1..{per_task} (keys a sample may choose from), got {top_k}")
        self.n_modulators, self.key_dim, self.rank, self.top_k = n_modulators, key_dim, rank, top_k
        self.alpha = float(rank if alpha is None else alpha)  # scale alpha / rank: 1 unless set (L2M sets 2)
        self.scale = self.alpha / rank
        self.count_penalty, self.oracle_tasks = bool(count_penalty), oracle_tasks
        self.keys = nn.Parameter(torch.empty(n_modulators, key_dim).uniform_(-1.0, 1.0))
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        # integer counts survive a model.to(bfloat16); committed = earlier tasks, task_counts = the current one
        self.register_buffer("counts", torch.zeros(n_modulators, dtype=torch.long))
        self.register_buffer("task_counts", torch.zeros(n_modulators, dtype=torch.long))
        self._indices: torch.Tensor | None = None
        self._bypass = False

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())

    def config(self) -> dict:
        """Constructor arguments as JSON values (stored in the adapter sidecar)."""
        return {
            "n_modulators": self.n_modulators,
            "key_dim": self.key_dim,
            "rank": self.rank,
            "alpha": self.alpha,
            "top_k": self.top_k,
            "count_penalty": self.count_penalty,
            "oracle_tasks": self.oracle_tasks,
        }

    def add_target(self, name: str, in_features: int, out_features: int, like: torch.Tensor) -> str:
        """Create (or reuse, if shapes agree) the n LoRA pairs for one Linear; returns their key in the pool."""
        key = name.replace(".", "-")  # parameter names cannot hold dots
        if self.rank > min(in_features, out_features):
            raise ConfigError(
                f"modulator rank {self.rank} is larger than min(in {in_features}, out {out_features}) of "
                f"'{name}'; use rank <= {min(in_features, out_features)}"
            )
        shape_a, shape_b = (
            (self.n_modulators, self.rank, in_features),
            (self.n_modulators, out_features, self.rank),
        )
        if key in self.lora_A:
            if self.lora_A[key].shape != shape_a or self.lora_B[key].shape != shape_b:
                raise ConfigError(f"pool already modulates '{name}' with other shapes")
            return key
        a = torch.empty(shape_a, device=like.device, dtype=like.dtype)
        for i in range(self.n_modulators):  # per modulator, so each gets nn.Linear's fan-in scale
            nn.init.kaiming_uniform_(a[i], a=math.sqrt(5))
        self.lora_A[key] = nn.Parameter(a)
        self.lora_B[key] = nn.Parameter(torch.zeros(shape_b, device=like.device, dtype=like.dtype))
        return key

    def penalty_weights(self) -> torch.Tensor:
        """Count-penalty multiplier per key from committed usage: 1 for unused keys, ~0 for much-used ones."""
        freq = self.counts.double() / self.counts.sum().clamp(min=1)
        inv = 1.0 / (freq + 1e-6)
        return (inv / inv.max()).float()

    def select(self, query: torch.Tensor, task_id: int | None = None) -> Selection:
        """Pick top-k keys per sample by cosine to ``query`` (B, key_dim) and set them for the next forward.

        ``task_id`` is needed (and only used) in oracle mode. The key loss pulls the selected keys toward
        the (detached) query; keys get no other gradient.
        """
        if query.dim() != 2 or query.shape[1] != self.key_dim:
            raise ConfigError(f"query must have shape (batch, {self.key_dim}), got {tuple(query.shape)}")
        with torch.autocast(self.keys.device.type, enabled=False):  # selection in fp32 under any autocast
            sim = F.normalize(query.detach().float(), dim=-1) @ F.normalize(self.keys.float(), dim=-1).T
        score = sim.detach()
        if self.count_penalty and self.training and self.counts.sum() > 0:
            score = (score + 1.0) / 2.0 * self.penalty_weights()
        if self.oracle_tasks is not None:
            score = score.masked_fill(~self._task_mask(task_id), float("-inf"))
        idx = score.topk(self.top_k, dim=-1).indices
        if self.training:
            with torch.no_grad():
                self.task_counts += torch.bincount(idx.flatten(), minlength=self.n_modulators)
        self._indices = idx
        key_loss = (1.0 - sim.gather(1, idx)).mean()
        return Selection(idx, sim, key_loss)

    def _task_mask(self, task_id: int | None) -> torch.Tensor:
        if task_id is None or not 0 <= int(task_id) < self.oracle_tasks:
            raise ConfigError(f"oracle mode needs task_id in 0..{self.oracle_tasks - 1}, got {task_id}")
        per = self.n_modulators // self.oracle_tasks
        mask = torch.zeros(self.n_modulators, dtype=torch.bool, device=self.keys.device)
        mask[int(task_id) * per : (int(task_id) + 1) * per] = True
        return mask

    @property
    def indices(self) -> torch.Tensor | None:
        """Modulator index per sample, (B, k) long; -1 means 'no modulator' for that sample and slot."""
        return self._indices

    @indices.setter
    def indices(self, idx: torch.Tensor | None) -> None:
        if idx is not None:
            idx = torch.as_tensor(idx, dtype=torch.long, device=self.keys.device)
            idx = idx[:, None] if idx.dim() == 1 else idx
            in_range = idx.numel() == 0 or (-1 <= int(idx.min()) and int(idx.max()) < self.n_modulators)
            if idx.dim() != 2 or not in_range:
                raise ConfigError(
                    f"modulator indices must be (batch,) or (batch, k) in -1..{self.n_modulators - 1}"
                )
        self._indices = idx

    @contextmanager
    def selecting(self, query: torch.Tensor, task_id: int | None = None) -> Iterator[Selection]:
        """``with pool.selecting(q) as sel: out = model(x)`` — selection set for the block, cleared after."""
        prev = self._indices
        try:
            yield self.select(query, task_id)
        finally:
            self._indices = prev

    @contextmanager
    def using(self, indices: torch.Tensor) -> Iterator[None]:
        """Run the block with given modulator indices (e.g. a task's known key, or -1 for none)."""
        prev, self.indices = self._indices, indices
        try:
            yield
        finally:
            self._indices = prev

    @contextmanager
    def bypass(self) -> Iterator[None]:
        """Run the block as the bare backbone (no modulation), e.g. to evaluate pre-training tasks."""
        prev, self._bypass = self._bypass, True
        try:
            yield
        finally:
            self._bypass = prev

    def commit_task(self) -> None:
        """End of a task: its key usage joins the committed counts that steer later tasks to free keys."""
        with torch.no_grad():
            self.counts += self.task_counts
            self.task_counts.zero_()

    def delta(self, target: str, x: torch.Tensor) -> torch.Tensor | None:
        """Per-sample ``scale * mean_k B_{i_k} A_{i_k} x`` for one target (None when bypassed)."""
        if self._bypass:
            return None
        idx = self._indices
        if idx is None:
            raise ConfigError(
                "no modulator selected: use `with pool.selecting(query)` or `pool.using(indices)` around the "
                "forward (or `pool.bypass()` for the bare backbone)"
            )
        if x.dim() < 2 or x.shape[0] != idx.shape[0]:
            raise ConfigError(
                f"modulated layer '{target}' got input {tuple(x.shape)}; its first dimension must be the batch "
                f"of {idx.shape[0]} selections"
            )
        safe = idx.clamp(min=0)
        a, b = (
            self.lora_A[target][safe].to(x.dtype),
            self.lora_B[target][safe].to(x.dtype),
        )  # (B,k,r,in), (B,k,out,r)
        xb = x.reshape(x.shape[0], -1, x.shape[-1])
        y = torch.einsum("bktr,bkor->bkto", torch.einsum("bti,bkri->bktr", xb, a), b)
        w = (idx >= 0).to(y.dtype) * (self.scale / idx.shape[1])
        return torch.einsum("bkto,bk->bto", y, w).reshape(*x.shape[:-1], y.shape[-1])


_POOL_OPTIONS = [p for p in inspect.signature(ModulationPool.__init__).parameters if p != "self"]


@register_adapter("modulation", base=nn.Linear)
class ModulatedLinear(AdapterLayer):
    """A frozen Linear plus the pool's selected modulator: ``parallel`` (W x + dW x) or ``output`` (y + dW y)."""

    def __init__(self, base: nn.Linear, pool: ModulationPool, target: str, placement: str = "parallel"):
        super().__init__(base)
        object.__setattr__(self, "pool", pool)  # a plain reference: the pool is registered once, on the model
        self.target, self.placement = target, placement

    def extra_repr(self) -> str:
        return f"target={self.target}, placement={self.placement}"

    def adapter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(())  # the modulators live in the pool, saved once from there

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        d = self.pool.delta(self.target, x if self.placement == "parallel" else y)
        return y if d is None else y + d

    @classmethod
    def wrap_all(
        cls,
        model: nn.Module,
        linears: dict[str, nn.Linear],
        pool: ModulationPool | None = None,
        placement: str = "parallel",
        **pool_options,
    ) -> tuple[dict, dict]:
        """Use ``pool`` (or the model's one pool, or a new one from ``pool_options``) and attach it to the model."""
        if placement not in PLACEMENTS:
            raise ConfigError(f"modulation placement must be one of {PLACEMENTS}, got {placement!r}")
        unknown = sorted(set(pool_options) - set(_POOL_OPTIONS))
        if unknown:
            raise ConfigError(
                f"unknown option(s) {unknown} for adapter 'modulation'; allowed: "
                f"{sorted(['pool', 'placement', *_POOL_OPTIONS])}"
            )
        if pool is None:
            found = [m for m in model.modules() if isinstance(m, ModulationPool)]
            if len(found) > 1:
                raise ConfigError("the model holds several modulation pools; pass pool=<the one to use>")
            pool = found[0] if found else ModulationPool(**pool_options)
        first = next(iter(linears.values()))
        pool.to(device=first.weight.device)  # the pool lives beside the layers it modulates
        differ = {k: v for k, v in pool_options.items() if pool.config()[k] != v}
        if differ:
            raise ConfigError(f"pool options {differ} differ from the pool in use {pool.config()}")
        if not any(m is pool for m in model.modules()):
            if isinstance(model, nn.Sequential) or hasattr(model, "modulation_pool"):
                raise ConfigError(
                    "cannot attach the pool to this model: give it a `modulation_pool` submodule "
                    "yourself (or wrap an nn.Sequential in a Module)"
                )
            model.add_module("modulation_pool", pool)
        layers = {}
        for name, lin in linears.items():
            in_dim = lin.in_features if placement == "parallel" else lin.out_features
            key = pool.add_target(name, in_dim, lin.out_features, lin.weight)
            layers[name] = cls(lin, pool, key, placement)
        return layers, {**pool.config(), "placement": placement}
