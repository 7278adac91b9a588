"""Generic splits moved from Saga's data module into pretrainkit.core.splits: the same draws as before.

The reference functions below are the code as it was in systems/saga/data.py before the move, kept verbatim
(renamed) so the equality checks can fail if a draw changes.
"""

from collections.abc import Sequence

import numpy as np
import pytest

from pretrainkit.core.splits import group_split, random_split, time_split_within_group
from pretrainkit.errors import ConfigError, DataError
from pretrainkit.systems.saga import data as saga_data

# ---- reference: systems/saga/data.py before the move ------------------------------------------------------


def _ref_check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or any(not np.isfinite(f) or f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ConfigError(
            f"split fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}"
        )
    return fr  # type: ignore[return-value]


def _ref_part_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    # Truncate train and val like LIMU-BERT (int(n * rate)); test takes the rest. The epsilon keeps
    # 30 * 0.1 = 3.0000000000000004 and 0.29 * 100 = 28.999999999999996 from rounding the wrong way.
    return int(n * fractions[0] + 1e-9), int(n * fractions[1] + 1e-9)


def ref_random_window_split(
    n: int, seed: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LIMU-BERT's split: shuffle all n windows (``np.random.seed(seed); shuffle``), cut 80/10/10.

    LIMU-BERT uses seed 3431. Each part is returned sorted.
    """
    fr = _ref_check_fractions(fractions)
    if n < 0:
        raise DataError(f"number of windows must be >= 0, got {n}")
    order = np.arange(n, dtype=np.int64)
    np.random.RandomState(seed).shuffle(order)  # same stream as LIMU's seeded global np.random.shuffle
    n_train, n_val = _ref_part_sizes(n, fr)
    parts = order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
    return tuple(np.sort(p) for p in parts)  # type: ignore[return-value]


def ref_subject_split(
    users: np.ndarray, seed: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Subject-disjoint split: shuffle the distinct users (seeded), give whole users to train/val/test.

    Fractions count users, not windows. Returns sorted window indices per part.
    """
    fr = _ref_check_fractions(fractions)
    users = np.asarray(users)
    if users.ndim != 1:
        raise DataError(f"users must be a 1-D array (one user id per window), got shape {users.shape}")
    distinct = np.unique(users)
    wanted = sum(f > 0 for f in fr)
    if len(distinct) < wanted:
        raise DataError(
            f"subject_split needs at least {wanted} users for fractions {fr}, got {len(distinct)}"
        )
    np.random.default_rng(seed).shuffle(distinct)
    n_train, n_val = _ref_part_sizes(len(distinct), fr)
    # Every part with a non-zero fraction gets at least one user (taken from the largest part).
    sizes = [n_train, n_val, len(distinct) - n_train - n_val]
    for i in range(3):
        while fr[i] > 0 and sizes[i] == 0:
            sizes[int(np.argmax(sizes))] -= 1
            sizes[i] += 1
    bounds = np.cumsum([0] + sizes)
    return tuple(  # type: ignore[return-value]
        np.flatnonzero(np.isin(users, distinct[bounds[i] : bounds[i + 1]])).astype(np.int64) for i in range(3)
    )


def ref_time_split_within_group(
    groups: np.ndarray,
    order: np.ndarray | Sequence[np.ndarray],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Within each group (e.g. user), the earliest windows go to train, later ones to val, the latest to test.

    ``order`` is a time key (N,) or a sequence of keys, most significant first, e.g.
    ``(windows.experiment, windows.start)``. Ties keep index order. Deterministic, so no seed.
    """
    fr = _ref_check_fractions(fractions)
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
        n_train, n_val = _ref_part_sizes(len(block), fr)
        parts[0].append(block[:n_train])
        parts[1].append(block[n_train : n_train + n_val])
        parts[2].append(block[n_train + n_val :])
    return tuple(  # type: ignore[return-value]
        np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64) for p in parts
    )


# ---- checks ------------------------------------------------------------------------------------------------


def _same(a, b):
    return len(a) == len(b) == 3 and all(np.array_equal(x, y) and x.dtype == y.dtype for x, y in zip(a, b))


FRACTIONS = [(0.8, 0.1, 0.1), (0.6, 0.2, 0.2), (0.5, 0.0, 0.5), (1.0, 0.0, 0.0), (0.29, 0.01, 0.7)]


@pytest.mark.parametrize("fr", FRACTIONS)
def test_random_split_draws_as_before(fr):
    for n in (0, 1, 7, 30, 100, 2090):
        for seed in (0, 1, 3431):
            assert _same(random_split(n, seed, fr), ref_random_window_split(n, seed, fr))
            assert _same(saga_data.random_window_split(n, seed, fr), ref_random_window_split(n, seed, fr))


@pytest.mark.parametrize("fr", FRACTIONS)
def test_group_split_draws_as_before(fr):
    rng = np.random.default_rng(0)
    for n_groups in (3, 5, 30):
        groups = rng.integers(0, n_groups, size=400)
        groups[:n_groups] = np.arange(n_groups)  # every group present
        for seed in range(4):
            assert _same(group_split(groups, seed, fr), ref_subject_split(groups, seed, fr))
            assert _same(saga_data.subject_split(groups, seed, fr), ref_subject_split(groups, seed, fr))


@pytest.mark.parametrize("fr", FRACTIONS)
def test_time_split_within_group_as_before(fr):
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 6, size=300)
    exp, start = rng.integers(0, 4, size=300), rng.integers(0, 1000, size=300)
    for order in ((exp, start), exp * 10_000 + start, rng.random(300)):
        assert _same(
            time_split_within_group(groups, order, fr), ref_time_split_within_group(groups, order, fr)
        )


def test_real_hapt_splits_as_before(shared_data):
    from pretrainkit.systems.saga import hapt

    w = hapt.load_hapt(shared_data / "imu" / "hapt")
    users = w.label("user")
    for seed in (0, 1, 2, 3431):
        assert _same(random_split(len(w), seed), ref_random_window_split(len(w), seed))
        assert _same(saga_data.subject_split(users, seed), ref_subject_split(users, seed))
    assert _same(
        time_split_within_group(users, (w.experiment, w.start)),
        ref_time_split_within_group(users, (w.experiment, w.start)),
    )


def test_errors_are_the_same_kind():
    with pytest.raises(ConfigError, match="summing to 1"):
        random_split(10, 0, (0.8, 0.3, 0.1))
    with pytest.raises(DataError, match="at least 3 users"):
        saga_data.subject_split(np.array([1, 1, 2]), seed=0)
    with pytest.raises(DataError, match="at least 3 groups"):
        group_split(np.array([1, 1, 2]), seed=0)
    with pytest.raises(DataError, match="negative values"):
        time_split_within_group(np.zeros(4, int), np.full(4, -1))
