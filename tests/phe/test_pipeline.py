"""PHE end to end on ACM with a tiny config: pretrain (resumable) -> evaluate; the CLI's verbs."""

import json

import pytest

from pretrainkit.cli import main
from pretrainkit.core.config import load_config
from pretrainkit.core.profiles import profile_path
from pretrainkit.errors import ConfigError
from pretrainkit.systems.phe import pipeline
from pretrainkit.systems.phe.pipeline import PHEConfig

TINY = [
    "model.hidden=16",
    "model.heads=2",
    "model.layers=1",
    "pretrain.semantic.perturbations=1",
    "pretrain.sampler.batch_size=64",
    "pretrain.train.max_steps=3",
    "pretrain.train.log_every=1",
    "pretrain.train.progress=false",
    "evaluate.budgets=[20]",
    "evaluate.c_grid=[1.0]",
]


def tiny_cfg(tmp_path, *extra):
    return load_config(PHEConfig, profile_path("phe", "quick"), [*TINY, f"out={tmp_path / 'run'}", *extra])


def test_pretrain_resume_evaluate_on_acm(tmp_path, acm):
    cfg = tiny_cfg(tmp_path)
    r = pipeline.pretrain(cfg, graph=acm)
    assert r["steps_run"] == 3 and "loss/phe.semantic" in r and r["weight/phe.structure"] == 0.1
    cfg.pretrain.train.max_steps = 5
    r = pipeline.pretrain(cfg, resume="auto", graph=acm)
    assert r["steps_run"] == 2  # continued from step 3
    out = pipeline.evaluate(cfg, graph=acm)
    s = out["scores"]["20"]
    assert set(s) >= {"macro_f1", "micro_f1", "auc"} and all(0 <= s[k] <= 100 for k in ("macro_f1", "auc"))
    assert json.loads((tmp_path / "run" / "evaluate.json").read_text())["scores"] == json.loads(
        json.dumps(out["scores"])
    )
    raw = pipeline.evaluate(cfg, raw=True, graph=acm)
    assert raw["embeddings"] == "raw features"


def test_neighbour_mode_trains(tmp_path, tiny_graph):
    cfg = tiny_cfg(
        tmp_path,
        "pretrain.sampler.mode=neighbour",
        "pretrain.sampler.batch_size=8",
        "pretrain.sampler.fanouts=[3,2]",
        "model.conv=rgcn",
    )
    r = pipeline.pretrain(cfg, graph=tiny_graph)
    assert r["steps_run"] == 3 and r["items_per_s"] > 0


def test_cli_verbs(tmp_path, capsys, graph_data):
    out = str(tmp_path / "cli")
    sets = [a for s in TINY for a in ("--set", s)]
    assert main(["phe", "pretrain", "--out", out, *sets]) == 0
    assert main(["phe", "evaluate", "--out", out, *sets]) == 0
    assert "Macro-F1" in capsys.readouterr().out
    assert main(["phe", "finetune", "--out", out, "--mode", "lora", *sets, "--set", "finetune.epochs=2"]) == 0
    assert "Macro-F1" in capsys.readouterr().out
    assert main(["phe", "bench", "--seeds", "a,b", "--results-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--seeds must be" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()
    assert main(["phe", "finetune", "--out", out, "--budget", "5000", *sets]) == 2
    assert "larger than the smallest class" in capsys.readouterr().err
    assert main(["phe", "evaluate", "--out", str(tmp_path / "none"), *sets]) == 2
    assert "no pre-trained encoder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad,msg", [("pretrain.weights={phe.nope: 1.0}", "unknown tasks"), ("model.hidden=15", "divisible")]
)
def test_config_errors(tmp_path, bad, msg):
    with pytest.raises(ConfigError, match=msg):
        tiny_cfg(tmp_path, bad)


def test_cli_bad_folder_is_one_line(tmp_path, capsys):
    from tests.phe.conftest import write_graph

    root = write_graph(tmp_path / "bad")
    with open(root / "pa.txt", "a") as f:
        f.write("0\t4000\n")
    assert (
        main(
            [
                "phe",
                "pretrain",
                "--data",
                str(root),
                "--out",
                str(tmp_path / "o"),
                *[a for s in TINY for a in ("--set", s)],
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "out of range" in err and err.count("\n") == 1
