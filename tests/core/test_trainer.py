import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pretrainkit.core.checkpoint import MODEL_FILE, latest_valid, list_checkpoints, load_weights
from pretrainkit.core.data import EpochBatches
from pretrainkit.core.trainer import TrainConfig, Trainer, lr_factor
from pretrainkit.errors import CheckpointError, NonFiniteLossError

sys.path.insert(0, str(Path(__file__).parent))
from toy import ToyRegressor, toy_data  # noqa: E402

HERE = Path(__file__).parent
PY = sys.executable


class _Stop(Exception):
    pass


def _stop_at(n):
    def hook(trainer, step):
        if step == n:
            raise _Stop

    return hook


def _train(run_dir, max_steps, resume=None, stop_at=None, **kw):
    torch.manual_seed(0)
    cfg = TrainConfig(max_steps=max_steps, lr=0.05, ckpt_every=2, progress=False, log_every=1, **kw)
    hooks = [_stop_at(stop_at)] if stop_at else []
    t = Trainer(ToyRegressor(), EpochBatches(toy_data(), 16, seed=1), cfg, run_dir=run_dir, step_hooks=hooks)
    try:
        t.fit(resume=resume)
    except _Stop:
        pass
    return t


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(100, cfg) == pytest.approx(0.1)
    assert lr_factor(55, cfg) == pytest.approx(0.55)


def test_training_reduces_loss(tmp_path):
    t = _train(tmp_path, 60)
    recs = t.run_dir.read_metrics()
    assert recs[-1]["loss"] < 0.7 * recs[0]["loss"]
    assert (tmp_path / "plots" / "loss.png").is_file()


def test_resume_in_process_equals_uninterrupted(tmp_path):
    full = _train(tmp_path / "a", 10)
    _train(tmp_path / "b", 10, stop_at=7)  # dies after checkpoint 6, with step 7 half done
    resumed = _train(tmp_path / "b", 10, resume="auto")
    for (k, a), b in zip(full.raw_model.state_dict().items(), resumed.raw_model.state_dict().values()):
        assert torch.equal(a, b), k
    steps = [r["step"] for r in resumed.run_dir.read_metrics() if "loss" in r]
    assert steps == list(range(1, 11))  # the log has no duplicate or missing steps after a resume


def test_resume_after_sigkill_gives_same_weights(tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run([PY, HERE / "kill_worker.py", ref, "12", "0"], check=True, capture_output=True)
    proc = subprocess.Popen(
        [PY, HERE / "kill_worker.py", killed, "12", "0.3"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not any(s >= 4 for s, _ in list_checkpoints(killed / "checkpoints")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = max(s for s, _ in list_checkpoints(killed / "checkpoints"))
    assert done < 12, "the run finished before it was killed"
    subprocess.run([PY, HERE / "kill_worker.py", killed, "12", "0"], check=True, capture_output=True)
    a = load_weights(ref / "checkpoints" / "step-00000012" / MODEL_FILE)
    b = load_weights(killed / "checkpoints" / "step-00000012" / MODEL_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list((killed / "checkpoints").glob(".*tmp*")), "a temporary checkpoint was left behind"


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest"])
def test_corrupted_newest_checkpoint_is_refused_and_previous_used(tmp_path, damage, capsys):
    _train(tmp_path, 6)
    cks = list_checkpoints(tmp_path / "checkpoints")
    newest = cks[-1][1]
    f = newest / MODEL_FILE
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:-10])
    elif damage == "flip":
        data = bytearray(f.read_bytes())
        data[-5] ^= 0xFF
        f.write_bytes(bytes(data))
    else:
        (newest / "manifest.json").unlink()
    assert latest_valid(tmp_path / "checkpoints") == cks[-2][1]
    assert "skipping bad checkpoint" in capsys.readouterr().err


def test_corrupt_weights_file_gives_checkpoint_error(tmp_path):
    p = tmp_path / "w.safetensors"
    p.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_weights(p)


class _Exploding(ToyRegressor):
    def forward(self, batch):
        loss, m = super().forward(batch)
        self.calls = getattr(self, "calls", 0) + 1
        return (loss * math.inf if self.calls > 4 else loss), m


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    cfg = TrainConfig(max_steps=10, lr=0.05, ckpt_every=2, progress=False)
    t = Trainer(_Exploding(), EpochBatches(toy_data(), 16), cfg, run_dir=tmp_path)
    with pytest.raises(NonFiniteLossError, match="at step 4"):
        t.fit()
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [2, 4]
    assert latest_valid(tmp_path / "checkpoints") is not None


def test_grad_accumulation_equals_big_batch():
    def run(bs, accum):
        torch.manual_seed(0)
        cfg = TrainConfig(max_steps=3, lr=0.05, grad_accum=accum, progress=False, schedule="constant")
        t = Trainer(ToyRegressor(), EpochBatches(toy_data(), bs * accum if accum == 1 else bs, seed=1), cfg)
        t.fit()
        return t.raw_model.state_dict()

    # 2 micro-batches of 16 in order == the same 32 examples? Only when the stream yields the same examples:
    # EpochBatches(batch 32) takes perm[0:32], two batches of 16 take perm[0:16], perm[16:32] of the same perm.
    a, b = run(32, 1), run(16, 2)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def _torchrun(parallel, out, run_dir, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        PY,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        str(HERE / "dist_worker.py"),
        parallel,
        str(out),
        str(run_dir),
    ]
    for _attempt in range(2):  # one retry for a launcher-level crash of gloo on a busy shared CPU
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
        if r.returncode == 0:
            break
    assert r.returncode == 0, r.stderr[-3000:]
    return load_weights(out)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_process_gloo_equals_single_process(tmp_path, parallel):
    single = _torchrun("none", tmp_path / "single.safetensors", tmp_path / "r1", nproc=1)
    multi = _torchrun(parallel, tmp_path / "multi.safetensors", tmp_path / "r2", nproc=2)
    assert single.keys() == multi.keys()
    for k in single:
        torch.testing.assert_close(multi[k], single[k], rtol=1e-5, atol=1e-6)
    # the distributed run also wrote a checkpoint that the single-process loader can read
    assert (tmp_path / "r2" / "checkpoints" / "step-00000006" / MODEL_FILE).is_file()


def test_eval_hooks_run_periodically_and_are_logged(tmp_path):
    calls = []

    def probe(trainer, step):
        calls.append(step)
        return {"probe_acc": 0.5 + step / 100}

    torch.manual_seed(0)
    cfg = TrainConfig(max_steps=6, lr=0.05, eval_every=2, progress=False, log_every=1)
    t = Trainer(ToyRegressor(), EpochBatches(toy_data(), 16), cfg, run_dir=tmp_path, eval_hooks=[probe])
    out = t.fit()
    assert calls == [2, 4, 6] and out["probe_acc"] == pytest.approx(0.56)
    logged = [r["eval/probe_acc"] for r in t.run_dir.read_metrics() if "eval/probe_acc" in r]
    assert logged == pytest.approx([0.52, 0.54, 0.56])
    assert t.raw_model.training  # the hook's eval() is undone
