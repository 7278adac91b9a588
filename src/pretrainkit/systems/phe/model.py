"""PHE's backbone: a heterogeneous graph encoder over a PyG ``HeteroData`` (the whole graph or a sampled one).

Per node type an input projection to ``hidden`` (tanh(Linear(x)) as pyHGT; a learnable embedding, looked up by
the node's global ``n_id``, for types without features), dropout, then ``layers`` message-passing layers:
PyG's ``HGTConv`` (per-type K/Q/V, per-relation attention and messages, gated skip) or an RGCN (per-relation
mean aggregation summed over relations, as ``HeteroConv`` of ``GraphConv``). Returns ``{type: (n, hidden)}``.

PyG's HGTConv has no relative temporal encoding (the HeCo/IMDB graphs carry no time) and is not
weight-compatible with pyHGT's HGT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from pretrainkit.errors import ConfigError


@dataclass
class EncoderConfig:
    conv: Literal["hgt", "rgcn"] = "hgt"
    hidden: int = 64
    heads: int = 4
    layers: int = 2
    dropout: float = 0.2

    def validate(self) -> None:
        if self.hidden < 1 or self.layers < 1 or self.heads < 1:
            raise ConfigError("config keys 'model.hidden', 'model.layers', 'model.heads' must be >= 1")
        if self.conv == "hgt" and self.hidden % self.heads:
            raise ConfigError(
                f"config key 'model.hidden' ({self.hidden}) must be divisible by 'model.heads' "
                f"({self.heads}) for HGT"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"config key 'model.dropout' must be in [0, 1), got {self.dropout}")


class SparseLinear(nn.Linear):
    """``nn.Linear`` that also takes a sparse COO input (bag-of-words features stay sparse)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_sparse:
            out = torch.sparse.mm(x, self.weight.t())
            return out + self.bias if self.bias is not None else out
        return super().forward(x)


class HeteroEncoder(nn.Module):
    """``forward(data) -> {node_type: embedding}`` for a graph with the schema given at construction.

    ``in_dims``: feature width per typed node with features; ``num_nodes``: node count per type in the whole
    graph (sizes the embedding tables of featureless types); ``metadata``: (node types, edge types)."""

    def __init__(
        self,
        metadata: tuple[list[str], list[tuple[str, str, str]]],
        in_dims: dict[str, int],
        num_nodes: dict[str, int],
        cfg: EncoderConfig | None = None,
    ):
        super().__init__()
        from torch_geometric.nn import GraphConv, HeteroConv, HGTConv

        self.cfg = cfg = cfg or EncoderConfig()
        cfg.validate()
        node_types, edge_types = metadata
        self.node_types, self.edge_types = list(node_types), [tuple(e) for e in edge_types]
        self.proj = nn.ModuleDict(
            {t: SparseLinear(in_dims[t], cfg.hidden) for t in node_types if t in in_dims}
        )
        self.emb = nn.ModuleDict(
            {t: nn.Embedding(num_nodes[t], cfg.hidden) for t in node_types if t not in in_dims}
        )
        for e in self.emb.values():
            nn.init.normal_(e.weight, std=0.1)
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.conv == "hgt":
            self.convs = nn.ModuleList(
                HGTConv(cfg.hidden, cfg.hidden, (self.node_types, self.edge_types), heads=cfg.heads)
                for _ in range(cfg.layers)
            )
        else:
            self.convs = nn.ModuleList(
                HeteroConv(
                    {
                        e: GraphConv((cfg.hidden, cfg.hidden), cfg.hidden, aggr="mean")
                        for e in self.edge_types
                    },
                    aggr="sum",
                )
                for _ in range(cfg.layers)
            )

    @classmethod
    def for_graph(cls, data, cfg: EncoderConfig | None = None) -> HeteroEncoder:
        in_dims = {t: int(data[t].x.shape[1]) for t in data.node_types if "x" in data[t]}
        num_nodes = {t: int(data[t].num_nodes) for t in data.node_types}
        return cls(data.metadata(), in_dims, num_nodes, cfg)

    def inputs(self, data) -> dict[str, torch.Tensor]:
        h = {}
        for t in self.node_types:
            if t in self.proj:
                h[t] = torch.tanh(self.proj[t](data[t].x))
            else:
                h[t] = self.emb[t](data[t].n_id)
        return {t: self.drop(v) for t, v in h.items()}

    def forward(self, data, all_layers: bool = False):
        """``{type: (n, hidden)}`` of the last layer; with ``all_layers``, the list [input projection, layer
        1, ..., layer L] of such dicts (the probe may read an earlier layer or their concatenation)."""
        h = self.inputs(data)
        layers = [h]
        edges = {e: data[e].edge_index for e in self.edge_types if e in data.edge_types}
        for i, conv in enumerate(self.convs):
            out = conv(h, edges)
            # a type that received no message this layer (possible in a small sampled subgraph) keeps its input
            new = {t: (out[t] if out.get(t) is not None else h[t]) for t in self.node_types}
            if self.cfg.conv == "rgcn" and i < len(self.convs) - 1:
                new = {t: torch.relu(v) for t, v in new.items()}
            layers.append(new)
            h = {t: self.drop(v) for t, v in new.items()} if i < len(self.convs) - 1 else new
        return layers if all_layers else h
