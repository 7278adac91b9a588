"""Few-label protocol: stratified label budgets, a small classifier trained with validation-based
epoch selection, and mean ± std over seeds."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pretrainkit.errors import ConfigError, DataError


def stratified_budget(
    labels: np.ndarray,
    per_class: int,
    seed: int,
    pool: np.ndarray | None = None,
    classes: np.ndarray | None = None,
) -> np.ndarray:
    """Exactly ``per_class`` indices of every class, drawn from ``pool`` (default: all) with ``seed``."""
    labels = np.asarray(labels)
    pool = np.arange(len(labels)) if pool is None else np.asarray(pool)
    classes = np.unique(labels) if classes is None else classes
    rng = np.random.default_rng(seed)
    picked = []
    for c in classes:
        idx = pool[labels[pool] == c]
        if len(idx) < per_class:
            raise DataError(
                f"label budget {per_class} per class is larger than class {c} has ({len(idx)} "
                f"windows in this split); allowed: at most {len(idx)}"
            )
        picked.append(rng.choice(idx, size=per_class, replace=False))
    return np.sort(np.concatenate(picked))


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float((np.asarray(pred) == np.asarray(y)).mean())


def macro_f1(pred: np.ndarray, y: np.ndarray) -> float:
    pred, y = np.asarray(pred), np.asarray(y)
    f1 = []
    for c in np.unique(y):
        tp = np.sum((pred == c) & (y == c))
        p = tp / max(1, np.sum(pred == c))
        r = tp / max(1, np.sum(y == c))
        f1.append(0.0 if p + r == 0 else 2 * p * r / (p + r))
    return float(np.mean(f1))


def mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


# Metrics a system may select epochs and restarts by: name -> (pred, y) -> score, higher is better.
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"accuracy": accuracy, "macro_f1": macro_f1}


@dataclass
class HeadConfig:
    epochs: int = 200
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    patience: int = (
        0  # 0 = run all epochs; else stop after this many epochs without a better validation score
    )
    metric: str = "accuracy"  # validation score that picks the epoch and the restart: accuracy | macro_f1

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"unknown selection metric '{self.metric}'; allowed: {', '.join(METRICS)}")

    def validate(self, prefix: str = "head.") -> None:
        from pretrainkit.core.config import check_at_least, check_positive, check_range

        check_positive(self.lr, f"{prefix}lr")
        check_range(self.weight_decay, f"{prefix}weight_decay", low=0.0)
        check_at_least(self.epochs, f"{prefix}epochs")
        check_at_least(self.batch_size, f"{prefix}batch_size")
        check_at_least(self.patience, f"{prefix}patience", 0)


def fit_classifier(
    head: nn.Module,
    x_tr: torch.Tensor,
    y_tr: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    cfg: HeadConfig,
    seed: int,
) -> tuple[nn.Module, float]:
    """Train ``head`` (inputs -> logits) with Adam; keep the epoch with the best validation ``cfg.metric``
    (accuracy by default); returns the head and that score.

    Validation data must come from the labelled budget itself, never from labels beyond it.
    """
    torch.manual_seed(seed)
    head = head.train()
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(seed)
    score = METRICS[cfg.metric]
    best_acc, best_state, since = -1.0, copy.deepcopy(head.state_dict()), 0
    n = len(x_tr)
    for _ in range(cfg.epochs):
        head.train()
        for idx in torch.randperm(n, generator=g).split(cfg.batch_size):
            loss = nn.functional.cross_entropy(head(x_tr[idx]), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        acc = score(predict(head, x_val), y_val.numpy())
        if acc > best_acc:
            best_acc, best_state, since = acc, copy.deepcopy(head.state_dict()), 0
        else:
            since += 1
            if cfg.patience and since >= cfg.patience:
                break
    head.load_state_dict(best_state)
    return head.eval(), best_acc


def fit_restarts(
    make_head: Callable[[], nn.Module],
    x_tr: torch.Tensor,
    y_tr: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    cfg: HeadConfig,
    seeds: Sequence[int],
) -> tuple[nn.Module, float, int]:
    """``fit_classifier`` from one fresh head per seed; keeps the best validation ``cfg.metric`` (the earliest
    seed wins ties). Returns (head, its validation score, index of its seed). One seed = one plain fit."""
    best: tuple[nn.Module, float, int] | None = None
    for i, s in enumerate(seeds):
        torch.manual_seed(s)
        head, acc = fit_classifier(make_head(), x_tr, y_tr, x_val, y_val, cfg, s)
        if best is None or acc > best[1]:
            best = (head, acc, i)
    if best is None:
        raise ValueError("fit_restarts needs at least one seed")
    return best


@torch.no_grad()
def predict(head: nn.Module, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    head.eval()
    return torch.cat([head(x[i : i + batch_size]).argmax(-1) for i in range(0, len(x), batch_size)]).numpy()
