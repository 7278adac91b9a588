"""`pretrainkit bench bivldoc --smoke`: the bench's own code end to end (tiny model, two workers) into a tmp dir."""

import json

import pytest
import torch

from pretrainkit.cli import main
from pretrainkit.core.config import load_config
from pretrainkit.errors import ConfigError
from pretrainkit.systems.bivldoc import bench
from pretrainkit.systems.bivldoc.config import BENCH_METHODS, BiVLDocConfig

from .conftest import SHARED

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("bench")
    rc = main(
        [
            "bench",
            "bivldoc",
            "--smoke",
            "--results-dir",
            str(out),
            "--out",
            str(out / "work"),
            "--set",
            f"data.root={SHARED}",
        ]
    )
    assert rc == 0
    return out


def test_smoke_bench_writes_every_method_and_the_curve(smoke):
    payload = json.loads((smoke / "bivldoc.json").read_text())
    md = (smoke / "bivldoc.md").read_text()
    head = payload["headline"]
    assert set(head["funsd_f1"]) == set(BENCH_METHODS) == set(head["sroie_exact"])
    assert all(0.0 <= v <= 1.0 for v in head["funsd_f1"].values())
    assert set(head["goals_met"]) == {
        "above_mvlm-only",
        "above_no-hybrid",
        "above_scratch",
        "above_text-only",
        "at_least_layoutlmv3",
    }
    seeds = payload["provenance"]["seeds"]
    assert len(seeds) >= 2
    # every method x seed fine-tuned on FUNSD (all forms) and SROIE; pre-training for all but scratch
    n_all = payload["data_info"]["funsd_train_forms"]
    for m in BENCH_METHODS:
        for task, forms in (("funsd", n_all), ("sroie", payload["data_info"]["sroie_train"])):
            got = sorted(
                r["seed"]
                for r in payload["finetune"]
                if r["method"] == m and r["task"] == task and r["forms"] == forms
            )
            assert got == sorted(seeds), (m, task)
        assert sum(r["method"] == m for r in payload["pretrain"]) == (0 if m == "scratch" else len(seeds))
    few = {r["forms"] for r in payload["finetune"] if r["task"] == "funsd" and r["forms"] < n_all}
    assert few == set(payload["config"]["bench"]["few_label"])
    assert payload["funsd_f1"]["bivldoc"]["n"] == len(seeds)
    assert all(r["pages_per_s"] > 0 and r["peak_rss_mib"] > 0 for r in payload["pretrain"])
    assert "93.44" in md and "## Few-label curve" in md and "## Verdicts" in md
    # the report is a function of the stored JSON: re-rendering gives the same headline
    again = bench.render(payload)[0]
    assert json.loads(json.dumps(again)) == head


def test_validation_split_never_reads_the_test_forms(smoke):
    """A fine-tuning with ``val_forms`` scores the last training forms, and trains on the ones before them."""
    cfg = load_config(
        BiVLDocConfig,
        None,
        [
            f"data.root={SHARED}",
            "finetune.train.max_steps=1",
            *[
                f"model.{k}={v}"
                for k, v in {
                    "d_model": 32,
                    "ffn": 64,
                    "n_heads": 2,
                    "text_layers": 1,
                    "fusion_layers": 1,
                    "image_size": 64,
                    "cnn_channels": "[8,8,16,16]",
                    "max_tokens": 64,
                    "max_segments": 16,
                }.items()
            ],
            "pretrain.vocab_size=600",
            "finetune.batch_size=2",
        ],
    )
    work = smoke / "work" / "bench"
    data = bench._data(work)
    r = bench.finetune_job(cfg, "scratch", 0, "funsd", None, None, str(work), val_forms=2, lr=1e-3)
    assert r["forms"] == len(data["funsd_train"]) - 2 and r["val_forms"] == 2 and r["lr"] == 1e-3
    assert r["scores"]["f1"] >= 0.0


def test_bench_config_rejects_unknown_methods():
    with pytest.raises(ConfigError, match="unknown bench method"):
        load_config(BiVLDocConfig, None, ["bench.methods=[bivldoc,bert]"])
    with pytest.raises(ConfigError, match="few_label_methods"):
        load_config(BiVLDocConfig, None, ["bench.methods=[bivldoc]", "bench.few_label_methods=[scratch]"])


def test_smoke_bench_chose_each_lr_on_held_out_training_forms(smoke):
    payload = json.loads((smoke / "bivldoc.json").read_text())
    sel = payload["lr_selection"]
    grid = payload["config"]["bench"]["lr_grid"]
    assert sel["grid"] == grid and set(sel["chosen"]) == set(BENCH_METHODS)
    for m in BENCH_METHODS:
        runs = [r for r in sel["runs"] if r["method"] == m]
        assert sorted(r["lr"] for r in runs) == sorted(grid) and all(
            r["val_forms"] == sel["val_forms"] for r in runs
        )
        best = max(runs, key=lambda r: (r["scores"]["f1"], -r["lr"]))["lr"]
        assert sel["chosen"][m] == best
        # every fine-tuning of the method (all seeds, both tasks, the curve) used it
        assert {r["lr"] for r in payload["finetune"] if r["method"] == m} == {best}
    assert "## Fine-tuning lr" in (smoke / "bivldoc.md").read_text()


def test_bench_data_file_is_loaded_without_running_code(tmp_path):
    """data.pt is read with weights_only: a file holding any other object is refused with one line."""
    import fractions

    import torch

    from pretrainkit.errors import DataError
    from pretrainkit.systems.bivldoc import bench

    torch.save({"tok": "x", "other": fractions.Fraction(1, 3)}, tmp_path / "data.pt")  # not allowlisted
    with pytest.raises(DataError, match="not a bench data file this version can read safely"):
        bench._data(tmp_path)
