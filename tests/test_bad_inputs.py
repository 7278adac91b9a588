"""Every bad input ends in one line on stderr and exit status 2, with no traceback and no change to the run.

One ``pytest.param`` per bad input (paths, configs, checkpoints, data, storage, numeric ranges). Each row
builds its input inside a scratch folder, runs the command line in-process, and checks: exit 2, exactly one
line on stderr starting ``pretrainkit: error:``, no traceback, no user-visible Python warning, the message
names what the row expects, and not one file of the run directory changed (bytes compared, ``.lock``
ignored). The run directories are built once per session and copied per row. Property-style fuzz of the
config parser and of the three data loaders closes the file.
"""

from __future__ import annotations

import gc
import gzip
import json
import pickle
import shutil
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pretrainkit.cli import main
from pretrainkit.errors import PretrainkitError

SAGA_TINY = [
    "--set",
    "pretrain.train.max_steps=1",
    "--set",
    "model.hidden=8",
    "--set",
    "model.ff=8",
    "--set",
    "model.n_layers=1",
    "--set",
    "model.n_heads=2",
    "--set",
    "downstream.head.epochs=1",
    "--set",
    "search.n_trials=1",
    "--set",
    "search.n_startup_trials=1",
    "--set",
    "pretrain.batch_size=4",
    "--set",
    "pretrain.probe_label=null",
]
CRNET_TINY = [
    "--set",
    "model.preset=tiny",
    "--set",
    "data.vocab_size=300",
    "--set",
    "seq_len=32",
    "--no-progress",
    "--method",
    "lowrank",
]
L2M_PRE, L2M_SEQ = ["drawer-close-v3"], ["hammer-v3"]


# ---------------------------------------------------------------------------------------------------
# Run directories, built once per session


def _limu(folder: Path, n=12, length=120, channels=6, label_cols=3, labels=None, data=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    x = (
        np.random.default_rng(0).normal(0, 1, (n, length, channels)).astype(np.float32)
        if data is None
        else data
    )
    np.save(folder / "data_20_120.npy", x)
    if labels is None:
        labels = np.zeros((n, length, label_cols), np.float32)
        labels[:, :, 2] = np.arange(n)[:, None] % 6  # activity (hhar column 2)
        labels[:, :, 0] = np.arange(n)[:, None] % 3  # user
    np.save(folder / "label_20_120.npy", labels)
    return folder


def _l2m_task(folder: Path, task: str, episodes: int = 3, length: int = 8) -> Path:
    g = np.random.default_rng(len(task))
    n = episodes * length
    dones = np.zeros(n, bool)
    dones[length - 1 :: length] = True
    np.savez(
        folder / f"{task}.npz",
        states=g.normal(0, 1, (n, 39)).astype(np.float32),
        actions=g.uniform(-1, 1, (n, 4)).astype(np.float32),
        expert_actions=np.zeros((n, 4), np.float32),
        rewards=np.ones(n, np.float32),
        dones=dones,
        success=np.ones(n, bool),
        task=np.array(task),
        meta_json=np.array(json.dumps({"task": task, "steps": n, "cpu_seconds": 0.1})),
    )
    return folder / f"{task}.npz"


@pytest.fixture(scope="session")
def bases(tmp_path_factory, request) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("bad-input-bases")
    saga = root / "saga"
    saga.mkdir()
    (saga / "config.yaml").write_text("# an earlier run's config: a failed command must not overwrite it\n")
    l2m = root / "l2m"
    (l2m / "data").mkdir(parents=True)
    for t in [*L2M_PRE, *L2M_SEQ]:
        _l2m_task(l2m / "data", t)
    (l2m / "run").mkdir()
    (l2m / "run" / "notes.txt").write_text("an earlier run\n")
    return SimpleNamespace(root=root, saga=saga, l2m=l2m, request=request)


@pytest.fixture(scope="session")
def crnet_base(tmp_path_factory) -> Path:
    """A finished 4-step CR-Net run (checkpoints at 2 and 4, tokenizer, token cache) and its corpus."""
    root = tmp_path_factory.mktemp("bad-input-crnet")
    corpus = root / "corpus"
    corpus.mkdir()
    words = "the sea and the ship sailed on a grey morning while gulls cried over the harbour wall ".split()
    g = np.random.default_rng(0)
    for k in range(3):
        (corpus / f"part{k}.txt").write_text(" ".join(g.choice(words, 1500)) + "\n")
    run = root / "run"
    argv = [
        "crnet",
        "pretrain",
        "--data",
        str(corpus),
        "--out",
        str(run),
        *CRNET_TINY,
        "--set",
        "train.max_steps=4",
        "--set",
        "train.ckpt_every=2",
        "--set",
        "data.val_fraction=0.34",
    ]
    assert main(argv) == 0
    return root


# ---------------------------------------------------------------------------------------------------
# The row check


def _snapshot(run: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _user_warnings(record) -> list[str]:
    # what Python shows a user by default (ResourceWarnings are hidden, and fire at garbage collection, in
    # whichever row happens to run then)
    quiet = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, ResourceWarning)
    return [f"{w.category.__name__}: {w.message}" for w in record if not issubclass(w.category, quiet)]


def check_one_line(capsys, run: Path, call, *needles: str, absent: tuple[str, ...] = ()) -> str:
    capsys.readouterr()
    before = _snapshot(run) if run.exists() else {}
    gc.collect()  # warnings owed by earlier rows' garbage are not this row's
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        rc = call() if callable(call) else main(call)
    err = capsys.readouterr().err.strip()
    shown = _user_warnings(record)
    assert rc == 2, f"exit {rc}; stderr: {err}"
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and err.startswith("pretrainkit: error: "), err
    assert not shown, f"Python warnings shown to the user: {shown}"
    for n in needles:
        assert n in err, f"{n!r} not in: {err}"
    for n in absent:
        assert n not in err, f"{n!r} in: {err}"
    after = _snapshot(run) if run.exists() else {}
    assert after.keys() == before.keys(), f"files added/removed: {set(after) ^ set(before)}"
    assert [k for k in after if after[k] != before[k]] == []
    return err


# ---------------------------------------------------------------------------------------------------
# Rows. Each builder gets ``env`` (run: the run directory copy, tmp: scratch space outside it, crnet: the
# CR-Net base) and returns argv (or a callable returning an exit status); ``needles`` must be in the line.


def saga(verb, *extra):
    return lambda env: ["saga", verb, "--out", str(env.run), *SAGA_TINY, *extra]


def saga_data(folder_fn, verb="finetune", *extra):
    def build(env):
        src = folder_fn(env.tmp)
        return ["saga", verb, "--out", str(env.run), "--data", str(src), *SAGA_TINY, *extra]

    return build


def saga_limu(folder_fn, *extra):
    return saga_data(
        folder_fn,
        "finetune",
        "--set",
        "data.format=limu",
        "--set",
        "data.dataset=hhar",
        "--budget",
        "2",
        *extra,
    )


def crnet(verb, *extra, run_flag="--out"):
    return lambda env: ["crnet", verb, run_flag, str(env.run), *extra]


def crnet_pretrain(*extra):
    return lambda env: [
        "crnet",
        "pretrain",
        "--data",
        str(env.crnet / "corpus"),
        "--out",
        str(env.run),
        *CRNET_TINY,
        "--set",
        "train.max_steps=4",
        "--set",
        "train.ckpt_every=2",
        "--set",
        "data.val_fraction=0.34",
        *extra,
    ]


def crnet_corpus(make, *extra):
    def build(env):  # a new run directory: the base run's checkpoints would refuse another corpus first
        shutil.rmtree(env.run)
        env.run.mkdir()
        return ["crnet", "pretrain", "--data", str(make(env.tmp)), "--out", str(env.run), *CRNET_TINY, *extra]

    return build


def l2m(verb, *extra):
    return lambda env: [
        "l2m",
        verb,
        "--set",
        f"data.dir={env.l2m_data}",
        "--set",
        f"out={env.run}",
        "--set",
        f"data.pretrain_tasks={L2M_PRE}",
        "--set",
        f"data.continual_tasks={L2M_SEQ}",
        "--set",
        "model.d_model=16",
        "--set",
        "model.n_layer=1",
        "--set",
        "model.n_head=2",
        "--set",
        "model.context=3",
        "--set",
        "pretrain.train.max_steps=1",
        *extra,
    ]


def l2m_bad_file(write, verb="pretrain"):
    def build(env):
        write(env.l2m_data / f"{L2M_PRE[0]}.npz")
        return l2m(verb)(env)

    return build


def storage(spec_fn, with_run_db=None, no_driver=False):
    """Storage is checked at config load (SearchConfig.validate), so a bad one fails before any training."""

    def build(env):
        if with_run_db is not None:
            (env.run / "study.db").write_bytes(with_run_db)
        if no_driver:
            env.monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg were not installed
            env.monkeypatch.setitem(sys.modules, "psycopg2", None)
        return saga("finetune", "--set", f"search.storage={spec_fn(env)}")(env)

    return build


# file contents
def empty(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def truncated(path: Path, make) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    make(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def save_npy(arr):
    def make(path):
        with open(path, "wb") as f:
            np.save(f, arr, allow_pickle=True)

    return make


def limu_with(labels=None, data=None, n=12, zero_byte=None, truncate=None, obj=None):
    def make(tmp):
        folder = _limu(tmp / "hhar", n=n, labels=labels, data=data)
        if zero_byte:
            empty(folder / zero_byte)
        if truncate:
            raw = (folder / truncate).read_bytes()
            (folder / truncate).write_bytes(raw[: len(raw) // 2])
        if obj:
            save_npy(np.array([{"a": 1}] * 12, dtype=object))(folder / obj)
        return folder

    return make


def labels_with(value, col=2, n=12):
    lab = np.zeros((n, 120, 3), np.float32)
    lab[:, :, 2] = np.arange(n)[:, None] % 6
    lab[:, :, 0] = np.arange(n)[:, None] % 3
    lab[0, :, col] = value
    return lab


def hapt_npz(kind):
    def make(tmp):
        folder = tmp / "hapt"
        folder.mkdir(parents=True, exist_ok=True)
        p = folder / "hapt_raw_50hz.npz"
        if kind == "empty":
            empty(p)
        elif kind == "truncated":
            truncated(
                p,
                lambda q: np.savez(
                    open(q, "wb"),
                    data=np.zeros((400, 6)),
                    label=np.zeros(400),
                    user=np.zeros(400),
                    exp=np.zeros(400),
                    exp_offsets=np.array([0, 400]),
                ),
            )
        elif kind == "object":
            with open(p, "wb") as f:
                np.savez(
                    f,
                    data=np.array([{"a": 1}], dtype=object),
                    label=np.zeros(1),
                    user=np.zeros(1),
                    exp=np.zeros(1),
                    exp_offsets=np.array([0, 1]),
                )
        return folder

    return make


def hapt_pickle(raw: bytes, name="HAPT.pkl.gz"):
    def make(tmp):
        folder = tmp / "hapt-pkl"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(raw)
        return folder / name

    return make


def corpus_file(name, raw: bytes):
    def make(tmp):
        (tmp / name).write_bytes(raw)
        return tmp / name

    return make


def token_cache(kind):
    def build(env):
        cache = next((env.run / "data").glob("tokens-*.npz"))
        raw = cache.read_bytes()
        cache.write_bytes(b"" if kind == "empty" else raw[: len(raw) // 2])
        return ["crnet", "evaluate", "--run", str(env.run)]

    return build


def corrupt_checkpoints(env):
    from pretrainkit.core.checkpoint import MODEL_FILE, list_checkpoints

    for _, p in list_checkpoints(env.run / "checkpoints"):
        (p / MODEL_FILE).write_bytes(b"garbage")
    return crnet_pretrain("--resume", "auto")(env)


def npz_zip_of_pickles(path: Path) -> None:
    with open(path, "wb") as f:
        np.savez(
            f,
            states=np.array([{"a": 1}], dtype=object),
            actions=np.zeros((1, 4)),
            rewards=np.zeros(1),
            dones=np.ones(1, bool),
        )


def write_truncated_task(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def P(system, build, needles, absent=(), marks=(), id=None):
    return pytest.param(system, build, needles, absent, marks=marks, id=id)


ROWS = [
    # ---- paths
    P("saga", saga_data(lambda t: t / "nope"), ("nope",), id="path-saga-data-missing"),
    P("saga", saga("finetune", "--config", "nosuchprofile"), ("allowed:",), id="path-saga-profile-unknown"),
    P(
        "saga",
        lambda env: ["saga", "finetune", "--out", str(env.run), "--config", str(env.tmp)],
        (),
        id="path-saga-config-is-a-folder",
    ),
    P(
        "saga",
        saga_data(lambda t: empty(t / "x.csv")),
        ("unsupported HAPT file",),
        id="path-saga-data-wrong-suffix",
    ),
    P("crnet", crnet_corpus(lambda t: t / "absent.txt"), ("not found",), id="path-crnet-corpus-missing"),
    P(
        "crnet",
        crnet_corpus(lambda t: empty(t / "c.csv")),
        (".txt or .jsonl",),
        id="path-crnet-corpus-suffix",
    ),
    P(
        "crnet",
        lambda env: ["crnet", "evaluate", "--run", str(env.tmp / "nothing")],
        ("not a CR-Net run",),
        id="path-crnet-evaluate-no-run",
    ),
    P(
        "crnet",
        lambda env: ["crnet", "generate", "--run", str(env.tmp / "nothing")],
        ("not a CR-Net run",),
        id="path-crnet-generate-no-run",
    ),
    P(
        "l2m",
        lambda env: l2m("pretrain")(SimpleNamespace(**{**vars(env), "l2m_data": env.tmp / "none"})),
        ("no dataset",),
        id="path-l2m-data-dir-missing",
    ),
    P("l2m", l2m("pretrain", "--config", "nosuchprofile"), ("allowed",), id="path-l2m-profile-unknown"),
    # ---- configs
    P(
        "saga",
        saga("finetune", "--set", "pretrain.stepz=3"),
        ("pretrain.stepz",),
        id="config-saga-unknown-key",
    ),
    P(
        "saga",
        saga("finetune", "--set", "pretrain.tasks=[saga.point,saga.nope]"),
        ("saga.nope",),
        id="config-saga-unknown-task",
    ),
    P(
        "saga",
        lambda env: [
            "saga",
            "finetune",
            "--out",
            str(env.run),
            "--config",
            str(_write(env.tmp / "bad.yaml", "pretrain: [\n")),
        ],
        ("not valid YAML",),
        id="config-saga-bad-yaml",
    ),
    P(
        "saga",
        lambda env: [
            "saga",
            "finetune",
            "--out",
            str(env.run),
            "--config",
            str(_write(env.tmp / "list.yaml", "- 1\n- 2\n")),
        ],
        ("mapping",),
        id="config-saga-yaml-not-a-mapping",
    ),
    P("saga", saga("finetune", "--set", "pretrain"), ("key.sub=value",), id="config-override-without-equals"),
    P(
        "saga",
        saga("finetune", "--set", "downstream.labels=[colour]"),
        ("colour",),
        id="config-saga-unknown-label",
    ),
    P(
        "saga",
        saga("finetune", "--label", "user", "--split", "subject"),
        ("does not suit",),
        id="config-saga-split-label-mismatch",
    ),
    P(
        "saga",
        saga("finetune", "--set", "downstream.head_restarts=0"),
        ("head_restarts",),
        id="config-saga-head-restarts-0",
    ),
    P(
        "saga",
        saga("finetune", "--set", "downstream.head.metric=recall"),
        ("recall",),
        id="config-saga-head-metric-unknown",
    ),
    P("crnet", crnet_pretrain("--method", "nosuch"), ("unknown method",), id="config-crnet-unknown-method"),
    P("crnet", crnet_pretrain("--set", "train.max_steps=abc"), ("train.max_steps",), id="config-crnet-type"),
    P(
        "crnet",
        crnet_pretrain("--set", "model.rank=4096"),
        ("rank",),
        id="config-crnet-rank-wider-than-layer",
    ),
    P(
        "crnet",
        crnet_pretrain("--set", "seq_len=100000"),
        ("seq_len",),
        id="config-crnet-seq-longer-than-ctx",
    ),
    P("crnet", crnet_pretrain("--set", "train.precision=fp8"), ("fp8",), id="config-crnet-literal"),
    P("l2m", l2m("pretrain", "--set", "model.nope=1"), ("model.nope",), id="config-l2m-unknown-key"),
    P(
        "l2m",
        l2m("pretrain", "--set", f"data.continual_tasks={L2M_PRE}"),
        ("disjoint",),
        id="config-l2m-task-lists-overlap",
    ),
    P("l2m", l2m("routing", "--method", "ft"), ("modulation-pool",), id="config-l2m-routing-method"),
    # ---- numeric ranges
    P(
        "saga",
        saga("finetune", "--set", "pretrain.train.lr=nan"),
        ("pretrain.train.lr",),
        id="range-saga-lr-nan",
    ),
    P("crnet", crnet_pretrain("--set", "train.lr=nan"), ("'train.lr'",), id="range-crnet-lr-nan"),
    P(
        "l2m",
        l2m("pretrain", "--set", "pretrain.train.lr=nan"),
        ("pretrain.train.lr",),
        id="range-l2m-lr-nan",
    ),
    P("crnet", crnet_pretrain("--set", "train.lr=inf"), ("train.lr",), id="range-crnet-lr-inf"),
    P("crnet", crnet_pretrain("--set", "train.lr=-1"), ("train.lr",), id="range-crnet-lr-negative"),
    P(
        "saga",
        saga("finetune", "--set", "pretrain.train.weight_decay=-1"),
        ("pretrain.train.weight_decay",),
        id="range-saga-weight-decay-negative",
    ),
    P(
        "crnet",
        crnet_pretrain("--set", "train.weight_decay=-1"),
        ("train.weight_decay",),
        id="range-crnet-weight-decay-negative",
    ),
    P("crnet", crnet_pretrain("--set", "train.beta1=1.5"), ("train.beta1",), id="range-crnet-beta1"),
    P(
        "l2m",
        l2m("pretrain", "--set", "pretrain.train.beta2=1"),
        ("pretrain.train.beta2",),
        id="range-l2m-beta2",
    ),
    P(
        "crnet",
        crnet_pretrain("--set", "train.ckpt_every=-1"),
        ("train.ckpt_every",),
        id="range-crnet-ckpt-every",
    ),
    P(
        "l2m",
        l2m("pretrain", "--set", "pretrain.train.warmup_steps=-5"),
        ("pretrain.train.warmup_steps",),
        id="range-l2m-warmup-negative",
    ),
    P(
        "crnet",
        crnet_pretrain("--set", "train.warmup_steps=-5"),
        ("train.warmup_steps",),
        id="range-crnet-warmup-negative",
    ),
    P(
        "crnet",
        crnet_pretrain("--set", "train.grad_clip=-1"),
        ("train.grad_clip",),
        id="range-crnet-grad-clip",
    ),
    P(
        "crnet",
        crnet_pretrain("--set", "train.max_steps=0"),
        ("train.max_steps",),
        id="range-crnet-max-steps-0",
    ),
    P(
        "saga",
        saga("finetune", "--set", "pretrain.train.min_lr_ratio=2"),
        ("pretrain.train.min_lr_ratio",),
        id="range-saga-min-lr-ratio",
    ),
    P(
        "saga",
        saga("finetune", "--set", "pretrain.batch_size=0"),
        ("pretrain.batch_size",),
        id="range-saga-batch-size-0",
    ),
    P(
        "saga",
        saga("finetune", "--set", "downstream.head.batch_size=0"),
        ("downstream.head.batch_size",),
        id="range-saga-head-batch-size-0",
    ),
    P(
        "saga",
        saga("finetune", "--set", "downstream.head.lr=nan"),
        ("downstream.head.lr",),
        id="range-saga-head-lr-nan",
    ),
    P("crnet", crnet_pretrain("--set", "batch_size=0"), ("batch_size",), id="range-crnet-batch-size-0"),
    P(
        "l2m",
        l2m("pretrain", "--set", "pretrain.batch_size=0"),
        ("pretrain.batch_size",),
        id="range-l2m-batch-size-0",
    ),
    P("saga", saga("finetune", "--budget", "1"), ("--budget",), id="range-saga-budget-1"),
    P("saga", saga("finetune", "--threads", "0"), ("--threads",), id="range-saga-threads-0"),
    P("crnet", crnet_pretrain("--threads", "-2"), ("--threads",), id="range-crnet-threads-negative"),
    P("crnet", crnet("generate", "--top-k", "0", run_flag="--run"), ("--top-k",), id="range-crnet-top-k-0"),
    P(
        "crnet",
        crnet("generate", "--max-new-tokens", "-1", run_flag="--run"),
        ("--max-new-tokens",),
        id="range-crnet-max-new-tokens",
    ),
    P(
        "crnet",
        crnet("generate", "--temperature", "0", run_flag="--run"),
        ("--temperature",),
        id="range-crnet-temperature-0",
    ),
    P("saga", saga("finetune", "--weights", "1,2"), ("--weights",), id="range-saga-weights-count"),
    P(
        "saga",
        saga("finetune", "--set", "downstream.val_fraction=1"),
        ("val_fraction",),
        id="range-saga-val-frac",
    ),
    # ---- checkpoints
    P(
        "crnet",
        crnet_pretrain("--resume", "/nonexistent/ckpt"),
        ("not found",),
        absent=("incomplete write",),
        id="ckpt-crnet-resume-missing-path",
    ),
    P(
        "crnet",
        lambda env: crnet_pretrain("--resume", str(env.run / "data"))(env),
        ("checkpoint",),
        id="ckpt-crnet-resume-not-a-checkpoint",
    ),
    P(
        "crnet",
        crnet_pretrain("--resume", "none"),
        ("already holds checkpoints",),
        id="ckpt-crnet-fresh-over-old",
    ),
    P(
        "crnet",
        lambda env: crnet_pretrain("--method", "full")(env),
        ("method",),
        id="ckpt-crnet-resume-other-method",
    ),
    P("crnet", corrupt_checkpoints, ("start over",), id="ckpt-crnet-only-bad-checkpoints"),
    P(
        "crnet",
        crnet("evaluate", "--checkpoint", "/nonexistent/step-2", run_flag="--run"),
        ("not found",),
        id="ckpt-crnet-evaluate-missing-checkpoint",
    ),
    P(
        "crnet",
        lambda env: ["crnet", "export-hf", "--run", str(env.run), "--to", str(env.tmp / "hf")],
        ("full-rank",),
        id="ckpt-crnet-export-lowrank",
    ),
    P("l2m", l2m("pretrain", "--resume", "/nonexistent/ckpt"), ("not found",), id="ckpt-l2m-resume-missing"),
    # ---- data: Saga (LIMU folders, HAPT npz, HAPT pickle)
    P(
        "saga",
        saga_limu(limu_with(zero_byte="data_20_120.npy")),
        ("data_20_120.npy",),
        absent=("allow_pickle",),
        id="data-saga-limu-empty-data-npy",
    ),
    P(
        "saga",
        saga_limu(limu_with(zero_byte="label_20_120.npy")),
        ("label_20_120.npy",),
        id="data-saga-limu-empty-label-npy",
    ),
    P(
        "saga",
        saga_limu(limu_with(truncate="data_20_120.npy")),
        ("data_20_120.npy",),
        id="data-saga-limu-truncated-npy",
    ),
    P(
        "saga",
        saga_limu(limu_with(obj="label_20_120.npy")),
        ("label_20_120.npy",),
        absent=("allow_pickle",),
        id="data-saga-limu-pickled-npy",
    ),
    P("saga", saga_limu(limu_with(n=0)), ("no windows",), id="data-saga-limu-zero-windows"),
    P("saga", saga_limu(limu_with(labels=labels_with(-1))), ("negative",), id="data-saga-negative-label"),
    P(
        "saga",
        saga_limu(limu_with(labels=labels_with(1000))),
        ("1000",),
        id="data-saga-label-outside-classes",
    ),
    P(
        "saga",
        saga_limu(limu_with(data=np.full((12, 120, 6), np.nan, np.float32))),
        ("non-finite",),
        id="data-saga-limu-nan",
    ),
    P(
        "saga",
        saga_limu(limu_with(data=np.zeros((12, 100, 6), np.float32))),
        ("100",),
        id="data-saga-limu-wrong-shape",
    ),
    P("saga", saga_data(hapt_npz("empty")), ("hapt_raw_50hz.npz",), id="data-saga-hapt-empty-npz"),
    P("saga", saga_data(hapt_npz("truncated")), ("hapt_raw_50hz.npz",), id="data-saga-hapt-truncated-npz"),
    P(
        "saga",
        saga_data(hapt_npz("object")),
        ("hapt_raw_50hz.npz",),
        absent=("allow_pickle",),
        id="data-saga-hapt-pickled-npz",
    ),
    P(
        "saga",
        saga_data(hapt_pickle(gzip.compress(pickle.dumps({1: [1, 2]})))),
        ("HAPT.pkl.gz",),
        id="data-saga-pickle-malformed",
    ),
    P(
        "saga",
        saga_data(hapt_pickle(gzip.compress(pickle.dumps({"a": 1}))[:20])),
        ("HAPT.pkl.gz",),
        id="data-saga-pickle-truncated",
    ),
    P("saga", saga_data(hapt_pickle(b"")), ("HAPT.pkl.gz",), id="data-saga-pickle-empty"),
    # ---- data: CR-Net (corpus, token cache)
    P("crnet", crnet_corpus(corpus_file("e.txt", b"")), ("empty",), id="data-crnet-empty-corpus"),
    P("crnet", crnet_corpus(corpus_file("b.txt", b"\xff\xfe\x00bad")), ("UTF-8",), id="data-crnet-non-utf8"),
    P("crnet", crnet_corpus(corpus_file("j.jsonl", b"{not json\n")), ("JSON",), id="data-crnet-bad-jsonl"),
    P("crnet", token_cache("truncated"), ("token cache",), id="data-crnet-truncated-token-cache"),
    P("crnet", token_cache("empty"), ("token cache",), id="data-crnet-empty-token-cache"),
    # ---- data: L2M (task files)
    P("l2m", l2m_bad_file(empty), ("drawer-close-v3.npz",), id="data-l2m-empty-npz"),
    P("l2m", l2m_bad_file(write_truncated_task), ("drawer-close-v3.npz",), id="data-l2m-truncated-npz"),
    P(
        "l2m",
        l2m_bad_file(npz_zip_of_pickles),
        ("drawer-close-v3.npz",),
        absent=("allow_pickle",),
        id="data-l2m-pickled-npz",
    ),
    P(
        "l2m",
        l2m_bad_file(lambda p: np.savez(open(p, "wb"), states=np.zeros((3, 39)))),
        ("missing keys",),
        id="data-l2m-missing-keys",
    ),
    P("l2m", l2m_bad_file(empty, verb="collect"), ("drawer-close-v3.npz",), id="data-l2m-collect-empty-npz"),
    P(
        "l2m",
        l2m_bad_file(write_truncated_task, verb="collect"),
        ("drawer-close-v3.npz",),
        id="data-l2m-collect-truncated-npz",
    ),
    # ---- storage (search)
    P(
        "saga",
        storage(lambda env: "postgresql://user:secret@localhost:1/db", no_driver=True),
        ("driver",),
        absent=("secret",),
        id="storage-postgres-without-driver",
    ),
    P(
        "saga",
        storage(lambda env: "sqlite:////proc/no/study.db"),
        ("sqlite",),
        id="storage-sqlite-unwritable",
    ),
    P(
        "saga",
        storage(lambda env: f"sqlite:///{env.run / 'study.db'}", with_run_db=b"not a database" * 100),
        ("study.db",),
        id="storage-corrupted-study-db",
    ),
    P(
        "saga",
        storage(lambda env: f"journal:{_write(env.tmp / 'afile', 'x')}/x.log"),
        ("is a file",),
        id="storage-journal-parent-is-a-file",
    ),
    P(
        "saga",
        storage(lambda env: f"journal:{env.tmp / 'nonexistent' / 'dir' / 'x.log'}"),
        ("does not exist",),
        id="storage-journal-missing-folder",
    ),
    P("saga", storage(lambda env: "redis://localhost"), ("storage",), id="storage-unknown-scheme"),
]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("system,build,needles,absent", ROWS)
def test_bad_input_is_one_line_and_exit_2(
    system, build, needles, absent, bases, request, capsys, tmp_path, monkeypatch
):
    env = SimpleNamespace(
        tmp=tmp_path / "scratch",
        run=tmp_path / "run",
        crnet=None,
        l2m_data=tmp_path / "l2m-data",
        monkeypatch=monkeypatch,
    )
    env.tmp.mkdir()
    if system == "saga":
        shutil.copytree(bases.saga, env.run)
    elif system == "crnet":
        base = request.getfixturevalue("crnet_base")
        env.crnet = base
        shutil.copytree(base / "run", env.run)
    elif system == "l2m":
        shutil.copytree(bases.l2m / "data", env.l2m_data)
        shutil.copytree(bases.l2m / "run", env.run)
    call = build(env)
    check_one_line(capsys, env.run, call, *needles, absent=absent)
    if "journal-missing-folder" in request.node.name:
        assert not (env.tmp / "nonexistent").exists(), "a journal path created folders"


def test_the_suite_has_at_least_60_rows():
    assert len(ROWS) >= 60


# ---------------------------------------------------------------------------------------------------
# Messages that used to mislead


def test_ctrl_c_hint_names_only_options_the_verb_has(monkeypatch, capsys):
    from pretrainkit.systems.saga import cli as saga_cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(saga_cli, "_run", interrupted)
    assert main(["saga", "finetune"]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume" not in err, err
    from pretrainkit.systems.crnet import cli as crnet_cli

    monkeypatch.setattr(crnet_cli, "_pretrain", interrupted)
    assert main(["crnet", "pretrain"]) == 130
    assert "--resume auto" in capsys.readouterr().err


def test_the_verbs_take_the_options_the_readme_says():
    from pretrainkit.cli import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "Every verb takes" not in readme
    out = {
        "saga": ["demo", "pretrain", "search-weights", "finetune", "evaluate", "bench"],
        "crnet": ["pretrain", "sweep", "bench"],
        "l2m": ["collect", "pretrain", "continual", "evaluate"],
    }
    for system, verbs in out.items():
        parser = build_parser(load=system)
        for verb in verbs:
            assert f"`{verb}`" in readme, verb
            args = parser.parse_args([system, verb, "--config", "quick", "--set", "a.b=1", "--out", "/x/run"])
            assert args.out == "/x/run" and args.config == "quick", (system, verb)
    parser = build_parser(load="crnet")
    for verb in ("evaluate", "generate", "export-hf"):
        assert parser.parse_args(
            ["crnet", verb, "--run", "/x/run", *(["--to", "/y"] * (verb == "export-hf"))]
        ).run
    parser = build_parser(load="l2m")
    for verb in ("routing", "bench"):
        assert parser.parse_args(["l2m", verb, "--config", "quick", "--set", "out=/x"]).set == ["out=/x"]


def test_a_skipped_checkpoint_is_one_line_not_a_python_warning(tmp_path, crnet_base, capsys):
    from pretrainkit.core.checkpoint import MODEL_FILE, list_checkpoints

    run = tmp_path / "run"
    shutil.copytree(crnet_base / "run", run)
    newest = list_checkpoints(run / "checkpoints")[-1][1]
    (newest / MODEL_FILE).write_bytes(b"garbage")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert main(["crnet", "evaluate", "--run", str(run)]) == 0
    assert not _user_warnings(record)
    err = [line for line in capsys.readouterr().err.splitlines() if "skip" in line.lower()]
    assert len(err) == 1, err


def test_bench_help_prints_help_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRETRAINKIT_RESULTS", str(tmp_path / "results"))
    with pytest.raises(SystemExit) as e:
        main(["bench", "core", "--help"])
    assert e.value.code == 0 and "usage" in capsys.readouterr().out
    assert not any(tmp_path.rglob("*.json")) and not any(tmp_path.rglob("*.md"))


# ---------------------------------------------------------------------------------------------------
# Property-style fuzz: the config parser and the three loaders end in success or a PretrainkitError


FUZZ_CASES = 30


def _bytes_cases(seed: int, valid: bytes) -> list[bytes]:
    """Random bytes, truncations and single-byte corruptions of a valid file."""
    g = np.random.default_rng(seed)
    out = []
    for i in range(FUZZ_CASES):
        kind = i % 3
        if kind == 0:
            out.append(g.bytes(int(g.integers(0, 400))))
        elif kind == 1:
            out.append(valid[: int(g.integers(0, len(valid)))])
        else:
            raw = bytearray(valid)
            for _ in range(int(g.integers(1, 8))):
                raw[int(g.integers(0, len(raw)))] = int(g.integers(0, 256))
            out.append(bytes(raw))
    return out


def _wrong_dtypes() -> list[np.ndarray]:
    base = np.zeros((4, 120, 6))
    return [
        base.astype(np.complex64),
        base.astype(bool),
        base.astype("U3"),
        base.astype(np.int8),
        np.zeros(4, dtype=[("a", "f4"), ("b", "i4")]),
        np.zeros((4, 120)),
        np.zeros(()),
        np.zeros((0, 120, 6)),
    ]


def _succeeds_or_one_line(fn) -> None:
    try:
        fn()
    except PretrainkitError as e:
        assert "\n" not in str(e) and "allow_pickle" not in str(e), str(e)


def test_fuzz_config_parser(tmp_path):
    from pretrainkit.core.config import load_config
    from pretrainkit.systems.crnet.config import CRNetConfig
    from pretrainkit.systems.l2m.config import L2MConfig
    from pretrainkit.systems.saga.config import SagaConfig

    valid = b"pretrain:\n  batch_size: 4\n  train:\n    lr: 0.001\n    max_steps: 3\nout: runs/x\n"
    g = np.random.default_rng(1)
    keys = [
        "pretrain.train.lr",
        "pretrain.batch_size",
        "train.beta1",
        "train.warmup_steps",
        "seq_len",
        "out",
        "model.hidden",
        "downstream.budgets",
        "data.dir",
        "pretrain",
        "train",
        "model.rank",
    ]
    values = [
        "nan",
        "-1",
        "1e400",
        "[1, 2",
        "{a: 1}",
        "''",
        "null",
        "true",
        "0",
        "1.5",
        "x" * 50,
        "[]",
        "-.inf",
    ]
    for i, raw in enumerate(_bytes_cases(1, valid)):
        path = tmp_path / f"c{i}.yaml"
        path.write_bytes(raw)
        overrides = [f"{g.choice(keys)}={g.choice(values)}" for _ in range(int(g.integers(0, 3)))]
        for cls in (SagaConfig, CRNetConfig, L2MConfig):
            _succeeds_or_one_line(lambda: load_config(cls, path, overrides))


def test_fuzz_saga_loaders(tmp_path):
    from pretrainkit.systems.saga.data import load_limu_folder
    from pretrainkit.systems.saga.hapt import load_hapt

    folder = _limu(tmp_path / "hhar")
    valid_data = (folder / "data_20_120.npy").read_bytes()
    for i, raw in enumerate(_bytes_cases(2, valid_data)):
        (folder / ("data_20_120.npy" if i % 2 else "label_20_120.npy")).write_bytes(raw)
        _succeeds_or_one_line(lambda: load_limu_folder(folder))
        _limu(folder)
    for arr in _wrong_dtypes():
        np.save(folder / "data_20_120.npy", arr)
        _succeeds_or_one_line(lambda: load_limu_folder(folder))
    hapt = tmp_path / "hapt"
    hapt.mkdir()
    npz = hapt / "hapt_raw_50hz.npz"
    with open(npz, "wb") as f:
        np.savez(
            f,
            data=np.zeros((400, 6), np.float32),
            label=np.zeros(400),
            user=np.ones(400),
            exp=np.ones(400),
            exp_offsets=np.array([0, 400]),
        )
    for raw in _bytes_cases(3, npz.read_bytes()):
        npz.write_bytes(raw)
        _succeeds_or_one_line(lambda: load_hapt(hapt))
    pkl = tmp_path / "HAPT.pkl.gz"
    for raw in _bytes_cases(4, gzip.compress(pickle.dumps({1: [[1.0, 2.0]], 2: []}))):
        pkl.write_bytes(raw)
        _succeeds_or_one_line(lambda: load_hapt(pkl))


def test_fuzz_crnet_loaders(tmp_path, crnet_base):
    from pretrainkit.systems.crnet.data import read_corpus, read_token_cache

    valid = next((crnet_base / "run" / "data").glob("tokens-*.npz")).read_bytes()
    cache = tmp_path / "tokens-x.npz"
    for raw in _bytes_cases(5, valid):
        cache.write_bytes(raw)
        _succeeds_or_one_line(lambda: read_token_cache(cache))
    for i, raw in enumerate(_bytes_cases(6, b'{"text": "a line of text"}\n' * 20)):
        f = tmp_path / f"c{i}.{'jsonl' if i % 2 else 'txt'}"
        f.write_bytes(raw)
        _succeeds_or_one_line(lambda: read_corpus(f, "text", "train", 0, False))


def test_fuzz_l2m_loaders(tmp_path):
    from pretrainkit.systems.l2m.collect import _record_from_file
    from pretrainkit.systems.l2m.data import load_task_dataset

    path = _l2m_task(tmp_path, "hammer-v3")
    valid = path.read_bytes()
    for raw in _bytes_cases(7, valid):
        path.write_bytes(raw)
        _succeeds_or_one_line(lambda: load_task_dataset(path))
        _succeeds_or_one_line(lambda: _record_from_file(path))
    for arr in _wrong_dtypes():
        with open(path, "wb") as f:
            np.savez(f, states=arr, actions=np.zeros((4, 4)), rewards=np.zeros(4), dones=np.ones(4, bool))
        _succeeds_or_one_line(lambda: load_task_dataset(path))
