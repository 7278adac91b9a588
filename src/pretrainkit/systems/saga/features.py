"""Frozen-encoder features and the downstream units Saga (after LIMU-BERT) classifies.

Each 120-step window's embedding (120, H) is cut into 1-s sub-windows of 20 steps; each sub-window is one
labelled sample, as in LIMU-BERT's classifier. Budgets count these units.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def embed(encoder: nn.Module, x: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """(N, L, C) raw windows -> (N, L, H) frozen features."""
    encoder.eval()
    xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return torch.cat([encoder(xs[i : i + batch_size]) for i in range(0, len(xs), batch_size)])


def to_units(seq: torch.Tensor, unit: int) -> torch.Tensor:
    """(N, L, D) -> (N * L // unit, unit, D): consecutive sub-windows, window-major."""
    n, length, d = seq.shape
    if length % unit:
        raise ValueError(f"window length {length} is not a multiple of the unit {unit}")
    return seq.reshape(n * (length // unit), unit, d)


def unit_index(window_idx: np.ndarray, per_window: int) -> np.ndarray:
    """Window indices -> the indices of all their sub-windows."""
    window_idx = np.asarray(window_idx, dtype=np.int64)
    return (window_idx[:, None] * per_window + np.arange(per_window)[None, :]).reshape(-1)


def mix_features(feats: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Reading (B): concatenate each encoder's features scaled by its task weight (weight 0 drops it)."""
    return torch.cat([feats[k] * float(weights[k]) for k in feats], dim=-1)


def stat_features(units: np.ndarray) -> np.ndarray:
    """The floor's hand-made features per unit: mean, std, min, max, energy and the first FFT magnitudes of
    the 6 channels and the two sensor-norm channels."""
    acc, gyr = np.linalg.norm(units[..., :3], axis=-1), np.linalg.norm(units[..., 3:6], axis=-1)
    sig = np.concatenate([units, acc[..., None], gyr[..., None]], axis=-1)  # (n, T, 8)
    fft = np.abs(np.fft.rfft(sig - sig.mean(1, keepdims=True), axis=1))[:, 1:8]  # (n, 7, 8)
    parts = [sig.mean(1), sig.std(1), sig.min(1), sig.max(1), (sig**2).mean(1), fft.reshape(len(sig), -1)]
    return np.concatenate(parts, axis=1).astype(np.float32)
