"""The PHE bench: its smoke profile end to end (same code as the full bench), the jobs' config wiring, the
scale generator's sizes and the fitted exponent."""

import json

import pytest
import torch

from tests.phe.conftest import write_graph

torch.set_num_threads(1)


def _bench_cfg(extra=()):
    from pretrainkit.core.config import load_config
    from pretrainkit.core.profiles import profile_path
    from pretrainkit.systems.phe.pipeline import PHEConfig

    return load_config(PHEConfig, profile_path("phe", "smoke"), list(extra))


def test_job_configs_wire_each_baseline():
    from pretrainkit.systems.phe.bench import job_config

    cfg = _bench_cfg(["bench.graph_overrides={acm: [model.hidden=32]}", "bench.steps={acm: 7}"])
    edge = job_config(cfg, "acm", "edge_contrast", 3)
    assert edge.pretrain.weights == {"phe.semantic": 1.0, "phe.structure": 0.0}
    assert edge.pretrain.semantic.noise_scale == 0.0 and edge.pretrain.semantic.perturbations == 1
    assert edge.pretrain.semantic.perturbed_mode == "eval"
    assert job_config(cfg, "acm", "structure", 0).pretrain.weights == {
        "phe.semantic": 0.0,
        "phe.structure": 1.0,
    }
    assert job_config(cfg, "acm", "semantic", 0).pretrain.weights["phe.structure"] == 0.0
    phe = job_config(cfg, "acm", "phe", 3)
    assert phe.pretrain.weights == cfg.pretrain.weights and phe.pretrain.semantic.noise_scale > 0
    assert phe.pretrain.train.seed == 3 and phe.pretrain.sampler.seed == 3
    assert phe.pretrain.train.max_steps == 7 and phe.model.hidden == 32 and phe.data == "acm"
    other = job_config(cfg, "imdb", "phe", 0)
    assert (
        other.model.hidden == cfg.model.hidden
        and other.pretrain.train.max_steps == cfg.pretrain.train.max_steps
    )


def test_bench_rejects_unknown_method():
    from pretrainkit.errors import ConfigError
    from pretrainkit.systems.phe.bench import check_bench

    cfg = _bench_cfg(["bench.methods=[phe, nope]"])
    with pytest.raises(ConfigError, match="nope"):
        check_bench(cfg.bench)
    with pytest.raises(ConfigError, match="need 'phe'"):
        check_bench(_bench_cfg(["bench.methods=[phe_lora]"]).bench)


def test_scale_generator_sizes_and_slope():
    from pretrainkit.systems.phe.scale import generate, graph_size, loglog_slope

    data, target = generate(10_000, 10, 4)
    nodes, edges = graph_size(data)
    assert target == "paper" and abs(nodes - 10_000) < 200
    n_p = int(data["paper"].num_nodes)
    assert edges == 2 * (10 * n_p + n_p)  # paper-author and paper-venue, each with its reverse
    for et in data.edge_types:  # no edge outside its types' id ranges
        ei = data[et].edge_index
        assert int(ei[0].max()) < data[et[0]].num_nodes and int(ei[1].max()) < data[et[2]].num_nodes
    assert loglog_slope([1, 10, 100], [2, 20, 200]) == pytest.approx(1.0)
    assert loglog_slope([1, 10], [3, 300]) == pytest.approx(2.0)
    assert loglog_slope([5], [1]) is None


def test_bench_smoke_writes_results(tmp_path, capsys):
    from pretrainkit.systems.phe.bench import METHODS
    from pretrainkit.systems.phe.cli import bench_main

    g = write_graph(tmp_path / "g", n_paper=300, n_author=150, n_subject=6)
    out = tmp_path / "results"
    rc = bench_main(["--config", "smoke", "--results-dir", str(out), "--set", f"bench.graphs=[{g}]"])
    assert rc == 0
    payload = json.loads((out / "phe.json").read_text())
    assert (out / "phe.md").is_file() and (out / "phe_scale.png").is_file()
    head = payload["headline"]
    for key in (
        "macro_f1",
        "phe_minus_no_pretrain",
        "phe_minus_edge_contrast",
        "scaling_exponent_time",
        "peak_memory_growth",
    ):
        assert key in head
    got = head["macro_f1"][str(g)]
    assert set(got) == set(METHODS)  # the folder graph has paper features, so the floor runs too
    assert head["phe_minus_no_pretrain"][str(g)] == pytest.approx(got["phe"] - got["random"], abs=0.02)
    assert payload["summary"][str(g)]["phe"]["20"]["macro_f1"]["n"] == 2
    assert len(payload["scale"]) == 2 and "verdicts" in payload
    assert "[phe bench]" in capsys.readouterr().out  # progress printed


def test_probe_auto_keeps_the_best_validation_reading(tiny_graph):
    from pretrainkit.systems.phe.model import EncoderConfig, HeteroEncoder
    from pretrainkit.systems.phe.pipeline import LAYERS, PHEConfig, probe

    cfg = PHEConfig()
    cfg.model = EncoderConfig(hidden=8, heads=2, layers=2)
    budgets = sorted(tiny_graph.splits)[:1]
    cfg.evaluate.budgets, cfg.evaluate.c_grid = budgets, [1.0]
    torch.manual_seed(0)
    enc = HeteroEncoder.for_graph(tiny_graph.data, cfg.model)
    forced = {}
    for layer in LAYERS:
        cfg.evaluate.layer = layer
        forced[layer] = probe(enc, tiny_graph, cfg)[str(budgets[0])]
    cfg.evaluate.layer = "auto"
    auto = probe(enc, tiny_graph, cfg)[str(budgets[0])]
    assert auto["val_macro_f1"] == max(f["val_macro_f1"] for f in forced.values())
    assert auto["macro_f1"] == forced[auto["layer"]]["macro_f1"]  # the test score of the reading it kept
