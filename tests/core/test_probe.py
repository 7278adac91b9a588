import numpy as np
import pytest
import torch

from pretrainkit.adapt.probe import (
    HeadConfig,
    fit_classifier,
    fit_restarts,
    macro_f1,
    mean_std,
    predict,
    stratified_budget,
)
from pretrainkit.errors import DataError


def test_stratified_budget_exact_counts_from_pool_only():
    y = np.repeat([0, 1, 2], 20)
    pool = np.arange(0, 60, 2)  # only even indices may be used
    idx = stratified_budget(y, 5, seed=0, pool=pool)
    assert np.bincount(y[idx]).tolist() == [5, 5, 5]
    assert set(idx) <= set(pool)
    assert np.array_equal(idx, stratified_budget(y, 5, seed=0, pool=pool))
    assert not np.array_equal(idx, stratified_budget(y, 5, seed=1, pool=pool))


def test_budget_larger_than_class_is_a_clear_error():
    y = np.array([0] * 10 + [1] * 3)
    with pytest.raises(DataError, match="larger than class 1 has \\(3 windows"):
        stratified_budget(y, 5, seed=0)


def test_macro_f1_and_mean_std_known_values():
    assert macro_f1(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1])) == 1.0
    assert macro_f1(np.array([0, 0, 0, 0]), np.array([0, 0, 1, 1])) == pytest.approx((2 / 3 + 0) / 2)
    m, s = mean_std([1.0, 2.0, 3.0])
    assert m == 2.0 and s == pytest.approx(1.0)


def test_fit_classifier_learns_separable_data_and_keeps_best_epoch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=g)
    y = (x[:, 0] > 0).long()
    head, val_acc = fit_classifier(
        torch.nn.Linear(4, 2),
        x[:100],
        y[:100],
        x[100:150],
        y[100:150],
        HeadConfig(epochs=60, lr=0.05, batch_size=32),
        seed=0,
    )
    assert val_acc > 0.9
    assert (predict(head, x[150:]) == y[150:].numpy()).mean() > 0.85


def _xor_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(120, 2, generator=g)
    return x, ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()


def _mlp():
    return torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))


def test_fit_restarts_keeps_the_best_validation_fit_and_one_seed_is_a_plain_fit():
    x, y = _xor_data()
    cfg = HeadConfig(epochs=15, lr=0.05, batch_size=32)
    seeds = [0, 1, 2, 3, 4, 5]
    single = []
    for s in seeds:
        torch.manual_seed(s)
        single.append(fit_classifier(_mlp(), x[:60], y[:60], x[60:90], y[60:90], cfg, s)[1])
    head, acc, i = fit_restarts(_mlp, x[:60], y[:60], x[60:90], y[60:90], cfg, seeds)
    assert acc == max(single) and i == single.index(max(single))  # the earliest best seed wins ties
    assert (predict(head, x[60:90]) == y[60:90].numpy()).mean() == pytest.approx(acc)
    assert len(set(single)) > 1  # the seeds really differ, so the choice above is not vacuous
    h1, a1, i1 = fit_restarts(_mlp, x[:60], y[:60], x[60:90], y[60:90], cfg, [3])
    assert (a1, i1) == (single[3], 0)
    with pytest.raises(ValueError, match="at least one seed"):
        fit_restarts(_mlp, x[:60], y[:60], x[60:90], y[60:90], cfg, [])
