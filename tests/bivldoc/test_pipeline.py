import json
import shutil

import pytest
import torch

from pretrainkit.cli import main
from pretrainkit.core import checkpoint as ckpt
from pretrainkit.core.config import load_config
from pretrainkit.systems.bivldoc import pipeline
from pretrainkit.systems.bivldoc.config import BiVLDocConfig

from .conftest import SHARED, TINY

TINY_SET = [f"model.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in TINY.items()]


def _cfg(out, *extra):
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    return load_config(
        BiVLDocConfig,
        None,
        [
            f"data.root={SHARED}",
            "data.synthetic_pages=2",
            "data.funsd_limit=4",
            "data.sroie_limit=2",
            "pretrain.vocab_size=400",
            "pretrain.batch_size=2",
            "pretrain.train.progress=false",
            "pretrain.train.log_every=1",
            "finetune.train.progress=false",
            "finetune.batch_size=2",
            "finetune.train_forms=4",
            f"out={out}",
            *TINY_SET,
            *extra,
        ],
    )


def test_pretrain_resumes_exactly(tmp_path):
    cfg = _cfg(tmp_path / "run", "pretrain.train.max_steps=4", "pretrain.train.ckpt_every=2")
    full = pipeline.pretrain(cfg)
    assert full["steps_run"] == 4 and full["sources"] == {"funsd-train": 4, "sroie": 2, "synthetic": 2}
    final = ckpt.load_weights(tmp_path / "run" / pipeline.BACKBONE)
    # a run killed after its step-2 checkpoint: resuming it ends with the uninterrupted run's weights
    shutil.rmtree(ckpt.step_dir(tmp_path / "run" / "checkpoints", 4))
    (tmp_path / "run" / pipeline.BACKBONE).unlink()
    resumed = pipeline.pretrain(cfg, resume="auto")
    assert resumed["steps_run"] == 2
    again = ckpt.load_weights(tmp_path / "run" / pipeline.BACKBONE)
    assert final.keys() == again.keys() and all(torch.equal(final[k], again[k]) for k in final)


def test_finetune_from_pretraining_then_evaluate(tmp_path):
    pre = tmp_path / "pre"
    pipeline.pretrain(_cfg(pre, "pretrain.train.max_steps=2"))
    cfg = _cfg(tmp_path / "ft", f"finetune.init={pre}", "finetune.train.max_steps=3")
    res = pipeline.finetune(cfg)
    assert res["init"].startswith("pretrained") and res["train_forms"] == 4 and res["test"]["pages"] == 50
    assert 0.0 <= res["test"]["f1"] <= 1.0
    again = pipeline.evaluate(cfg, tmp_path / "ft")
    assert again["f1"] == pytest.approx(res["test"]["f1"])  # the saved tagger scores the same
    assert json.loads((tmp_path / "ft" / "results.json").read_text())["test"]["f1"] == res["test"]["f1"]
    from PIL import Image

    with Image.open(again["picture"]) as im:  # the report picture: gold beside predicted, one test page
        assert im.width > 2 * 700 and im.height > 900


def test_entity_picture_draws_each_entity_in_its_colour(funsd_few, tmp_path):
    import numpy as np

    from pretrainkit.systems.bivldoc.report import COLOURS, entity_picture

    page = funsd_few[0]
    path = entity_picture(page, ["O"] * len(page.words), tmp_path / "p.png")
    from PIL import Image

    arr = np.asarray(Image.open(path))
    w = page.size[0]
    gold, pred = arr[30:, :w], arr[30:, w + 10 :]
    for col in COLOURS.values():
        assert (gold == col).all(-1).any() and not (pred == col).all(-1).any()


def test_weight_search_scores_in_budget_validation_forms(tmp_path):
    cfg = _cfg(
        tmp_path / "search",
        "pretrain.train.max_steps=1",
        "finetune.train.max_steps=1",
        "finetune.val_forms=2",
        "search.n_trials=2",
        "search.n_startup_trials=2",
    )
    res = pipeline.search_weights(cfg)
    assert set(res["best_weights"]) == {"mvlm", "tipa", "lgv", "itm"} and 0.0 <= res["best_val_f1"] <= 1.0
    trials = sorted((tmp_path / "search" / "trials").glob("ft-*"))
    assert len(trials) == 2  # equal weights first, then a random draw
    for t in (
        trials
    ):  # each trial fine-tuned on 2 forms and scored on the other 2 training forms, not the test set
        r = json.loads((t / "results.json").read_text())
        assert r["train_forms"] == 2 and r["val"]["pages"] == 2 and "test" not in r


def test_sroie_key_field_extraction(tmp_path):
    cfg = _cfg(tmp_path / "sroie", "finetune.task=sroie", "finetune.train.max_steps=2")
    res = pipeline.finetune(cfg)
    assert res["train_forms"] == 4 and res["test"]["pages"] == 20
    assert set(res["test"]) >= {"exact", "exact/company", "exact/date", "exact/address", "exact/total"}
    assert pipeline.evaluate(cfg, tmp_path / "sroie") == res["test"]


def test_seqeval_entity_f1_is_entity_level():
    gold = [["B-QUESTION", "I-QUESTION", "O", "B-ANSWER"]]
    assert pipeline.entity_scores(gold, gold)["f1"] == 1.0
    # one wrong inner tag breaks the whole entity (token accuracy would be 3/4)
    half = pipeline.entity_scores(gold, [["B-QUESTION", "O", "O", "B-ANSWER"]])
    assert half["f1"] == pytest.approx(0.5)


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert main(["bivldoc", "bench", "--set", "bench.methods=[bivldoc,bert]"]) == 2
    assert "unknown bench method 'bert'" in capsys.readouterr().err
    assert main(["bench", "bivldoc", "--profile", "smoke", "--config", "bench-full"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["bivldoc", "pretrain", "--set", "model.depth=3", "--out", str(tmp_path)]) == 2
    assert "unknown config key 'model.depth'" in capsys.readouterr().err
    assert main(["bivldoc", "pretrain", "--set", "pretrain.weights.mlm=1", "--out", str(tmp_path)]) == 2
    assert "unknown pre-training task 'mlm'" in capsys.readouterr().err
    assert main(["bivldoc", "evaluate", str(tmp_path)]) == 2
    assert "no fine-tuned tagger" in capsys.readouterr().err
    assert main(["bivldoc", "finetune", "--init", str(tmp_path), "--out", str(tmp_path / "ft")]) == 2
    assert "tokenizer not found" in capsys.readouterr().err
    assert main(["bivldoc", "ocr", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "page folder not found" in err and len(err.strip().splitlines()) == 1
