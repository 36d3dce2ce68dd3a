"""The GRU and plain RNN layers (reference/gru.py, reference/rnn.py): every gradient against
central differences in float64, and everything against torch.nn.GRU / torch.nn.RNN with the
weights copied in."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import numeric_gradient, rel_error
from lstm_scratch.reference.cell import LayerWeights
from lstm_scratch.reference.gru import gru_backward, gru_forward
from lstm_scratch.reference.ops import one_hot
from lstm_scratch.reference.rnn import rnn_backward, rnn_forward

CELLS = ["gru", "rnn-tanh", "rnn-relu"]


def layer_functions(cell):
    """(forward(x, weights, h0), backward(dy, cache, weights, dh_n), gates per unit)."""
    if cell == "gru":
        return gru_forward, gru_backward, 3
    nonlinearity = cell.split("-")[1]

    def forward(x, weights, h0):
        return rnn_forward(x, weights, h0, nonlinearity)

    return forward, rnn_backward, 1


def make_problem(cell, T, B, D, H, dtype=np.float64, ids=False, seed=0):
    """Random weights with non-zero biases, input (dense, or ids), h_0 and upstream gradients
    for the output and the final state."""
    rng = np.random.default_rng(seed)
    width = layer_functions(cell)[2] * H
    shapes = [(width, D), (width, H), (width,), (width,)]
    weights = LayerWeights(*(rng.normal(0, 0.8, s).astype(dtype) for s in shapes))
    x = rng.integers(0, D, (T, B)) if ids else rng.normal(size=(T, B, D)).astype(dtype)
    h0 = rng.normal(size=(B, H)).astype(dtype)
    dy, dh_n = rng.normal(size=(T, B, H)).astype(dtype), rng.normal(size=(B, H)).astype(dtype)
    return weights, x, h0, dy, dh_n


@pytest.mark.parametrize("ids", [False, True], ids=["dense", "ids"])
@pytest.mark.parametrize("cell", CELLS)
def test_every_gradient_matches_central_differences(cell, ids):
    forward, backward, _ = layer_functions(cell)
    weights, x, h0, dy, dh_n = make_problem(cell, T=4, B=3, D=5, H=6, ids=ids)

    def loss():
        y, h_n, _ = forward(x, weights, h0)
        return float((y * dy).sum() + (h_n * dh_n).sum())

    y, _, cache = forward(x, weights, h0)
    if cell == "rnn-relu":  # both sides of the kink are exercised
        assert (y > 0).any() and (y == 0).any()
    dx, dh_0, grads = backward(dy, cache, weights, dh_n)
    errors = {
        name: rel_error(grad, numeric_gradient(loss, weight))
        for name, grad, weight in zip(LayerWeights._fields, grads, weights, strict=True)
    }
    errors["h0"] = rel_error(dh_0, numeric_gradient(loss, h0))
    if ids:
        assert dx is None
    else:
        errors["x"] = rel_error(dx, numeric_gradient(loss, x))
    assert max(errors.values()) < 1e-6, errors


def torch_layer(cell, D, H, weights, dtype):
    """torch.nn.GRU or torch.nn.RNN with ``weights`` copied in."""
    if cell == "gru":
        layer = torch.nn.GRU(D, H)
    else:
        layer = torch.nn.RNN(D, H, nonlinearity=cell.split("-")[1])
    layer = layer.to(torch.float64 if dtype == np.float64 else torch.float32)
    names = [f"{name}_l0" for name in LayerWeights._fields]
    layer.load_state_dict(
        {n: torch.from_numpy(w.copy()) for n, w in zip(names, weights, strict=True)}
    )
    return layer, names


def compare_with_torch(cell, T, B, D, H, dtype, ids=False, seed=0):
    """Relative errors of ours against torch's: y, h_n, dx, dh_0 and every weight gradient."""
    forward, backward, _ = layer_functions(cell)
    weights, x, h0, dy, dh_n = make_problem(cell, T, B, D, H, dtype, ids, seed)
    y, h_n, cache = forward(x, weights, h0)
    dx, dh_0, grads = backward(dy, cache, weights, dh_n)
    mine = {"y": y, "h_n": h_n, "dh_0": dh_0, **dict(zip(LayerWeights._fields, grads, strict=True))}

    layer, names = torch_layer(cell, D, H, weights, dtype)
    dense = one_hot(x, D, dtype) if ids else x  # torch has no ids input: their one-hot rows
    xt, h0t = torch.tensor(dense, requires_grad=True), torch.tensor(h0[None], requires_grad=True)
    yt, h_nt = layer(xt, h0t)
    ((yt * torch.from_numpy(dy)).sum() + (h_nt[0] * torch.from_numpy(dh_n)).sum()).backward()
    theirs = {"y": yt, "h_n": h_nt[0], "dh_0": h0t.grad[0]}
    theirs.update(
        {
            field: layer.get_parameter(n).grad
            for field, n in zip(LayerWeights._fields, names, strict=True)
        }
    )
    if not ids:
        mine["dx"], theirs["dx"] = dx, xt.grad
    for name, value in mine.items():
        assert value.dtype == dtype, name
    return {name: rel_error(mine[name], theirs[name].detach().numpy()) for name in mine}


SHAPES = [(5, 3, 4, 6), (1, 1, 3, 4), (7, 1, 2, 5), (3, 4, 7, 8)]


@pytest.mark.parametrize(("dtype", "tolerance"), [(np.float64, 1e-10), (np.float32, 1e-4)])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}D{}H{}".format(*s))
@pytest.mark.parametrize("cell", CELLS)
def test_matches_torch(cell, shape, dtype, tolerance):
    errors = compare_with_torch(cell, *shape, dtype)
    assert max(errors.values()) < tolerance, errors


@pytest.mark.parametrize("cell", CELLS)
def test_ids_match_torch_on_their_one_hot_rows(cell):
    errors = compare_with_torch(cell, 6, 3, 5, 4, np.float64, ids=True)
    assert max(errors.values()) < 1e-10, errors


@settings(max_examples=15, deadline=None)
@given(
    st.sampled_from(CELLS),
    st.integers(1, 6),
    st.integers(1, 4),
    st.integers(1, 5),
    st.integers(1, 6),
    st.integers(0, 2**31),
)
def test_matches_torch_on_drawn_shapes(cell, T, B, D, H, seed):
    errors = compare_with_torch(cell, T, B, D, H, np.float64, seed=seed)
    assert max(errors.values()) < 1e-10, errors
