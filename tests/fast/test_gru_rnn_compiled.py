"""The compiled GRU and RNN layers (fast/gru_rnn.py) against the reference's
(reference/gru.py, reference/rnn.py): float64 to 1e-12, float32 to 1e-4, at sizes that take the
kernel through several row blocks and panels, with dense input and ids."""

import numpy as np
import pytest

from conftest import rel_error
from lstm_scratch.fast import gru_rnn as fast
from lstm_scratch.reference import gru, rnn
from lstm_scratch.reference.cell import LayerWeights

# (T, B, D, H): one row and a narrow panel; more rows than one kernel call holds and several
# panels (H 40: 120 gate columns); units beyond two panels of float32; a large step, which
# runs on lanes by rows (B·4H·H > host.SMALL_STEP)
SHAPES = [(6, 1, 3, 5), (5, 13, 4, 40), (3, 2, 5, 70), (3, 20, 5, 130)]
LAYERS = {
    "gru": (3, gru.gru_forward, gru.gru_backward, fast.gru_forward, fast.gru_backward),
    "rnn-tanh": (1, rnn.rnn_forward, rnn.rnn_backward, fast.rnn_forward, fast.rnn_backward),
    "rnn-relu": (1, rnn.rnn_forward, rnn.rnn_backward, fast.rnn_forward, fast.rnn_backward),
}


def run(kind, forward, backward, shape, dtype, ids):
    """y, h_T, dh_0, dx (dense input) and the weight gradients of one layer, random non-zero
    biases, h_0 and dh_T."""
    T, B, D, H = shape
    rng = np.random.default_rng(0)
    width = LAYERS[kind][0] * H
    shapes = [(width, D), (width, H), (width,), (width,)]
    weights = LayerWeights(*(rng.normal(0, 0.5, s).astype(dtype) for s in shapes))
    x = rng.integers(0, D, (T, B)) if ids else rng.normal(size=(T, B, D)).astype(dtype)
    h0, dh_n = rng.normal(size=(B, H)).astype(dtype), rng.normal(size=(B, H)).astype(dtype)
    dy = rng.normal(size=(T, B, H)).astype(dtype)
    options = {} if kind == "gru" else {"nonlinearity": kind.split("-")[1]}
    y, h_n, cache = forward(x, weights, h0, **options)
    dx, dh_0, grads = backward(dy, cache, weights, dh_n)
    results = {
        "y": y,
        "h_n": h_n,
        "dh_0": dh_0,
        **dict(zip(LayerWeights._fields, grads, strict=True)),
    }
    if not ids:
        results["dx"] = dx
    return results


@pytest.mark.parametrize("ids", [False, True], ids=["dense", "ids"])
@pytest.mark.parametrize(("dtype", "tolerance"), [(np.float64, 1e-12), (np.float32, 1e-4)])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}D{}H{}".format(*s))
@pytest.mark.parametrize("kind", list(LAYERS))
def test_compiled_layer_equals_the_reference(kind, shape, dtype, tolerance, ids):
    _, ref_forward, ref_backward, fast_forward, fast_backward = LAYERS[kind]
    expected = run(kind, ref_forward, ref_backward, shape, dtype, ids)
    actual = run(kind, fast_forward, fast_backward, shape, dtype, ids)
    assert actual.keys() == expected.keys()
    for name, value in actual.items():
        assert value.dtype == dtype, name
        assert rel_error(value, expected[name]) < tolerance, name


@pytest.mark.parametrize("kind", list(LAYERS))
def test_the_same_bits_on_one_lane_and_on_two(kind, monkeypatch):
    """A large step split by rows over two lanes, and run on one: equal to the bit (the
    reference test above holds either to the math)."""
    _, _, _, fast_forward, fast_backward = LAYERS[kind]
    shape = (3, 20, 5, 130)
    assert not fast.is_small_step(shape[1], shape[3])
    monkeypatch.setattr(fast, "step_lanes", lambda: 2)
    two = run(kind, fast_forward, fast_backward, shape, np.float32, False)
    monkeypatch.setattr(fast, "step_lanes", lambda: 1)
    one = run(kind, fast_forward, fast_backward, shape, np.float32, False)
    for name, value in two.items():
        assert np.array_equal(value, one[name]), name
