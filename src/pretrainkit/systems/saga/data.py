"""Saga's IMU data layer: fixed-length windows with integer labels, loaders, seeded splits and label budgets.

Windows keep the units of the LIMU-BERT npy files (acc in m/s^2, gyro in rad/s); the model divides acc by
9.8. HAPT ("UCI") loading lives in ``hapt.py`` and is re-exported here (``load_hapt``,
``compare_with_reference``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pretrainkit.core.arrays import read_npy
from pretrainkit.core.splits import (
    group_split,
    random_split,
    time_split_within_group,  # noqa: F401 - Saga's pipeline imports it from here
)
from pretrainkit.errors import DataError

IMU6_CHANNELS = ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")
IMU9_CHANNELS = IMU6_CHANNELS + ("mag_x", "mag_y", "mag_z")

# Label columns of LIMU-BERT's label_20_120.npy files (dataset/data_config.json). HHAR's activity is
# column 2; column 0 is the user (LIMU-BERT issue #7).
LIMU_LABEL_COLUMNS: dict[str, dict[str, int]] = {
    "hhar": {"user": 0, "model": 1, "activity": 2},
    "uci": {"activity": 0, "user": 1},
    "motion": {"activity": 0, "user": 1},
    "shoaib": {"activity": 0, "position": 1, "user": 2},
}
LIMU_ACTIVITY_NAMES: dict[str, list[str]] = {
    "hhar": ["bike", "sit", "downstairs", "upstairs", "stand", "walk"],
    "uci": ["walking", "upstairs", "downstairs", "sitting", "standing", "lying"],
    "motion": ["downstairs", "upstairs", "sitting", "standing", "walking", "jogging"],
    "shoaib": ["walking", "sitting", "standing", "jogging", "biking", "upstairs", "downstairs"],
}
# Our shared HAPT folder is LIMU-BERT's "uci" layout.
_DATASET_ALIASES = {"hapt": "uci"}


@dataclass
class IMUWindows:
    """N fixed-length IMU windows ``x`` (N, L, C) float32 with K integer label columns ``labels`` (N, K).

    ``experiment`` and ``start`` (N,) locate each window in its recording (``start`` = index on the
    recording's 20 Hz clock, -1 if unknown); they order windows in time for time-based splits.
    """

    x: np.ndarray
    labels: np.ndarray
    label_names: list[str]
    class_names: dict[str, list[str]] = field(default_factory=dict)
    rate_hz: float = 20.0
    channels: tuple[str, ...] = IMU6_CHANNELS
    source: str = ""
    experiment: np.ndarray | None = None
    start: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.label_names = list(self.label_names)
        self.channels = tuple(self.channels)
        if self.x.ndim != 3:
            raise DataError(f"IMUWindows.x must have shape (N, L, C), got {self.x.shape}")
        n = self.x.shape[0]
        if self.labels.ndim == 1:
            self.labels = self.labels[:, None]
        if self.labels.ndim != 2 or self.labels.shape[0] != n:
            raise DataError(f"IMUWindows.labels must have shape ({n}, K), got {self.labels.shape}")
        if len(self.label_names) != self.labels.shape[1]:
            raise DataError(
                f"IMUWindows has {self.labels.shape[1]} label columns but {len(self.label_names)} label names"
            )
        if len(self.channels) != self.x.shape[2]:
            raise DataError(
                f"IMUWindows has {self.x.shape[2]} channels but {len(self.channels)} channel names"
            )
        if self.labels.size and self.labels.min() < 0:
            col = int(np.flatnonzero((self.labels < 0).any(axis=0))[0])
            raise DataError(
                f"label {self.label_names[col]!r} has negative values (e.g. "
                f"{int(self.labels[:, col].min())}); class labels must be 0, 1, 2, ..."
            )
        for name, classes in self.class_names.items():
            if name in self.label_names and self.labels.size:
                top = int(self.labels[:, self.label_names.index(name)].max())
                if top >= len(classes):
                    raise DataError(
                        f"label {name!r} has value {top}, outside its {len(classes)} classes "
                        f"({', '.join(classes)}): values must be 0..{len(classes) - 1}"
                    )
        for name in ("experiment", "start"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value, dtype=np.int64)
                if value.shape != (n,):
                    raise DataError(f"IMUWindows.{name} must have shape ({n},), got {value.shape}")
                setattr(self, name, value)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def window(self) -> int:
        """Steps per window (L)."""
        return int(self.x.shape[1])

    def label(self, name: str) -> np.ndarray:
        """The label column called ``name`` as an int64 array (N,)."""
        if name not in self.label_names:
            raise DataError(f"unknown label {name!r}; this data has labels {self.label_names}")
        return self.labels[:, self.label_names.index(name)]

    def num_classes(self, name: str) -> int:
        """Number of classes of label ``name`` (named classes if known, else max + 1)."""
        if name in self.class_names:
            return len(self.class_names[name])
        column = self.label(name)
        return int(column.max()) + 1 if column.size else 0

    def subset(self, idx: np.ndarray | Sequence[int]) -> IMUWindows:
        """A new IMUWindows holding the windows at ``idx`` (integer indices or a boolean mask)."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise DataError(f"boolean subset mask must have shape ({len(self)},), got {idx.shape}")
        elif idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise DataError(f"subset indices must be integers or a boolean mask, got dtype {idx.dtype}")
        else:
            idx = idx.astype(np.int64)
        return IMUWindows(
            x=self.x[idx],
            labels=self.labels[idx],
            label_names=list(self.label_names),
            class_names={k: list(v) for k, v in self.class_names.items()},
            rate_hz=self.rate_hz,
            channels=self.channels,
            source=self.source,
            experiment=None if self.experiment is None else self.experiment[idx],
            start=None if self.start is None else self.start[idx],
        )


def concat_windows(parts: Sequence[IMUWindows]) -> IMUWindows:
    """Concatenate windows with the same shape, labels, channels and rate (e.g. a TRAIN and a TEST file)."""
    if not parts:
        raise DataError("concat_windows needs at least one IMUWindows")
    first = parts[0]
    for p in parts[1:]:
        same = (p.label_names, p.channels, p.rate_hz, p.x.shape[1:]) == (
            first.label_names,
            first.channels,
            first.rate_hz,
            first.x.shape[1:],
        )
        if not same:
            raise DataError("concat_windows: parts differ in labels, channels, rate or window shape")

    def meta(name: str) -> np.ndarray | None:
        values = [getattr(p, name) for p in parts]
        return None if any(v is None for v in values) else np.concatenate(values)

    return IMUWindows(
        x=np.concatenate([p.x for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        label_names=list(first.label_names),
        class_names={k: list(v) for k, v in first.class_names.items()},
        rate_hz=first.rate_hz,
        channels=first.channels,
        source="+".join(dict.fromkeys(p.source for p in parts)),
        experiment=meta("experiment"),
        start=meta("start"),
    )


# ---------------------------------------------------------------------------------------------------
# LIMU-BERT npy folders


def _load_npy(path: Path) -> np.ndarray:
    return read_npy(path)


def load_limu_folder(
    path: str | Path,
    label_columns: Mapping[str, int] | None = None,
    dataset: str | None = None,
    rate_hz: int = 20,
    window: int = 120,
) -> IMUWindows:
    """Read LIMU-BERT's ``data_{rate}_{window}.npy`` (N, L, F) and ``label_{rate}_{window}.npy`` (N, L, K).

    Label columns are named by ``label_columns`` ({name: column}), else by the known map of ``dataset``
    (hhar, uci, motion, shoaib; default: the folder name if known), else ``label_0..label_{K-1}``.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"LIMU data folder not found: {path}")
    data_path, label_path = path / f"data_{rate_hz}_{window}.npy", path / f"label_{rate_hz}_{window}.npy"
    for p in (data_path, label_path):
        if not p.is_file():
            raise DataError(
                f"{p.name} missing in {path}: a LIMU folder needs {data_path.name} and {label_path.name}"
            )
    data, labels = _load_npy(data_path), _load_npy(label_path)

    if data.ndim != 3 or data.shape[1] != window:
        raise DataError(
            f"{data_path.name} has shape {data.shape}; expected (N, L={window}, F) with F channels"
        )
    n, _, f = data.shape
    if n == 0:
        raise DataError(
            f"{data_path.name} in {path} holds no windows (shape {data.shape}); nothing to train on"
        )
    if labels.ndim != 3 or labels.shape[1] != window:
        raise DataError(
            f"{label_path.name} has shape {labels.shape}; expected (N, L={window}, K) label columns"
        )
    if labels.shape[0] != n:
        raise DataError(f"{data_path.name} has {n} windows but {label_path.name} has {labels.shape[0]}")
    if not np.issubdtype(data.dtype, np.number) or not np.issubdtype(labels.dtype, np.number):
        raise DataError(f"{path}: data and labels must be numeric, got {data.dtype} and {labels.dtype}")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).any(axis=(1, 2)).sum())
        raise DataError(f"{data_path.name} has non-finite values (NaN/inf) in {bad} windows")
    if not np.isfinite(labels).all():
        raise DataError(f"{label_path.name} has non-finite values (NaN/inf)")

    k = labels.shape[2]
    key = _DATASET_ALIASES.get(dataset or path.name.lower(), dataset or path.name.lower())
    if dataset is not None and key not in LIMU_LABEL_COLUMNS and label_columns is None:
        raise DataError(
            f"unknown LIMU dataset {dataset!r}; known: {sorted(LIMU_LABEL_COLUMNS)} (or give label_columns)"
        )
    if label_columns is None:
        label_columns = LIMU_LABEL_COLUMNS.get(key, {f"label_{i}": i for i in range(k)})
    for name, col in label_columns.items():
        if not isinstance(col, (int, np.integer)) or not 0 <= col < k:
            raise DataError(
                f"label column {name!r}={col} out of range: {label_path.name} has K={k} columns (0..{k - 1})"
            )

    cols = [int(c) for c in label_columns.values()]
    first = labels[:, 0, cols]
    varying = (labels[:, :, cols] != first[:, None, :]).any(axis=(1, 2))
    if varying.any():
        raise DataError(
            f"{label_path.name}: labels change within {int(varying.sum())} windows (first: window "
            f"{int(np.flatnonzero(varying)[0])}); every step of a window must carry the same labels"
        )
    if (first != np.round(first)).any():
        raise DataError(f"{label_path.name}: labels must be whole numbers")

    class_names = {}
    if "activity" in label_columns and key in LIMU_ACTIVITY_NAMES:
        class_names["activity"] = list(LIMU_ACTIVITY_NAMES[key])
    channels = {6: IMU6_CHANNELS, 9: IMU9_CHANNELS}.get(f, tuple(f"ch_{i}" for i in range(f)))
    return IMUWindows(
        x=data.astype(np.float32),
        labels=first.astype(np.int64),
        label_names=list(label_columns),
        class_names=class_names,
        rate_hz=float(rate_hz),
        channels=channels,
        source=f"limu:{path}",
    )


# ---------------------------------------------------------------------------------------------------
# BasicMotions (sktime / UEA .ts)


def _read_ts(path: Path) -> tuple[np.ndarray, list[str], list[str]]:
    """Parse an equal-length multivariate sktime .ts file → (x (N, L, C), class label per series, class names)."""
    if not path.is_file():
        raise DataError(f"BasicMotions file missing: {path}")
    header: dict[str, str] = {}
    series: list[np.ndarray] = []
    labels: list[str] = []
    in_data = False
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise DataError(f"{path.name}:{lineno}: expected a @header line before @data")
            key, _, value = line[1:].partition(" ")
            if key.lower() == "data":
                in_data = True
            else:
                header[key.lower()] = value.strip()
            continue
        fields = line.split(":")
        try:
            dims = [[float(v) for v in f.split(",")] for f in fields[:-1]]
        except ValueError:
            raise DataError(f"{path.name}:{lineno}: series values must be comma-separated numbers") from None
        if len({len(d) for d in dims}) > 1:
            lengths = sorted({len(d) for d in dims})
            raise DataError(f"{path.name}:{lineno}: series has dimensions of different lengths {lengths}")
        series.append(np.array(dims, dtype=np.float64).reshape(len(dims), -1))
        labels.append(fields[-1].strip())
    if not in_data:
        raise DataError(f"{path.name}: no @data section")
    try:
        n_dims, length = int(header["dimensions"]), int(header["serieslength"])
    except (KeyError, ValueError):
        raise DataError(f"{path.name}: header needs integer @dimensions and @seriesLength") from None
    class_names = header.get("classlabel", "").split()
    if not class_names or class_names[0].lower() != "true":
        raise DataError(f"{path.name}: header needs '@classLabel true <names...>'")
    class_names = class_names[1:]
    if not series:
        raise DataError(f"{path.name}: @data section is empty")
    for i, (s, lab) in enumerate(zip(series, labels)):
        if s.shape != (n_dims, length):
            raise DataError(
                f"{path.name}: series {i} has shape {s.shape} (dims, steps); header says ({n_dims}, {length})"
            )
        if not np.isfinite(s).all():
            raise DataError(f"{path.name}: series {i} has missing or non-finite values")
        if lab not in class_names:
            raise DataError(f"{path.name}: series {i} has class {lab!r}; allowed: {class_names}")
    return np.stack(series).transpose(0, 2, 1), labels, class_names


def load_basicmotions(folder: str | Path) -> tuple[IMUWindows, IMUWindows]:
    """Read BasicMotions_{TRAIN,TEST}.ts → (train, test) IMUWindows (100 steps, 10 Hz, 6 ch, 4 classes).

    Two objects keep the archive's fixed split; ``concat_windows`` joins them. Values are as in the file
    (acc appears gravity-free; units are not stated by the archive), channel order acc xyz, gyro xyz.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"BasicMotions folder not found: {folder}")
    out = []
    names: list[str] | None = None
    for split in ("TRAIN", "TEST"):
        x, labels, class_names = _read_ts(folder / f"BasicMotions_{split}.ts")
        if names is not None and class_names != names:
            raise DataError(f"BasicMotions TRAIN and TEST list different classes: {names} vs {class_names}")
        names = class_names
        if x.shape[2] != 6:
            raise DataError(
                f"BasicMotions_{split}.ts has {x.shape[2]} dimensions; expected 6 (acc xyz, gyro xyz)"
            )
        y = np.array([class_names.index(lab) for lab in labels], dtype=np.int64)
        out.append(
            IMUWindows(
                x=x,
                labels=y[:, None],
                label_names=["activity"],
                class_names={"activity": list(class_names)},
                rate_hz=10.0,
                channels=IMU6_CHANNELS,
                source=f"basicmotions:{split.lower()}:{folder}",
            )
        )
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------------
# Splits: the generic ones live in pretrainkit.core.splits; these are Saga's names for them.

random_window_split = random_split  # LIMU-BERT's split of all windows (it uses seed 3431)


def subject_split(
    users: np.ndarray, seed: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Subject-disjoint split: whole users to train/val/test; fractions count users, not windows."""
    return group_split(users, seed, fractions, unit="users")


def __getattr__(name: str) -> Any:
    # HAPT loading lives in hapt.py (which imports this module); re-export lazily to avoid an import cycle.
    if name in ("load_hapt", "load_hapt_raw", "compare_with_reference", "HaptRaw"):
        from pretrainkit.systems.saga import hapt

        return getattr(hapt, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
