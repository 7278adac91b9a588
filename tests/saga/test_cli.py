"""User mistakes reach the command line as one line on stderr and exit status 2."""

import json

import numpy as np
import pytest

from pretrainkit.cli import main
from pretrainkit.core.config import load_config
from pretrainkit.errors import ConfigError, DataError
from pretrainkit.systems.saga.config import SagaConfig
from pretrainkit.systems.saga.pipeline import SagaPipeline


def _fails(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("pretrainkit: error:"), err
    assert match in err, err
    return err


def _limu_folder(tmp_path, n=12, length=120, channels=6, label_cols=2, drop=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    if drop != "data":
        np.save(tmp_path / "data_20_120.npy", np.zeros((n, length, channels), np.float32))
    if drop != "label":
        np.save(tmp_path / "label_20_120.npy", np.zeros((n, length, label_cols), np.float32))
    return tmp_path


def test_wrong_data_path(capsys, tmp_path):
    _fails(
        capsys, ["saga", "finetune", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")], "nope"
    )


def test_folder_missing_an_npy_file(capsys, tmp_path):
    d = _limu_folder(tmp_path / "limu", drop="label")
    _fails(
        capsys,
        ["saga", "finetune", "--data", str(d), "--set", "data.format=limu", "--out", str(tmp_path / "r")],
        "label_20_120.npy",
    )


def test_windows_of_the_wrong_shape(capsys, tmp_path):
    d = _limu_folder(tmp_path / "limu", length=100)
    _fails(
        capsys,
        ["saga", "finetune", "--data", str(d), "--set", "data.format=limu", "--out", str(tmp_path / "r")],
        "100",
    )


def test_label_column_out_of_range(capsys, tmp_path):
    d = _limu_folder(tmp_path / "limu", label_cols=2)
    _fails(
        capsys,
        [
            "saga",
            "finetune",
            "--data",
            str(d),
            "--set",
            "data.format=limu",
            "--set",
            "data.label_columns={activity: 0, user: 5}",
            "--out",
            str(tmp_path / "r"),
        ],
        "5",
    )


def test_unknown_config_key_task_and_profile(capsys, tmp_path):
    _fails(capsys, ["saga", "demo", "--set", "pretrain.stepz=3"], "pretrain.stepz")
    _fails(capsys, ["saga", "demo", "--set", "pretrain.tasks=[saga.point,saga.nope]"], "saga.nope")
    _fails(
        capsys, ["saga", "demo", "--config", "nosuchprofile"], "allowed: basicmotions, bench, paper, quick"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain: [\n")
    _fails(capsys, ["saga", "demo", "--config", str(bad)], "not valid YAML")


def test_budget_larger_than_a_class_has(shared_data):
    cfg = load_config(SagaConfig, None, ["downstream.splits=[time]", "downstream.labels=[user]"])
    pipe = SagaPipeline(cfg, progress=False)
    with pytest.raises(DataError, match="larger than class"):
        pipe.budget("user", "time", 100_000, seed=0)


def test_head_restarts_below_one_is_refused():
    with pytest.raises(ConfigError, match="head_restarts must be >= 1"):
        load_config(SagaConfig, None, ["downstream.head_restarts=0"])


def test_length_curve_bad_input(capsys, tmp_path):
    base = ["saga", "length-curve", "--results-dir", str(tmp_path), "--out", str(tmp_path / "r")]
    _fails(capsys, [*base, "--steps", "800,200"], "increasing positive step counts")
    _fails(capsys, [*base, "--steps", "2x"], "--steps must be comma-separated integers")
    _fails(capsys, [*base, "--budgets", "1"], "--budgets must be integers >= 2")
    _fails(capsys, [*base, "--task", "saga.nope"], "saga.nope")
    _fails(capsys, [*base, "--set", "pretrain.train.schedule=cosine"], "schedule=constant")
    assert not list(tmp_path.glob("*.md"))


def test_length_curve_report_from_rows(tmp_path):
    from pretrainkit.core.results import publish
    from pretrainkit.systems.saga import length_curve

    rows = [
        dict(pretrain_seed=0, steps=s, label=lab, budget=20, seed=k, acc=0.5 + s / 10_000 + k / 100, f1=0.5)
        for s in (200, 800)
        for lab in ("activity", "user")
        for k in range(3)
    ]
    md = publish(
        "len",
        {"rows": rows, "task": "saga.point", "wall_s": 1.0},
        length_curve.render,
        kind=length_curve.KIND,
        seeds=[0, 1, 2],
        out_dir=tmp_path,
        title=length_curve.TITLE,
    )
    text = md.read_text()
    assert "| activity | 20 | 0.530 ± 0.010 | 0.590 ± 0.010 |" in text and "over n=3 downstream seeds" in text
    head = json.loads(md.with_suffix(".json").read_text())["headline"]
    assert head["activity_at_20_last_gain"] == 6.0 and head["lengths"] == [200, 800]


def test_bench_saga_rerender_takes_a_length_curve_file(tmp_path):
    from pretrainkit.core.results import publish
    from pretrainkit.systems.saga import length_curve

    rows = [
        dict(pretrain_seed=0, steps=s, label="activity", budget=20, seed=k, acc=0.5 + k / 100, f1=0.5)
        for s in (200, 800)
        for k in range(2)
    ]
    md = publish(
        "saga-length",
        {"rows": rows, "task": "saga.point", "wall_s": 1.0},
        length_curve.render,
        kind=length_curve.KIND,
        seeds=[0, 1],
        out_dir=tmp_path / "a",
        title=length_curve.TITLE,
    )
    out = tmp_path / "b"
    assert main(["bench", "saga", "--rerender", str(md.with_suffix(".json")), "--results-dir", str(out)]) == 0
    assert (out / "saga-length.md").read_text().count("| activity | 20 |") == 1 and (
        out / "saga-length.png"
    ).is_file()
