"""The LSTM's backward pass against central differences in float64."""

import numpy as np
import pytest

from conftest import numeric_gradient, rel_error
from lstm_scratch import LSTM
from lstm_scratch.reference import cell
from lstm_scratch.reference.cell import split_gates

T, B, D, H, L = 4, 3, 5, 6, 2


def make_problem(dropout=0.0, seed=0, backend="numpy"):
    """An LSTM with weights scaled up and non-zero biases so that |c| > 1, random inputs, a random
    initial state, and a loss that reads the outputs and both final states."""
    rng = np.random.default_rng(seed)
    lstm = LSTM(D, H, L, dropout=dropout, dtype=np.float64, seed=seed, backend=backend)
    lstm.load_state_dict({k: rng.normal(0, 0.8, v.shape) for k, v in lstm.state_dict().items()})
    x = rng.normal(size=(T, B, D))
    h0, c0 = rng.normal(size=(L, B, H)), rng.normal(0, 1.5, size=(L, B, H))
    dy, dh_n, dc_n = (
        rng.normal(size=(T, B, H)),
        rng.normal(size=(L, B, H)),
        rng.normal(size=(L, B, H)),
    )

    def loss():
        y, (h_n, c_n), _ = lstm.forward(x, (h0, c0), rng=np.random.default_rng(42))
        return float((y * dy).sum() + (h_n * dh_n).sum() + (c_n * dc_n).sum())

    return lstm, x, h0, c0, (dy, dh_n, dc_n), loss


def gradient_errors(lstm, x, h0, c0, dstate, loss) -> dict:
    """The backward pass's relative error against central differences, for every parameter and
    for x, h_0 and c_0."""
    dy, dh_n, dc_n = dstate
    _, _, cache = lstm.forward(x, (h0, c0), rng=np.random.default_rng(42))
    dx, (dh_0, dc_0), grads = lstm.backward(dy, cache, (dh_n, dc_n))
    errors = {
        name: rel_error(grads[name], numeric_gradient(loss, lstm.params[name])) for name in grads
    }
    errors["x"] = rel_error(dx, numeric_gradient(loss, x))
    errors["h0"] = rel_error(dh_0, numeric_gradient(loss, h0))
    errors["c0"] = rel_error(dc_0, numeric_gradient(loss, c0))
    return errors


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_every_gradient_matches_central_differences(dropout, backend):
    problem = make_problem(dropout, backend=backend)
    lstm, x, h0, c0, _, _ = problem
    _, _, cache = lstm.forward(x, (h0, c0), rng=np.random.default_rng(42))
    # the notebook's 1 − c² (for 1 − tanh²(c)) is furthest off where |c| > 1: make sure c gets there
    assert all(np.abs(layer.cs).max() > 1 for (layer,) in cache.layers)
    if dropout:
        assert any(m is not None and (m == 0).any() for m in cache.masks)
    errors = gradient_errors(*problem)
    assert max(errors.values()) < 1e-6, errors


def test_the_check_catches_the_notebook_bug(monkeypatch):
    """The notebook wrote d_cs = tanh(tanh(c, derivative=True) * o * dh + dc_next), i.e.
    tanh((1 − c²) ⊙ o ⊙ dh + dc_next): put into the package's backward, the check fails. It
    could hide only where c and the gradients are all small: 1 − c² ≈ 1 − tanh²(c), tanh(x) ≈ x.
    """
    real_step_backward = cell.lstm_step_backward

    def notebook_step_backward(dh, dc, cache, *rest):
        # the real step adds (1 − tanh²(c)) ⊙ o ⊙ dh to the dc it is given: give it the dc that
        # makes the sum the notebook's
        i, f, g, o = split_gates(cache.gates)
        c = f * cache.c_prev + i * g  # c_t
        dc[...] = np.tanh((1 - c**2) * o * dh + dc) - (1 - cache.tanh_c**2) * o * dh
        return real_step_backward(dh, dc, cache, *rest)

    problem = make_problem(backend="numpy")
    assert max(gradient_errors(*problem).values()) < 1e-6
    # cell.lstm_backward looks the step up in its module's globals, so patch it there
    monkeypatch.setattr(cell, "lstm_step_backward", notebook_step_backward)
    errors = gradient_errors(*problem)
    assert max(errors.values()) > 0.1, errors  # not a near miss
