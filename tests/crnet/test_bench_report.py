"""CR-Net's bench and sweep reports from small synthetic records: mean ± sample std with n, the verdict's
spread, and reports re-rendered from the stored JSON equal to the ones written with the measurements."""

import json
import statistics
import sys
from pathlib import Path

from pretrainkit.core.config import load_config
from pretrainkit.core.results import publish, rerender
from pretrainkit.systems.crnet import report, sweep
from pretrainkit.systems.crnet.config import CRNetConfig

sys.path.insert(0, str(Path(__file__).parents[1]))
from results_helpers import assert_rerender_equals, tables_without_n

PPL = {"full": [113.0, 113.4], "lowrank": [136.6, 135.9], "crnet": [112.9, 113.9]}


def _run(method, seed, ppl):
    return {
        "method": method,
        "seed": seed,
        "steps": 20,
        "stopped_early": False,
        "tokens": 20480,
        "train_loss": 4.7,
        "val_loss": 4.72,
        "val_ppl": ppl,
        "val_tokens": 4096,
        "trainable_params": 1000,
        "total_params": 1000 + (500 if method == "lowrank" else 0),
        "optimizer_state_bytes": 8000,
        "tokens_per_s": 8000.0 + seed,
        "wall_s": 3.0,
        "lr": 0.01,
        "rank": 8,
        "block_lr_scale": 1.0,
    }


def _bench_payload(ppl=PPL):
    runs = [_run(m, s, p) for m, ps in ppl.items() for s, p in enumerate(ps)]
    probe = {
        "n_layers": 4,
        "seq_len": 128,
        "batch_size": 8,
        "checkpoint_every": 8,
        "none_peak_bytes": 1e8,
        "checkpoint_peak_bytes": 7e7,
        "crnet_peak_bytes": 6e7,
        "none_step_s": 0.1,
        "checkpoint_step_s": 0.12,
        "crnet_step_s": 0.13,
        "recompute_memory_ratio": 0.6,
        "checkpoint_memory_ratio": 0.7,
        "recompute_step_time_ratio": 1.3,
        "checkpoint_step_time_ratio": 1.2,
    }
    return {
        "runs": runs,
        "ranks": {m: 8 for m in ppl},
        "memory": {m: 1e8 for m in ppl},
        "recompute": [probe],
        "hf": {"available": False, "reason": "transformers is not installed"},
        "data": {
            "train_documents": 3,
            "val_documents": 1,
            "train_tokens": 9000,
            "val_tokens": 900,
            "vocab_size": 300,
            "val_document_names": ["a"],
        },
        "wall_s": 60.0,
        "steps_per_arm": 20,
        "device": "cpu",
    }


def _cfg():
    return load_config(CRNetConfig, None, ["bench.methods=[full, lowrank, crnet]"])


def test_crnet_report_uses_the_sample_std_states_n_and_rerenders_to_itself(tmp_path):
    md = publish(
        "crnet",
        _bench_payload(),
        report.render,
        kind=report.KIND,
        seeds=[0, 1],
        out_dir=tmp_path / "a",
        title="CR-Net",
        config=_cfg(),
        profile="bench",
    )
    out = json.loads(md.with_suffix(".json").read_text())
    s = out["summary"]["crnet"]
    assert s["ppl_std"] == statistics.stdev(PPL["crnet"]) and s["ppl_n"] == 2
    assert out["headline"]["ppl_n"] == {"full": 2, "lowrank": 2, "crnet": 2}
    c = out["verdict"]["comparisons"]["lowrank"]
    assert c["sum_of_stds"] == statistics.stdev(PPL["crnet"]) + statistics.stdev(PPL["lowrank"])
    text = md.read_text()
    assert not tables_without_n(text), tables_without_n(text)
    assert f"{statistics.fmean(PPL['crnet']):.2f} ± {statistics.stdev(PPL['crnet']):.2f} | 2 |" in text
    assert_rerender_equals(md, tmp_path / "b", lambda p, d: rerender(p, report.render, d))


def test_one_seed_has_no_spread_and_no_noise_verdict(tmp_path):
    one = {m: ps[:1] for m, ps in PPL.items()}
    md = publish(
        "crnet",
        _bench_payload(one),
        report.render,
        kind=report.KIND,
        seeds=[0],
        out_dir=tmp_path,
        config=_cfg(),
    )
    out = json.loads(md.with_suffix(".json").read_text())
    assert (
        out["summary"]["crnet"]["ppl_std"] is None
        and out["verdict"]["comparisons"]["lowrank"]["beyond_noise"] is None
    )
    text = md.read_text()
    assert "112.90 ± — | 1 |" in text and "no spread to judge noise by" in text


def test_sweep_report_rerenders_to_itself(tmp_path):
    rows = [
        {
            "method": m,
            "lr": lr,
            "block_scale": 1.0,
            "dev_ppl": 200 + 10 * i + 100 * lr,
            "train_loss": 5.0,
            "steps": 20,
            "wall_s": 2.0,
        }
        for i, m in enumerate(("full", "crnet"))
        for lr in (0.01, 0.03)
    ]
    cfg = _cfg()
    md = publish(
        "crnet-sweep",
        {"rows": rows, "dev_tokens": 1234, "wall_s": 90.0},
        sweep.render,
        kind=sweep.KIND,
        seeds=[0],
        out_dir=tmp_path / "a",
        title=sweep.TITLE,
        config=cfg,
    )
    out = json.loads(md.with_suffix(".json").read_text())
    assert out["headline"]["best"]["crnet"] == {"lr": 0.01, "block_scale": 1.0, "dev_ppl": 211.0}
    text = md.read_text()
    assert "1,234 tokens" in text and "1.5 min" in text and not tables_without_n(text)
    assert_rerender_equals(md, tmp_path / "b", lambda p, d: rerender(p, sweep.render, d))


def test_budget_is_trainable_parameters_and_frozen_ones_are_labelled_apart(tmp_path):
    """LoRA from scratch carries a frozen random W: its total is larger than CR-Net's, but it learns fewer
    parameters, so it is no equal-budget rival (the old report counted the frozen weights)."""
    ppl = {"lora": [104.4, 104.6], "crnet": [112.9, 113.9]}
    payload = _bench_payload(ppl)
    for r in payload["runs"]:
        if r["method"] == "lora":
            r["trainable_params"], r["total_params"] = 900, 1600
    md = publish(
        "crnet",
        payload,
        report.render,
        kind=report.KIND,
        seeds=[0, 1],
        out_dir=tmp_path,
        config=load_config(CRNetConfig, None, ["bench.methods=[lora, crnet]"]),
    )
    out = json.loads(md.with_suffix(".json").read_text())
    assert out["verdict"]["comparisons"]["lora"]["other_params_ge_crnet"] is False
    assert out["verdict"]["crnet_beats_low_rank_at_equal_or_smaller_params"] is None  # no eligible rival
    assert out["headline"]["trainable_params"] == {"lora": 900, "crnet": 1000}
    assert out["headline"]["frozen_params"] == {"lora": 700, "crnet": 0}
    text = md.read_text()
    assert "| 900 | 700 | 1,600 |" in text
    assert "trains FEWER parameters (its frozen weights not counted)" in text


def test_the_old_regimes_ranking_is_stored_and_set_beside_the_new_one():
    from pathlib import Path

    from pretrainkit.systems.crnet.bench import other_regime
    from pretrainkit.systems.crnet.report import regime_table

    stored = Path(__file__).parents[2] / "docs" / "results" / "crnet.json"
    other = other_regime(str(stored))
    assert other["preset"] == "cpu-small" and other["tokens_per_step"] == 1024 and other["ppl"]["crnet"] > 0
    other = {**other, "ppl": {"full": 110.0, "lora": 100.0, "crnet": 120.0}}
    summary = {m: {"ppl_mean": p} for m, p in {"full": 50.0, "lora": 60.0, "crnet": 55.0}.items()}
    text = regime_table(other, summary, "cpu-base", 16384, 48)
    assert "| full | 110.00 | 2 | 50.00 | 1 |" in text and "| lora | 100.00 | 1 | 60.00 | 3 |" in text
    assert "Methods whose rank moved: full, crnet, lora." in text and "16,384 tokens/step x 48 steps" in text
