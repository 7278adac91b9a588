"""PHE's two pre-training tasks, each a registered task that owns its step (``forward(batch, backbone)``).

Both predict masked edges into the target type: per step, each edge (s -> t) of a relation into the target
type whose target t is a seed (``batch[target].seed``) is dropped with probability ``mask_ratio`` (its reverse
edge too), the encoder runs on the kept graph, and a query for t must pick the embedding of the dropped source
s among ``negatives`` random nodes of s's type (false negatives, i.e. true sources of t, are redrawn once) and
a FIFO queue of earlier keys: cosine InfoNCE at ``temperature`` through one ``Matcher`` (Linear + dropout) per
relation, averaged over relations. (The official code shares one Matcher per relation between the two tasks;
here each task has its own, so the two stay separate modules with their own state.)

- ``phe.semantic``: the keys are the mean output of K weight-perturbed copies of the encoder (per tensor
  uniform noise (U[0,1) - 0.5) x scale x std), run without gradients through ``torch.func.functional_call`` on
  K separately drawn parameter dicts (the live parameters are never touched; the official code stores one dict
  object K times, so its ensemble is one perturbation). Whether the copies run in train mode (dropout on, as
  the code) or eval mode is ``perturbed_mode``. The query is the unperturbed encoder's target embedding.
- ``phe.structure``: the query is a network-schema embedding of t (HeCo's schema view): per relation into t,
  ``schema_samples`` neighbours drawn with replacement (t itself when it has none), node-level attention, ELU,
  then type-level attention (per node by default; HeCo's batch-mean form behind ``type_attention``).
  ``schema_edges="kept"`` (default) draws those neighbours from the kept edges only,
  so the query never sees its positive; ``"masked"`` reproduces the official code, which aggregates the very
  edges being predicted. Keys are the unperturbed encoder's (detached) embeddings.

Queues change only through ``InfoNCE.update_queue``, which does nothing in eval mode: validation never updates a
queue. Randomness (masks, negatives, noise, schema draws) comes from ``generator`` or, when None, the global
RNG, which the trainer reseeds per step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from pretrainkit.core.losses import InfoNCE
from pretrainkit.core.task import PretrainTask, register_task
from pretrainkit.errors import ConfigError, DataError

EdgeType = tuple[str, str, str]


@dataclass
class EdgeTaskConfig:
    mask_ratio: float = 0.5
    negatives: int = 255
    temperature: float = 0.1
    queue_size: int = 1024  # keys per relation (the code: up to 256 batches' worth)
    matcher_dropout: float = 0.2


@dataclass
class SemanticConfig(EdgeTaskConfig):
    perturbations: int = 5  # K
    noise_scale: float = 0.15
    perturbed_mode: Literal["train", "eval"] = "train"


@dataclass
class StructureConfig(EdgeTaskConfig):
    schema_edges: Literal["kept", "masked"] = "kept"  # kept = leak-free; masked = the official code
    schema_samples: dict[str, int] = field(default_factory=dict)  # per source type; default 2
    attn_dropout: float = 0.1
    # Type-level attention weights: "batch" = HeCo's (one softmax over types from the mean over every node in the
    # batch, so another node's neighbours, possibly t's positive, move t's query a little); "node" (default) =
    # one softmax per node, so a leak-free query depends on its own kept neighbours only.
    type_attention: Literal["node", "batch"] = "node"


def _check(cfg: EdgeTaskConfig, name: str) -> None:
    if not 0 < cfg.mask_ratio < 1:
        raise ConfigError(f"config key '{name}.mask_ratio' must be in (0, 1), got {cfg.mask_ratio}")
    if cfg.negatives < 1:
        raise ConfigError(f"config key '{name}.negatives' must be >= 1, got {cfg.negatives}")


def relation_key(et: EdgeType) -> str:
    return "__".join(et)


def reverse_of(et: EdgeType) -> EdgeType:
    s, r, d = et
    return (d, r[4:] if r.startswith("rev_") else f"rev_{r}", s)


def masked_relations(metadata, target: str) -> list[EdgeType]:
    """Relations whose edges point into ``target`` (the ones whose edges are masked and predicted)."""
    return [tuple(et) for et in metadata[1] if et[2] == target and et[0] != target]


def _rand(shape, generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device="cpu" if generator is not None else device).to(
        device
    )


def _pair_key(src: torch.Tensor, dst: torch.Tensor, n_dst: int) -> torch.Tensor:
    return src * n_dst + dst


@dataclass
class Masked:
    """One relation's masking: the dropped edges (positives) and the full edge list (false-negative filter)."""

    src: torch.Tensor
    dst: torch.Tensor
    original: torch.Tensor


def mask_edges(
    batch, target: str, relations: list[EdgeType], ratio: float, generator: torch.Generator | None = None
) -> tuple[Any, dict[EdgeType, Masked]]:
    """The batch with a random ``ratio`` of each relation's edges into seed targets dropped (with their
    reverse edges), and the dropped edges per relation. The input batch is not modified."""
    kept = copy.copy(batch)
    seeds = batch[target].seed
    n_t = int(batch[target].num_nodes)
    is_seed = torch.zeros(n_t, dtype=torch.bool, device=seeds.device)
    is_seed[seeds] = True
    out: dict[EdgeType, Masked] = {}
    for et in relations:
        ei = batch[et].edge_index
        drop = is_seed[ei[1]] & (_rand(ei.shape[1], generator, ei.device) < ratio)
        out[et] = Masked(ei[0, drop], ei[1, drop], ei)
        kept[et].edge_index = ei[:, ~drop]
        rev = reverse_of(et)
        if rev in batch.edge_types:
            rei = batch[rev].edge_index
            dropped = _pair_key(ei[0, drop], ei[1, drop], n_t)
            gone = torch.isin(_pair_key(rei[1], rei[0], n_t), dropped)
            kept[rev].edge_index = rei[:, ~gone]
    return kept, out


class EdgeContrast(nn.Module):
    """Per relation: a Matcher on the query, then cosine InfoNCE of the true source against negatives + queue."""

    def __init__(self, relations: list[EdgeType], hidden: int, cfg: EdgeTaskConfig):
        super().__init__()
        self.cfg = cfg
        self.relations = relations
        self.matchers = nn.ModuleDict(
            {
                relation_key(et): nn.Sequential(nn.Linear(hidden, hidden), nn.Dropout(cfg.matcher_dropout))
                for et in relations
            }
        )
        self.nce = nn.ModuleDict(
            {relation_key(et): InfoNCE(cfg.temperature, cfg.queue_size) for et in relations}
        )

    def negatives(self, m: Masked, n_src: int, n_dst: int, generator) -> torch.Tensor:
        """(E, K) random source ids per masked edge; those that are true sources of the edge's target are
        redrawn once (a remaining collision is rare on sparse graphs and only weakens the contrast)."""
        k = min(self.cfg.negatives, max(1, n_src - 1))
        dev = m.src.device
        neg = (_rand((len(m.src), k), generator, dev) * n_src).long().clamp_max(n_src - 1)
        true = _pair_key(m.original[0], m.original[1], n_dst)
        bad = torch.isin(_pair_key(neg, m.dst[:, None], n_dst), true)
        redraw = (_rand((len(m.src), k), generator, dev) * n_src).long().clamp_max(n_src - 1)
        return torch.where(bad, redraw, neg)

    def forward(
        self,
        query_of: dict[EdgeType, torch.Tensor],
        keys: dict[str, torch.Tensor],
        masked: dict[EdgeType, Masked],
        n_dst: int,
        generator=None,
    ) -> tuple[torch.Tensor, dict]:
        """``query_of[et]``: (E, d) query per masked edge of ``et``; ``keys[type]``: (n, d) key embeddings (no
        gradient needed). Returns the mean loss over relations with at least one masked edge."""
        losses, metrics = [], {}
        for et in self.relations:
            m = masked[et]
            if len(m.src) == 0:
                continue
            key = relation_key(et)
            q = self.matchers[key](query_of[et])
            k_all = keys[et[0]]
            neg = self.negatives(m, k_all.shape[0], n_dst, generator)
            pos = k_all[m.src]
            loss = self.nce[key](q, pos, k_all[neg])
            if self.nce[key].training and self.cfg.queue_size:
                self.nce[key].update_queue(
                    pos
                )  # never in eval mode; out of place, so the loss's backward holds
            losses.append(loss)
            metrics[f"loss/{key}"] = loss.detach()
        if not losses:
            # no masked edge this step (tiny batch): a zero that still reaches every parameter
            zero = sum(p.sum() for p in self.parameters()) * 0.0
            return zero, metrics
        return torch.stack(losses).mean(), metrics


def _target_of(batch, target: str | None) -> str:
    if target is None:
        raise ConfigError("the PHE tasks need the graph's target node type")
    if "seed" not in batch[target]:
        raise DataError(
            f"a PHE batch needs batch['{target}'].seed (the query nodes); use the PHE batch streams"
        )
    return target


def perturbed_params(
    module: nn.Module, k: int, scale: float, generator: torch.Generator | None = None
) -> list[dict[str, torch.Tensor]]:
    """K separately drawn parameter dicts: each tensor + (U[0,1) - 0.5) x scale x std(tensor), detached.
    A one-element tensor (no spread) is left as it is."""
    out = []
    with torch.no_grad():
        for _ in range(k):
            d = {}
            for name, p in module.named_parameters():
                std = p.std() if p.numel() > 1 else p.new_zeros(())
                noise = _rand(p.shape, generator, p.device).to(p.dtype) - 0.5
                d[name] = p.detach() + noise * (scale * std)
            out.append(d)
    return out


@register_task("phe.semantic")
class SemanticTask(PretrainTask):
    """L_sem: masked-edge contrast whose keys come from an ensemble of weight-perturbed encoders."""

    def __init__(
        self, relations: list[EdgeType], hidden: int, target: str, cfg: SemanticConfig | None = None
    ):
        super().__init__()
        self.cfg = cfg = cfg or SemanticConfig()
        _check(cfg, "tasks.semantic")
        if cfg.perturbations < 1 or cfg.noise_scale < 0:
            raise ConfigError(
                "config keys 'tasks.semantic.perturbations' >= 1 and 'noise_scale' >= 0 required"
            )
        self.target, self.relations = target, relations
        self.contrast = EdgeContrast(relations, hidden, cfg)

    def perturbed_keys(self, backbone: nn.Module, batch, generator=None) -> dict[str, torch.Tensor]:
        """The mean of K perturbed encoders' outputs, without gradients; the encoder's modes are restored."""
        modes = {m: m.training for m in backbone.modules()}
        backbone.train(self.cfg.perturbed_mode == "train")
        try:
            with torch.no_grad():
                total: dict[str, torch.Tensor] | None = None
                for params in perturbed_params(
                    backbone, self.cfg.perturbations, self.cfg.noise_scale, generator
                ):
                    out = functional_call(backbone, params, (batch,))
                    total = out if total is None else {t: total[t] + out[t] for t in total}
        finally:
            for m, mode in modes.items():
                m.training = mode
        return {t: v / self.cfg.perturbations for t, v in total.items()}

    def forward(self, batch, backbone, generator: torch.Generator | None = None):
        target = _target_of(batch, self.target)
        kept, masked = mask_edges(batch, target, self.relations, self.cfg.mask_ratio, generator)
        h = backbone(kept)
        keys = self.perturbed_keys(backbone, kept, generator)
        query_of = {et: h[target][masked[et].dst] for et in self.relations}
        return self.contrast(query_of, keys, masked, int(batch[target].num_nodes), generator)


class SchemaEncoder(nn.Module):
    """HeCo's network-schema view: node-level attention per relation, then type-level attention."""

    def __init__(self, relations: list[EdgeType], hidden: int, attn_dropout: float, per_node: bool = True):
        super().__init__()
        self.relations, self.per_node = relations, per_node
        self.node_att = nn.ParameterDict(
            {relation_key(et): nn.Parameter(torch.empty(2 * hidden)) for et in relations}
        )
        for p in self.node_att.values():
            nn.init.normal_(p, std=(1.0 / hidden) ** 0.5)
        self.type_fc = nn.Linear(hidden, hidden)
        self.type_att = nn.Parameter(torch.empty(hidden))
        nn.init.normal_(self.type_att, std=(1.0 / hidden) ** 0.5)
        self.drop = nn.Dropout(attn_dropout)

    def forward(self, h_self: torch.Tensor, nbrs: dict[EdgeType, torch.Tensor]) -> torch.Tensor:
        """``h_self``: (T, d) the targets; ``nbrs[et]``: (T, n, d) their sampled neighbours -> (T, d)."""
        zs = []
        for et in self.relations:
            hn = nbrs[et]
            a = self.node_att[relation_key(et)]
            d = h_self.shape[1]
            logits = F.leaky_relu((h_self @ a[:d])[:, None] + hn @ a[d:])  # a . [h_t || h_nbr]
            att = self.drop(torch.softmax(logits, dim=1))
            zs.append(F.elu((att[..., None] * hn).sum(1)))
        z = torch.stack(zs, 1)  # (T, R, d)
        w = torch.tanh(self.type_fc(z)) @ self.type_att  # (T, R)
        if not self.per_node:
            w = w.mean(0, keepdim=True)  # HeCo: mean over the batch's nodes (the same as mean-then-dot)
        beta = self.drop(torch.softmax(w, dim=1))
        return (beta[..., None] * z).sum(1)


def sample_schema_neighbours(
    edge_index: torch.Tensor, seeds: torch.Tensor, n_dst: int, n: int, generator=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sources per seed drawn with replacement from ``edge_index`` (src -> dst) -> (ids (T, n), valid
    (T, n)); a seed without any source gets ``valid`` False (the caller puts the seed itself there)."""
    from pretrainkit.systems.phe.sampler import CSR

    csr = CSR(edge_index.cpu(), n_dst)
    s = seeds.cpu()
    deg = csr.degree(s)
    pick = (_rand((len(s), n), generator, "cpu") * deg[:, None].clamp_min(1)).long()
    pos = (csr.ptr[s][:, None] + pick).clamp_max(max(len(csr.src) - 1, 0))
    ids = csr.src[pos] if len(csr.src) else torch.zeros_like(pos)
    valid = (deg > 0)[:, None].expand(-1, n)
    return ids.to(seeds.device), valid.to(seeds.device)


@register_task("phe.structure")
class StructureTask(PretrainTask):
    """L_struct: masked-edge contrast whose query is a network-schema embedding of the target."""

    def __init__(
        self, relations: list[EdgeType], hidden: int, target: str, cfg: StructureConfig | None = None
    ):
        super().__init__()
        self.cfg = cfg = cfg or StructureConfig()
        _check(cfg, "tasks.structure")
        if cfg.schema_edges not in ("kept", "masked"):
            raise ConfigError(
                f"config key 'tasks.structure.schema_edges' must be kept or masked, got {cfg.schema_edges!r}"
            )
        self.target, self.relations = target, relations
        self.schema = SchemaEncoder(
            relations, hidden, cfg.attn_dropout, per_node=cfg.type_attention == "node"
        )
        self.contrast = EdgeContrast(relations, hidden, cfg)

    def schema_inputs(self, kept, masked: dict[EdgeType, Masked], generator=None):
        """The neighbour ids each seed's schema embedding aggregates, per relation: (ids, valid)."""
        target = self.target
        seeds = kept[target].seed
        n_t = int(kept[target].num_nodes)
        out = {}
        for et in self.relations:
            ei = (
                kept[et].edge_index
                if self.cfg.schema_edges == "kept"
                else torch.stack([masked[et].src, masked[et].dst])
            )
            n = int(self.cfg.schema_samples.get(et[0], 2))
            out[et] = sample_schema_neighbours(ei, seeds, n_t, n, generator)
        return out

    def schema_query(self, h: dict[str, torch.Tensor], seeds: torch.Tensor, inputs) -> torch.Tensor:
        """(T, d) schema embeddings of the seeds from embeddings ``h`` and the drawn neighbours."""
        h_self = h[self.target][seeds]
        nbrs = {}
        for et, (ids, valid) in inputs.items():
            hn = h[et[0]][ids]
            nbrs[et] = torch.where(valid[..., None], hn, h_self[:, None, :].expand_as(hn))
        return self.schema(h_self, nbrs)

    def forward(self, batch, backbone, generator: torch.Generator | None = None):
        target = _target_of(batch, self.target)
        kept, masked = mask_edges(batch, target, self.relations, self.cfg.mask_ratio, generator)
        h = backbone(kept)
        seeds = kept[target].seed
        inputs = self.schema_inputs(kept, masked, generator)
        p = self.schema_query(h, seeds, inputs)
        n_t = int(batch[target].num_nodes)
        slot = torch.full((n_t,), -1, dtype=torch.long, device=seeds.device)
        slot[seeds] = torch.arange(len(seeds), device=seeds.device)
        query_of = {et: p[slot[masked[et].dst]] for et in self.relations}
        keys = {t: v.detach() for t, v in h.items()}
        return self.contrast(query_of, keys, masked, n_t, generator)
