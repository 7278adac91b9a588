"""Saga end to end: pre-train (reading A or B), search task weights per downstream task, classify with few labels.

Protocol (LIMU-BERT's, made explicit): windows are split 80/10/10 (random over windows, by subject, or by time
within each user); pre-training sees only the training windows; each 120-step window is classified as six 1-s
units; a label budget of k units per class is drawn from the training units only, and a fifth of it (>= 1 per
class) is held out to pick epochs and to score weights. The validation and test splits are never used to tune.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from pretrainkit.adapt.probe import accuracy, fit_restarts, macro_f1, predict, stratified_budget
from pretrainkit.core.checkpoint import MODEL_FILE, load_weights, verify
from pretrainkit.core.data import EpochBatches
from pretrainkit.core.parallel import spawn_map
from pretrainkit.core.task import TASKS, MixModel, TaskMix
from pretrainkit.core.trainer import Trainer
from pretrainkit.errors import CheckpointError, DataError
from pretrainkit.search.task_weights import search_task_weights
from pretrainkit.systems.saga import tasks as _tasks  # noqa: F401  (registers saga.* tasks)
from pretrainkit.systems.saga.config import SagaConfig
from pretrainkit.systems.saga.data import (
    IMUWindows,
    concat_windows,
    load_basicmotions,
    load_limu_folder,
    random_window_split,
    subject_split,
    time_split_within_group,
)
from pretrainkit.systems.saga.features import embed, to_units, unit_index
from pretrainkit.systems.saga.hapt import load_hapt
from pretrainkit.systems.saga.model import GRUClassifier, LimuBertEncoder, normalise_imu

Log = Callable[[str], None]


def load_windows(cfg: SagaConfig) -> IMUWindows:
    d = cfg.data
    if d.format == "basicmotions":
        return basicmotions_windows(d.source)[0]
    if d.format == "limu":
        if d.source is None:
            raise DataError(
                "data.format=limu needs data.source=PATH (a folder with data_20_120.npy, label_20_120.npy)"
            )
        return load_limu_folder(d.source, label_columns=d.label_columns, dataset=d.dataset)
    return load_hapt(d.source)


def basicmotions_windows(source: str | None) -> tuple[IMUWindows, int]:
    """BasicMotions' TRAIN then TEST series as one set of windows, and how many came from TRAIN."""
    from pretrainkit.paths import checkout_shared_data, installed_data_root

    folder = source or (checkout_shared_data() or installed_data_root()) / "imu" / "basicmotions"
    train, test = load_basicmotions(folder)
    return concat_windows([train, test]), len(train)


def uea_split(
    labels: np.ndarray, n_train: int, seed: int, val_fraction: float = 0.2
) -> tuple[np.ndarray, ...]:
    """The archive's fixed split: TRAIN minus a stratified ``val_fraction`` of it for validation, TEST."""
    rng = np.random.default_rng(seed)
    val = [
        rng.choice(idx, max(1, int(round(val_fraction * len(idx)))), replace=False)
        for c in np.unique(labels[:n_train])
        for idx in [np.flatnonzero(labels[:n_train] == c)]
    ]
    val = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(n_train), val), val, np.arange(n_train, len(labels))


class SagaPipeline:
    """Holds the data, the pre-trained encoders and their frozen features for one configuration."""

    def __init__(self, cfg: SagaConfig, log: Log = print, progress: bool = True):
        self.cfg, self.log, self.progress = cfg, log, progress
        self.out = Path(cfg.out)
        self._features: dict[tuple, torch.Tensor] = {}

    # ---- data and splits ---------------------------------------------------------------------------
    @cached_property
    def windows(self) -> IMUWindows:
        w = load_windows(self.cfg)
        if w.window % self.cfg.downstream.unit:
            raise DataError(
                f"window length {w.window} is not a multiple of downstream.unit={self.cfg.downstream.unit}"
            )
        for lab in self.cfg.downstream.labels:
            w.label(lab)  # a clear error if the data has no such label column
        return w

    @cached_property
    def uea_train_count(self) -> int:
        return basicmotions_windows(self.cfg.data.source)[1]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w, seed = self.windows, self.cfg.data.split_seed
        if name == "random":
            return random_window_split(len(w), seed)
        if name == "subject":
            return subject_split(w.label("user"), seed)
        if name == "uea":
            return uea_split(w.label("activity"), self.uea_train_count, seed)
        if w.experiment is None or w.start is None:
            raise DataError(
                "the time split needs per-window experiment/start times; this source has none "
                "(load HAPT from its npz, pickle or RawData folder)"
            )
        return time_split_within_group(w.label("user"), (w.experiment, w.start))

    @property
    def per_window(self) -> int:
        return self.windows.window // self.cfg.downstream.unit

    def unit_labels(self, label: str) -> np.ndarray:
        return np.repeat(self.windows.label(label), self.per_window)

    # ---- pre-training -------------------------------------------------------------------------------
    @property
    def pool_name(self) -> str:
        return "+".join(
            sorted({s for _, s in self.cfg.combos()}, key=["random", "subject", "time", "uea"].index)
        )

    def pretrain_windows(self) -> np.ndarray:
        """Windows in the training part of *every* evaluated split: one set of encoders then serves all splits
        and never sees a validation or test window of any of them."""
        splits = self.pool_name.split("+")
        idx = self.split(splits[0])[0]
        for s in splits[1:]:
            idx = np.intersect1d(idx, self.split(s)[0])
        return idx

    def new_encoder(self) -> LimuBertEncoder:
        m = self.cfg.model
        return LimuBertEncoder(
            n_channels=self.windows.x.shape[2],
            seq_len=self.windows.window,
            hidden=m.hidden,
            ff=m.ff,
            n_heads=m.n_heads,
            n_layers=m.n_layers,
            limu_code_compat=m.limu_code_compat,
        )

    def final_weights(self, tag: str, steps: int | None = None) -> Path:
        steps = steps or self.cfg.pretrain.train.max_steps
        return (
            self.out
            / "pretrain"
            / self.pool_name
            / tag
            / "checkpoints"
            / f"step-{steps:08d}"
            / "model.safetensors"
        )

    def pretrain(
        self,
        tasks: list[str],
        weights: dict[str, float] | None,
        tag: str,
        steps: int | None = None,
        init_from: str | Path | None = None,
        seed: int | None = None,
    ) -> LimuBertEncoder:
        """Pre-train one encoder on the pre-training windows; reuses a finished run of the same tag.
        ``seed``: another init and batch order than the config's (the equal-compute LIMU-BERT's copies)."""
        tcfg = _replace(
            self.cfg.pretrain.train,
            max_steps=steps or self.cfg.pretrain.train.max_steps,
            progress=self.progress,
            **({} if seed is None else {"seed": seed}),
        )
        final = self.final_weights(tag, tcfg.max_steps)
        torch.manual_seed(tcfg.seed)
        mix = TaskMix(
            [TASKS.build(t, hidden=self.cfg.model.hidden, n_channels=self.windows.x.shape[2]) for t in tasks],
            weights=weights,
        )
        model = MixModel(self.new_encoder(), mix)
        if final.is_file():
            try:  # the finished run's last checkpoint, checked against its manifest like any resume
                verify(final.parent)
                model.load_state_dict(load_weights(final, verified=True))
                return model.backbone
            except CheckpointError as e:  # the trainer below resumes from the newest good checkpoint instead
                self.log(f"{e}; resuming {tag} from its newest good checkpoint")
        if init_from is not None:
            init_from = Path(init_from)
            if init_from.name == MODEL_FILE:
                verify(init_from.parent)
            model.load_state_dict(load_weights(init_from, verified=init_from.name == MODEL_FILE))
        idx = self.pretrain_windows()
        batches = EpochBatches(
            {"x": torch.from_numpy(self.windows.x[idx])}, self.cfg.pretrain.batch_size, seed=tcfg.seed
        )
        self.log(
            f"pre-training {tag} on {len(idx)} windows ({self.pool_name} training parts) for "
            f"{tcfg.max_steps} steps"
        )
        hooks = [self._probe_hook(idx)] if self.cfg.pretrain.probe_label else []
        Trainer(
            model,
            batches,
            tcfg,
            run_dir=self.out / "pretrain" / self.pool_name / tag,
            unit="windows",
            eval_hooks=hooks,
            # worker processes run without bars (several would garble one terminal): a line every 20 s instead
            progress_lines=0.0 if self.progress else 20.0,
            name=f"pre-training {tag}",
        ).fit(resume="auto")
        return model.backbone

    def _probe_hook(self, idx: np.ndarray):
        """Monitoring only (never used to select anything): ridge-probe accuracy of the encoder's pooled features,
        fit on one half of up to 512 pre-training windows and scored on the other half."""
        from sklearn.linear_model import RidgeClassifier

        rng = np.random.default_rng(0)
        sub = rng.permutation(idx)[:512]
        y = self.windows.label(self.cfg.pretrain.probe_label)[sub]
        half = len(sub) // 2

        def hook(trainer: Trainer, step: int) -> dict[str, float]:
            model = trainer.raw_model
            feats = embed(model.backbone, self.windows.x[sub]).mean(1).numpy()
            clf = RidgeClassifier(alpha=1.0).fit(feats[:half], y[:half])
            model.train()
            return {
                f"probe_{self.cfg.pretrain.probe_label}_acc": float(
                    (clf.predict(feats[half:]) == y[half:]).mean()
                )
            }

        return hook

    def pretrain_jobs(
        self, with_a: bool = False, equal_compute: bool = False
    ) -> list[tuple[str, list[str], dict[str, float] | None, int | None, int | None]]:
        """(tag, tasks, weights, seed, steps): reading B's one-task encoders, optionally reading A's equal mix,
        and optionally LIMU-BERT at Saga's compute (``limubert_equal_compute_jobs``)."""
        tasks = self.cfg.pretrain.tasks
        jobs = [("A-equal", tasks, {t: 1.0 / len(tasks) for t in tasks}, None, None)] if with_a else []
        jobs += [(f"B-{t}", [t], None, None, None) for t in tasks]
        return jobs + (self.limubert_equal_compute_jobs() if equal_compute else [])

    def limubert_equal_compute_jobs(self) -> list[tuple[str, list[str], None, int | None, int | None]]:
        """LIMU-BERT given Saga's pre-training compute and feature width: as many point-task encoders as Saga
        has tasks, from other seeds (B-saga.point is the first), and one point encoder trained that many
        times as long."""
        n, train = len(self.cfg.pretrain.tasks), self.cfg.pretrain.train
        jobs = [
            (f"B-saga.point-seed{train.seed + k}", ["saga.point"], None, train.seed + k, None)
            for k in range(1, n)
        ]
        return jobs + [(f"B-saga.point-x{n}", ["saga.point"], None, None, n * train.max_steps)]

    def pretrain_all(self, with_a: bool = False, equal_compute: bool = False) -> None:
        """Run every missing pre-training job, in ``pretrain.workers`` processes (one thread each) if > 1."""
        todo = [
            j
            for j in self.pretrain_jobs(with_a, equal_compute)
            if not self.final_weights(j[0], j[4]).is_file()
        ]
        # Longest first (stable otherwise): the equal-compute encoder trains 4x as long, and started last it
        # would leave one worker idle for most of its run.
        todo.sort(key=lambda j: -(j[4] or self.cfg.pretrain.train.max_steps))
        if self.cfg.pretrain.workers > 1 and len(todo) > 1:
            self.windows  # load (and validate) once in the parent so errors surface here
            self.log(f"pre-training {len(todo)} encoders in {self.cfg.pretrain.workers} processes")
            for _ in spawn_map(_pretrain_worker, [(self.cfg, *j) for j in todo], self.cfg.pretrain.workers):
                pass
        for tag, tasks, weights, seed, steps in todo:
            self.pretrain(tasks, weights, tag, steps=steps, seed=seed)

    def limubert_equal_compute(self) -> dict[str, torch.Tensor]:
        """Unit features of the two equal-compute LIMU-BERT variants: ``seeds`` (the point encoders of every
        seed, concatenated: Saga's width) and ``long`` (one encoder, Saga's total steps)."""
        self.pretrain_all(equal_compute=True)
        point = [self.unit_features(("B", "saga.point"), self.pretrain(["saga.point"], None, "B-saga.point"))]
        out = {}
        for tag, tasks, _, seed, steps in self.limubert_equal_compute_jobs():
            enc = self.pretrain(tasks, None, tag, steps=steps, seed=seed)
            f = self.unit_features((tag,), enc)
            if steps is None:
                point.append(f)
            else:
                out["long"] = f
        out["seeds"] = torch.cat(point, dim=-1)
        return out

    def encoders_b(self) -> dict[str, LimuBertEncoder]:
        """Reading B: one encoder per task (the point encoder is LIMU-BERT)."""
        self.pretrain_all()
        return {t: self.pretrain([t], None, tag=f"B-{t}") for t in self.cfg.pretrain.tasks}

    # ---- features ------------------------------------------------------------------------------------
    def unit_features(self, key: tuple, encoder: torch.nn.Module | None) -> torch.Tensor:
        """(n_units, unit, D) features for every window; raw normalised IMU when ``encoder`` is None."""
        if key not in self._features:
            if encoder is None:
                seq = normalise_imu(torch.from_numpy(self.windows.x))
            else:
                seq = embed(encoder, self.windows.x)
            self._features[key] = to_units(seq, self.cfg.downstream.unit)
        return self._features[key]

    # ---- downstream ----------------------------------------------------------------------------------
    def budget(self, label: str, split: str, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(fit, val) unit indices: ``per_class`` training units per class, a fifth of each class held out."""
        y = self.unit_labels(label)
        train_units = unit_index(self.split(split)[0], self.per_window)
        idx = stratified_budget(y, per_class, seed, pool=train_units, classes=np.unique(y[train_units]))
        rng = np.random.default_rng(10_000 + seed)
        n_val = max(1, int(round(per_class * self.cfg.downstream.val_fraction)))
        val = np.concatenate([rng.choice(idx[y[idx] == c], n_val, replace=False) for c in np.unique(y[idx])])
        return np.setdiff1d(idx, val), np.sort(val)

    def fit_gru(
        self,
        feats: torch.Tensor,
        label: str,
        fit: np.ndarray,
        val: np.ndarray,
        test: np.ndarray,
        seed: int,
        full: bool = False,
    ) -> dict[str, float]:
        ds = self.cfg.downstream
        y = torch.from_numpy(self.unit_labels(label))
        n_classes = int(y.max()) + 1
        head_cfg = ds.full_head if full else ds.head
        cap = ds.full_max_steps if full else ds.head_max_steps
        per_epoch = -(-len(fit) // head_cfg.batch_size)
        head_cfg = _replace(head_cfg, epochs=max(1, min(head_cfg.epochs, cap // per_epoch)))
        # A GRU fitted on a few dozen units now and then lands in a poor optimum (seen: 0.54 vs 0.82 on the same
        # features); at small budgets, restarts from other inits, chosen by the in-budget validation accuracy
        # (first wins ties), cut that variance for every GRU method alike. No label beyond the budget is used.
        labelled = y[np.concatenate([fit, val])]
        per_class = len(labelled) // len(labelled.unique())  # the budget: equal per class by construction
        restarts = ds.head_restarts if not full and per_class <= ds.restart_max_budget else 1
        seeds = [seed] + [seed * 1000 + r for r in range(1, restarts)]
        head, val_acc, restart = fit_restarts(
            lambda: GRUClassifier(in_dim=feats.shape[-1], n_classes=n_classes),
            feats[fit],
            y[fit],
            feats[val],
            y[val],
            head_cfg,
            seeds,
        )
        pred = predict(head, feats[test])
        return {
            "acc": accuracy(pred, y[test].numpy()),
            "f1": macro_f1(pred, y[test].numpy()),
            "val_acc": val_acc,
            "restart": restart,
        }

    def fit_trees(
        self,
        kind: str,
        stats: np.ndarray,
        label: str,
        fit: np.ndarray,
        val: np.ndarray,
        test: np.ndarray,
        seed: int,
    ) -> dict[str, float]:
        """A tree ensemble on the floor's per-unit features (``kind``: forest | gbt), its one hyperparameter
        chosen on ``val`` from a small grid; the strongest full-label reference a reviewer could build."""
        from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

        y = self.unit_labels(label)
        if kind == "forest":
            grid = [("min_samples_leaf", v) for v in (1, 5)]
            make = lambda k, v: RandomForestClassifier(  # noqa: E731
                n_estimators=200, max_features="sqrt", n_jobs=1, random_state=seed, **{k: v}
            )
        else:
            grid = [("learning_rate", v) for v in (0.05, 0.15)]
            make = lambda k, v: HistGradientBoostingClassifier(  # noqa: E731
                max_iter=300, early_stopping=False, random_state=seed, **{k: v}
            )
        best = None
        for k, v in grid:
            clf = make(k, v).fit(stats[fit], y[fit])
            val_acc = accuracy(clf.predict(stats[val]), y[val])
            if best is None or val_acc > best[0]:
                best = (val_acc, clf, v)
        val_acc, clf, chosen = best
        pred = clf.predict(stats[test])
        return {
            "acc": accuracy(pred, y[test]),
            "f1": macro_f1(pred, y[test]),
            "val_acc": val_acc,
            "chosen": chosen,
        }

    def linear_probe(
        self, pooled: np.ndarray, label: str, train: np.ndarray, test: np.ndarray
    ) -> dict[str, float]:
        from sklearn.linear_model import RidgeClassifier

        y = self.unit_labels(label)
        clf = RidgeClassifier(alpha=1.0).fit(pooled[train], y[train])
        pred = clf.predict(pooled[test])
        return {"acc": accuracy(pred, y[test]), "f1": macro_f1(pred, y[test])}

    def cv_score(self, pooled: np.ndarray, label: str, idx: np.ndarray, seed: int) -> float:
        """Weight-search objective: stratified k-fold accuracy of a ridge probe inside the label budget."""
        from sklearn.linear_model import RidgeClassifier
        from sklearn.model_selection import StratifiedKFold

        y = self.unit_labels(label)[idx]
        k = min(self.cfg.downstream.cv_folds, int(np.bincount(y)[np.unique(y)].min()))
        correct, repeats = 0, self.cfg.downstream.cv_repeats
        for rep in range(repeats):  # repeat 0 is the single split used before repeats existed
            splits = StratifiedKFold(k, shuffle=True, random_state=seed + 7919 * rep).split(pooled[idx], y)
            for tr, te in splits:
                clf = RidgeClassifier(alpha=1.0).fit(pooled[idx][tr], y[tr])
                correct += int((clf.predict(pooled[idx][te]) == y[te]).sum())
        return correct / (len(idx) * repeats)

    def search_b(
        self, feats: dict[str, torch.Tensor], label: str, split: str, budget: int, seed: int, idx: np.ndarray
    ) -> tuple[dict[str, float], float]:
        """Reading B's weight search: features are fixed, so a trial is one cheap cross-validated probe."""
        pooled = {k: v.mean(1).numpy() for k, v in feats.items()}

        def objective(w: dict[str, float]) -> float:
            return self.cv_score(np.concatenate([pooled[k] * w[k] for k in pooled], 1), label, idx, seed)

        scfg = _replace(
            self.cfg.search,
            study_name=f"{label}-{split}-b{budget}-s{seed}-{'+'.join(feats)}",
            seed=self.cfg.search.seed + seed,
        )
        res = search_task_weights(objective, list(feats), scfg, run_dir=self.out / "search", progress=False)
        return res.best_weights, res.best_value


def _pretrain_worker(
    cfg: SagaConfig,
    tag: str,
    tasks: list[str],
    weights: dict[str, float] | None,
    seed: int | None = None,
    steps: int | None = None,
) -> None:
    torch.set_num_threads(1)
    SagaPipeline(cfg, log=lambda m: print(m, flush=True), progress=False).pretrain(
        tasks, weights, tag, steps=steps, seed=seed
    )


def _replace(obj, **kw):
    from dataclasses import replace

    return replace(obj, **kw)
