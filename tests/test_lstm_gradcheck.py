"""The LSTM's backward pass against central differences in float64."""

import numpy as np
import pytest

from gradcheck import numeric_gradient, rel_error
from lstm_scratch import LSTM
from lstm_scratch.cell import lstm_step_forward, split_gates

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


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_every_gradient_matches_central_differences(dropout, backend):
    lstm, x, h0, c0, (dy, dh_n, dc_n), loss = make_problem(dropout, backend=backend)
    _, _, cache = lstm.forward(x, (h0, c0), rng=np.random.default_rng(42))
    # the notebook's bug (1 − c² in place of 1 − tanh²(c)) hides while |c| < 1: make sure it cannot
    assert all(np.abs(layer.cs).max() > 1 for layer in cache.layers)
    if dropout:
        assert any(m is not None and (m == 0).any() for m in cache.masks)
    dx, (dh_0, dc_0), grads = lstm.backward(dy, cache, (dh_n, dc_n))

    params = {name: lstm.params[name] for name in lstm.state_dict()}
    for name, array in params.items():
        assert rel_error(grads[name], numeric_gradient(loss, array)) < 1e-6, name
    assert rel_error(dx, numeric_gradient(loss, x)) < 1e-6
    assert rel_error(dh_0, numeric_gradient(loss, h0)) < 1e-6
    assert rel_error(dc_0, numeric_gradient(loss, c0)) < 1e-6


def notebook_step_backward(dh, dc_next, cache, weight_hh):
    """The original notebook's cell-state gradient, d_cs = tanh((1 − c²) ⊙ o ⊙ dh + dc_next),
    with everything else right. Kept to prove the gradient check catches exactly that bug."""
    i, f, g, o = split_gates(cache.gates)
    c = np.arctanh(cache.tanh_c)
    dc = np.tanh((1 - c**2) * o * dh + dc_next)
    dgates = np.concatenate(
        [
            dc * g * i * (1 - i),
            dc * cache.c_prev * f * (1 - f),
            dc * i * (1 - g**2),
            dh * cache.tanh_c * o * (1 - o),
        ],
        axis=-1,
    )  # (B, 4H)
    return dgates, dgates @ weight_hh, dc * f


def test_the_check_catches_the_notebook_bug():
    """One step of one layer: the correct backward passes the check, the notebook's does not."""
    rng = np.random.default_rng(3)
    weight_hh = rng.normal(0, 0.8, (4 * H, H))
    gates_x, h_prev, c_prev = (
        rng.normal(size=(B, 4 * H)),
        rng.normal(size=(B, H)),
        rng.normal(0, 2, (B, H)),
    )
    dh, dc = rng.normal(size=(B, H)), rng.normal(size=(B, H))

    def loss():
        h, c, _ = lstm_step_forward(gates_x, h_prev, c_prev, weight_hh)
        return float((h * dh).sum() + (c * dc).sum())

    _, _, cache = lstm_step_forward(gates_x, h_prev, c_prev, weight_hh)
    numeric = numeric_gradient(loss, gates_x)
    dgates, _, _ = notebook_step_backward(dh, dc, cache, weight_hh)
    assert rel_error(dgates, numeric) > 0.1
    from lstm_scratch.cell import lstm_step_backward

    dgates = lstm_step_backward(dh.copy(), dc.copy(), cache, weight_hh)
    assert rel_error(dgates, numeric) < 1e-6
