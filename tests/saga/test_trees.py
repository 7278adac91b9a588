"""The full-label GBT reference is fitted once per (label, split) and reused for every seed: that is only
sound while sklearn's histogram GBT ignores its random_state in the configuration the pipeline uses."""

import numpy as np

from pretrainkit.systems.saga.pipeline import SagaPipeline


class _Pipe(SagaPipeline):
    def __init__(self, y):
        self._y = y

    def unit_labels(self, label):
        return self._y


def test_gbt_reference_does_not_depend_on_its_seed():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 8))
    y = (x[:, 0] + 0.5 * rng.normal(size=600) > 0).astype(int) + 2 * (x[:, 1] > 0.3)
    fit, val, test = np.arange(400), np.arange(400, 500), np.arange(500, 600)
    pipe = _Pipe(y)
    a = pipe.fit_trees("gbt", x, "activity", fit, val, test, seed=0)
    b = pipe.fit_trees("gbt", x, "activity", fit, val, test, seed=7)
    assert a == b
