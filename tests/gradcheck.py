"""Helpers shared by the gradient tests: central differences and a relative error."""

import numpy as np


def numeric_gradient(loss_fn, array: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences (f(a+ε) − f(a−ε)) / 2ε of the scalar ``loss_fn()`` w.r.t. each entry
    of ``array``, which is perturbed in place and restored."""
    grad = np.zeros(array.shape, dtype=np.float64)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + eps
        plus = loss_fn()
        array[index] = saved - eps
        minus = loss_fn()
        array[index] = saved
        grad[index] = (plus - minus) / (2 * eps)
    return grad


def rel_error(actual, expected) -> float:
    """max |actual − expected| / max |expected|: the error relative to the tensor's scale."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(np.abs(expected).max(), 1e-300)
    return float(np.abs(actual - expected).max() / scale)
