"""LIMU-BERT backbone used by Saga, plus its reconstruction head and the downstream classifier heads.

Sizes and block structure follow LIMU-BERT (Xu et al., SenSys 2021; code dapowan/LIMU-BERT-Public @ decffee,
`config/limu_bert.json` base_v1). The code and the paper disagree on the transformer block; ``limu_code_compat``
picks the code's structure (needed to reproduce LIMU numbers), otherwise the paper's three-residual block.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pretrainkit.errors import ConfigError, DataError


@dataclass
class LimuBertConfig:
    """Sizes of the LIMU-BERT encoder; defaults are LIMU-BERT base_v1 (6 ch, 120 steps @ 20 Hz, ~62 K params)."""

    n_channels: int = 6
    seq_len: int = 120
    hidden: int = 72
    ff: int = 144
    n_heads: int = 4
    n_layers: int = 4
    share_layers: bool = True  # ALBERT-style: one block applied n_layers times
    emb_norm: bool = True
    limu_code_compat: bool = True
    acc_scale: float = 9.8  # m/s^2 -> g, as LIMU's Preprocess4Normalization
    acc_channels: tuple[int, int] = (0, 3)  # half-open channel range divided by acc_scale
    layer_norm_eps: float = 1e-12

    def __post_init__(self) -> None:
        self.acc_channels = tuple(int(c) for c in self.acc_channels)  # yaml gives lists
        for name in ("n_channels", "seq_len", "hidden", "ff", "n_heads", "n_layers"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"LimuBertConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.n_heads:
            raise ConfigError(f"hidden ({self.hidden}) must be divisible by n_heads ({self.n_heads})")
        check_acc_channels(self.acc_channels, self.n_channels)
        if not self.acc_scale > 0:
            raise ConfigError(f"acc_scale must be > 0, got {self.acc_scale}")

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Raw units -> model units (acc / acc_scale); the reconstruction target uses the same scaling."""
        return normalise_imu(x, self.acc_scale, self.acc_channels)


def check_acc_channels(acc_channels: Sequence[int], n_channels: int) -> None:
    """Raise ConfigError unless ``acc_channels`` is a half-open range (start, stop) inside the channels."""
    if len(acc_channels) != 2 or not (0 <= acc_channels[0] <= acc_channels[1] <= n_channels):
        raise ConfigError(
            f"acc_channels must be (start, stop) with 0 <= start <= stop <= n_channels={n_channels}, "
            f"got {tuple(acc_channels)}"
        )


def normalise_imu(
    x: torch.Tensor, acc_scale: float = 9.8, acc_channels: Sequence[int] = (0, 3)
) -> torch.Tensor:
    """Divide the accelerometer channels by ``acc_scale`` (m/s^2 -> g); other channels (gyro rad/s) unchanged.

    LIMU-BERT does no mean/variance standardisation (its paper reports that it hurts).
    """
    a0, a1 = int(acc_channels[0]), int(acc_channels[1])
    if a1 > x.shape[-1]:
        raise DataError(f"acc_channels {(a0, a1)} exceed the {x.shape[-1]} input channels")
    scale = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)
    scale[a0:a1] = 1.0 / acc_scale
    return x * scale


class _SelfAttention(nn.Module):
    """Multi-head self-attention without output projection (LIMU keeps the projection outside)."""

    def __init__(self, hidden: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        q, k, v = (
            m(h).view(b, n, self.n_heads, d // self.n_heads).transpose(1, 2) for m in (self.q, self.k, self.v)
        )
        out = F.scaled_dot_product_attention(q, k, v)  # no mask, no dropout (LIMU has none)
        return out.transpose(1, 2).reshape(b, n, d)


class _Block(nn.Module):
    """One transformer block in LIMU's code form (2 LNs, no residual around attention) or the paper's (3 LNs)."""

    def __init__(self, cfg: LimuBertConfig):
        super().__init__()
        h, eps = cfg.hidden, cfg.layer_norm_eps
        self.code_compat = cfg.limu_code_compat
        self.attn = _SelfAttention(h, cfg.n_heads)
        self.proj = nn.Linear(h, h)
        # nn.LayerNorm puts eps inside the sqrt (biased variance), exactly LIMU's TF-style LayerNorm
        self.norm1 = nn.LayerNorm(h, eps=eps)
        self.ffn = nn.Sequential(nn.Linear(h, cfg.ff), nn.GELU(), nn.Linear(cfg.ff, h))
        self.norm2 = nn.LayerNorm(h, eps=eps)
        self.norm0 = None if self.code_compat else nn.LayerNorm(h, eps=eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.code_compat:
            h = self.attn(h)  # LIMU code overwrites h: no residual from the block input
            h = self.norm1(h + self.proj(h))
        else:
            h = self.norm0(self.attn(h) + h)
            h = self.norm1(self.proj(h) + h)
        return self.norm2(h + self.ffn(h))


class LimuBertEncoder(nn.Module):
    """LIMU-BERT encoder: raw IMU windows (B, L, C) in m/s^2 and rad/s -> per-step features (B, L, hidden).

    ``forward`` accepts a tensor or a batch mapping with key ``"x"`` (what ``TaskMix`` passes after a task's
    ``prepare``), so the encoder itself is the backbone callable. Acc normalisation happens inside.
    """

    def __init__(self, cfg: LimuBertConfig | None = None, **overrides: Any):
        super().__init__()
        if cfg is None:
            cfg = LimuBertConfig(**overrides)
        elif overrides:
            raise ConfigError("pass either a LimuBertConfig or keyword overrides, not both")
        self.cfg = cfg
        h, eps = cfg.hidden, cfg.layer_norm_eps
        self.embed = nn.Linear(cfg.n_channels, h)
        self.pos = nn.Embedding(cfg.seq_len, h)
        self.emb_norm = nn.LayerNorm(h, eps=eps)
        # LIMU's code applies the same LN module before and after adding positions; the paper form uses two.
        self.emb_norm2 = None if cfg.limu_code_compat else nn.LayerNorm(h, eps=eps)
        n_blocks = 1 if cfg.share_layers else cfg.n_layers
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(n_blocks))

    @property
    def hidden(self) -> int:
        return self.cfg.hidden

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's input scaling (acc / acc_scale); tasks use it to build reconstruction targets."""
        return self.cfg.normalise(x)

    def forward(self, x: torch.Tensor | Mapping[str, Any]) -> torch.Tensor:
        if isinstance(x, Mapping):
            if "x" not in x:
                raise DataError(f"batch for LimuBertEncoder needs key 'x', got keys {sorted(x)}")
            x = x["x"]
        if x.dim() != 3 or x.shape[-1] != self.cfg.n_channels or x.shape[1] > self.cfg.seq_len:
            raise DataError(
                f"expected IMU windows (batch, steps <= {self.cfg.seq_len}, {self.cfg.n_channels} channels), "
                f"got shape {tuple(x.shape)}"
            )
        e = self.embed(self.normalise(x.float()))
        if self.cfg.emb_norm:
            e = self.emb_norm(e)
        e = e + self.pos.weight[: x.shape[1]]
        h = (self.emb_norm if self.emb_norm2 is None else self.emb_norm2)(e)
        for i in range(self.cfg.n_layers):
            h = self.blocks[0 if self.cfg.share_layers else i](h)
        return h


class ReconstructionHead(nn.Module):
    """LIMU's pre-training decoder: Linear(H, H) -> GELU -> LayerNorm -> Linear(H, C), applied per step."""

    def __init__(self, hidden: int = 72, n_channels: int = 6, layer_norm_eps: float = 1e-12):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.LayerNorm(hidden, eps=layer_norm_eps),
            nn.Linear(hidden, n_channels),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class GRUClassifier(nn.Module):
    """LIMU-BERT's gru_v2 head: GRU(in->20, 2 layers) -> GRU(20->10, 1 layer) -> last step -> dropout -> Linear.

    Input (B, L, in_dim) features, output (B, n_classes) logits. No activation between layers (gru_v2 activ=false).
    """

    def __init__(
        self,
        in_dim: int = 72,
        n_classes: int = 6,
        rnn_sizes: Sequence[int] = (20, 10),
        rnn_layers: Sequence[int] = (2, 1),
        dropout: float = 0.5,
    ):
        super().__init__()
        if len(rnn_sizes) != len(rnn_layers) or not rnn_sizes:
            raise ConfigError(
                f"rnn_sizes and rnn_layers need equal non-zero length, got {rnn_sizes}, {rnn_layers}"
            )
        dims = [in_dim, *rnn_sizes]
        self.grus = nn.ModuleList(
            nn.GRU(dims[i], dims[i + 1], num_layers=n, batch_first=True) for i, n in enumerate(rnn_layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(dims[-1], n_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for gru in self.grus:
            h, _ = gru(h)
        return self.out(self.dropout(h[:, -1]))


class LinearProbe(nn.Module):
    """Mean-pool the per-step features over time, then one Linear layer: the cheapest downstream head."""

    def __init__(self, in_dim: int = 72, n_classes: int = 6):
        super().__init__()
        self.out = nn.Linear(in_dim, n_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(h.mean(dim=1))
