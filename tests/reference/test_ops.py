"""Embedding, linear head and softmax cross-entropy: central differences and torch parity."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import numeric_gradient, rel_error
from lstm_scratch.reference import ops

T, B, E, H, V = 4, 3, 5, 6, 7


def test_embedding_gathers_rows_and_scatters_gradients():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(V, E))
    ids = rng.integers(0, V, size=(T, B))
    ids[0, 0] = ids[1, 2] = 3  # a repeated id must accumulate
    dout = rng.normal(size=(T, B, E))
    out, cache = ops.embedding_forward(ids, weight)
    assert np.array_equal(out, ops.one_hot(ids, V, np.float64) @ weight)
    dweight = ops.embedding_backward(dout, cache, V)
    numeric = numeric_gradient(
        lambda: float((ops.embedding_forward(ids, weight)[0] * dout).sum()), weight
    )
    assert rel_error(dweight, numeric) < 1e-8
    ref = torch.nn.Embedding(V, E).double()
    ref.weight.data = torch.from_numpy(weight)
    (ref(torch.from_numpy(ids)) * torch.from_numpy(dout)).sum().backward()
    assert rel_error(dweight, ref.weight.grad.numpy()) < 1e-12


def test_one_hot():
    ids = np.array([[0, 2], [1, 1]])
    out = ops.one_hot(ids, 3, np.float32)
    assert out.dtype == np.float32 and out.shape == (2, 2, 3)
    assert np.array_equal(out.argmax(-1), ids) and np.array_equal(out.sum(-1), np.ones((2, 2)))


def test_linear_matches_finite_differences_and_torch():
    rng = np.random.default_rng(1)
    x, weight, bias = rng.normal(size=(T, B, H)), rng.normal(size=(V, H)), rng.normal(size=V)
    dout = rng.normal(size=(T, B, V))
    y, cache = ops.linear_forward(x, weight, bias)
    dx, dweight, dbias = ops.linear_backward(dout, cache, weight)

    def loss():
        return float((ops.linear_forward(x, weight, bias)[0] * dout).sum())

    for grad, array in ((dx, x), (dweight, weight), (dbias, bias)):
        assert rel_error(grad, numeric_gradient(loss, array)) < 1e-8
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, weight, bias))
    yt = F.linear(xt, wt, bt)
    (yt * torch.from_numpy(dout)).sum().backward()
    assert rel_error(y, yt.detach().numpy()) < 1e-12
    for ours, theirs in ((dx, xt), (dweight, wt), (dbias, bt)):
        assert rel_error(ours, theirs.grad.numpy()) < 1e-12


def test_linear_backward_parts_against_einsum():
    """linear_input_grad and linear_weight_grads on float32 against einsum in float64
    (linear_backward, which is made of them, is held to torch and finite differences above)."""
    rng = np.random.default_rng(2)
    x, weight = rng.normal(size=(T, B, H)).astype(np.float32), rng.normal(size=(V, H))
    dout = rng.normal(size=(T, B, V)).astype(np.float32)
    dx = ops.linear_input_grad(dout, weight.astype(np.float32))
    assert dx.shape == x.shape and dx.dtype == np.float32
    dout64, x64 = dout.astype(np.float64), x.astype(np.float64)
    assert rel_error(dx, np.einsum("tbv,vh->tbh", dout64, weight)) < 1e-6
    dweight, dbias = ops.linear_weight_grads(dout, ops.LinearCache(x))
    assert rel_error(dweight, np.einsum("tbv,tbh->vh", dout64, x64)) < 1e-6
    assert rel_error(dbias, dout64.sum(axis=(0, 1))) < 1e-6


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_matches_finite_differences_and_torch(reduction):
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 3, size=(T, B, V))
    targets = rng.integers(0, V, size=(T, B))
    loss, cache = ops.cross_entropy_forward(logits, targets, reduction)
    dlogits = ops.cross_entropy_backward(cache).reshape(logits.shape)
    numeric = numeric_gradient(
        lambda: float(ops.cross_entropy_forward(logits, targets, reduction)[0]), logits
    )
    assert rel_error(dlogits, numeric) < 1e-7
    lt = torch.tensor(logits.reshape(-1, V), requires_grad=True)
    ref = F.cross_entropy(lt, torch.from_numpy(targets.reshape(-1)), reduction=reduction)
    ref.backward()
    assert abs(loss - ref.item()) < 1e-12 * abs(ref.item())
    assert rel_error(dlogits.reshape(-1, V), lt.grad.numpy()) < 1e-12


def test_cross_entropy_keeps_dtype_and_survives_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4], [-1e30, 1e30, 0.0]], dtype=np.float32)
    loss, cache = ops.cross_entropy_forward(logits, np.array([0, 1]))
    assert loss.dtype == np.float32 and np.isfinite(loss) and loss == 0.0
    dlogits = ops.cross_entropy_backward(cache)
    assert dlogits.dtype == np.float32 and np.isfinite(dlogits).all()
    with pytest.raises(ValueError, match="reduction"):
        ops.cross_entropy_forward(logits, np.array([0, 1]), "max")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_is_stable_and_exact(dtype):
    z = np.array(
        [-1e4, -50.0, -1.0, 0.0, 2.0, 50.0, 1e4], dtype=dtype
    )  # no overflow warning allowed
    s = ops.sigmoid(z)
    assert s.dtype == dtype
    expected = torch.sigmoid(torch.from_numpy(z.astype(np.float64))).numpy()
    assert np.allclose(s, expected, rtol=0, atol=np.finfo(dtype).eps)
    assert s[0] == 0.0 and s[-1] == 1.0


def test_dropout_mask():
    mask = ops.dropout_mask(np.random.default_rng(0), (1000, 100), 0.25, np.float32)
    assert mask.dtype == np.float32
    assert set(np.unique(mask)) == {0.0, np.float32(1 / 0.75)}
    assert abs(mask.mean() - 1.0) < 0.01
