"""Saga's four maskers and LIMU's zero-with-probability corruption."""

import numpy as np
import pytest
import torch

from pretrainkit.errors import ConfigError, DataError
from pretrainkit.systems.saga.masking import (
    MASKERS,
    PeriodMasker,
    SensorMasker,
    SpanMasker,
    SubPeriodMasker,
    apply_mask,
)

L = 120


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def runs(row: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous True runs of a 1-D bool array as (start, stop)."""
    d = np.diff(np.concatenate([[0], row.astype(int), [0]]))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def time_of(mask: torch.Tensor) -> np.ndarray:
    """Masks that cover all channels at a step: check that, return the (B, L) time mask."""
    m = mask.numpy()
    assert (m == m[:, :, :1]).all()
    return m[:, :, 0]


def sine_windows(b: int, period: float, amp: float = 0.3, phase: float = 0.0) -> torch.Tensor:
    """Normalised windows: gravity + a sine of ``period`` samples on acc z, other channels zero."""
    t = torch.arange(L, dtype=torch.float64)
    x = torch.zeros(b, L, 6, dtype=torch.float64)
    x[:, :, 2] = 1.0 + amp * torch.sin(2 * torch.pi * t / period + phase)
    return x.float()


# ---- point level (span) -------------------------------------------------------------------------------


def test_span_masks_exactly_n_pred_steps_never_last():
    x = torch.randn(256, L, 6)
    m = time_of(SpanMasker()(x, gen()))
    assert (m.sum(1) == 18).all()  # round(120 * 0.15)
    assert not m[:, L - 1].any()
    assert SpanMasker(ratio=0.25).n_pred(40) == 10


def test_span_draws_are_at_most_max_gram():
    spans: list = []
    SpanMasker(max_gram=4).time_mask(200, L, np.random.default_rng(0), spans)
    lengths = np.concatenate([stop - start for _, start, stop in spans])
    assert lengths.max() <= 4 and lengths.min() >= 0 and (lengths == 4).any()


def _limu_reference(n: int, rng: np.random.Generator, max_gram=10, p=0.2, goal=18) -> np.ndarray:
    """LIMU-BERT's sequential span mask (utils.span_mask), one window at a time, as a reference law."""
    probs = p * (1 - p) ** np.arange(max_gram)
    probs /= probs.sum()
    out = np.zeros((n, L), dtype=bool)
    for i in range(n):
        pos: set[int] = set()
        while len(pos) < goal:
            k = min(rng.choice(max_gram, p=probs) + 1, goal - len(pos))
            a = rng.integers(L)
            if a in pos:
                continue
            pos.update(range(a, min(a + k, L - 1)))
        out[i, list(pos)] = True
    return out


def test_span_matches_limu_distribution():
    n = 3000
    ours = SpanMasker().time_mask(n, L, np.random.default_rng(1))
    ref = _limu_reference(n, np.random.default_rng(2))
    n_runs = lambda m: np.array([len(runs(r)) for r in m])
    a, b = n_runs(ours), n_runs(ref)
    se = np.sqrt(a.var() / n + b.var() / n)
    assert abs(a.mean() - b.mean()) < 4 * se
    # per-position masking rate: same shape (edge effects near 0 and L-1)
    assert np.abs(ours.mean(0) - ref.mean(0)).max() < 0.05


# ---- sensor level -------------------------------------------------------------------------------------


def test_sensor_masks_one_whole_sensor():
    m = SensorMasker(unit="sensor")(torch.randn(64, L, 6), gen()).numpy()
    per_channel = m.all(axis=1)  # (B, C): channel masked at every step
    assert (m.any(axis=1) == per_channel).all()  # whole window or nothing
    acc, gyro = [True] * 3 + [False] * 3, [False] * 3 + [True] * 3
    rows = [list(r) for r in per_channel]
    assert all(r in (acc, gyro) for r in rows)
    assert acc in rows and gyro in rows


def test_sensor_axis_masks_one_channel():
    m = SensorMasker(unit="axis")(torch.randn(200, L, 6), gen()).numpy()
    assert (m.all(axis=1).sum(1) == 1).all()
    assert (m.sum((1, 2)) == L).all()
    assert set(m.all(axis=1).argmax(1)) == set(range(6))


def test_sensor_rejects_bad_options():
    with pytest.raises(ConfigError):
        SensorMasker(unit="device")
    with pytest.raises(DataError):
        SensorMasker(unit="sensor")(torch.randn(2, L, 4), gen())


# ---- sub-period level ---------------------------------------------------------------------------------


@pytest.mark.parametrize("smooth", [1, 3])
def test_subperiod_masks_between_consecutive_extrema(smooth):
    # energy = (1 + 0.3 sin(2 pi t / 20))^2: maxima at t = 5 + 20k, minima at 15 + 20k
    x = sine_windows(64, 20)
    m = time_of(SubPeriodMasker(smooth=smooth)(x, gen()))
    extrema = list(range(5, L, 10))
    starts = set()
    for row in m:
        (r,) = runs(row)
        start, stop = r
        assert start in extrema and stop - 1 == start + 10  # from one key point to the next, inclusive
        starts.add(start)
    assert len(starts) > 3


def test_subperiod_key_points_respect_distance_and_prominence():
    sp = SubPeriodMasker(smooth=1, min_distance=3, min_prominence=0.5, rel_prominence=0.0)
    e = np.zeros(40)
    e[10], e[20] = 1.0, 0.8  # prominent peaks; the flat valley between them is a minimum at its middle (15)
    e[30] = 0.2  # not prominent enough, nor the valley around it
    assert list(sp.key_points(e)) == [10, 15, 20]
    # peaks closer than min_distance: the higher one wins
    wide = SubPeriodMasker(smooth=1, min_distance=15, min_prominence=0.5).key_points(e)
    assert 10 in wide and 20 not in wide
    # a relative threshold of 0.9 * range keeps only the highest peak (and no trough)
    assert list(SubPeriodMasker(smooth=1, min_prominence=0.0, rel_prominence=0.9).key_points(e)) == [10]


def test_subperiod_static_window_falls_back_to_fixed_span():
    x = sine_windows(32, 20, amp=0.0) + 0.001 * torch.randn(32, L, 6)  # sensor noise only
    m = time_of(SubPeriodMasker(fallback_len=7)(x, gen()))
    for row in m:
        (r,) = runs(row)
        assert r[1] - r[0] == 7


def test_subperiod_acc_energy_ignores_gyro():
    x = sine_windows(8, 20, amp=0.0)
    x[:, :, 3] = torch.sin(2 * torch.pi * torch.arange(L) / 20)  # gyro swings, acc flat
    m_acc = time_of(SubPeriodMasker(energy="acc", fallback_len=9)(x, gen()))
    assert (m_acc.sum(1) == 9).all()  # fallback: no acc key points
    m_all = time_of(SubPeriodMasker(energy="all", fallback_len=9)(x, gen()))
    assert (m_all.sum(1) == 6).all()  # sin^2 has extrema every 5 samples; inclusive segment = 6 steps


# ---- period level -------------------------------------------------------------------------------------


@pytest.mark.parametrize("signal", ["acc_norm", "energy", "channels"])
@pytest.mark.parametrize("period", [20, 30, 40])
def test_period_masks_one_main_period(signal, period):
    x = sine_windows(32, period, phase=0.7)
    m = time_of(PeriodMasker(signal=signal)(x, gen()))
    for row in m:
        (r,) = runs(row)
        assert r[1] - r[0] == period
    assert len({runs(row)[0][0] for row in m}) > 3  # random start


def test_period_is_clipped_and_static_falls_back():
    pm = PeriodMasker()
    assert (pm.main_period(sine_windows(2, 6).double().numpy()) == 10).all()  # L/12
    assert (pm.main_period(sine_windows(2, 120).double().numpy()) == 60).all()  # L/2
    assert (pm.main_period(sine_windows(2, 20, amp=0.0).double().numpy()) == 60).all()  # flat -> max_period
    noisy = (sine_windows(50, 20, amp=0.0) + 0.01 * torch.randn(50, L, 6)).double().numpy()
    t = pm.main_period(noisy)
    assert ((t >= 10) & (t <= 60)).all()
    assert (
        PeriodMasker(min_period=25, max_period=35).main_period(sine_windows(1, 20).double().numpy()) == 25
    ).all()
    with pytest.raises(ConfigError):
        PeriodMasker(min_period=50, max_period=20).bounds(L)


# ---- shared behaviour ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MASKERS))
def test_maskers_are_deterministic_under_a_seed(name):
    x = sine_windows(16, 24) + 0.2 * torch.randn(16, L, 6, generator=gen(5))
    masker = MASKERS[name]()
    a, b, c = masker(x, gen(3)), masker(x, gen(3)), masker(x, gen(4))
    assert a.dtype == torch.bool and a.shape == x.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_apply_mask_zeroes_with_probability():
    x = torch.randn(400, L, 6) + 5.0
    mask = SpanMasker()(x, gen())
    out = apply_mask(x, mask, gen(1), mask_prob=0.8)
    torch.testing.assert_close(out[~mask], x[~mask])  # unmasked entries never change
    zeroed = ((out == 0) & mask).sum((1, 2)) == mask.sum((1, 2))
    kept = (out == x).all(dim=(1, 2))
    assert (zeroed ^ kept).all()  # each window is either zeroed on its mask or left untouched
    assert 0.7 < zeroed.float().mean() < 0.9
    assert torch.equal(apply_mask(x, mask, gen(), mask_prob=0.0), x)
    assert (apply_mask(x, mask, gen(), mask_prob=1.0)[mask] == 0).all()
    with pytest.raises(ConfigError):
        apply_mask(x, mask, gen(), mask_prob=1.5)
