"""The BC-MLP baseline and `pretrainkit l2m diagnose` on synthetic task files (closed loop faked)."""

import json
import sys
from pathlib import Path

import pytest
import torch

from pretrainkit.cli import main
from pretrainkit.core.config import load_config
from pretrainkit.errors import ConfigError, DataError
from pretrainkit.systems.l2m import diagnose, pipeline
from pretrainkit.systems.l2m.bc import BCConfig, BCPolicy, bc_offline_mae, stack_steps, train_bc
from pretrainkit.systems.l2m.config import L2MConfig
from pretrainkit.systems.l2m.data import load_task_dataset

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_tasks import write_task

torch.set_num_threads(1)
PRE = ["drawer-close-v3", "dial-turn-v3"]


def _write_task(path, task: str, offset: float, episodes: int = 5, length: int = 16) -> None:
    write_task(path, task, offset, episodes, length, gain=2.0)


def _fake_rollout(actor, task, episodes=10, target_return=0.0, seed=0, device="cpu", **kw):
    """Acts once through the actor (its ``act`` signature and ``cfg`` are what a rollout reads)."""
    K, A = actor.cfg.context, actor.cfg.act_dim
    g = torch.Generator().manual_seed(seed)
    a = actor.act(
        torch.randn(episodes, K, 39, generator=g),
        torch.zeros(episodes, K),
        torch.zeros(episodes, K, A),
        torch.arange(K).repeat(episodes, 1),
        torch.ones(episodes, K, dtype=torch.bool),
    )
    assert a.shape == (episodes, A)
    return {"success": float((a[:, 0] > 0).float().mean()), "mean_return": 1.0, "env_steps": 2 * episodes,
            "seconds": 0.01, "policy_seconds": 0.005}  # fmt: skip


def _overrides(tmp_path) -> list[str]:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for i, t in enumerate(PRE):
        _write_task(data, t, offset=float(i) - 0.5)
    return [
        f"data.dir={data}",
        f"out={tmp_path / 'run'}",
        f"data.pretrain_tasks={PRE}",
        "data.continual_tasks=[hammer-v3]",
        "model.d_model=16",
        "model.n_layer=1",
        "model.n_head=2",
        "model.context=3",
        "pretrain.batch_size=8",
        "pretrain.train.max_steps=3",
        "pretrain.train.warmup_steps=0",
        "diagnose.bc.steps=5",
        "diagnose.bc.batch_size=8",
        "diagnose.bc.hidden=8",
        "eval.episodes=3",
        "eval.reuse_envs=false",
        "eval.offline_windows=16",
        "bench.seeds=[0]",
        "data.val_fraction=0.2",
    ]


@pytest.fixture
def fake_env(monkeypatch):
    monkeypatch.setattr(pipeline, "evaluate_task", _fake_rollout)
    monkeypatch.setattr(diagnose, "evaluate_task", _fake_rollout)


def test_bc_policy_trains_to_a_lower_loss_and_lower_held_out_error(tmp_path):
    _write_task(tmp_path, "drawer-close-v3", 0.0, episodes=8)
    data = load_task_dataset(tmp_path / "drawer-close-v3.npz")
    data.actions = data.extras["expert_actions"]
    torch.manual_seed(0)
    policy = BCPolicy(39, 4, hidden=32, layers=2)
    before = bc_offline_mae(policy, data)
    stats = train_bc(policy, [data], BCConfig(hidden=32, steps=300, batch_size=32, lr=3e-3), seed=0)
    assert stats["final_loss"] < 0.3 * stats["first_loss"]
    assert bc_offline_mae(policy, data) < 0.5 * before
    out = policy.act(torch.zeros(5, 1, 39), None, None, None)  # the rollout's call: newest state only
    assert out.shape == (5, 4) and out.abs().max() <= 1.0
    assert torch.equal(policy.act(torch.randn(5, 3, 39).index_fill(1, torch.tensor([2]), 0.0)), out)


def test_bc_bad_input_is_a_one_line_error(tmp_path):
    _write_task(tmp_path, "drawer-close-v3", 0.0)
    data = load_task_dataset(tmp_path / "drawer-close-v3.npz")
    with pytest.raises(DataError, match="expects 40/4"):
        train_bc(BCPolicy(40, 4), [data], BCConfig(steps=1))
    with pytest.raises(DataError, match="at least one task"):
        stack_steps([])
    with pytest.raises(ConfigError, match="diagnose.bc.steps"):
        train_bc(BCPolicy(39, 4), [data], BCConfig(steps=0))
    with pytest.raises(ConfigError, match="hidden"):
        BCPolicy(39, 4, hidden=0)


def test_diagnose_writes_its_table_and_rerenders_it(tmp_path, fake_env):
    cfg = load_config(L2MConfig, None, _overrides(tmp_path))
    md = diagnose.run_diagnosis(cfg, out_dir=tmp_path / "res", log=lambda s: None)
    assert md == tmp_path / "res" / "l2m-diagnosis.md"
    out = json.loads(md.with_suffix(".json").read_text())
    variants = cfg.diagnose.variants
    assert out["kind"] == diagnose.KIND and set(out["headline"]["mean_success"]) == set(variants)
    for v in variants:
        tasks = out["records"][v]["0"]["tasks"]
        assert set(tasks) == set(PRE)
        assert all(0 <= r["success"] <= 1 and r["offline_mae"] > 0 for r in tasks.values())
    # the profile's head trains in the profile's run folder (a bench reuses it); the other head beside it
    assert pipeline.backbone_path(cfg, 0).is_file()
    assert (tmp_path / "run" / "diagnose" / "dt-continuous" / "pretrain" / "seed-0").is_dir()
    text = md.read_text()
    assert "| bc-mlp | 1 |" in text and "drawer-close" in text
    again = diagnose.rerender(md.with_suffix(".json"), out_dir=tmp_path / "again")
    assert json.loads(again.with_suffix(".json").read_text())["headline"] == out["headline"]
    assert again.read_text().split("## Headline")[1] == text.split("## Headline")[1]


def test_diagnose_verb_writes_into_out_and_bench_rerenders_it(tmp_path, fake_env, capsys):
    sets = [a for o in _overrides(tmp_path) + ["diagnose.variants=[bc-mlp]"] for a in ("--set", o)]
    assert main(["l2m", "diagnose", *sets, "--out", str(tmp_path / "res"), "--name", "diag"]) == 0
    js = tmp_path / "res" / "diag.json"
    assert js.is_file() and (tmp_path / "res" / "diag.md").is_file()
    assert list(json.loads(js.read_text())["records"]) == ["bc-mlp"]
    assert main(["bench", "l2m", "--rerender", str(js), "--results-dir", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "diag.md").is_file()


def test_diagnose_bad_input_is_one_line(tmp_path, capsys):
    sets = [a for o in _overrides(tmp_path) for a in ("--set", o)]
    assert main(["l2m", "diagnose", *sets, "--set", "diagnose.variants=[dt-huge]"]) == 2
    err = capsys.readouterr().err.strip()
    assert "diagnose.variants" in err and "\n" not in err
    assert main(["l2m", "diagnose", *sets, "--set", "diagnose.bc.lr=0"]) == 2
    assert "diagnose.bc.lr" in capsys.readouterr().err
    (tmp_path / "x.json").write_text(json.dumps({"headline": {}, "provenance": {}, "kind": "l2m.bench"}))
    assert main(["l2m", "diagnose", "--rerender", str(tmp_path / "x.json")]) == 2
    assert "not an L2M diagnosis" in capsys.readouterr().err


@pytest.mark.parametrize("head", ["discrete", "continuous"])
def test_a_dt_without_timestep_embedding_ignores_the_clock(head):
    from pretrainkit.systems.l2m.model import DecisionTransformer

    torch.manual_seed(0)
    dt = DecisionTransformer(d_model=16, n_layer=1, n_head=2, context=3, head=head, timestep_embedding=False)
    dt.eval()
    assert dt.embed_timestep is None
    s, a, r = torch.randn(2, 3, 39), torch.rand(2, 3, 4) * 2 - 1, torch.zeros(2, 3)
    t0, t1 = torch.arange(3).repeat(2, 1), torch.arange(3).repeat(2, 1) + 50
    assert torch.equal(dt(s, a, r, t0), dt(s, a, r, t1))
    assert torch.equal(dt.act(s, r, a, t0), dt.act(s, r, a, t1))
    timed = DecisionTransformer(d_model=16, n_layer=1, n_head=2, context=3, head=head).eval()
    assert not torch.equal(timed(s, a, r, t0), timed(s, a, r, t1))  # the default still reads it


def test_offline_accuracy_of_a_continuous_head_is_the_share_in_the_labels_bin(tmp_path):
    from pretrainkit.systems.l2m.model import DecisionTransformer

    cfg = load_config(L2MConfig, None, [*_overrides(tmp_path), "model.head=continuous"])
    val = load_task_dataset(tmp_path / "data" / "drawer-close-v3.npz")
    dt = DecisionTransformer(cfg.model)

    class Exact:  # predicts the labels (all in their bin), or the labels pushed one bin over
        def __init__(self, shift):
            self.dt, self.shift = dt, shift

        def eval(self):
            pass

        def predict(self, b, task_id):
            return (b["actions"] + self.shift).clamp(-0.99, 0.99), None

        def selected_keys(self, b, task_id):
            return None

    exact = pipeline.offline_metrics(Exact(0.0), val, 0, cfg, torch.device("cpu"))
    assert exact["offline_acc"] == 1.0 and exact["offline_mae"] == 0.0
    off = pipeline.offline_metrics(Exact(2.0 / cfg.model.n_bins), val, 0, cfg, torch.device("cpu"))
    assert off["offline_acc"] < 0.2


def test_mean_bin_decoding_is_the_expected_bin_centre_and_the_cache_agrees():
    from pretrainkit.systems.l2m.model import DecisionTransformer, decode_bins, decode_logits

    logits = torch.tensor([[0.0, 0.0, -1e9, -1e9], [-1e9, -1e9, -1e9, 5.0]])
    centres = decode_bins(torch.arange(4), 4, "center")  # -0.75, -0.25, 0.25, 0.75
    assert torch.allclose(decode_logits(logits, 4, "mean"), torch.tensor([-0.5, 0.75]))
    assert torch.equal(decode_logits(logits, 4, "center"), centres[logits.argmax(-1)])
    torch.manual_seed(0)
    dt = DecisionTransformer(d_model=16, n_layer=1, n_head=2, context=3, bin_decode="mean").eval()
    s, a, r, t = (
        torch.randn(4, 3, 39),
        torch.rand(4, 3, 4) * 2 - 1,
        torch.zeros(4, 3),
        torch.arange(3).repeat(4, 1),
    )
    out = dt.act(s, r, a, t)
    assert torch.allclose(out, dt.act(s, r, a, t, use_cache=False), atol=1e-6)
    on_grid = (out + 1) * 32 - 0.5  # greedy decoding lands on bin centres; the mean in general does not
    assert not torch.allclose(on_grid, on_grid.round())
    with pytest.raises(ConfigError, match="bin_decode"):
        DecisionTransformer(bin_decode="median")


def test_diagnose_compares_the_dt_with_its_cross_layer_form(tmp_path, fake_env):
    sets = [
        *_overrides(tmp_path),
        "model.n_layer=2",
        "model.head=continuous",
        "diagnose.variants=[dt-continuous,dt-cross-layer]",
    ]
    cfg = load_config(L2MConfig, None, [*sets, "diagnose.cross_layer_rank=4"])
    out = json.loads(
        diagnose.run_diagnosis(cfg, tmp_path / "res", log=lambda s: None).with_suffix(".json").read_text()
    )
    dense, cross = (out["records"][v]["0"]["train"]["params"] for v in ("dt-continuous", "dt-cross-layer"))
    assert cross < dense
    assert (
        tmp_path / "run" / "diagnose" / "dt-cross-layer" / "pretrain" / "seed-0" / "backbone.json"
    ).is_file()
    assert (
        "dt-cross-layer = the profile's DT with blocks 1.. in CR-Net's cross-layer form"
        in (tmp_path / "res" / "l2m-diagnosis.md").read_text()
    )
