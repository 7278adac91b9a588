"""Block lr scale (the lr structure every bench arm can get) and the sweep's dev split."""

import json

import numpy as np
import pytest

from pretrainkit.core.config import load_config
from pretrainkit.errors import ConfigError
from pretrainkit.systems.crnet.bench import arm_cfg, arm_lr
from pretrainkit.systems.crnet.config import CRNetConfig, llama_config
from pretrainkit.systems.crnet.data import TextData
from pretrainkit.systems.crnet.model import LlamaLM
from pretrainkit.systems.crnet.pipeline import LMObjective, make_optimizer
from pretrainkit.systems.crnet.sweep import best_cells, dev_split


def _lrs_by_name(cfg: CRNetConfig, method: str) -> dict[str, float]:
    mcfg = llama_config(cfg, 64, method=method)
    lm = LlamaLM(mcfg)
    opt = make_optimizer(method, cfg, mcfg)(LMObjective(lm), cfg.train)
    names = {id(p): n for n, p in lm.named_parameters()}
    return {names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}


def test_block_scale_lowers_only_block_projections_and_betas():
    cfg = load_config(CRNetConfig, None, ["model.preset=tiny", "train.lr=0.01", "block_lr_scale=0.1"])
    lrs = _lrs_by_name(cfg, "crnet")
    assert lrs["embed_tokens.weight"] == lrs["lm_head.weight"] == lrs["norm.weight"] == 0.01
    assert lrs["layers.0.input_layernorm.weight"] == 0.01
    assert lrs["layers.0.self_attn.q_proj.weight"] == pytest.approx(1e-3)
    betas = [n for n in lrs if "beta" in n]
    assert betas and all(lrs[n] == pytest.approx(1e-3) for n in betas)
    low = [n for n in lrs if n.startswith("layers.1.mlp")]
    assert low and all(lrs[n] == pytest.approx(1e-3) for n in low)


def test_beta_lr_scale_moves_only_the_betas():
    cfg = load_config(
        CRNetConfig, None, ["model.preset=tiny", "train.lr=0.01", "block_lr_scale=0.1", "beta_lr_scale=1.0"]
    )
    lrs = _lrs_by_name(cfg, "crnet")
    betas = [n for n in lrs if n.endswith(".beta")]
    assert betas and all(lrs[n] == 0.01 for n in betas)
    assert all(
        lrs[n] == pytest.approx(1e-3)
        for n in lrs
        if n.startswith("layers.1.") and "layernorm" not in n and not n.endswith(".beta")
    )
    with pytest.raises(ConfigError, match="beta_lr_scale"):
        load_config(CRNetConfig, None, ["beta_lr_scale=-1"])


def test_sweep_labels_crnet_variants_apart():
    from pretrainkit.systems.crnet.sweep import arm_label

    assert arm_label(load_config(CRNetConfig, None, []), "crnet") == "crnet"
    cfg = load_config(
        CRNetConfig, None, ["model.crnet_init=cola", "model.crnet_beta_init=0.5", "beta_lr_scale=1"]
    )
    assert arm_label(cfg, "crnet") == "crnet[crnet_init=cola,crnet_beta_init=0.5,beta_lr_scale=1]"
    assert arm_label(cfg, "full") == "full"  # the open choices are CR-Net's only


def test_sweep_at_bench_cells_trains_one_cell_per_method():
    from pretrainkit.systems.crnet.sweep import grid

    cfg = load_config(
        CRNetConfig,
        None,
        [
            "sweep.methods=[full, galore]",
            "sweep.bench_cells=true",
            "bench.lr={full: 0.01, galore: 0.003}",
            "bench.block_lr_scale={full: 0.1}",
        ],
    )
    assert grid(cfg) == [("full", 0.01, 0.1), ("galore", 0.003, cfg.galore.scale)]


def test_block_scale_one_gives_one_lr_and_the_same_training():
    cfg = load_config(CRNetConfig, None, ["model.preset=tiny", "train.lr=0.01"])
    assert set(_lrs_by_name(cfg, "full").values()) == {0.01}


def test_galore_arm_takes_the_block_scale_as_its_alpha():
    cfg = load_config(
        CRNetConfig,
        None,
        [
            "model.preset=tiny",
            "bench.lr={galore: 0.01, full: 0.003}",
            "bench.block_lr_scale={galore: 0.1, full: 0.25}",
        ],
    )
    assert arm_lr(cfg, "galore") == (0.01, 0.1) and arm_lr(cfg, "full") == (0.003, 0.25)
    assert arm_lr(cfg, "crnet") == (cfg.train.lr, 1.0)
    g = arm_cfg(cfg, "galore", 3, 0.01, 0.1)
    assert g.galore.scale == 0.1 and g.block_lr_scale == 1.0 and g.train.seed == 3
    f = arm_cfg(cfg, "full", 3, 0.003, 0.25)
    assert f.block_lr_scale == 0.25 and f.galore.scale == cfg.galore.scale and f.train.lr == 0.003


def test_bad_scales_and_sweep_methods_are_refused():
    with pytest.raises(ConfigError, match="block_lr_scale"):
        load_config(CRNetConfig, None, ["block_lr_scale=0"])
    with pytest.raises(ConfigError, match="unknown method"):
        load_config(CRNetConfig, None, ["sweep.methods=[full, nosuch]"])
    with pytest.raises(ConfigError, match="dev_fraction"):
        load_config(CRNetConfig, None, ["sweep.dev_fraction=1.5"])


class _Tok:
    eos_id = 0


def test_dev_split_cuts_at_the_document_end_nearest_the_share():
    docs = [np.arange(1, 1 + n, dtype=np.int32) for n in (50, 30, 10, 10)]
    stream = np.concatenate([np.zeros(1, np.int32)] + [np.concatenate([d, [0]]) for d in docs]).astype(
        np.int32
    )
    data = TextData(_Tok(), stream, np.zeros(1, np.int32), ["a", "b", "c", "d"], ["v"])
    out = dev_split(
        data, 0.1, mode="tail"
    )  # 105 tokens: the wanted cut (94.5) is nearest the end of document c (at 93)
    assert np.array_equal(np.concatenate([out.train_stream, out.val_stream]), stream)
    assert out.train_stream[-1] == 0 and len(out.val_stream) == 11 and out.val_stream[-1] == 0
    assert 0 not in out.val_stream[:-1]  # exactly one whole document (d) and its EOS


def test_dev_split_needs_two_documents():
    one = np.concatenate([[0], np.arange(1, 40), [0]]).astype(np.int32)
    with pytest.raises(ConfigError, match="at least two"):
        dev_split(TextData(_Tok(), one, one, ["a"], ["v"]), 0.1, mode="tail")
    with pytest.raises(ConfigError, match="at least two"):
        dev_split(TextData(_Tok(), one, one, ["a"], ["v"]), 0.1)


def test_dev_documents_are_whole_random_training_documents_disjoint_from_validation():
    from pretrainkit.systems.crnet.data import stream_documents

    sizes = [40, 30, 25, 20, 15, 12, 10, 8]
    docs = [np.full(n, k + 1, dtype=np.int32) for k, n in enumerate(sizes)]
    stream = np.concatenate([np.zeros(1, np.int32)] + [np.concatenate([d, [0]]) for d in docs]).astype(
        np.int32
    )
    names = [f"d{k}" for k in range(len(docs))]
    val = np.array([0, 99, 99, 0], dtype=np.int32)
    data = TextData(_Tok(), stream, val, names, ["v"])
    picks = set()
    for seed in range(6):
        out = dev_split(data, 0.2, seed=seed)
        kept, held = stream_documents(out.train_stream, 0), stream_documents(out.val_stream, 0)
        # every training document lands whole on exactly one side, named as it was
        assert sorted(map(tuple, kept + held)) == sorted(map(tuple, docs))
        assert sorted(out.train_docs + out.val_docs) == names and not set(out.val_docs) & {"v"}
        assert [int(d[0]) for d in held] == [int(n[1:]) + 1 for n in out.val_docs]
        assert 0.1 * len(stream) < len(out.val_stream) < 0.4 * len(stream)
        assert 99 not in out.train_stream and 99 not in out.val_stream  # validation tokens stay out
        picks.add(tuple(out.val_docs))
    assert len(picks) > 1  # drawn at random, not always the tail
    assert dev_split(data, 0.2, seed=3).val_docs == dev_split(data, 0.2, seed=3).val_docs  # but seeded


def test_best_cell_ignores_diverged_runs():
    rows = [
        {"method": "full", "lr": 0.01, "block_scale": 1.0, "dev_ppl": float("nan")},
        {"method": "full", "lr": 0.003, "block_scale": 1.0, "dev_ppl": 200.0},
        {"method": "full", "lr": 0.01, "block_scale": 0.1, "dev_ppl": 150.0},
    ]
    assert best_cells(rows)["full"]["block_scale"] == 0.1


def test_sweep_trains_the_grid_resumes_and_writes_the_best(tmp_path, shared_data):
    from pretrainkit.systems.crnet.data import strip_gutenberg
    from pretrainkit.systems.crnet.sweep import run_sweep

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    text = strip_gutenberg((shared_data / "text" / "gutenberg" / "972.txt").read_text(encoding="utf-8"))
    for k in range(4):
        (corpus / f"d{k}.txt").write_text(text[10_000 + k * 6_000 : 16_000 + k * 6_000])
    cfg = load_config(
        CRNetConfig,
        None,
        [
            f"data.source={corpus}",
            "data.vocab_size=300",
            "data.val_fraction=0.25",
            "model.preset=tiny",
            "seq_len=32",
            "batch_size=4",
            "eval_batch_size=8",
            "train.max_steps=3",
            "train.warmup_steps=1",
            f"out={tmp_path / 'run'}",
            "sweep.methods=[full]",
            "sweep.lrs=[0.003]",
            "sweep.block_scales=[1.0, 0.1]",
            "sweep.workers=1",
            "sweep.dev_fraction=0.3",
        ],
    )
    md = run_sweep(cfg, results_dir=tmp_path / "res", log=lambda *_: None)
    rows = (tmp_path / "run" / "sweep" / "rows.jsonl").read_text().splitlines()
    assert len(rows) == 2 and md.is_file() and "Best setting per method" in md.read_text()
    run_sweep(cfg, results_dir=tmp_path / "res", log=lambda *_: None)  # nothing left to train
    assert len((tmp_path / "run" / "sweep" / "rows.jsonl").read_text().splitlines()) == 2
    cfg.sweep.methods, cfg.sweep.block_scales, cfg.beta_lr_scale = ["crnet"], [1.0], 1.0
    run_sweep(cfg, results_dir=tmp_path / "res", log=lambda *_: None)  # a variant trains beside the others
    rows = (tmp_path / "run" / "sweep" / "rows.jsonl").read_text().splitlines()
    assert len(rows) == 3 and json.loads(rows[-1])["method"] == "crnet[beta_lr_scale=1]"


@pytest.mark.parametrize("profile", ["bench", "cpu-base"])
def test_every_low_rank_method_trains_at_least_crnets_parameters_at_the_smallest_such_rank(profile):
    from pretrainkit.core.profiles import profile_path
    from pretrainkit.systems.crnet.bench import arm_configs
    from pretrainkit.systems.crnet.config import llama_config
    from pretrainkit.systems.crnet.model import count_parameters

    cfg = load_config(CRNetConfig, profile_path("crnet", profile), [])
    arms = arm_configs(cfg, 4096)
    target = count_parameters(arms["crnet"], True)
    for m in ("lowrank", "cola", "lora", "relora"):
        assert count_parameters(arms[m], True) >= target, m
        smaller = llama_config(cfg, 4096, method=m, recompute="none", rank=arms[m].rank - 1)
        assert count_parameters(smaller, True) < target, m  # the smallest such rank
    assert count_parameters(arms["lora"], False) > count_parameters(arms["lora"], True)  # frozen apart


def test_total_alignment_reproduces_the_first_bench():
    from pretrainkit.core.profiles import profile_path
    from pretrainkit.systems.crnet.bench import arm_configs

    cfg = load_config(CRNetConfig, profile_path("crnet", "bench"), ["bench.align_by=total"])
    ranks = {m: mc.rank for m, mc in arm_configs(cfg, 4096).items()}
    assert ranks["lora"] == ranks["relora"] == 32 and ranks["cola"] == ranks["lowrank"] == 45  # as stored


def test_cpu_base_profile_is_the_new_regime():
    from pretrainkit.core.profiles import profile_path
    from pretrainkit.systems.crnet.config import llama_config
    from pretrainkit.systems.crnet.model import count_parameters

    cfg = load_config(CRNetConfig, profile_path("crnet", "cpu-base"), [])
    assert cfg.batch_size * cfg.seq_len * cfg.train.grad_accum >= 16_384
    full = llama_config(cfg, 4096, method="full")
    embed = full.vocab_size * full.hidden  # tied: one table
    assert full.tie_embeddings and embed / count_parameters(full, False) < 0.25
