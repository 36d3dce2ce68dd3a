"""LSTM, GRU and RNN as models (model/recurrent.py): stacked, bidirectional, batch-first, with
and without biases, against torch.nn.LSTM / GRU / RNN with the weights copied in, and against
central differences in float64 with dropout masks held fixed. The LSTM runs on both backends."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import numeric_gradient, rel_error
from lstm_scratch.model.lstm import LSTM
from lstm_scratch.model.recurrent import GRU, RNN
from lstm_scratch.reference.ops import one_hot

KINDS = [
    f"{cell}-{backend}"
    for cell in ("lstm", "gru", "rnn-tanh", "rnn-relu")
    for backend in ("numpy", "numba")
]


def make_pair(kind, D, H, L, dtype, seed=0, **options):
    """Ours and torch's, the same random weights (biases too) in both."""
    cell, backend = kind.rsplit("-", 1)
    if cell == "gru":
        ours = GRU(D, H, L, dtype=dtype, backend=backend, **options)
        theirs = torch.nn.GRU(D, H, L, **options)
    elif cell == "lstm":
        ours = LSTM(D, H, L, dtype=dtype, backend=backend, **options)
        theirs = torch.nn.LSTM(D, H, L, **options)
    else:
        nonlinearity = cell.split("-")[1]
        ours = RNN(D, H, L, nonlinearity=nonlinearity, dtype=dtype, backend=backend, **options)
        theirs = torch.nn.RNN(D, H, L, nonlinearity=nonlinearity, **options)
    rng = np.random.default_rng(seed)
    ours.load_state_dict({k: rng.normal(0, 0.6, v.shape) for k, v in ours.state_dict().items()})
    theirs = theirs.to(torch.float64 if dtype == np.float64 else torch.float32)
    assert list(theirs.state_dict()) == list(ours.state_dict())  # torch's names, in its order
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    return ours, theirs


def compare(kind, T, B, D, H, L, dtype, ids=False, seed=0, **options):
    """Relative errors of ours against torch's for y, the final state, dx, the initial state's
    gradient and every parameter's."""
    ours, theirs = make_pair(kind, D, H, L, dtype, seed, **options)
    rng = np.random.default_rng(seed + 1)
    dirs = 2 if options.get("bidirectional") else 1
    order = (B, T) if options.get("batch_first") else (T, B)
    x = rng.integers(0, D, order) if ids else rng.normal(size=(*order, D)).astype(dtype)
    parts = 2 if kind.startswith("lstm") else 1  # (h, c) or h
    state = [rng.normal(0, 1.5, (L * dirs, B, H)).astype(dtype) for _ in range(parts)]
    dy = rng.normal(size=(*order, dirs * H)).astype(dtype)
    dstate = [rng.normal(size=(L * dirs, B, H)).astype(dtype) for _ in range(parts)]

    def public(arrays):  # h alone, or (h, c)
        return arrays[0] if parts == 1 else tuple(arrays)

    y, state_n, cache = ours.forward(x, public(state))
    dx, dstate_0, grads = ours.backward(dy, cache, public(dstate))
    state_n, dstate_0 = ([a] if parts == 1 else a for a in (state_n, dstate_0))
    mine = {"y": y, **grads}
    for k in range(parts):
        mine[f"state_n{k}"], mine[f"dstate_0{k}"] = state_n[k], dstate_0[k]

    xt = torch.tensor(one_hot(x, D, dtype) if ids else x, requires_grad=True)
    state_t = [torch.tensor(a, requires_grad=True) for a in state]
    yt, state_nt = theirs(xt, public(state_t))
    state_nt = [state_nt] if parts == 1 else state_nt
    loss = (yt * torch.from_numpy(dy)).sum()
    for last, grad in zip(state_nt, dstate, strict=True):
        loss = loss + (last * torch.from_numpy(grad)).sum()
    loss.backward()
    expected = {"y": yt}
    for k in range(parts):
        expected[f"state_n{k}"], expected[f"dstate_0{k}"] = state_nt[k], state_t[k].grad
    expected.update({name: p.grad for name, p in theirs.named_parameters()})
    if ids:
        assert dx is None
    else:
        mine["dx"], expected["dx"] = dx, xt.grad
    assert mine.keys() == expected.keys()
    for name, value in mine.items():
        assert value.dtype == dtype, name
    return {name: rel_error(mine[name], expected[name].detach().numpy()) for name in mine}


OPTIONS = [
    {},
    {"bidirectional": True},
    {"batch_first": True},
    {"bias": False},
    {"bidirectional": True, "batch_first": True, "bias": False},
]


@pytest.mark.parametrize(("dtype", "tolerance"), [(np.float64, 1e-10), (np.float32, 1e-4)])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(o) or "plain")
@pytest.mark.parametrize("kind", KINDS)
def test_matches_torch(kind, options, dtype, tolerance):
    errors = compare(kind, 5, 3, 4, 6, 2, dtype, **options)
    assert max(errors.values()) < tolerance, errors


@pytest.mark.parametrize("kind", KINDS)
def test_ids_match_torch_on_their_one_hot_rows(kind):
    errors = compare(
        kind, 4, 3, 7, 5, 2, np.float64, ids=True, bidirectional=True, batch_first=True
    )
    assert max(errors.values()) < 1e-10, errors


@settings(max_examples=20, deadline=None)
@given(
    st.sampled_from(KINDS),
    st.tuples(*(st.integers(1, 5),) * 4),
    st.integers(1, 3),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.integers(0, 2**31),
)
def test_matches_torch_on_drawn_shapes(kind, sizes, L, bidirectional, batch_first, bias, seed):
    options = {"bidirectional": bidirectional, "batch_first": batch_first, "bias": bias}
    errors = compare(kind, *sizes, L, np.float64, seed=seed, **options)
    assert max(errors.values()) < 1e-10, errors


@pytest.mark.parametrize("kind", KINDS)
def test_every_gradient_matches_central_differences_with_dropout(kind):
    """Two bidirectional, batch-first layers, random non-zero biases, dropout between them with
    masks held fixed (a fresh generator of one seed each call), non-zero final-state
    gradients; for the LSTM |c| > 1."""
    ours, _ = make_pair(
        kind, 4, 5, 2, np.float64, bidirectional=True, batch_first=True, dropout=0.4
    )
    rng = np.random.default_rng(3)
    parts = 2 if kind.startswith("lstm") else 1
    x = rng.normal(size=(3, 4, 4))  # (B, T, D)
    state = [rng.normal(0, 1.5, (4, 3, 5)) for _ in range(parts)]  # (K, B, H) each
    dy, dstate = rng.normal(size=(3, 4, 10)), [rng.normal(size=(4, 3, 5)) for _ in range(parts)]

    def public(arrays):
        return arrays[0] if parts == 1 else tuple(arrays)

    def loss():
        y, last, _ = ours.forward(x, public(state), rng=np.random.default_rng(42))
        last = [last] if parts == 1 else last
        return float((y * dy).sum() + sum((a * g).sum() for a, g in zip(last, dstate, strict=True)))

    _, _, cache = ours.forward(x, public(state), rng=np.random.default_rng(42))
    assert (cache.masks[1] == 0).any()
    if parts == 2:
        assert all(np.abs(d.cs).max() > 1 for layer in cache.layers for d in layer)
    dx, dstate_0, grads = ours.backward(dy, cache, public(dstate))
    dstate_0 = [dstate_0] if parts == 1 else dstate_0
    errors = {
        name: rel_error(grads[name], numeric_gradient(loss, ours.params[name])) for name in grads
    }
    errors["x"] = rel_error(dx, numeric_gradient(loss, x))
    for k in range(parts):
        errors[f"state{k}"] = rel_error(dstate_0[k], numeric_gradient(loss, state[k]))
    assert max(errors.values()) < 1e-6, errors


def backward_with(model, dy_shape):
    """The model's backward for an input of (2, 1, input_size) given a dy of ``dy_shape``."""
    order = (1, 2) if model.batch_first else (2, 1)
    _, _, cache = model.forward(np.zeros((*order, model.input_size), np.float32))
    return model.backward(np.zeros(dy_shape, np.float32), cache)


@pytest.mark.parametrize(
    ("make", "call", "message"),
    [
        (lambda: GRU(4, 3), lambda m: m.forward(np.zeros((2, 1, 5), np.float32)), "(T, B, 4)"),
        (
            lambda: GRU(4, 3, batch_first=True),
            lambda m: m.forward(np.zeros((2, 1, 5))),
            "(B, T, 4)",
        ),
        (lambda: RNN(4, 3), lambda m: m.forward(np.zeros((2, 1, 4))), "dtype float64"),
        (lambda: RNN(4, 3), lambda m: m.forward(np.array([[4]])), "[0, 4)"),
        (
            lambda: GRU(4, 3, 2, bidirectional=True),
            lambda m: m.forward(np.zeros((2, 1, 4), np.float32), np.zeros((2, 1, 3), np.float32)),
            "(4, 1, 3)",
        ),
        (lambda: RNN(4, 3, nonlinearity="sigmoid"), None, "'tanh' or 'relu'"),
        (
            lambda: LSTM(4, 3, bidirectional=True),
            lambda m: m.forward(np.zeros((2, 1, 4), np.float32), m.zero_state(1)[0]),
            "(h, c)",
        ),
        (
            lambda: LSTM(4, 3, bidirectional=True),
            lambda m: m.forward(np.zeros((2, 1, 4), np.float32), LSTM(4, 3).zero_state(1)),
            "(2, 1, 3)",
        ),
        (lambda: LSTM(4, 3, bias=False, forget_bias=1.0), None, "bias=True"),
        (
            lambda: GRU(4, 3),
            lambda m: m.forward(np.zeros((2, 1, 4), np.float32), np.zeros((1, 1, 3))),
            "dtype float64",
        ),
        (lambda: GRU(4, 3, bidirectional=True), lambda m: backward_with(m, (2, 1, 3)), "(2, 1, 6)"),
        (lambda: RNN(4, 3, batch_first=True), lambda m: backward_with(m, (2, 1, 3)), "(1, 2, 3)"),
        (lambda: GRU(4, 0), None, "hidden_size"),
    ],
)
def test_bad_input_names_what_was_expected(make, call, message):
    with pytest.raises(ValueError) as error:
        call(make()) if call else make()
    assert message in str(error.value)


@pytest.mark.parametrize("kind", [k for k in KINDS if k.endswith("numba")])
def test_large_steps_match_torch(kind):
    """A step large enough for the compiled lanes (B·4H·H > host.SMALL_STEP): the LSTM's lanes by
    rows, the GRU's and RNN's split of rows, both directions, batch first."""
    options = {"bidirectional": True, "batch_first": True}
    errors = compare(kind, 3, 26, 5, 130, 1, np.float64, **options)
    assert max(errors.values()) < 1e-10, errors
