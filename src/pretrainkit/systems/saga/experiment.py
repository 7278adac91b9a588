"""The grid of downstream evaluations behind `saga demo`, `saga evaluate` and `bench saga`.

Rows ``{label, split, budget, seed, method, acc, f1, ...}`` are appended to ``<out>/rows-<label>-<split>.jsonl``
as they are computed, so an interrupted grid resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import replace

import numpy as np
import torch

from pretrainkit.core.parallel import spawn_map
from pretrainkit.search.task_weights import search_task_weights
from pretrainkit.systems.saga.features import mix_features, stat_features, unit_index
from pretrainkit.systems.saga.pipeline import SagaPipeline

# LIMU-BERT at Saga's pre-training compute and feature width: method -> variant of limubert_equal_compute().
EQUAL_COMPUTE = {"seeds": "limu-bert-4seeds", "long": "limu-bert-4x-steps"}
METHODS = (
    "saga",
    "saga-linear",
    "equal",
    "limu-bert",
    "limu-bert-linear",
    "scratch",
    "floor",
    "full-label",
    "saga-A-equal",
    "saga-A",
    "full-label-forest",
    "full-label-gbt",
    "full-label-saga",
    *EQUAL_COMPUTE.values(),
    "equal-linear",
    "best-single-linear",
    "grid-oracle-linear",
)
# The demo skips reading A (its weight search re-trains per trial) and the extra full-label references.
DEMO_METHODS = METHODS[:8]
# Every full-label candidate; the ratios' denominator is the one with the best validation accuracy.
FULL_LABEL = ("full-label", "full-label-forest", "full-label-gbt", "full-label-saga")
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
    "full-label-forest": "random forest on the floor's per-unit features, every training label "
    "(min_samples_leaf chosen on the validation split)",
    "full-label-gbt": "histogram gradient-boosted trees on the floor's features, every training label "
    "(learning rate chosen on the validation split)",
    "full-label-saga": "the whole Saga pipeline with every training label: weights searched on them, GRU head",
    "limu-bert-4seeds": "LIMU-BERT at Saga's compute and width: one point encoder per Saga task, from other "
    "seeds, features concatenated, GRU head",
    "equal-linear": "equal task weights with the ridge probe (the search's own head)",
    "best-single-linear": "the single task whose encoder the in-budget CV prefers, ridge probe",
    "grid-oracle-linear": "REFERENCE ONLY, chosen on test labels: the best weights of a coarse simplex grid "
    "(ridge probe); shows how much any weighting could gain, never used to choose anything",
    "limu-bert-4x-steps": "LIMU-BERT at Saga's compute: one point encoder pre-trained as many times as long as "
    "Saga has tasks, GRU head",
}


class Grid:
    """Evaluates every (label, split, budget, seed, method) of the config; rows go to one file per
    (label, split), so combos can run in parallel processes and an interrupted grid resumes."""

    def __init__(self, pipe: SagaPipeline, methods: tuple[str, ...] = METHODS, a_search_budget: int = 20):
        self.pipe, self.methods, self.a_budget = pipe, methods, a_search_budget
        self.rows: list[dict] = []
        for f in sorted(pipe.out.glob("rows-*.jsonl")):
            self.rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        self.done = {(r["label"], r["split"], r["budget"], r["seed"], r["method"]) for r in self.rows}

    @property
    def uses_a(self) -> bool:
        return bool({"saga-A-equal", "saga-A"} & set(self.methods))

    @property
    def uses_equal_compute(self) -> bool:
        return bool(set(EQUAL_COMPUTE.values()) & set(self.methods))

    def _add(self, row: dict) -> None:
        self.rows.append(row)
        self.done.add((row["label"], row["split"], row["budget"], row["seed"], row["method"]))
        with open(self.pipe.out / f"rows-{row['label']}-{row['split']}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def _want(self, label, split, budget, seed, method) -> bool:
        return method in self.methods and (label, split, budget, seed, method) not in self.done

    def run(self, workers: int = 1) -> list[dict]:
        """Pre-train (once for all splits), then evaluate each (label, split), in ``workers`` processes if > 1."""
        pipe = self.pipe
        pipe.out.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        pipe.pretrain_all(with_a=self.uses_a, equal_compute=self.uses_equal_compute)
        pipe.log(f"encoders ready ({time.time() - t0:.0f}s)")
        combos = pipe.cfg.combos()
        if workers > 1 and len(combos) > 1:
            for _ in spawn_map(_combo_worker, [(pipe.cfg, self.methods, c) for c in combos], workers):
                pass
            return Grid(pipe, self.methods).rows
        for combo in combos:
            self.run_combo(*combo)
        return self.rows

    def run_combo(self, label: str, split: str) -> None:
        pipe, cfg, t0 = self.pipe, self.pipe.cfg, time.time()
        encs = pipe.encoders_b()
        feats = {t: pipe.unit_features(("B", t), e) for t, e in encs.items()}
        raw = pipe.unit_features(("raw",), None)
        stats = stat_features(raw.numpy())
        equal_compute = pipe.limubert_equal_compute() if self.uses_equal_compute else {}
        feats_a = None
        if self.uses_a:
            tag, tasks, weights, _, _ = pipe.pretrain_jobs(with_a=True)[0]
            feats_a = pipe.unit_features((tag,), pipe.pretrain(tasks, weights, tag))
        train_w, val_w, test_w = pipe.split(split)
        test, val_units = unit_index(test_w, pipe.per_window), unit_index(val_w, pipe.per_window)
        gbt, gbt_seed = None, None
        for seed in cfg.downstream.seeds:
            if self._want(label, split, 0, seed, "full-label"):
                r = pipe.fit_gru(
                    raw, label, unit_index(train_w, pipe.per_window), val_units, test, seed, full=True
                )
                self._add(dict(label=label, split=split, budget=0, seed=seed, method="full-label", **r))
            base = dict(label=label, split=split, budget=0, seed=seed)
            train_units = unit_index(train_w, pipe.per_window)
            for kind in ("forest", "gbt"):
                if self._want(label, split, 0, seed, f"full-label-{kind}"):
                    if kind == "gbt" and gbt is not None:  # the same fit for every seed: see below
                        self._add(dict(base, method="full-label-gbt", **gbt, same_fit_as_seed=gbt_seed))
                        continue
                    r = pipe.fit_trees(kind, stats, label, train_units, val_units, test, seed)
                    self._add(dict(base, method=f"full-label-{kind}", **r))
                    if kind == "gbt" and len(train_units) <= 200_000:
                        # Histogram GBT without early stopping or row subsampling (binning subsamples only
                        # beyond 200k rows) does not use its random_state: every seed gives the same trees,
                        # and on 30 users one fit costs minutes, so it is fitted once (a test checks this).
                        gbt, gbt_seed = r, seed
            if self._want(label, split, 0, seed, "full-label-saga"):
                w, cv = pipe.search_b(feats, label, split, 0, seed, train_units)
                r = pipe.fit_gru(mix_features(feats, w), label, train_units, val_units, test, seed, full=True)
                self._add(dict(base, method="full-label-saga", weights=w, search_cv=cv, **r))
        a_feats = self._reading_a_search(label) if "saga-A" in self.methods and split == "random" else None
        for budget in cfg.downstream.budgets:
            for seed in cfg.downstream.seeds:
                self._draw(
                    split, label, budget, seed, feats, feats_a, a_feats, raw, stats, test, equal_compute
                )
            pipe.log(f"[{label}/{split}] budget {budget} done ({time.time() - t0:.0f}s)")

    def _draw(
        self, split, label, budget, seed, feats, feats_a, a_feats, raw, stats, test, equal_compute
    ) -> None:
        pipe, key = self.pipe, (label, split, budget, seed)

        def gru(f: torch.Tensor) -> dict:
            return pipe.fit_gru(f, label, fit, val, test, seed)

        if all(not self._want(*key, m) for m in self.methods if m not in FULL_LABEL):
            return
        fit, val = pipe.budget(label, split, budget, seed)
        idx = np.sort(np.concatenate([fit, val]))
        base = dict(label=label, split=split, budget=budget, seed=seed)
        if self._want(*key, "saga") or self._want(*key, "saga-linear"):
            w, cv = pipe.search_b(feats, label, split, budget, seed, idx)
            mixed = mix_features(feats, w)
            if self._want(*key, "saga"):
                self._add(dict(base, method="saga", weights=w, search_cv=cv, **gru(mixed)))
            if self._want(*key, "saga-linear"):
                self._add(
                    dict(
                        base,
                        method="saga-linear",
                        weights=w,
                        **pipe.linear_probe(mixed.mean(1).numpy(), label, idx, test),
                    )
                )
        if self._want(*key, "equal"):
            eq = {t: 1.0 / len(feats) for t in feats}
            self._add(dict(base, method="equal", **gru(mix_features(feats, eq))))
        point = feats.get("saga.point")
        if point is not None and self._want(*key, "limu-bert"):
            self._add(dict(base, method="limu-bert", **gru(point)))
        if point is not None and self._want(*key, "limu-bert-linear"):
            self._add(
                dict(
                    base,
                    method="limu-bert-linear",
                    **pipe.linear_probe(point.mean(1).numpy(), label, idx, test),
                )
            )
        if self._want(*key, "scratch"):
            self._add(dict(base, method="scratch", **gru(raw)))
        if self._want(*key, "floor"):
            self._add(dict(base, method="floor", **pipe.linear_probe(stats, label, idx, test)))
        if feats_a is not None and self._want(*key, "saga-A-equal"):
            self._add(dict(base, method="saga-A-equal", **gru(feats_a)))
        if a_feats is not None and budget >= self.a_budget and self._want(*key, "saga-A"):
            f, w = a_feats
            self._add(dict(base, method="saga-A", weights=w, **gru(f)))
        for variant, f in equal_compute.items():
            if self._want(*key, EQUAL_COMPUTE[variant]):
                self._add(dict(base, method=EQUAL_COMPUTE[variant], **gru(f)))
        self._weight_references(key, base, feats, idx, test)

    def _weight_references(self, key, base, feats, idx, test) -> None:
        """What the weights are worth, with the probe the search optimises: equal weights, the one task the
        in-budget CV prefers, and (reference only, chosen on *test* labels) the best point of a coarse simplex."""
        pipe, label, seed = self.pipe, base["label"], base["seed"]
        pooled = {t: f.mean(1).numpy() for t, f in feats.items()}

        def probe(w: dict[str, float]) -> dict:
            return pipe.linear_probe(np.concatenate([pooled[t] * w[t] for t in pooled], 1), label, idx, test)

        if self._want(*key, "equal-linear"):
            self._add(dict(base, method="equal-linear", **probe({t: 1.0 / len(pooled) for t in pooled})))
        if self._want(*key, "best-single-linear"):
            cvs = {t: pipe.cv_score(pooled[t], label, idx, seed) for t in pooled}
            best = max(cvs, key=cvs.get)  # first wins ties (dicts keep the task order)
            self._add(
                dict(
                    base,
                    method="best-single-linear",
                    task=best,
                    search_cv=cvs[best],
                    **probe({t: float(t == best) for t in pooled}),
                )
            )
        if self._want(*key, "grid-oracle-linear"):
            scored = [(probe(w), w) for w in simplex_grid(list(pooled), self.pipe.cfg.downstream.oracle_grid)]
            r, w = max(scored, key=lambda rw: rw[0]["acc"])
            self._add(dict(base, method="grid-oracle-linear", weights=w, uses_test_labels=True, **r))

    def _reading_a_search(self, label: str):
        """Reading A's search: each trial continues A-equal's pre-training for a few steps with the trial's
        weights and scores a cross-validated probe on a budget-``a_search_budget`` draw (seed 0, random split)."""
        pipe, cfg = self.pipe, self.pipe.cfg
        tasks, init = cfg.pretrain.tasks, pipe.final_weights("A-equal")
        fit, val = pipe.budget(label, "random", self.a_budget, 0)
        idx = np.sort(np.concatenate([fit, val]))

        def objective(w: dict[str, float]) -> float:
            tag = f"A-trial-{label}-" + hashlib.sha1(json.dumps(w, sort_keys=True).encode()).hexdigest()[:10]
            enc = pipe.pretrain(tasks, w, tag=tag, steps=cfg.pretrain.a_trial_steps, init_from=init)
            return pipe.cv_score(pipe.unit_features((tag,), enc).mean(1).numpy(), label, idx, 0)

        scfg = replace(
            cfg.search,
            n_trials=max(4, cfg.search.n_trials // 3),
            n_startup_trials=3,
            study_name=f"A-{label}-random-b{self.a_budget}",
        )
        res = search_task_weights(objective, tasks, scfg, run_dir=pipe.out / "search", progress=False)
        tag = f"A-best-{label}"
        enc = pipe.pretrain(
            tasks,
            res.best_weights,
            tag=tag,
            steps=max(cfg.pretrain.a_trial_steps, cfg.pretrain.train.max_steps // 4),
            init_from=init,
        )
        pipe.log(f"[{label}] reading-A weights {_fmt_w(res.best_weights)} (cv {res.best_value:.3f})")
        return pipe.unit_features((tag,), enc), res.best_weights


def simplex_grid(tasks: list[str], steps: int) -> list[dict[str, float]]:
    """Every weight vector with entries in {0, 1/steps, ..., 1} summing to 1."""
    out = []
    for combo in itertools.product(range(steps + 1), repeat=len(tasks)):
        if sum(combo) == steps:
            out.append({t: c / steps for t, c in zip(tasks, combo)})
    return out


def _combo_worker(cfg, methods, combo) -> None:
    torch.set_num_threads(1)
    pipe = SagaPipeline(cfg, log=lambda m: print(m, flush=True), progress=False)
    Grid(pipe, methods).run_combo(*combo)


def _fmt_w(w: dict[str, float]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v:.2f}" for k, v in w.items())
