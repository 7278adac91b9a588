"""CR-Net pipeline: exact perplexity, exact resume (CR-Net and ReLoRA), ReLoRA merge, GaLore optimiser, verbs."""

import math

import pytest
import torch
import torch.nn.functional as F

from pretrainkit.core.checkpoint import load_weights
from pretrainkit.core.config import load_config
from pretrainkit.core.data import BatchStream
from pretrainkit.systems.crnet.config import CRNetConfig
from pretrainkit.systems.crnet.data import pack, prepare_text_data, strip_gutenberg, token_stream
from pretrainkit.systems.crnet.galore import GaLoreAdamW
from pretrainkit.systems.crnet.model import LlamaConfig, LlamaLM
from pretrainkit.systems.crnet.pipeline import (
    LMObjective,
    ReLoRAHook,
    TokenBatches,
    evaluate,
    export_hf,
    generate,
    make_optimizer,
    perplexity,
    pretrain,
    relora_schedule,
    train_lm,
)


def quiet(_msg: str) -> None:
    pass


def _corpus(tmp_path, shared_data):
    """Four small documents cut from two real books (written to a temp folder, never into the repo)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name in ("972.txt", "3261.txt"):
        text = strip_gutenberg((shared_data / "text" / "gutenberg" / name).read_text(encoding="utf-8"))
        for k in range(2):
            (folder / f"{name[:-4]}-{k}.txt").write_text(text[10_000 + k * 8_000 : 18_000 + k * 8_000])
    return folder


def tiny_cfg(corpus, out, method="crnet", steps=6, *extra):
    return load_config(
        CRNetConfig,
        None,
        [
            f"data.source={corpus}",
            "data.vocab_size=300",
            "data.val_fraction=0.25",
            "model.preset=tiny",
            f"model.method={method}",
            "seq_len=32",
            "batch_size=4",
            "eval_batch_size=8",
            f"train.max_steps={steps}",
            "train.warmup_steps=2",
            "train.ckpt_every=3",
            "train.progress=false",
            "train.log_every=1",
            "relora.reset_every=2",
            "relora.rewarm_steps=2",
            f"out={out}",
            *extra,
        ],
    )


def test_perplexity_is_exp_of_summed_nll_over_exact_token_count():
    torch.manual_seed(0)
    lm = LlamaLM(LlamaConfig.preset("tiny", vocab_size=50, method="crnet", crnet_init="cola"))
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(1, 50, (int(n),), generator=g).tolist() for n in (7, 19, 3, 26)]
    val = pack(
        token_stream(docs, eos=0), seq_len=8, keep_tail=True, pad_id=0
    )  # 59 targets: 7 full sequences + 3
    total, n = 0.0, 0
    with torch.no_grad():  # by hand: one sequence at a time, log-softmax in float64
        for ids, labels in zip(val["input_ids"].long(), val["labels"].long()):
            logp = F.log_softmax(lm(ids[None])[0][0].double(), dim=-1)
            for t, y in enumerate(labels.tolist()):
                if y != -100:
                    total -= float(logp[t, y])
                    n += 1
    assert n == sum(map(len, docs)) + len(docs) == 59
    for bs in (1, 3, 8):
        out = perplexity(lm, val, batch_size=bs)
        assert out["val_tokens"] == n
        assert math.isclose(out["val_ppl"], math.exp(total / n), rel_tol=1e-6)
    # the mean of per-batch means (or a divisor of n + 1) would be a different number
    means = []
    with torch.no_grad():
        for i in range(0, len(val["input_ids"]), 3):
            _, loss = lm(val["input_ids"][i : i + 3].long(), val["labels"][i : i + 3].long())
            means.append(float(loss))
    assert not math.isclose(math.exp(sum(means) / len(means)), math.exp(total / n), rel_tol=1e-4)


@pytest.mark.parametrize("method", ["crnet", "relora"])
def test_resumed_run_equals_uninterrupted_run(method, tmp_path, shared_data):
    corpus = _corpus(tmp_path, shared_data)
    a = pretrain(tiny_cfg(corpus, tmp_path / "a", method), resume="auto", log=quiet, progress=False)
    assert a["steps"] == 6 and math.isfinite(a["val_ppl"])
    if method == "relora":
        assert a["relora_resets"] == [2, 4]

    class Stop(Exception):
        pass

    def stop(trainer, step):
        if step == 5:
            raise Stop  # killed after the step-3 checkpoint (and after a ReLoRA merge at step 4)

    tok = f"data.tokenizer={tmp_path / 'a' / 'tokenizer.json'}"  # the same ids as run a
    with pytest.raises(Stop):
        pretrain(
            tiny_cfg(corpus, tmp_path / "b", method, 6, tok), log=quiet, step_hooks=[stop], progress=False
        )
    assert (tmp_path / "b" / "checkpoints" / "step-00000003").is_dir()
    assert not (tmp_path / "b" / "checkpoints" / "step-00000006").exists()
    b = pretrain(tiny_cfg(corpus, tmp_path / "b", method, 6, tok), resume="auto", log=quiet, progress=False)
    wa = load_weights(tmp_path / "a" / "checkpoints" / "step-00000006" / "model.safetensors")
    wb = load_weights(tmp_path / "b" / "checkpoints" / "step-00000006" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert b["val_ppl"] == a["val_ppl"]


def test_time_limit_stops_the_arm_and_still_evaluates(tmp_path, shared_data):
    corpus = _corpus(tmp_path, shared_data)
    cfg = tiny_cfg(corpus, tmp_path / "a", "relora")
    data = prepare_text_data(cfg.data, tmp_path / "a", log=quiet)
    said = []
    r = train_lm(cfg, data, time_limit_s=1e-9, log=said.append)
    assert r["stopped_early"] and r["steps"] == 1 and r["tokens"] == 4 * 32
    assert math.isfinite(r["val_ppl"]) and math.isfinite(r["train_loss"]) and r["tokens_per_s"] > 0
    assert said == ["relora: time limit reached after 1 of 6 steps"]
    full = train_lm(cfg, data, log=quiet)
    assert not full["stopped_early"] and full["steps"] == 6 and full["relora_resets"] == [2, 4]


def test_token_batches_count_sequences_and_their_tokens():
    b = TokenBatches({"input_ids": torch.zeros(8, 16), "labels": torch.zeros(8, 16)}, 4, rank=1, world=2)
    assert b.items_per_batch == 2 and b.tokens_per_batch == 2 * 16
    assert isinstance(b, BatchStream)


def test_relora_merge_keeps_the_function_and_clears_optimizer_state():
    torch.manual_seed(0)
    lm = LlamaLM(LlamaConfig.preset("tiny", vocab_size=64, method="relora"))
    model = LMObjective(lm).eval()  # eval: no LoRA dropout, so outputs compare exactly
    cfg = load_config(CRNetConfig, None, ["model.preset=tiny", "model.method=relora"])
    opt = make_optimizer("relora", cfg, lm.cfg)(model, cfg.train)
    x = torch.randint(0, 64, (2, 16))
    lm(x, x)[1].backward()
    opt.step()  # B is no longer zero; every trainable tensor has Adam state
    before = lm(x)[0]

    class FakeTrainer:  # what the hook reads from the Trainer it is called with
        raw_model = model
        optimizer = opt

    hook = ReLoRAHook(every=5, max_steps=100, seed=0)
    hook(FakeTrainer(), 3)
    assert hook.resets == []
    hook(FakeTrainer(), 5)
    assert hook.resets == [5]
    torch.testing.assert_close(lm(x)[0], before, rtol=1e-5, atol=1e-5)  # W absorbed A B; B restarted at 0
    lora_params = {id(p) for n, p in lm.named_parameters() if n.endswith((".lora_A", ".lora_B"))}
    assert lora_params and not any(id(p) in lora_params for p in opt.state)
    assert any(id(p) not in lora_params for p in opt.state)  # norms / embeddings keep their moments


def test_relora_schedule_rewarms_after_each_merge():
    cfg = load_config(CRNetConfig, None, ["train.max_steps=100", "train.warmup_steps=10"])
    from pretrainkit.core.trainer import lr_factor

    f = relora_schedule(cfg.train, every=20, rewarm=4)
    assert f(5) == lr_factor(5, cfg.train) and f(19) == lr_factor(19, cfg.train)
    assert math.isclose(f(20), lr_factor(20, cfg.train) / 4)
    assert math.isclose(f(23), lr_factor(23, cfg.train)) and math.isclose(f(41), lr_factor(41, cfg.train) / 2)


def test_galore_method_uses_galore_optimizer_on_the_full_rank_model():
    cfg = load_config(CRNetConfig, None, ["model.preset=tiny", "model.method=galore", "galore.rank=8"])
    from pretrainkit.systems.crnet.config import llama_config

    mcfg = llama_config(cfg, vocab_size=64)
    assert mcfg.method == "full"
    opt = make_optimizer("galore", cfg, mcfg)(LMObjective(LlamaLM(mcfg)), cfg.train)
    assert isinstance(opt, GaLoreAdamW)
    proj = [g for g in opt.param_groups if g["galore"]]
    assert len(proj) == 1 and proj[0]["rank"] == 8 and len(proj[0]["params"]) == 4 * 7


def test_evaluate_generate_and_export_from_a_run(tmp_path, shared_data):
    corpus = _corpus(tmp_path, shared_data)
    run = tmp_path / "run"
    out = pretrain(tiny_cfg(corpus, run, "full", 3), log=quiet, progress=False)
    ev = evaluate(run, log=quiet)
    assert ev["val_ppl"] == pytest.approx(out["val_ppl"], rel=1e-9) and ev["val_tokens"] == out["val_tokens"]
    other = evaluate(run, data=corpus / "972-0.txt", log=quiet)  # every token of one file, run's tokenizer
    assert other["documents"] == 1 and other["val_tokens"] > 0
    text = generate(run, "The", max_new_tokens=12, seed=1)
    assert text.startswith("The") and text == generate(run, "The", max_new_tokens=12, seed=1)
    hf = export_hf(run, tmp_path / "hf")
    assert (
        (hf / "model.safetensors").is_file()
        and (hf / "config.json").is_file()
        and (hf / "tokenizer.json").is_file()
    )


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "crnet"])
def test_ddp_and_fsdp_runs_agree(tmp_path, shared_data, method):
    """Two gloo processes: DDP and FSDP2 (with checkpointing) train the same model to the same weights."""
    import json
    import os
    import subprocess
    import sys

    corpus = _corpus(tmp_path, shared_data)
    ppl = {}
    for par in ("ddp", "fsdp"):
        out = tmp_path / par
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "-m",
            "pretrainkit.cli",
            "crnet",
            "pretrain",
            "--data",
            str(corpus),
            "--out",
            str(out),
            "--method",
            method,
            "--no-progress",
            "--set",
            "model.preset=tiny",
            "--set",
            "data.vocab_size=300",
            "--set",
            "seq_len=32",
            "--set",
            "train.max_steps=4",
            "--set",
            "train.warmup_steps=1",
            "--set",
            f"train.parallel={par}",
            "--set",
            "model.recompute=checkpoint",
            "--set",
            "data.val_fraction=0.25",
        ]
        if par == "fsdp":
            cmd += ["--set", f"data.tokenizer={tmp_path / 'ddp' / 'tokenizer.json'}"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        ppl[par] = json.loads((out / "results.json").read_text())["val_ppl"]
    assert ppl["ddp"] == pytest.approx(ppl["fsdp"], rel=1e-5)
