"""LSTM behaviour: chunked BPTT, dtypes, state dicts, dropout, initialisers."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import rel_error
from lstm_scratch import LSTM


def random_lstm(D, H, L, seed=0, dtype=np.float64, backend="numpy"):
    rng = np.random.default_rng(seed)
    lstm = LSTM(D, H, L, dtype=dtype, seed=seed, backend=backend)
    lstm.load_state_dict({k: rng.normal(0, 0.7, v.shape) for k, v in lstm.state_dict().items()})
    return lstm, rng


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 9), st.integers(1, 3), st.integers(1, 3), st.data())
def test_two_chunks_equal_the_whole_sequence(T, B, L, data):
    """Truncated BPTT chains chunks: carry (h, c) forward and (dh, dc) backward."""
    split = data.draw(st.integers(1, T - 1))
    backend = data.draw(st.sampled_from(["numpy", "numba"]))
    lstm, rng = random_lstm(3, 4, L, seed=T * 100 + B * 10 + L, backend=backend)
    x, dy = rng.normal(size=(T, B, 3)), rng.normal(size=(T, B, 4))
    state = (rng.normal(size=(L, B, 4)), rng.normal(size=(L, B, 4)))
    dstate = (rng.normal(size=(L, B, 4)), rng.normal(size=(L, B, 4)))

    y, state_n, cache = lstm.forward(x, state)
    dx, dstate_0, grads = lstm.backward(dy, cache, dstate)

    y1, mid, cache1 = lstm.forward(x[:split], state)
    y2, state_n2, cache2 = lstm.forward(x[split:], mid)
    dx2, dmid, grads2 = lstm.backward(dy[split:], cache2, dstate)
    dx1, dstate_01, grads1 = lstm.backward(dy[:split], cache1, dmid)

    assert rel_error(np.concatenate([y1, y2]), y) < 1e-12
    for a, b in zip(state_n2, state_n, strict=True):
        assert rel_error(a, b) < 1e-12
    assert rel_error(np.concatenate([dx1, dx2]), dx) < 1e-12
    for a, b in zip(dstate_01, dstate_0, strict=True):
        assert rel_error(a, b) < 1e-12
    for name in grads:
        assert rel_error(grads1[name] + grads2[name], grads[name]) < 1e-12, name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outputs_keep_the_input_dtype(dtype):
    lstm = LSTM(3, 4, 2, dtype=dtype)
    x = np.ones((5, 2, 3), dtype=dtype)
    y, (h_n, c_n), cache = lstm.forward(x)
    dx, (dh_0, dc_0), grads = lstm.backward(np.ones_like(y), cache)
    for array in (y, h_n, c_n, dx, dh_0, dc_0, *grads.values(), *lstm.state_dict().values()):
        assert array.dtype == dtype


def test_rejects_mismatched_input():
    lstm = LSTM(3, 4)
    with pytest.raises(ValueError, match="dtype float64"):
        lstm.forward(np.ones((2, 1, 3), dtype=np.float64))
    with pytest.raises(ValueError, match="shape"):
        lstm.forward(np.ones((2, 1, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="hidden_size"):
        LSTM(3, 0)
    with pytest.raises(ValueError, match="dropout"):
        LSTM(3, 4, dropout=1.0)


def test_state_dict_names_shapes_and_errors():
    lstm = LSTM(3, 5, num_layers=2)
    shapes = {k: v.shape for k, v in lstm.state_dict().items()}
    assert shapes == {
        "weight_ih_l0": (20, 3),
        "weight_hh_l0": (20, 5),
        "bias_ih_l0": (20,),
        "bias_hh_l0": (20,),
        "weight_ih_l1": (20, 5),
        "weight_hh_l1": (20, 5),
        "bias_ih_l1": (20,),
        "bias_hh_l1": (20,),
    }
    sd = lstm.state_dict()
    sd["weight_hh_l1"][0, 0] = 123.0
    assert lstm.state_dict()["weight_hh_l1"][0, 0] != 123.0  # a copy, not a view
    lstm.load_state_dict(sd)
    assert lstm.state_dict()["weight_hh_l1"][0, 0] == 123.0
    with pytest.raises(ValueError, match="weight_ih_l1"):
        lstm.load_state_dict({**sd, "weight_ih_l1": np.zeros((20, 4))})
    with pytest.raises(ValueError, match="bias_hh_l0"):
        lstm.load_state_dict({k: v for k, v in sd.items() if k != "bias_hh_l0"})
    with pytest.raises(ValueError, match="extra"):
        lstm.load_state_dict({**sd, "extra": np.zeros(1)})


def test_dropout_only_in_training_and_seedable():
    lstm = LSTM(3, 8, num_layers=3, dropout=0.5, dtype=np.float64)
    x = np.random.default_rng(0).normal(size=(6, 4, 3))
    y_eval, _, cache = lstm.eval().forward(x)
    assert all(m is None for m in cache.masks)
    assert np.array_equal(y_eval, lstm.eval().forward(x)[0])
    lstm.train()
    y_a = lstm.forward(x, rng=np.random.default_rng(1))[0].copy()
    y_b = lstm.forward(x, rng=np.random.default_rng(1))[0]
    assert np.array_equal(y_a, y_b)
    assert not np.allclose(y_a, y_eval)
    masks = lstm.forward(x)[2].masks
    assert masks[0] is None and set(np.unique(masks[1])) == {0.0, 2.0}


def test_initialisers():
    D, H = 7, 9
    torch_like = LSTM(D, H, 2, seed=3)
    bound = 1 / math.sqrt(H)
    for value in torch_like.state_dict().values():
        assert np.abs(value).max() <= bound and np.abs(value).max() > 0.8 * bound
    xavier = LSTM(D, H, 1, init="xavier", forget_bias=1.0)
    sd = xavier.state_dict()
    assert np.abs(sd["weight_ih_l0"]).max() <= math.sqrt(6 / (D + H + H))
    assert np.abs(sd["weight_ih_l0"]).max() > 0.8 * math.sqrt(6 / (D + H + H))
    assert np.array_equal(sd["bias_ih_l0"][H : 2 * H], np.ones(H, dtype=np.float32))
    assert not sd["bias_hh_l0"].any() and not np.delete(sd["bias_ih_l0"], np.s_[H : 2 * H]).any()
    assert not np.array_equal(
        LSTM(D, H, seed=1).state_dict()["weight_hh_l0"],
        LSTM(D, H, seed=2).state_dict()["weight_hh_l0"],
    )


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_integer_ids_equal_their_one_hot_rows(backend):
    """ids (T, B) are a gather of W_ih's columns: same outputs and gradients as one-hot floats."""
    lstm, rng = random_lstm(6, 5, 2, seed=3, backend=backend)
    ids = rng.integers(0, 6, (7, 3))
    one_hot = np.eye(6)[ids]  # (T, B, D)
    state = (rng.normal(0, 2, (2, 3, 5)), rng.normal(0, 2, (2, 3, 5)))
    dy = rng.normal(size=(7, 3, 5))
    y, (h, c), cache = lstm.forward(one_hot, state)
    _, (dh, dc), grads = lstm.backward(dy, cache)
    y_ids, (h_ids, c_ids), cache_ids = lstm.forward(ids, state)
    dx_ids, (dh_ids, dc_ids), grads_ids = lstm.backward(dy, cache_ids)
    assert dx_ids is None
    for a, b in [(y, y_ids), (h, h_ids), (c, c_ids), (dh, dh_ids), (dc, dc_ids)]:
        assert rel_error(b, a) < 1e-14
    for name in grads:
        assert rel_error(grads_ids[name], grads[name]) < 1e-14, name


@pytest.mark.parametrize("bad", [np.array([[0, 6]]), np.array([[-1, 0]]), np.zeros(3, np.int64)])
def test_ids_out_of_range_or_misshapen_are_refused(bad):
    lstm, _ = random_lstm(6, 5, 1)
    with pytest.raises(ValueError, match="ids must be"):
        lstm.forward(bad)
