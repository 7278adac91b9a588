"""Issue 15's protocol pieces on synthetic tasks (rollouts faked): stage lengths set by full fine-tuning's
learning and shared by every other method, the parameter-matched shared LoRA, the second task order, and
task-agnostic evaluation by default."""

import json
import sys
from pathlib import Path

import pytest

from pretrainkit.errors import ConfigError
from pretrainkit.systems.l2m import bench, diagnose, pipeline
from pretrainkit.systems.l2m.config import L2MConfig
from pretrainkit.systems.l2m.methods import pool_matched_rank

sys.path.insert(0, str(Path(__file__).parent))
from test_pipeline import SEQ, _config, _fake_rollout  # the synthetic harness those tests use

CAL = ["continual.until_success=0.7", "continual.check_every=2", "continual.max_steps_per_task=6"]


def _rollout_learned_at(step_of: dict):
    """A fake rollout whose calibration episodes succeed once the method has trained ``step_of[task]``
    steps on its stage (read from the trainer through a counter), the reported ones as ``_fake_rollout``."""

    def fake(actor, task, episodes=10, target_return=0.0, seed=0, **kw):
        r = _fake_rollout(actor, task, episodes, target_return, seed, **kw)
        if seed >= pipeline.CALIBRATION_STARTS:
            step_of["calls"][task] = step_of["calls"].get(task, 0) + 1
            r["success"] = 1.0 if 2 * step_of["calls"][task] >= step_of[task] else 0.0
        return r

    return fake


def test_stage_lengths_come_from_full_fine_tuning_and_are_shared(tmp_path, monkeypatch):
    # hammer is learned after 4 steps (the second check), faucet-close never (the cap, 6)
    monkeypatch.setattr(pipeline, "evaluate_task", _rollout_learned_at({SEQ[0]: 4, SEQ[1]: 99, "calls": {}}))
    cfg = _config(tmp_path, [*CAL, "continual.methods=[ft,lora]"])
    pipeline.pretrain(cfg, 0, progress=False, log=lambda s: None)
    with pytest.raises(ConfigError, match="takes each stage's length from ft's run of seed 0.*missing"):
        pipeline.ContinualRun(cfg, "lora", 0, log=lambda s: None).run()
    ft = pipeline.ContinualRun(cfg, "ft", 0, log=lambda s: None).run()
    assert [s["steps"] for s in ft.stages] == [4, 6]
    assert ft.stages[0]["checks"] == [[2, 0.0], [4, 1.0]] and len(ft.stages[1]["checks"]) == 3
    lora = pipeline.ContinualRun(cfg, "lora", 0, log=lambda s: None).run()
    assert [s["steps"] for s in lora.stages] == [4, 6] and "checks" not in lora.stages[0]
    # a resumed calibrated stage keeps its stopping step (the marker), it does not train on to the cap
    again = pipeline.ContinualRun(cfg, "ft", 0, log=lambda s: None)
    assert again.stage_steps(0) == 4 and again.stage_steps(1) == 6


def test_calibration_episodes_are_not_the_reported_ones(tmp_path, monkeypatch):
    seeds = []

    def spy(actor, task, episodes=10, target_return=0.0, seed=0, **kw):
        seeds.append(seed)
        return _fake_rollout(actor, task, episodes, target_return, seed, **kw)

    monkeypatch.setattr(pipeline, "evaluate_task", spy)
    cfg = _config(tmp_path, [*CAL, "continual.methods=[ft]", "eval.pretrain_tasks=false"])
    pipeline.pretrain(cfg, 0, progress=False, log=lambda s: None)
    pipeline.ContinualRun(cfg, "ft", 0, log=lambda s: None).run()
    reported = {s for s in seeds if s < pipeline.CALIBRATION_STARTS}
    calibration = {s for s in seeds if s >= pipeline.CALIBRATION_STARTS}
    assert reported and calibration
    episodes = cfg.eval.episodes
    assert not {s + i for s in reported for i in range(episodes)} & {
        s + i for s in calibration for i in range(episodes)
    }


def test_pool_sized_lora_has_at_least_the_pools_trainable_parameters(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "evaluate_task", _fake_rollout)
    cfg = _config(tmp_path, ["method.pool_size=2"])
    pipeline.pretrain(cfg, 0, progress=False, log=lambda s: None)
    path = pipeline.backbone_path(cfg, 0)
    l2m = pipeline.build_method("l2m", cfg, path, 0).trainable_parameters()
    big = pipeline.build_method("lora-pool", cfg, path, 0)
    one = pipeline.build_method("lora", cfg, path, 0)
    rank, pool = pool_matched_rank(pipeline.load_backbone(path), cfg.method, len(SEQ))
    assert pool == l2m and big.rank == rank < 16 and one.rank == cfg.method.rank
    per_rank = one.trainable_parameters() / cfg.method.rank
    assert big.trainable_parameters() >= l2m > big.trainable_parameters() - per_rank  # the smallest such rank
    assert big.info() == {"rank": rank, "rank_for_pool_params": rank, "pool_params": l2m}
    # a pool larger than any LoRA on these d=16 layers: capped at full rank, and the cap is stated
    cfg.method.pool_size = 4
    capped = pipeline.build_method("lora-pool", cfg, path, 0)
    assert capped.rank == 16 < capped.info()["rank_for_pool_params"]
    assert capped.trainable_parameters() < capped.info()["pool_params"]


def test_second_order_runs_its_methods_in_their_own_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "evaluate_task", _fake_rollout)
    monkeypatch.setattr(diagnose, "evaluate_task", _fake_rollout)
    cfg = _config(
        tmp_path,
        [
            "continual.methods=[ft,lora,l2m]",
            "bench.second_order=reversed",
            "bench.second_order_methods=[ft,l2m]",
            "bench.bc_reference=true",
            "diagnose.bc.steps=5",
            *CAL,
        ],
    )
    md = bench.run_bench(cfg, out_dir=tmp_path / "results", log=lambda s: None)
    out = json.loads(md.with_suffix(".json").read_text())
    assert set(out["records_order2"]) == {"ft", "l2m"}
    assert out["records_order2"]["ft"]["0"]["tasks"] == [SEQ[1], SEQ[0]]
    assert (tmp_path / "run" / "continual-order2" / "seed-0" / "l2m" / "record.json").is_file()
    h = out["headline"]
    assert set(h["final_mean_success_order2"]) == {"ft", "l2m"} and set(h["trainable_params"]) == {
        "ft",
        "lora",
        "l2m",
    }
    assert h["backbone_pretrain_success"] is not None and set(h["pretrain_retention"]) == {
        "ft",
        "lora",
        "l2m",
    }
    text = md.read_text()
    assert "## Second task order" in text and "## Stage lengths" in text and "frozen params" in text
    assert (
        "BC MLP, state only (reference)" in text and "## The backbone on its own pre-training tasks" in text
    )
    again = bench.rerender(md.with_suffix(".json"), out_dir=tmp_path / "again")
    assert json.loads(again.with_suffix(".json").read_text())["headline"] == h


def test_order_and_stage_options_are_checked(tmp_path):
    one = [f"data.continual_tasks=[{SEQ[0]}]", "bench.second_order=reversed"]
    assert bench.orders(_config(tmp_path, one)) == {"": ["ft", "ewc", "lora", "l2m", "l2m-oracle"]}
    with pytest.raises(ConfigError, match="no second task order.*1 continual task"):
        bench.orders(_config(tmp_path, [*one, "bench.second_order_methods=[ft]"]))
    with pytest.raises(ConfigError, match="bench.second_order"):
        _config(tmp_path, ["bench.second_order=shuffled"])
    with pytest.raises(ConfigError, match="must be among continual.methods"):
        _config(tmp_path, ["continual.until_success=0.5", "continual.methods=[lora,l2m]"])
    with pytest.raises(ConfigError, match="second_order_methods must include continual.calibrate_with"):
        _config(
            tmp_path,
            [*CAL, "bench.second_order=reversed", "bench.second_order_methods=[l2m]"],
        )
    with pytest.raises(ConfigError, match="continual.until_success"):
        _config(tmp_path, ["continual.until_success=1.5"])


def test_l2m_meets_pretraining_tasks_task_agnostically_by_default():
    assert L2MConfig().method.pretrain_eval == "routed"
