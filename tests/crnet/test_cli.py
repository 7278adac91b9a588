"""`pretrainkit crnet ...`: help text, one-line errors for bad input (exit 2), a tiny end-to-end run."""

import pytest

from pretrainkit.cli import main
from pretrainkit.systems.crnet.data import strip_gutenberg

TINY = ["--set", "model.preset=tiny", "--set", "data.vocab_size=300", "--set", "seq_len=32", "--no-progress"]


def one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pretrainkit: error: ") and "\n" not in err, err
    for n in needles:
        assert n in err, err
    return err


def test_help_lists_every_verb_and_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["crnet", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for verb in ("pretrain", "evaluate", "generate", "export-hf", "bench"):
        assert verb in out
    with pytest.raises(SystemExit):
        main(["crnet", "pretrain", "--help"])
    out = capsys.readouterr().out
    for opt in (
        "--config",
        "--set",
        "--out",
        "--data",
        "--method",
        "--resume",
        "--threads",
        "galore",
        "torchrun",
    ):
        assert opt in out
    with pytest.raises(SystemExit):
        main(["bench", "crnet", "--help"])
    assert "--methods" in capsys.readouterr().out


def test_empty_corpus_file(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("Real text here.\n\nMore text.\n")
    (tmp_path / "b.txt").write_text("")
    one_line_error(
        capsys,
        ["crnet", "pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "run"), *TINY],
        "b.txt is empty",
    )


def test_non_utf8_corpus_file(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("Real text here.\n")
    (tmp_path / "old.txt").write_bytes("na\xefve caf\xe9".encode("latin-1"))
    one_line_error(
        capsys,
        ["crnet", "pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "run"), *TINY],
        "old.txt is not UTF-8",
    )


def test_sequence_longer_than_context(tmp_path, capsys):
    one_line_error(
        capsys,
        ["crnet", "pretrain", "--out", str(tmp_path), *TINY, "--set", "seq_len=300"],
        "seq_len 300 exceeds the model's context max_seq_len=256",
    )


def test_rank_wider_than_layer(tmp_path, capsys):
    one_line_error(
        capsys,
        ["crnet", "pretrain", "--out", str(tmp_path), *TINY, "--set", "model.rank=65"],
        "rank 65",
        "1..64",
    )


def test_unknown_method(tmp_path, capsys):
    one_line_error(
        capsys,
        ["crnet", "pretrain", "--out", str(tmp_path), *TINY, "--method", "dora"],
        "unknown method 'dora'",
        "crnet",
        "galore",
    )
    one_line_error(capsys, ["bench", "crnet", "--methods", "full,dora"], "unknown method 'dora'")


def test_missing_run_directory(tmp_path, capsys):
    one_line_error(
        capsys, ["crnet", "evaluate", "--run", str(tmp_path / "nothing")], "not a CR-Net run directory"
    )


def test_pretrain_evaluate_generate_end_to_end(tmp_path, capsys, shared_data):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    text = strip_gutenberg(
        (shared_data / "text" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    )
    for k in range(3):
        (corpus / f"part{k}.txt").write_text(text[k * 6000 : (k + 1) * 6000])
    run = tmp_path / "run"
    argv = [
        "crnet",
        "pretrain",
        "--data",
        str(corpus),
        "--out",
        str(run),
        *TINY,
        "--set",
        "train.max_steps=4",
        "--set",
        "train.warmup_steps=1",
        "--set",
        "data.val_fraction=0.3",
        "--method",
        "lowrank",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "lowrank: 4 steps, validation perplexity" in out
    assert main(["crnet", "evaluate", "--run", str(run), "--json", str(tmp_path / "ev.json")]) == 0
    assert "perplexity" in capsys.readouterr().out and (tmp_path / "ev.json").is_file()
    assert main(["crnet", "generate", "--run", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")
    # a fresh start over existing checkpoints is refused rather than silently mixing runs
    one_line_error(capsys, [*argv, "--resume", "none"], "already holds checkpoints")
    # a resume that does not fit the checkpoints is refused before anything in the run directory changes
    before = {f: f.read_bytes() for f in run.rglob("*") if f.is_file() and f.name != ".lock"}
    one_line_error(capsys, [*argv[:-1], "full"], "method: 'lowrank' there, 'full' asked for")
    one_line_error(capsys, [*argv, "--set", "model.hidden=96"], "another model", "hidden")
    one_line_error(capsys, [*argv, "--set", "data.split_seed=5"], "'data'")
    assert {f: f.read_bytes() for f in run.rglob("*") if f.is_file() and f.name != ".lock"} == before
    assert main(["crnet", "evaluate", "--run", str(run)]) == 0
    capsys.readouterr()
    # exporting a low-rank run to the HF layout is refused in one line
    one_line_error(
        capsys, ["crnet", "export-hf", "--run", str(run), "--to", str(tmp_path / "hf")], "full-rank"
    )
