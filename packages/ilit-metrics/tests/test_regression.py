"""mae, mse and rmse against scikit-learn and numpy, on hypothesis-drawn data fed in random batches."""

import math

import numpy as np
import pytest
import sklearn.metrics as skm
from helpers import close, feed, split
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ilit_metrics import MAE, MSE, RMSE

CUTS = st.lists(st.integers(0, 60), max_size=4)
SHAPES = st.one_of(st.tuples(st.integers(1, 60)), st.tuples(st.integers(1, 60), st.integers(1, 4)))
VALUES = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@st.composite
def pairs(draw):
    shape = draw(SHAPES)
    return draw(arrays(np.float64, shape, elements=VALUES)), draw(arrays(np.float64, shape, elements=VALUES))


@given(pairs(), CUTS)
def test_mae_mse_rmse_equal_references(data, cuts):
    preds, labels = data
    batches = split(cuts, preds, labels)
    assert close(feed(MAE(), batches), skm.mean_absolute_error(labels, preds))
    assert close(feed(MSE(), batches), skm.mean_squared_error(labels, preds))
    assert close(feed(RMSE(), batches), float(np.sqrt(np.mean((preds - labels) ** 2))))
    if preds.ndim == 1 and hasattr(skm, "root_mean_squared_error"):  # scikit-learn >= 1.4
        assert close(feed(RMSE(), batches), skm.root_mean_squared_error(labels, preds))


def test_seeded_integers_and_column_vectors():
    rng = np.random.default_rng(11)
    labels = rng.integers(-50, 50, 3000)
    preds = (labels + rng.integers(-3, 4, 3000)).astype(np.float64)[:, None]  # (N, 1) output, (N,) labels
    for metric, want in ((MAE(), skm.mean_absolute_error(labels, preds[:, 0])),
                         (MSE(), skm.mean_squared_error(labels, preds[:, 0])),
                         (RMSE(), math.sqrt(skm.mean_squared_error(labels, preds[:, 0])))):
        for i in range(0, 3000, 100):
            metric.update(preds[i:i + 100], labels[i:i + 100])
        assert close(metric.result(), want)
        assert metric.higher_is_better is False


@pytest.mark.parametrize("cls", [MAE, MSE, RMSE])
def test_bad_input(cls):
    name = cls.name
    m = cls()
    with pytest.raises(ValueError, match=rf"^{name}: preds and labels must have the same shape; got preds of shape "
                                         r"\(3,\) and labels of shape \(4,\)"):
        m.update(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match=rf"^{name}: preds .*NaN"):
        m.update(np.array([1.0, np.nan]), np.zeros(2))
    with pytest.raises(ValueError, match=rf"^{name}: labels .*infinite"):
        m.update(np.zeros(2), np.array([1.0, np.inf]))
    with pytest.raises(ValueError, match=rf"^{name}: preds and labels must have the same shape"):
        m.update(np.zeros((3, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=rf"^{name}: preds and labels must be arrays of shape"):
        m.update(1.0, 2.0)
    with pytest.raises(ValueError, match=rf"^{name}: result\(\) needs data"):
        m.result()
