"""The L2M harness end to end on synthetic task files, with closed-loop rollouts faked (no simulator)."""

import json
import sys
from pathlib import Path

import pytest
import torch

from pretrainkit.adapt.continual import ContinualRecord
from pretrainkit.cli import main
from pretrainkit.core.checkpoint import save_weights
from pretrainkit.core.config import load_config
from pretrainkit.errors import ConfigError, DataError
from pretrainkit.systems.l2m import bench, pipeline, routing
from pretrainkit.systems.l2m.config import L2MConfig

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_tasks import write_task

PRE, SEQ = ["drawer-close-v3"], ["hammer-v3", "faucet-close-v3"]


def _write_task(path, task: str, offset: float, episodes: int = 5, length: int = 16) -> None:
    write_task(path, task, offset, episodes, length, gain=1.0)


def _fake_rollout(
    actor, task, episodes=10, target_return=0.0, seed=0, device="cpu", stop_on_success=False, **kw
):
    """Acts once through the method's actor (so routing and key tallies run), returns a rollout record."""
    K, A = actor.cfg.context, actor.cfg.act_dim
    g = torch.Generator().manual_seed(seed)
    a = actor.act(
        torch.randn(episodes, K, 39, generator=g),
        torch.zeros(episodes, K),
        torch.zeros(episodes, K, A),
        torch.arange(K).repeat(episodes, 1),
        torch.ones(episodes, K, dtype=torch.bool),
    )
    success = float((a[:, 0] > 0).float().mean())
    return {
        "success": success,
        "mean_return": 1.0,
        "env_steps": 2 * episodes,
        "seconds": 0.01,
        "policy_seconds": 0.005,
    }


def _config(tmp_path, extra=()):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for i, t in enumerate([*PRE, *SEQ]):
        _write_task(data, t, offset=float(i) - 1.0)
    return load_config(
        L2MConfig,
        None,
        [
            f"data.dir={data}",
            f"out={tmp_path / 'run'}",
            f"data.pretrain_tasks={PRE}",
            f"data.continual_tasks={SEQ}",
            "model.d_model=16",
            "model.n_layer=1",
            "model.n_head=2",
            "model.context=3",
            "pretrain.batch_size=8",
            "pretrain.train.max_steps=4",
            "pretrain.train.ckpt_every=2",
            "pretrain.train.warmup_steps=0",
            "continual.steps_per_task=3",
            "continual.batch_size=8",
            "continual.ckpt_every=2",
            "continual.methods=[ft,ewc,lora,l2m,l2m-oracle]",
            "method.pool_size=4",
            "method.fisher_batches=2",
            "eval.episodes=3",
            "eval.reuse_envs=false",
            "eval.offline_windows=16",
            "bench.seeds=[0]",
            "data.val_fraction=0.2",
            "bench.bc_reference=false",  # its own test: test_stages_and_orders.py
            *extra,
        ],
    )


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "evaluate_task", _fake_rollout)
    return _config(tmp_path)


def test_bench_runs_every_stage_and_writes_results(cfg, tmp_path):
    md = bench.run_bench(cfg, out_dir=tmp_path / "results", log=lambda s: None)
    out = json.loads(md.with_suffix(".json").read_text())
    methods = cfg.continual.methods
    assert set(out["headline"]["final_mean_success"]) == set(methods) == set(out["headline"]["forgetting"])
    for m in methods:
        rec = out["records"][m]["0"]
        assert len(rec["rows"]) == 2 and set(rec["rows"][0]) == {
            "hammer-v3",
            *PRE,
        }  # seen tasks + pre-training
        assert set(rec["rows"][1]) == {*SEQ, *PRE} and set(rec["initial"]) == {*SEQ, *PRE}
        s = out["methods"][m]
        assert (
            s["success_matrix"]["hammer-v3"][0] is not None
            and s["success_matrix"]["faucet-close-v3"][1] is None
        )
        assert 0.0 <= s["final_mean_success"]["mean"] <= 1.0 and s["trainable_params"] > 0
    assert out["methods"]["lora"]["trainable_params"] < out["methods"]["ft"]["trainable_params"]
    assert out["records"]["l2m"]["0"]["rows"][1]["hammer-v3"]["keys"]  # key histogram per task
    assert (
        out["throughput"]["continual_dt_steps_per_s"] > 0
        and out["throughput"]["eval_env_steps_per_s_per_core"] > 0
    )
    text = md.read_text()
    assert "### l2m-oracle" in text and "## Throughput" in text and "## Verdict" in text
    # re-rendering from the stored records changes no number and keeps the run's provenance
    again = bench.rerender(md.with_suffix(".json"), out_dir=tmp_path / "again")
    redo = json.loads(again.with_suffix(".json").read_text())
    assert redo["headline"] == out["headline"] and redo["records"] == out["records"]
    assert redo["methods"] == out["methods"] and redo["throughput"] == out["throughput"]
    assert redo["provenance"]["date"] == out["provenance"]["date"] and "rerendered" in redo["provenance"]
    assert "re-rendered from that run's stored records" in again.read_text()
    assert again.read_text().split("## Headline")[1] == text.split("## Headline")[1]  # the same report
    (tmp_path / "bad.json").write_text('{"config": {}}')
    with pytest.raises(DataError, match="not an L2M bench results file"):
        bench.rerender(tmp_path / "bad.json")


def test_continual_run_resumes_after_completed_stages(cfg):
    pipeline.pretrain(cfg, 0, progress=False, log=lambda s: None)
    first = pipeline.ContinualRun(cfg, "l2m", 0, log=lambda s: None).run()
    run = pipeline.ContinualRun(cfg, "l2m", 0, log=lambda s: None)
    calls = []
    run.learn = lambda stage, task: calls.append(stage)  # nothing should be retrained
    again = run.run()
    assert calls == [] and again.rows == first.rows
    assert run.method.pool.counts.sum() == 2 * 3 * 8  # restored from the last stage's file


def test_missing_dataset_and_cli_errors(cfg, capsys, tmp_path):
    cfg.data.dir = str(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no dataset for task 'drawer-close-v3'.*pretrainkit l2m collect"):
        pipeline.load_tasks(cfg, PRE)
    assert main(["l2m", "pretrain", "--set", "data.continual_tasks=[hamer-v3]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pretrainkit: error: unknown Meta-World task 'hamer-v3'") and "\n" not in err
    with pytest.raises(SystemExit) as e:
        main(["l2m", "--help"])
    assert e.value.code == 0 and "collect" in capsys.readouterr().out


def test_bench_in_two_processes_equals_one_process(tmp_path):
    """Workers get the same seeds, so the records match a one-process run (real rollouts: a worker
    process cannot see a monkeypatched rollout)."""
    pytest.importorskip("metaworld")
    extra = [
        "continual.methods=[ft,l2m]",
        "bench.seeds=[0,1]",
        "eval.episodes=2",
        "eval.pretrain_tasks=false",
    ]
    outs = []
    for workers in (1, 2):
        cfg = _config(tmp_path, [*extra, f"bench.workers={workers}", f"out={tmp_path / f'run{workers}'}"])
        md = bench.run_bench(cfg, out_dir=tmp_path / f"results{workers}", log=lambda s: None)
        outs.append(json.loads(md.with_suffix(".json").read_text()))
    one, two = outs
    for m in ("ft", "l2m"):
        for seed in ("0", "1"):
            assert one["records"][m][seed]["rows"] == two["records"][m][seed]["rows"]
            assert one["records"][m][seed]["initial"] == two["records"][m][seed]["initial"]
    assert one["headline"] == two["headline"]
    with pytest.raises(ConfigError, match="bench.workers must be >= 1"):
        _config(tmp_path, ["bench.workers=0"])


def _summary(final, std, forgetting=0.0, retention=1.0, just=0.5):
    stat = lambda m, s=0.0: {"mean": m, "std": s}
    return {
        "final_mean_success": stat(final, std),
        "forgetting": stat(forgetting),
        "pretrain_retention": stat(retention),
        "just_learned": stat(just),
    }


def test_verdict_needs_margins_beyond_the_spread_and_both_baselines():
    win = {"l2m": _summary(0.65, 0.05), "ft": _summary(0.2, 0.05), "lora": _summary(0.1, 0.05)}
    assert bench._verdict(win)[1] is True
    assert bench._verdict(win, backbone=0.9)[1] is True
    assert bench._verdict({**win, "ft": _summary(0.6, 0.05)})[1] is False  # +0.05 is inside 0.10
    assert bench._verdict({**win, "l2m": _summary(0.65, 0.05, forgetting=0.1)})[1] is False
    # every baseline that ran must be beaten, not only ft and lora
    assert bench._verdict({**win, "lora-pool": _summary(0.62, 0.05)})[1] is False
    text, met = bench._verdict({"l2m": win["l2m"]})  # a run without the baselines decides nothing
    assert met is False and "no comparison" in text
    # no forgetting because nothing was learned: L2M below half of ft's just-learned success decides nothing
    text, met = bench._verdict({**win, "l2m": _summary(0.65, 0.05, just=0.2)})
    assert met is False and "less than half as well" in text
    text, met = bench._verdict({**win, "l2m": _summary(0.5, 0.05)})  # above both, but below 0.6
    assert met is False and "BELOW 0.6" in text
    text, met = bench._verdict(win, backbone=0.7)  # a backbone that does not solve its own tasks
    assert met is False and "BELOW 0.8" in text


# ---- routing report --------------------------------------------------------------------------------
def _stage_counts(run_dir, cumulative):
    for s, counts in enumerate(cumulative):
        (run_dir / f"stage-{s}").mkdir(parents=True)
        save_weights(
            run_dir / f"stage-{s}" / "method.safetensors",
            {routing.COUNTS: torch.tensor(counts), "other": torch.zeros(1)},
        )


def test_owners_come_from_each_stages_own_selections(tmp_path):
    # stage 0 selects keys 0 (90) and 1 (10); stage 1 selects key 1 (50) and key 2 (5); key 3 never
    _stage_counts(tmp_path, [[90, 10, 0, 0], [90, 60, 5, 0]])
    usage = routing.stage_usage(tmp_path, 2)
    assert [u.tolist() for u in usage] == [[90, 10, 0, 0], [0, 50, 5, 0]]
    assert routing.key_owners(usage) == {0: 0, 1: 1, 2: 1}  # key 1: stage 1 used it more; key 3: nobody
    with pytest.raises(DataError, match="no modulation-pool counts"):
        (tmp_path / "stage-2").mkdir()
        save_weights(tmp_path / "stage-2" / "method.safetensors", {"other": torch.zeros(1)})
        routing.stage_usage(tmp_path, 3)


def test_own_share_and_seed_rows():
    owners = {0: 0, 1: 1, 2: 1}
    assert routing.own_share({"0": 0.25, "1": 0.75}, owners, 1) == 0.75
    assert routing.own_share({"-1": 0.6, "2": 0.4}, owners, routing.UNMODULATED) == 0.6
    assert routing.own_share({"3": 1.0}, owners, 0) == 0  # an unowned key belongs to no task
    assert routing.own_share(None, owners, 0) is None
    assert routing.own_share({"0": 0.334, "1": 0.667}, owners, 1) == pytest.approx(
        0.667 / 1.001
    )  # rounded shares
    rec = ContinualRecord(
        ["a", "b"],
        ["p"],
        rows=[
            {"a": {"success": 0.8, "keys_rollout": {"0": 1.0}, "keys": {"0": 1.0}}},
            {
                "a": {"success": 0.4, "keys_rollout": {"0": 0.5, "1": 0.5}, "keys": {"0": 0.9, "2": 0.1}},
                "b": {"success": 0.6, "keys_rollout": {"1": 1.0}},
                "p": {"success": 0.3, "keys_rollout": {"-1": 0.7, "0": 0.3}},
            },
        ],
    )
    rows = routing.seed_routing(rec, owners)
    assert rows["a"] == {
        "rollout_own_after_stage": 1.0,
        "rollout_own_final": 0.5,
        "heldout_own_final": 0.9,
        "success_after_stage": 0.8,
        "success_final": 0.4,
    }
    assert rows["p"]["rollout_own_after_stage"] == rows["p"]["rollout_own_final"] == 0.7  # read at the end
    assert rows["b"]["heldout_own_final"] is None


def test_report_from_a_finished_bench_and_cli_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "evaluate_task", _fake_rollout)
    cfg = _config(tmp_path, ["continual.methods=[l2m]"])
    bench.run_bench(cfg, out_dir=tmp_path / "results", log=lambda s: None)
    md = routing.routing_report(cfg, "l2m", out_dir=tmp_path / "results")
    out = json.loads(md.with_suffix(".json").read_text())
    assert md.name == "l2m-routing.md" and set(out["mean"]) == {*SEQ, *cfg.data.pretrain_tasks}
    owners = out["owners"]["0"]
    assert owners and set(owners.values()) <= {0, 1}  # every used key belongs to one of the two stages
    assert 0.0 <= out["headline"]["heldout_own_share_final"] <= 1.0
    assert "## Per seed" in md.read_text()
    assert main(["l2m", "routing", "--set", f"out={tmp_path / 'empty'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pretrainkit: error: no finished run at") and "\n" not in err
    assert main(["l2m", "routing", "--method", "ft"]) == 2
    assert "needs a modulation-pool method" in capsys.readouterr().err
