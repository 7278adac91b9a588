"""Saga's four masking levels: sensor, point (LIMU span), sub-period (energy extrema) and period (FFT).

Every masker is a callable ``masker(x, generator) -> mask`` with ``x`` a (B, L, C) tensor in normalised units
(acc in g, gyro in rad/s: what the encoder sees) and ``mask`` a bool tensor (B, L, C), True = masked. The mask
is element-wise because the sensor level hides single channels. Randomness comes only from the torch
``generator`` (one draw seeds a numpy generator), so a seeded generator gives the same masks.

The Saga paper body was not available: sub-period and period details below are our choices (see each class),
all configurable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.ndimage import uniform_filter1d
from scipy.signal import find_peaks

from pretrainkit.errors import ConfigError, DataError
from pretrainkit.systems.saga.model import check_acc_channels


def numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    """A numpy generator seeded by one draw from ``generator`` (or torch's global RNG when None)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return np.random.default_rng(seed)


def _as_numpy(x: torch.Tensor) -> np.ndarray:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise DataError(
            f"maskers expect a (batch, steps, channels) tensor, got {getattr(x, 'shape', type(x))}"
        )
    return x.detach().to("cpu", torch.float64).numpy()


def _segment_mask(start: np.ndarray, length: np.ndarray, seq_len: int) -> np.ndarray:
    """(B, L) bool: True on [start, start + length) per row."""
    pos = np.arange(seq_len)[None, :]
    return (pos >= start[:, None]) & (pos < (start + length)[:, None])


def _to_mask(time_mask: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a (B, L) time mask over all channels -> (B, L, C) bool tensor on x's device."""
    m = torch.from_numpy(np.ascontiguousarray(time_mask))
    return m[:, :, None].expand(-1, -1, x.shape[-1]).contiguous().to(x.device)


def apply_mask(
    x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None, mask_prob: float = 0.8
) -> torch.Tensor:
    """LIMU's corruption: per window, with probability ``mask_prob`` zero the masked entries, else leave x as is.

    The masked entries are still the prediction targets in both cases (LIMU mask.json: mask_prob 0.8).
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ConfigError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if mask.shape != x.shape:
        raise DataError(f"mask shape {tuple(mask.shape)} differs from input shape {tuple(x.shape)}")
    zero_window = torch.rand(x.shape[0], generator=generator) < mask_prob
    return x.masked_fill(mask & zero_window.to(x.device)[:, None, None], 0.0)


class SpanMasker:
    """Point level = LIMU-BERT's span mask, vectorised over the batch with the same per-window process.

    n_pred = round(L * ratio) steps; each draw picks a span length from a geometric(p) law truncated to
    1..max_gram (renormalised), capped at the remaining budget, and a uniform anchor, rejected if already
    masked; the span is clipped before step L-1, so the last step is never masked (as in LIMU). All channels
    of a chosen step are masked.
    """

    def __init__(self, ratio: float = 0.15, max_gram: int = 10, p: float = 0.2):
        if not 0.0 < ratio < 1.0 or max_gram < 1 or not 0.0 < p <= 1.0:
            raise ConfigError(
                f"span masker needs 0 < ratio < 1, max_gram >= 1, 0 < p <= 1; got {ratio}, {max_gram}, {p}"
            )
        self.ratio, self.max_gram, self.p = float(ratio), int(max_gram), float(p)
        probs = p * (1.0 - p) ** np.arange(self.max_gram)
        self.span_probs = probs / probs.sum()

    def n_pred(self, seq_len: int) -> int:
        """Number of masked steps per window, LIMU's ``max(1, int(round(L * ratio)))``."""
        return max(1, round(seq_len * self.ratio))

    def time_mask(
        self, batch: int, seq_len: int, rng: np.random.Generator, spans: list | None = None
    ) -> np.ndarray:
        """(B, L) bool span mask with exactly n_pred True per row; ``spans`` (if given) collects each accepted
        draw as (rows, start, stop) arrays, for inspection."""
        goal = self.n_pred(seq_len)
        if goal > seq_len - 1:
            raise ConfigError(f"span ratio {self.ratio} asks for {goal} of the {seq_len - 1} maskable steps")
        mask = np.zeros((batch, seq_len), dtype=bool)
        count = np.zeros(batch, dtype=np.int64)
        pos = np.arange(seq_len)[None, :]
        while True:
            rows = np.flatnonzero(count < goal)
            if rows.size == 0:
                return mask
            n = rng.choice(self.max_gram, size=rows.size, p=self.span_probs) + 1
            n = np.minimum(n, goal - count[rows])
            anchor = rng.integers(0, seq_len, size=rows.size)
            ok = ~mask[rows, anchor]  # LIMU rejects anchors that are already masked
            rows, n, anchor = rows[ok], n[ok], anchor[ok]
            end = np.minimum(anchor + n, seq_len - 1)
            if spans is not None:
                spans.append((rows, anchor, end))
            mask[rows] |= (pos >= anchor[:, None]) & (pos < end[:, None])
            count[rows] = mask[rows].sum(axis=1)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b, seq_len, _ = x.shape
        return _to_mask(self.time_mask(b, seq_len, numpy_rng(generator)), x)


class SensorMasker:
    """Sensor level: hide one sensor (``unit="sensor"``: acc xyz or gyro xyz) or one axis (``unit="axis"``)
    over the whole window, chosen uniformly per window.

    Sensors are consecutive groups of ``group_size`` channels (6 ch -> acc 0-2, gyro 3-5). The third-party
    summary of Saga says "one IMU axis"; the default follows it (1/6 of the values masked).
    """

    def __init__(self, unit: str = "axis", group_size: int = 3):
        if unit not in ("sensor", "axis"):
            raise ConfigError(f"sensor masker unit must be 'sensor' or 'axis', got {unit!r}")
        if group_size < 1:
            raise ConfigError(f"group_size must be >= 1, got {group_size}")
        self.unit, self.group_size = unit, int(group_size)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b, seq_len, c = x.shape
        if self.unit == "sensor" and c % self.group_size:
            raise DataError(f"{c} channels do not split into sensors of {self.group_size} channels")
        unit_of_channel = np.arange(c) // self.group_size if self.unit == "sensor" else np.arange(c)
        n_units = int(unit_of_channel[-1]) + 1
        pick = numpy_rng(generator).integers(0, n_units, size=b)
        chan = torch.from_numpy(unit_of_channel[None, :] == pick[:, None])  # (B, C)
        return chan[:, None, :].expand(b, seq_len, c).contiguous().to(x.device)


def energy_signal(x: np.ndarray, energy: str = "all", acc_channels: Sequence[int] = (0, 3)) -> np.ndarray:
    """IMU energy e_t = sum of squared (normalised) channels: all channels or the accelerometer only. (B, L)."""
    if energy == "all":
        return (x**2).sum(axis=-1)
    if energy == "acc":
        return (x[:, :, acc_channels[0] : acc_channels[1]] ** 2).sum(axis=-1)
    raise ConfigError(f"energy must be 'all' or 'acc', got {energy!r}")


class SubPeriodMasker:
    """Sub-period level: mask the samples between two consecutive key points of the energy signal.

    Our choices (the paper gives none): energy = sum of squared normalised channels (``energy="all"``, or
    ``"acc"``), smoothed by a ``smooth``-sample moving average (edges repeated); key points = local maxima and
    minima (scipy ``find_peaks`` on e and -e) at least ``min_distance`` samples apart among their own kind and
    with prominence >= max(``min_prominence``, ``rel_prominence`` * (max e - min e)). The absolute floor (in
    g^2 + (rad/s)^2) rejects sensor noise: on UCI-HAPT at the defaults, walking windows give ~25 key points
    (5-6 steps apart, about half a step) and 80-90 % of sit/stand/lie windows give fewer than 2. One consecutive pair (k_i, k_i+1) is chosen
    uniformly and steps k_i..k_i+1 *inclusive* are masked on all channels. Fallback when fewer than 2 key
    points (static windows): a uniformly placed span of ``fallback_len`` steps.
    """

    def __init__(
        self,
        energy: str = "all",
        smooth: int = 3,
        min_distance: int = 3,
        min_prominence: float = 0.1,
        rel_prominence: float = 0.1,
        fallback_len: int = 10,
        acc_channels: Sequence[int] = (0, 3),
    ):
        if energy not in ("all", "acc"):
            raise ConfigError(f"energy must be 'all' or 'acc', got {energy!r}")
        if smooth < 1 or min_distance < 1 or fallback_len < 1:
            raise ConfigError(
                f"smooth, min_distance and fallback_len must be >= 1, got {smooth}, {min_distance}, {fallback_len}"
            )
        if min_prominence < 0 or rel_prominence < 0:
            raise ConfigError(f"prominence thresholds must be >= 0, got {min_prominence}, {rel_prominence}")
        self.energy, self.smooth, self.min_distance = energy, int(smooth), int(min_distance)
        self.min_prominence, self.rel_prominence = float(min_prominence), float(rel_prominence)
        self.fallback_len, self.acc_channels = int(fallback_len), tuple(acc_channels)

    def smoothed_energy(self, x: np.ndarray) -> np.ndarray:
        """(B, L) energy after the moving average."""
        e = energy_signal(x, self.energy, self.acc_channels)
        return uniform_filter1d(e, self.smooth, axis=1, mode="nearest") if self.smooth > 1 else e

    def key_points(self, e: np.ndarray) -> np.ndarray:
        """Sorted indices of the accepted maxima and minima of one energy row (L,)."""
        prom = max(self.min_prominence, self.rel_prominence * float(e.max() - e.min()))
        prom = prom if prom > 0 else None  # scipy: None = no prominence filter
        peaks, _ = find_peaks(e, distance=self.min_distance, prominence=prom)
        troughs, _ = find_peaks(-e, distance=self.min_distance, prominence=prom)
        return np.union1d(peaks, troughs)

    def time_mask(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        b, seq_len, c = x.shape
        if self.energy == "acc":
            check_acc_channels(self.acc_channels, c)
        fallback_len = min(self.fallback_len, seq_len)
        e = self.smoothed_energy(x)
        u = rng.random(b)  # one uniform per window drives either choice
        start = np.empty(b, dtype=np.int64)
        length = np.empty(b, dtype=np.int64)
        for i in range(b):
            kp = self.key_points(e[i])
            if kp.size >= 2:
                j = min(int(u[i] * (kp.size - 1)), kp.size - 2)
                start[i], length[i] = kp[j], kp[j + 1] - kp[j] + 1
            else:
                start[i] = min(int(u[i] * (seq_len - fallback_len + 1)), seq_len - fallback_len)
                length[i] = fallback_len
        return _segment_mask(start, length, seq_len)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return _to_mask(self.time_mask(_as_numpy(x), numpy_rng(generator)), x)


class PeriodMasker:
    """Period level: mask one main period T = round(1 / f_max) samples at a uniform start (all channels).

    f_max = the non-DC FFT bin of largest amplitude of a mean-removed 1-D signal (``signal``):
    ``"acc_norm"`` (default) |acc| including gravity, orientation-free and keeping the step frequency;
    ``"energy"`` sum of squared channels; ``"channels"`` per-channel mean removal and the amplitude spectra
    summed over channels. (Squaring *detrended* channels would double the frequency, so energy and acc_norm
    keep gravity and remove the mean afterwards.) ``n_fft`` > L zero-pads for a finer period grid.
    T is clipped to [min_period, max_period] (defaults L/12 and L/2). Static windows have no period: their
    argmax is noise and the clipping is the fallback; a numerically flat signal gives T = max_period.
    """

    def __init__(
        self,
        signal: str = "acc_norm",
        min_period: int | None = None,
        max_period: int | None = None,
        n_fft: int | None = None,
        acc_channels: Sequence[int] = (0, 3),
    ):
        if signal not in ("acc_norm", "energy", "channels"):
            raise ConfigError(f"period signal must be 'acc_norm', 'energy' or 'channels', got {signal!r}")
        self.signal, self.min_period, self.max_period = signal, min_period, max_period
        self.n_fft, self.acc_channels = n_fft, tuple(acc_channels)

    def bounds(self, seq_len: int) -> tuple[int, int]:
        """(min_period, max_period) for windows of ``seq_len`` steps."""
        lo = self.min_period if self.min_period is not None else max(1, round(seq_len / 12))
        hi = self.max_period if self.max_period is not None else max(1, seq_len // 2)
        if not 1 <= lo <= hi <= seq_len:
            raise ConfigError(f"need 1 <= min_period <= max_period <= {seq_len}, got {lo}, {hi}")
        return int(lo), int(hi)

    def main_period(self, x: np.ndarray) -> np.ndarray:
        """Clipped main period in samples per window, (B,) int."""
        _, seq_len, c = x.shape
        n_fft = self.n_fft or seq_len
        if n_fft < 2:
            raise ConfigError(f"n_fft must be >= 2, got {n_fft}")
        if self.signal == "channels":
            s = x - x.mean(axis=1, keepdims=True)
            amp = np.abs(np.fft.rfft(s, n=n_fft, axis=1)).sum(axis=-1)
        else:
            if self.signal == "acc_norm":
                check_acc_channels(self.acc_channels, c)
                s = np.linalg.norm(x[:, :, self.acc_channels[0] : self.acc_channels[1]], axis=-1)
            else:
                s = (x**2).sum(axis=-1)
            s = s - s.mean(axis=1, keepdims=True)
            amp = np.abs(np.fft.rfft(s, n=n_fft, axis=1))
        amp = amp[:, 1:]  # drop DC
        k = amp.argmax(axis=1) + 1
        lo, hi = self.bounds(seq_len)
        period = np.clip(np.rint(n_fft / k), lo, hi).astype(np.int64)
        flat = amp.max(axis=1) <= 1e-9 * max(1.0, float(np.abs(x).max(initial=0.0))) * seq_len
        period[flat] = hi
        return period

    def time_mask(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        b, seq_len, _ = x.shape
        period = self.main_period(x)
        start = np.floor(rng.random(b) * (seq_len - period + 1)).astype(np.int64)
        return _segment_mask(start, period, seq_len)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return _to_mask(self.time_mask(_as_numpy(x), numpy_rng(generator)), x)


MASKERS = {"span": SpanMasker, "sensor": SensorMasker, "subperiod": SubPeriodMasker, "period": PeriodMasker}
