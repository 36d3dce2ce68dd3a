"""The LSTM against torch.nn.LSTM with the same weights: outputs, final states, every gradient."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import rel_error
from lstm_scratch import LSTM


def run_both(T, B, D, H, L, dtype, seed=0, backend="numpy"):
    """Same random weights (biases too), input, initial state and upstream gradients in both."""
    rng = np.random.default_rng(seed)
    ours = LSTM(D, H, L, dtype=dtype, seed=seed, backend=backend)
    ours.load_state_dict({k: rng.normal(0, 0.7, v.shape) for k, v in ours.state_dict().items()})
    x = rng.normal(size=(T, B, D)).astype(dtype)
    h0, c0 = rng.normal(size=(L, B, H)).astype(dtype), rng.normal(0, 2, (L, B, H)).astype(dtype)
    dy = rng.normal(size=(T, B, H)).astype(dtype)
    dh_n, dc_n = rng.normal(size=(L, B, H)).astype(dtype), rng.normal(size=(L, B, H)).astype(dtype)

    y, (h_n, c_n), cache = ours.forward(x, (h0, c0))
    dx, (dh_0, dc_0), grads = ours.backward(dy, cache, (dh_n, dc_n))
    mine = {"y": y, "h_n": h_n, "c_n": c_n, "dx": dx, "dh_0": dh_0, "dc_0": dc_0, **grads}

    ref = torch.nn.LSTM(D, H, L).to(torch.float64 if dtype == np.float64 else torch.float32)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    xt, h0t, c0t = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    yt, (h_nt, c_nt) = ref(xt, (h0t, c0t))
    loss = (yt * torch.from_numpy(dy)).sum() + (h_nt * torch.from_numpy(dh_n)).sum()
    (loss + (c_nt * torch.from_numpy(dc_n)).sum()).backward()
    theirs = {"y": yt, "h_n": h_nt, "c_n": c_nt, "dx": xt.grad, "dh_0": h0t.grad, "dc_0": c0t.grad}
    theirs.update({name: p.grad for name, p in ref.named_parameters()})
    assert theirs.keys() == mine.keys()
    return mine, {k: v.detach().numpy() for k, v in theirs.items()}


SHAPES = [(5, 3, 4, 6, 2), (1, 1, 3, 4, 1), (7, 1, 2, 5, 3), (1, 4, 3, 5, 3), (3, 2, 7, 8, 1)]


@pytest.mark.parametrize(("dtype", "tolerance"), [(np.float64, 1e-10), (np.float32, 1e-4)])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}D{}H{}L{}".format(*s))
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_matches_torch(shape, dtype, tolerance, backend):
    mine, theirs = run_both(*shape, dtype, backend=backend)
    for name, value in mine.items():
        assert value.dtype == dtype, name
        assert rel_error(value, theirs[name]) < tolerance, name


@settings(max_examples=20, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 4),
    st.integers(1, 5),
    st.integers(1, 6),
    st.integers(1, 3),
    st.integers(0, 2**31),
    st.sampled_from(["numpy", "numba"]),
)
def test_matches_torch_any_shape(T, B, D, H, L, seed, backend):
    mine, theirs = run_both(T, B, D, H, L, np.float64, seed, backend)
    for name, value in mine.items():
        assert rel_error(value, theirs[name]) < 1e-10, name
