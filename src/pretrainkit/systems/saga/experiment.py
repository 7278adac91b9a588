"""The grid of downstream evaluations behind `saga demo`, `saga evaluate` and `bench saga`.

Rows ``{label, split, budget, seed, method, acc, f1, ...}`` are appended to ``<out>/rows.jsonl`` as they are
computed, so an interrupted grid resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from pretrainkit.core.checkpoint import atomic_write_text
from pretrainkit.systems.saga.features import mix_features, stat_features, unit_index
from pretrainkit.systems.saga.pipeline import SagaPipeline

METHODS = ("saga", "saga-linear", "equal", "limu-bert", "limu-bert-linear", "scratch", "floor", "full-label",
           "saga-A-equal", "saga-A")
DESCRIPTIONS = {
    "saga": "Saga reading B: four encoders (one per task), frozen features mixed by GP-searched weights, GRU head",
    "saga-linear": "the same searched mix with a ridge linear probe on time-pooled features",
    "equal": "reading B with equal task weights, GRU head",
    "limu-bert": "LIMU-BERT: the point-level (span-mask) encoder alone, GRU head",
    "limu-bert-linear": "LIMU-BERT features with the ridge linear probe",
    "scratch": "the same GRU head trained from scratch on raw IMU units with the same labels",
    "floor": "ridge classifier on per-unit statistics and FFT magnitudes",
    "full-label": "GRU on raw IMU trained on every training label (the denominator of the 90 % claim)",
    "saga-A-equal": "reading A: one encoder trained on the equally weighted sum of the four losses, GRU head",
    "saga-A": "reading A with weights searched by short continued pre-training per trial, GRU head",
}


class Grid:
    def __init__(self, pipe: SagaPipeline, methods: tuple[str, ...] = METHODS, a_search_budget: int = 20):
        self.pipe, self.methods, self.a_budget = pipe, methods, a_search_budget
        self.path = pipe.out / "rows.jsonl"
        self.rows: list[dict] = []
        if self.path.is_file():
            self.rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        self.done = {(r["label"], r["split"], r["budget"], r["seed"], r["method"]) for r in self.rows}

    def _add(self, row: dict) -> None:
        self.rows.append(row)
        self.done.add((row["label"], row["split"], row["budget"], row["seed"], row["method"]))
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def _want(self, label, split, budget, seed, method) -> bool:
        return method in self.methods and (label, split, budget, seed, method) not in self.done

    def run(self) -> list[dict]:
        cfg, pipe = self.pipe.cfg, self.pipe
        pipe.out.mkdir(parents=True, exist_ok=True)
        splits = sorted({s for _, s in cfg.combos()}, key=["random", "subject", "time"].index)
        raw = pipe.unit_features(("raw",), None)
        stats = stat_features(raw.numpy())
        for split in splits:
            t0 = time.time()
            encs = pipe.encoders_b(split)
            feats = {t: pipe.unit_features((split, "B", t), e) for t, e in encs.items()}
            pipe.log(f"[{split}] reading-B encoders ready ({time.time() - t0:.0f}s)")
            feats_a = self._reading_a_equal(split)
            train_w, val_w, test_w = pipe.split(split)
            test, val_units = unit_index(test_w, pipe.per_window), unit_index(val_w, pipe.per_window)
            for label in [lab for lab, s in cfg.combos() if s == split]:
                for seed in cfg.downstream.seeds:
                    if self._want(label, split, 0, seed, "full-label"):
                        r = pipe.fit_gru(raw, label, unit_index(train_w, pipe.per_window), val_units, test, seed,
                                         full=True)
                        self._add(dict(label=label, split=split, budget=0, seed=seed, method="full-label", **r))
                a_feats = self._reading_a_search(split, label) if "saga-A" in self.methods else None
                for budget in cfg.downstream.budgets:
                    for seed in cfg.downstream.seeds:
                        self._draw(split, label, budget, seed, feats, feats_a, a_feats, raw, stats, test)
                pipe.log(f"[{split}/{label}] done ({time.time() - t0:.0f}s since split start)")
        return self.rows

    def _draw(self, split, label, budget, seed, feats, feats_a, a_feats, raw, stats, test) -> None:
        pipe, key = self.pipe, (label, split, budget, seed)
        if all(not self._want(*key, m) for m in self.methods if m != "full-label"):
            return
        fit, val = pipe.budget(label, split, budget, seed)
        idx = np.sort(np.concatenate([fit, val]))
        base = dict(label=label, split=split, budget=budget, seed=seed)
        if self._want(*key, "saga") or self._want(*key, "saga-linear"):
            w, cv = pipe.search_b(feats, label, split, budget, seed, idx)
            mixed = mix_features(feats, w)
            if self._want(*key, "saga"):
                self._add(dict(base, method="saga", weights=w, search_cv=cv, **pipe.fit_gru(mixed, label, fit, val,
                                                                                           test, seed)))
            if self._want(*key, "saga-linear"):
                self._add(dict(base, method="saga-linear", weights=w,
                               **pipe.linear_probe(mixed.mean(1).numpy(), label, idx, test)))
        if self._want(*key, "equal"):
            eq = {t: 1.0 / len(feats) for t in feats}
            self._add(dict(base, method="equal", **pipe.fit_gru(mix_features(feats, eq), label, fit, val, test, seed)))
        point = feats.get("saga.point")
        if point is not None and self._want(*key, "limu-bert"):
            self._add(dict(base, method="limu-bert", **pipe.fit_gru(point, label, fit, val, test, seed)))
        if point is not None and self._want(*key, "limu-bert-linear"):
            self._add(dict(base, method="limu-bert-linear", **pipe.linear_probe(point.mean(1).numpy(), label, idx, test)))
        if self._want(*key, "scratch"):
            self._add(dict(base, method="scratch", **pipe.fit_gru(raw, label, fit, val, test, seed)))
        if self._want(*key, "floor"):
            self._add(dict(base, method="floor", **pipe.linear_probe(stats, label, idx, test)))
        if feats_a is not None and self._want(*key, "saga-A-equal"):
            self._add(dict(base, method="saga-A-equal", **pipe.fit_gru(feats_a, label, fit, val, test, seed)))
        if a_feats is not None and budget >= self.a_budget and self._want(*key, "saga-A"):
            f, w = a_feats
            self._add(dict(base, method="saga-A", weights=w, **pipe.fit_gru(f, label, fit, val, test, seed)))

    # ---- reading A -----------------------------------------------------------------------------------
    def _a_equal_path(self, split: str) -> Path:
        steps = self.pipe.cfg.pretrain.train.max_steps
        return self.pipe.out / "pretrain" / split / "A-equal" / "checkpoints" / f"step-{steps:08d}" / "model.safetensors"

    def _reading_a_equal(self, split: str) -> torch.Tensor | None:
        if split != "random" or not ({"saga-A-equal", "saga-A"} & set(self.methods)):
            return None
        tasks = self.pipe.cfg.pretrain.tasks
        enc = self.pipe.pretrain(split, tasks, {t: 1.0 / len(tasks) for t in tasks}, tag="A-equal")
        return self.pipe.unit_features((split, "A-equal"), enc)

    def _reading_a_search(self, split: str, label: str):
        """Reading A's search: each trial continues A-equal's pre-training for a few steps with the trial's
        weights and scores a cross-validated probe on a budget-``a_search_budget`` draw (seed 0)."""
        if split != "random":
            return None
        pipe, cfg = self.pipe, self.pipe.cfg
        tasks, init = cfg.pretrain.tasks, str(self._a_equal_path(split))
        fit, val = pipe.budget(label, split, self.a_budget, 0)
        idx = np.sort(np.concatenate([fit, val]))

        def objective(w: dict[str, float]) -> float:
            tag = "A-trial-" + hashlib.sha1(json.dumps(w, sort_keys=True).encode()).hexdigest()[:10]
            enc = pipe.pretrain(split, tasks, w, tag=tag, steps=cfg.pretrain.a_trial_steps, init_from=init)
            pooled = pipe.unit_features((split, tag), enc).mean(1).numpy()
            return pipe.cv_score(pooled, label, idx, 0)

        from pretrainkit.search.task_weights import search_task_weights

        from dataclasses import replace

        scfg = replace(cfg.search, n_trials=max(4, cfg.search.n_trials // 3), n_startup_trials=3,
                       study_name=f"A-{label}-{split}-b{self.a_budget}")
        res = search_task_weights(objective, tasks, scfg, run_dir=pipe.out / "search", progress=False)
        enc = pipe.pretrain(split, tasks, res.best_weights, tag=f"A-best-{label}",
                            steps=max(cfg.pretrain.a_trial_steps, cfg.pretrain.train.max_steps // 4), init_from=init)
        pipe.log(f"[{split}/{label}] reading-A weights {_fmt_w(res.best_weights)} (cv {res.best_value:.3f})")
        return pipe.unit_features((split, f"A-best-{label}"), enc), res.best_weights


def _fmt_w(w: dict[str, float]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v:.2f}" for k, v in w.items())


def write_rows_json(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, json.dumps(rows, indent=1))
