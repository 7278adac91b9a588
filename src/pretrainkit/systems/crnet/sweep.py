"""`pretrainkit crnet sweep`: the same learning-rate grid for every method, scored on a dev split.

Each method trains at every (lr, block scale) of ``sweep.lrs`` x ``sweep.block_scales`` for the bench's steps,
one seed, and is scored on a dev split cut from the end of the *training* token stream (at a document end), so
the validation documents the bench reports never choose an lr. The embeddings, head and norms train at lr; the
blocks' projections at lr x block scale (for GaLore the scale is its alpha, which does exactly that). Rows go to
``<out>/sweep/rows.jsonl`` as they finish, so an interrupted sweep resumes; the table and the best setting per
method go to ``docs/results/crnet-sweep.{md,json}``, ready to copy into bench.lr / bench.block_lr_scale.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pretrainkit.core.config import from_dict
from pretrainkit.core.parallel import spawn_map
from pretrainkit.core.results import md_table, publish
from pretrainkit.errors import ConfigError
from pretrainkit.systems.crnet.bench import arm_cfg, arm_configs, arm_lr
from pretrainkit.systems.crnet.config import CRNetConfig
from pretrainkit.systems.crnet.data import (
    TextData,
    hold_out,
    prepare_text_data,
    stream_documents,
    token_stream,
)

KIND, TITLE = "crnet.sweep", "CR-Net lr sweep"
NOT_STORED = "not stored in this results file"


def dev_split(data: TextData, fraction: float, mode: str = "documents", seed: int = 1) -> TextData:
    """A dev split of the training documents, as the validation stream of the returned data.

    ``documents`` (default): about ``fraction`` of the training tokens in whole documents drawn at random
    (``seed``), the same way the validation documents were drawn from the corpus, so dev and validation are
    samples of one distribution. ``tail``: the old reading, the end of the training stream cut at a document
    end; with the shared corpus that tail is all of tinyshakespeare while validation is Gutenberg prose, so
    the two ranked the methods differently (kept only to reproduce the first sweep)."""
    if mode == "documents":
        return _dev_documents(data, fraction, seed)
    stream, eos = data.train_stream, data.tokenizer.eos_id
    ends = np.flatnonzero(stream == eos)
    ends = ends[(ends > 0) & (ends < len(stream) - 1)]  # document ends with text on both sides
    if len(ends) == 0:
        raise ConfigError(
            f"cannot cut a dev split from {len(data.train_docs)} training document(s): it needs at least two; "
            "use more documents or data.documents=paragraphs"
        )
    target = len(stream) * (1 - fraction)
    cut = int(ends[np.argmin(np.abs(ends - target))]) + 1  # the document end nearest the wanted share
    return TextData(data.tokenizer, stream[:cut], stream[cut:], data.train_docs, ["dev: tail of training"])


def _dev_documents(data: TextData, fraction: float, seed: int) -> TextData:
    eos = data.tokenizer.eos_id
    docs = stream_documents(data.train_stream, eos)
    if len(docs) < 2:
        raise ConfigError(
            f"cannot hold out dev documents from {len(docs)} training document(s): it needs at least two; "
            "use more documents or data.documents=paragraphs"
        )
    held = set(hold_out([len(d) for d in docs], fraction, seed))
    names = data.train_docs if len(data.train_docs) == len(docs) else [f"doc {i}" for i in range(len(docs))]
    keep = [i for i in range(len(docs)) if i not in held]
    return TextData(
        data.tokenizer,
        token_stream((docs[i] for i in keep), eos),
        token_stream((docs[i] for i in sorted(held)), eos),
        [names[i] for i in keep],
        [names[i] for i in sorted(held)],
    )


def grid(cfg: CRNetConfig) -> list[tuple[str, float, float]]:
    s = cfg.sweep
    if s.bench_cells:  # each method at the bench's cell only (e.g. the chosen settings at another length)
        return [(m, *arm_lr(cfg, m)) for m in s.methods]
    return [(m, lr, sc) for m in s.methods for lr in s.lrs for sc in s.block_scales]


def _key(m: str, lr: float, sc: float) -> str:
    return f"{m}|{lr:g}|{sc:g}"


def arm_label(cfg: CRNetConfig, method: str) -> str:
    """The method's name in the rows, with CR-Net's open choices where they differ from the defaults
    (e.g. ``crnet[crnet_init=cola]``), so variants sit beside each other in one rows file."""
    if method != "crnet":
        return method
    base, diffs = CRNetConfig().model, []
    for k in ("crnet_init", "crnet_beta_init", "crnet_anchor"):
        v = getattr(cfg.model, k)
        if v != getattr(base, k):
            diffs.append(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}")
    if cfg.beta_lr_scale is not None:
        diffs.append(f"beta_lr_scale={cfg.beta_lr_scale:g}")
    return f"crnet[{','.join(diffs)}]" if diffs else "crnet"


def sweep_dev(cfg: CRNetConfig, data: TextData) -> TextData:
    s = cfg.sweep
    return dev_split(data, s.dev_fraction, s.dev_split, s.dev_seed)


def _train_one(cfg: CRNetConfig, method: str, lr: float, scale: float) -> dict:
    from pretrainkit.systems.crnet.pipeline import train_lm

    torch.set_num_threads(1)
    data = sweep_dev(cfg, prepare_text_data(cfg.data, Path(cfg.out), log=lambda *_: None))
    vocab = data.tokenizer.vocab_size
    mcfg = arm_configs(replace(cfg, bench=replace(cfg.bench, methods=sorted({method, "crnet"}))), vocab)[
        method
    ]
    r = train_lm(
        arm_cfg(cfg, method, cfg.sweep.seed, lr, scale), data, method=method, mcfg=mcfg, log=lambda *_: None
    )
    return {
        "method": arm_label(cfg, method),
        "lr": lr,
        "block_scale": scale,
        "dev_ppl": r["val_ppl"],
        "train_loss": r["train_loss"],
        "steps": r["steps"],
        "wall_s": r["wall_s"],
    }


def run_sweep(
    cfg: CRNetConfig, results_dir: Path | None = None, log=print, profile: str | None = None
) -> Path:
    """Train the grid (resuming finished cells), then write the table and each method's best cell."""
    t0 = time.time()
    folder = Path(cfg.out) / "sweep"
    folder.mkdir(parents=True, exist_ok=True)
    rows_file = folder / "rows.jsonl"
    rows = (
        [json.loads(x) for x in rows_file.read_text().splitlines() if x.strip()] if rows_file.exists() else []
    )
    done = {_key(r["method"], r["lr"], r["block_scale"]) for r in rows}
    data = prepare_text_data(cfg.data, Path(cfg.out), log=log)  # tokenise once; workers read the cache
    dev = sweep_dev(cfg, data)
    todo = [g for g in grid(cfg) if _key(arm_label(cfg, g[0]), *g[1:]) not in done]
    log(
        f"sweep: {len(grid(cfg))} cells, {len(todo)} to train; dev split {len(dev.val_stream):,} tokens, "
        f"training {len(dev.train_stream):,}"
    )

    n_before = len(rows)

    def record(r: dict) -> None:
        rows.append(r)
        with open(rows_file, "a") as f:
            f.write(json.dumps(r) + "\n")
        log(
            f"[{len(rows) - n_before}/{len(todo)}] {r['method']} lr {r['lr']:g} x {r['block_scale']:g}: dev ppl "
            f"{r['dev_ppl']:.2f} ({r['wall_s']:.0f} s, elapsed {(time.time() - t0) / 60:.1f} min)"
        )

    for r in spawn_map(_train_one, [(cfg, *g) for g in todo], cfg.sweep.workers, ordered=False):
        record(r)
    data_out = {
        "rows": rows,
        "dev_tokens": len(dev.val_stream),
        "dev_documents": dev.val_docs,
        "wall_s": time.time() - t0,
    }
    return publish(
        cfg.sweep.name,
        data_out,
        render,
        kind=KIND,
        seeds=[cfg.sweep.seed],
        out_dir=results_dir,
        title=TITLE,
        config=cfg,
        profile=profile,
    )


def best_cells(rows: list[dict]) -> dict[str, dict]:
    """Per method, the cell with the lowest dev perplexity (non-finite ones never win)."""
    best: dict[str, dict] = {}
    for r in rows:
        if not np.isfinite(r["dev_ppl"]):
            continue
        if r["method"] not in best or r["dev_ppl"] < best[r["method"]]["dev_ppl"]:
            best[r["method"]] = r
    return best


def render(payload: dict) -> tuple[dict, str, dict]:
    """Headline and report from a stored sweep JSON (rows, config, dev-split size, wall time)."""
    cfg = from_dict(CRNetConfig, payload["config"])
    rows = payload["rows"]
    s = cfg.sweep
    best = best_cells(rows)
    cells = {_key(r["method"], r["lr"], r["block_scale"]): r for r in rows}
    # every cell in the rows file, also those of earlier calls with another grid
    cols = sorted({(r["lr"], r["block_scale"]) for r in rows}, key=lambda c: (c[0], -c[1]))
    table = []
    for m in dict.fromkeys(r["method"] for r in rows):
        line = [m]
        for lr, sc in cols:
            r = cells.get(_key(m, lr, sc))
            txt = "—" if r is None else f"{r['dev_ppl']:.1f}"
            line.append(f"**{txt}**" if r is not None and best.get(m) is r else txt)
        table.append(line)
    tokens = cfg.train.max_steps * cfg.batch_size * cfg.seq_len
    dev_tokens, wall = payload.get("dev_tokens"), payload.get("wall_s")
    dev_size = f"{dev_tokens:,} tokens" if dev_tokens is not None else f"its size {NOT_STORED}"
    note = payload.get("config_source")
    # results written before dev_split existed used the tail (their stored config has no such key)
    dev_mode = payload["config"].get("sweep", {}).get("dev_split", "tail")
    dev_names = ", ".join(payload.get("dev_documents") or []) or "names not stored"
    body = "\n".join(
        [
            "## Protocol",
            "",
            *([f"- Config: {note}."] if note else []),
            (
                f"- Each cell: one run (n=1) of `{cfg.train.max_steps}` steps x {cfg.batch_size} x {cfg.seq_len} tokens "
                f"({tokens:,} tokens), seed {s.seed}, the bench's schedule and model (`{cfg.model.preset}`)."
            ),
            (
                f"- Scored on a dev split: about the last {s.dev_fraction:g} of the training token stream, cut at the "
                f"nearest document end ({dev_size}; evenly spaced sequences up to {cfg.data.val_max_tokens:,} "
                "tokens), trained on the rest. The bench's validation documents are never used here. (The first "
                "sweep's reading: on the shared corpus this tail is tinyshakespeare, while validation is Gutenberg "
                "prose; later sweeps hold out random training documents instead.)"
                if dev_mode == "tail"
                else f"- Scored on a dev split: whole training documents drawn at random (seed {s.dev_seed}), about "
                f"{s.dev_fraction:g} of the training tokens ({dev_size}: {dev_names}; evenly spaced sequences up to "
                f"{cfg.data.val_max_tokens:,} tokens), drawn the way the validation documents were drawn from the "
                "corpus; trained on the rest. The bench's validation documents are never used here."
            ),
            (
                "- lr applies to embeddings, head and norms; lr x block scale to the blocks' projections (and CR-Net's "
                "betas). For GaLore the block scale is its alpha (projected updates x alpha), the same role."
            ),
            "",
            "## Dev perplexity (bold: the method's best; one run per cell, n=1)",
            "",
            md_table(["method"] + [f"lr {lr:g} x {sc:g}" for lr, sc in cols], table),
            "",
            "## Best setting per method (n=1)",
            "",
            md_table(
                ["method", "lr", "block scale", "dev ppl"],
                [
                    [m, f"{r['lr']:g}", f"{r['block_scale']:g}", f"{r['dev_ppl']:.2f}"]
                    for m, r in best.items()
                ],
            ),
            "",
            f"The tables hold every cell in `{Path(cfg.out) / 'sweep' / 'rows.jsonl'}`: this call's and those "
            "of earlier calls with other grids (a call trains only the cells not in the file yet). "
            + (
                f"Wall time of this call: {wall / 60:.1f} min."
                if wall is not None
                else f"Wall time {NOT_STORED}."
            ),
        ]
    )
    headline = {
        "best": {
            m: {"lr": r["lr"], "block_scale": r["block_scale"], "dev_ppl": round(r["dev_ppl"], 2)}
            for m, r in best.items()
        }
    }
    return headline, body, {}
