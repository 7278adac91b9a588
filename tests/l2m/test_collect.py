"""Scripted-expert collection: file layout, resumability, atomic writes, summary."""

import json

import numpy as np
import pytest

from pretrainkit.errors import ConfigError
from pretrainkit.systems.l2m.collect import SUMMARY_NAME, collect, collect_task, task_file
from pretrainkit.systems.l2m.data import load_task_dataset

pytest.importorskip("metaworld")


def test_collect_one_task_layout_and_resume(tmp_path):
    stale = tmp_path / ".reach-v3.npz.tmp999"  # left behind by a killed run
    tmp_path.mkdir(exist_ok=True)
    stale.write_bytes(b"partial")
    summary = collect(
        ["reach-v3"], tmp_path, episodes_per_task=2, noise_levels=(0.0, 0.3), horizon=25, progress=False
    )
    f = task_file(tmp_path, "reach-v3")
    with np.load(f, allow_pickle=False) as z:
        assert z["states"].shape == (50, 39) and z["states"].dtype == np.float32
        assert z["actions"].shape == (50, 4) and np.abs(z["actions"]).max() <= 1.0
        assert np.flatnonzero(z["dones"]).tolist() == [24, 49]
        assert z["episode_lengths"].tolist() == [25, 25]
        np.testing.assert_allclose(z["episode_noise"], [0.0, 0.3])
        # Noise-free episode executes the clean expert action; the noisy one does not.
        np.testing.assert_array_equal(z["actions"][:25], z["expert_actions"][:25])
        assert not np.allclose(z["actions"][25:], z["expert_actions"][25:])
        assert z["episode_success"].tolist() == [z["success"][:25].any(), z["success"][25:].any()]
        assert str(z["task"]) == "reach-v3"
    rec = summary["tasks"]["reach-v3"]
    assert rec["expert_success"] == float(summary["expert_success"]["reach-v3"])
    assert set(rec["success_by_noise"]) == {"0", "0.3"} and rec["steps"] == 50
    assert (
        summary["last_run"]["collected"] == ["reach-v3"]
        and summary["last_run"]["env_steps_per_s_per_core"] > 0
    )
    assert json.loads((tmp_path / SUMMARY_NAME).read_text())["tasks"]["reach-v3"]["episodes"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [SUMMARY_NAME, "reach-v3.npz"]  # no temp files
    assert len(load_task_dataset(f)) == 50

    mtime = f.stat().st_mtime_ns
    again = collect(
        ["reach-v3"], tmp_path, episodes_per_task=2, noise_levels=(0.0, 0.3), horizon=25, progress=False
    )
    assert again["last_run"]["skipped"] == ["reach-v3"] and again["last_run"]["collected"] == []
    assert f.stat().st_mtime_ns == mtime and again["last_run"]["skipped_with_other_settings"] == []
    third = collect(["reach-v3"], tmp_path, episodes_per_task=3, horizon=25, progress=False)
    assert third["last_run"]["skipped_with_other_settings"] == ["reach-v3"]
    assert again["tasks"]["reach-v3"]["expert_success"] == rec["expert_success"]


def test_collect_task_is_deterministic(tmp_path):
    a = collect_task("push-v3", tmp_path / "a.npz", episodes=1, noise_levels=(0.1,), seed=7, horizon=10)
    b = collect_task("push-v3", tmp_path / "b.npz", episodes=1, noise_levels=(0.1,), seed=7, horizon=10)
    assert a["steps"] == b["steps"] == 10
    with np.load(tmp_path / "a.npz") as za, np.load(tmp_path / "b.npz") as zb:
        np.testing.assert_array_equal(za["actions"], zb["actions"])
        np.testing.assert_array_equal(za["states"], zb["states"])


def test_collect_parallel_workers(tmp_path):
    s = collect(
        ["reach-v3", "window-close-v3"], tmp_path, episodes_per_task=1, horizon=5, workers=2, progress=False
    )
    assert set(s["last_run"]["collected"]) == {"reach-v3", "window-close-v3"}
    assert task_file(tmp_path, "window-close-v3").is_file() and task_file(tmp_path, "reach-v3").is_file()


def test_collect_rejects_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="unknown Meta-World task"):
        collect(["nope-v3"], tmp_path)
    with pytest.raises(ConfigError, match="episodes_per_task"):
        collect(["reach-v3"], tmp_path, episodes_per_task=0)
    with pytest.raises(ConfigError, match="noise_levels"):
        collect(["reach-v3"], tmp_path, noise_levels=(-0.1,))
