"""Operations defects around checkpoints and run directories (each reproduced on the old code first):
a manifest of the wrong shape, a missing --resume path, `--resume auto` over only bad checkpoints, a fresh
start over an old run, and two processes writing one run directory."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pretrainkit.core.checkpoint import MANIFEST, MODEL_FILE, latest_valid, list_checkpoints, verify
from pretrainkit.core.data import EpochBatches
from pretrainkit.core.rundir import RunDir
from pretrainkit.core.trainer import TrainConfig, Trainer
from pretrainkit.errors import CheckpointError, PretrainkitError

sys.path.insert(0, str(Path(__file__).parent))
from toy import ToyRegressor, toy_data  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src"


def _train(run_dir, max_steps, resume=None):
    torch.manual_seed(0)
    cfg = TrainConfig(max_steps=max_steps, lr=0.05, ckpt_every=2, progress=False, log_every=1)
    t = Trainer(ToyRegressor(), EpochBatches(toy_data(), 16, seed=1), cfg, run_dir=run_dir)
    t.fit(resume=resume)
    return t


@pytest.mark.parametrize(
    "manifest",
    [
        {"step": 2, "files": ["model.safetensors"]},  # files a list
        {"step": 2},  # files missing
        {"step": 2, "files": {"model.safetensors": {"sha256": "x"}}},  # a file entry without its size
        {"step": 2, "files": {"model.safetensors": "abc"}},  # a file entry that is not a mapping
        {"step": 2, "files": {"../../etc/passwd": {"sha256": "x", "bytes": 1}}},  # a name outside the folder
        ["not", "a", "mapping"],
    ],
)
def test_manifest_of_the_wrong_shape_is_refused_and_skipped(tmp_path, manifest, capsys):
    _train(tmp_path, 4)
    cks = list_checkpoints(tmp_path / "checkpoints")
    (cks[-1][1] / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="manifest"):
        verify(cks[-1][1])
    assert latest_valid(tmp_path / "checkpoints") == cks[-2][1]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "skipping bad checkpoint" in err[0]  # one line, not a two-line Python warning


def test_resume_from_a_missing_path_says_not_found(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        _train(tmp_path / "run", 4, resume=tmp_path / "nonexistent")


def test_resume_auto_with_only_bad_checkpoints_refuses_and_changes_nothing(tmp_path):
    _train(tmp_path, 4)
    for _, p in list_checkpoints(tmp_path / "checkpoints"):
        (p / MODEL_FILE).write_bytes(b"garbage")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match="start over"):
        _train(tmp_path, 4, resume="auto")
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert before == after


def test_a_fresh_start_over_an_old_run_leaves_no_stale_checkpoint_or_metric(tmp_path):
    _train(tmp_path, 8)  # checkpoints 4, 6, 8 and 8 steps of metrics
    _train(tmp_path, 4, resume=None)  # the user asked to start over with a shorter run
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [2, 4]
    steps = [r["step"] for r in RunDir(tmp_path).read_metrics() if "loss" in r]
    assert steps == [1, 2, 3, 4]


def test_a_second_writer_of_a_run_directory_is_refused_with_the_holders_pid(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {str(SRC)!r})
            from pretrainkit.core.rundir import RunDir
            RunDir({str(tmp_path)!r}).lock()
            print("locked", flush=True)
            time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(PretrainkitError, match=rf"pid {holder.pid}\b"):
            RunDir(tmp_path).lock()
    finally:
        holder.kill()
        holder.wait()
    RunDir(tmp_path).lock()  # a lock whose holder died is stale: taken over without asking


def test_the_lock_is_reentrant_within_one_process(tmp_path):
    a, b = RunDir(tmp_path), RunDir(tmp_path)
    a.lock()
    b.lock()  # the trainer and the pipeline of one run share it
    a.unlock()
    b.unlock()
