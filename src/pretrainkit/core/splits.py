"""Seeded train/val/test splits as index arrays: random, by group (e.g. subject) and by time within a group.

Pure functions of their inputs, so every system and every seed draws the same parts. Label budgets inside a
split's training part are ``pretrainkit.adapt.probe.stratified_budget`` (the few-label protocol).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pretrainkit.errors import ConfigError, DataError

Parts = tuple[np.ndarray, np.ndarray, np.ndarray]


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or any(not np.isfinite(f) or f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ConfigError(
            f"split fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}"
        )
    return fr  # type: ignore[return-value]


def part_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    """(train, val) sizes of n items; test takes the rest."""
    # Truncate train and val like LIMU-BERT (int(n * rate)). The epsilon keeps 30 * 0.1 = 3.0000000000000004
    # and 0.29 * 100 = 28.999999999999996 from rounding the wrong way.
    return int(n * fractions[0] + 1e-9), int(n * fractions[1] + 1e-9)


def random_split(n: int, seed: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> Parts:
    """Shuffle all n items with ``np.random.RandomState(seed)`` and cut train/val/test; each part sorted.

    The stream is that of a seeded global ``np.random.shuffle`` (LIMU-BERT's split, which uses seed 3431).
    """
    fr = check_fractions(fractions)
    if n < 0:
        raise DataError(f"number of items must be >= 0, got {n}")
    order = np.arange(n, dtype=np.int64)
    np.random.RandomState(seed).shuffle(order)
    n_train, n_val = part_sizes(n, fr)
    parts = order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
    return tuple(np.sort(p) for p in parts)  # type: ignore[return-value]


def group_split(
    groups: np.ndarray, seed: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), unit: str = "groups"
) -> Parts:
    """Group-disjoint split: shuffle the distinct groups (``default_rng(seed)``), give whole groups to
    train/val/test. Fractions count groups, not items; every part with a non-zero fraction gets at least one
    group. Returns sorted item indices per part. ``unit`` names the groups in error messages ("users")."""
    fr = check_fractions(fractions)
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise DataError(f"{unit} must be a 1-D array (one id per item), got shape {groups.shape}")
    distinct = np.unique(groups)
    wanted = sum(f > 0 for f in fr)
    if len(distinct) < wanted:
        raise DataError(
            f"a split by {unit} needs at least {wanted} {unit} for fractions {fr}, got {len(distinct)}"
        )
    np.random.default_rng(seed).shuffle(distinct)
    n_train, n_val = part_sizes(len(distinct), fr)
    sizes = [n_train, n_val, len(distinct) - n_train - n_val]
    for i in range(3):  # a part that should be non-empty takes a group from the largest part
        while fr[i] > 0 and sizes[i] == 0:
            sizes[int(np.argmax(sizes))] -= 1
            sizes[i] += 1
    bounds = np.cumsum([0] + sizes)
    return tuple(  # type: ignore[return-value]
        np.flatnonzero(np.isin(groups, distinct[bounds[i] : bounds[i + 1]])).astype(np.int64)
        for i in range(3)
    )


def time_split_within_group(
    groups: np.ndarray,
    order: np.ndarray | Sequence[np.ndarray],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
) -> Parts:
    """Within each group (e.g. user), the earliest items go to train, later ones to val, the latest to test.

    ``order`` is a time key (N,) or a sequence of keys, most significant first, e.g.
    ``(windows.experiment, windows.start)``. Ties keep index order. Deterministic, so no seed.
    """
    fr = check_fractions(fractions)
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise DataError(f"groups must be a 1-D array, got shape {groups.shape}")
    keys = [np.asarray(order)] if np.asarray(order).ndim == 1 else [np.asarray(k) for k in order]
    for k in keys:
        if k.shape != groups.shape:
            raise DataError(f"order keys must have shape {groups.shape} like groups, got {k.shape}")
        if np.issubdtype(k.dtype, np.integer) and (k < 0).any():
            raise DataError(
                "order keys contain negative values (unknown start?); time splits need known times"
            )
    # lexsort sorts by its last key first; index as the final tie-breaker keeps the sort stable.
    ranked = np.lexsort([np.arange(len(groups))] + keys[::-1] + [groups])
    parts: list[list[np.ndarray]] = [[], [], []]
    sorted_groups = groups[ranked]
    cuts = np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1
    for block in np.split(ranked, cuts) if len(ranked) else []:
        n_train, n_val = part_sizes(len(block), fr)
        parts[0].append(block[:n_train])
        parts[1].append(block[n_train : n_train + n_val])
        parts[2].append(block[n_train + n_val :])
    return tuple(  # type: ignore[return-value]
        np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64) for p in parts
    )
