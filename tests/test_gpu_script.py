"""scripts/gpu/run_all.sh: the dry run writes every part's results (and nothing in docs/results), flags parse,
a hung part is killed at its limit and a failed part still gets its results file."""

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu" / "run_all.sh"
HEADLINE = {
    "crnet-gpu": [
        f"tokens_per_s_{m}" for m in ("full", "lowrank", "cola", "lora", "relora", "galore", "crnet")
    ]
    + ["peak_mib_full", "peak_mib_crnet"],
    "core-gpu": [
        "peak_bf16_tflops",
        "matmul_tflops_measured",
        "tokens_per_s_eager",
        "tokens_per_s_compiled",
        "mfu_eager",
        "mfu_compiled",
    ],
    "l2m-gpu": ["pretrain_windows_per_s", "pretrain_steps", "continual_windows_per_s", "continual_steps"],
    "saga-gpu": ["steps_per_task", "tasks_ok", "windows_per_s_mean", "trained_on"],
}


def _driver():
    spec = importlib.util.spec_from_file_location("gpu_profile", REPO / "scripts" / "gpu" / "gpu_profile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_dry_run_writes_every_part_and_leaves_docs_results_alone(tmp_path):
    before = _snapshot(REPO / "docs" / "results")
    out = tmp_path / "results"
    t = time.monotonic()
    r = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert time.monotonic() - t < 240
    for name, keys in HEADLINE.items():
        data = json.loads((out / f"{name}.json").read_text())
        head = data["headline"]
        assert head["status"] == "ok", (name, head["status"], data.get("log_tail"))
        assert head["dry_run"] is True and head["inputs"] == "synthetic"
        assert set(keys) <= set(head), (name, sorted(set(keys) - set(head)))
        assert data["provenance"]["command"].startswith("scripts/gpu/run_all.sh --dry-run")
        assert data["provenance"]["machine"]["device"] == "cpu"
        md = (out / f"{name}.md").read_text()
        assert "dry run" in md and "## Headline" in md
    crnet = json.loads((out / "crnet-gpu.json").read_text())["headline"]
    assert all(crnet[f"tokens_per_s_{m}"] > 0 for m in ("full", "crnet", "galore"))
    core = json.loads((out / "core-gpu.json").read_text())
    runs = [row for row in core["rows"] if row["kind"] == "mfu"]
    assert [row["compiled"] for row in runs] == [False, True]
    assert runs[0]["loss"] == pytest.approx(runs[1]["loss"], rel=1e-4)  # compiled = the same model and step
    assert _snapshot(REPO / "docs" / "results") == before


def _bash(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *args], capture_output=True, text=True, env=_env(), check=False)


def test_script_flags():
    assert _bash("-n", str(SCRIPT)).returncode == 0
    h = _bash(str(SCRIPT), "--help")
    assert h.returncode == 0 and "--dry-run" in h.stdout and "--out DIR" in h.stdout
    bad = _bash(str(SCRIPT), "--no-such-flag")
    assert bad.returncode == 2 and "unknown option" in bad.stderr
    no_out = _bash(str(SCRIPT), "--dry-run")
    assert no_out.returncode == 2 and "--out" in no_out.stderr


def test_driver_refuses_docs_results_in_a_dry_run_and_unknown_parts():
    d = _driver()
    assert d.main(["--dry-run", "--out", str(REPO / "docs" / "results")]) == 2
    assert d.main(["--dry-run", "--out", "x", "--parts", "crnet,nope"]) == 2


def test_guard_kills_a_hung_part_and_reports_a_crash():
    d = _driver()
    lines: list[str] = []
    t = time.monotonic()
    hang = "import time; print('started', flush=True); time.sleep(60)"
    status, tail = d.run_guarded([sys.executable, "-c", hang], 2.0, log=lines.append)
    assert status.startswith("timeout") and time.monotonic() - t < 20
    assert tail == ["started"] == lines
    status, tail = d.run_guarded(
        [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], 30.0, log=lambda s: None
    )
    assert status == "error: exit 3" and tail == ["boom"]


def test_a_failed_part_still_writes_its_results(tmp_path):
    d = _driver()
    d.write_part("l2m", [], "timeout: killed after 90 s", ["last words"], tmp_path, True, "cmd", None)
    data = json.loads((tmp_path / "l2m-gpu.json").read_text())
    assert (
        data["headline"]["status"].startswith("timeout")
        and data["headline"]["pretrain_windows_per_s"] is None
    )
    assert data["log_tail"] == ["last words"] and "last words" in (tmp_path / "l2m-gpu.md").read_text()
    rows = [
        {"kind": "method", "method": "full", "tokens_per_s": 5.0, "steps": 2},
        {"kind": "method", "method": "galore", "error": "RuntimeError: x"},
    ]
    d.write_part("crnet", rows, "ok", [], tmp_path, True, "cmd", "abc1234")
    head = json.loads((tmp_path / "crnet-gpu.json").read_text())["headline"]
    assert head["status"] == "partial: galore: RuntimeError: x"
    assert head["tokens_per_s_full"] == 5.0 and head["tokens_per_s_galore"] is None
    # the report is drawn from the stored JSON alone: drawn again, the same headline
    assert d.main(["--rerender", str(tmp_path / "crnet-gpu.json")]) == 0
    again = json.loads((tmp_path / "crnet-gpu.json").read_text())
    assert again["headline"] == head and again["kind"] == "gpu.crnet"
    assert "re-rendered" in (tmp_path / "crnet-gpu.md").read_text()


def test_sized_steps_fits_the_budget():
    d = _driver()
    assert d.sized_steps(100.0, 10.0, cap=50000) == 750  # 25 % margin
    assert d.sized_steps(100.0, 10.0, cap=300) == 300
    assert d.sized_steps(None, 10.0, cap=300) == 20
    assert d.sized_steps(0.1, 10.0, cap=300) == 20


def test_the_gpu_run_configs_load_with_the_paper_shapes(tmp_path):
    """What only the GPU run uses (its overrides of the paper profiles) must be valid before a device call."""
    d = _driver()
    ctx = d.Ctx("crnet", False, tmp_path / "rows.jsonl", tmp_path / "work")
    assert ctx.device == "cuda" and ctx.budget == d.BUDGET_S["crnet"]
    cfg, _ = d.crnet_setup(ctx, d.CRNET_GPU_SETS)
    assert (cfg.model.preset, cfg.seq_len, cfg.batch_size, cfg.train.max_steps) == ("60m", 256, 64, 200)
    assert cfg.train.precision == "bf16" and cfg.data.vocab_size == 32000
    l2m = d.l2m_config(ctx, "main", 3000, 500)
    assert (l2m.model.d_model, l2m.model.n_layer, len(l2m.data.pretrain_tasks)) == (512, 6, 40)
    assert (l2m.pretrain.train.max_steps, l2m.continual.steps_per_task, l2m.method.pool_size) == (
        3000,
        500,
        30,
    )
    saga = d.saga_config(ctx, 700)
    assert (saga.pretrain.batch_size, saga.model.hidden, saga.pretrain.train.max_steps) == (128, 72, 700)
    assert saga.pretrain.tasks == ["saga.sensor", "saga.point", "saga.subperiod", "saga.period"]
    assert sum(d.BUDGET_S.values()) <= 420  # with each part's start-up, one 10-minute device call with margin


def test_results_record_the_command_and_commit_given(tmp_path, monkeypatch):
    from pretrainkit.core import results

    monkeypatch.setattr(results, "git_commit", lambda: "unknown")  # a copy without .git (the device machine)
    results.write_results(
        "x", {"a": 1}, "", {}, out_dir=tmp_path, command="scripts/gpu/run_all.sh", commit="abc1234"
    )
    prov = json.loads((tmp_path / "x.json").read_text())["provenance"]
    assert (prov["command"], prov["git_commit"]) == ("scripts/gpu/run_all.sh", "abc1234")
    assert "`scripts/gpu/run_all.sh`" in (tmp_path / "x.md").read_text()
    monkeypatch.setattr(results, "git_commit", lambda: "def5678")  # git knows better than the argument
    results.write_results("x", {"a": 1}, "", {}, out_dir=tmp_path, commit="abc1234")
    prov = json.loads((tmp_path / "x.json").read_text())["provenance"]
    assert prov["git_commit"] == "def5678" and prov["command"].startswith("pretrainkit")
