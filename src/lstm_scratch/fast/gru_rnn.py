"""The GRU's and the plain RNN's compiled layers: the same equations, shapes and caches as
``reference/gru.py`` and ``reference/rnn.py`` (tests hold them to those), each layer's whole
time loop compiled: one numba call on one thread for small steps, one per lane for large ones,
each lane its own rows of the batch (``_by_rows``).

Each step's recurrent product goes through ``kernel.py``'s register kernel over W_hh packed
once per call, as the LSTM's small steps do; the gate arithmetic uses ``fused.py``'s
vectorisable sigmoid and tanh. The all-timestep work stays in BLAS, shared with the reference
(``reference/recurrent.py``): the input projection before the loop, the weight gradients and dx
after it. Letters: T time, B batch, D input, H hidden, G the stacked pre-activations (3H, H).
"""

from __future__ import annotations

import numpy as np

from lstm_scratch.fast.fused import like, sigmoid, tanh
from lstm_scratch.fast.host import is_small_step, step_lanes
from lstm_scratch.fast.jit import cached_njit
from lstm_scratch.fast.kernel import (
    ROWS,
    empty_aligned,
    full_width_product,
    pack_columns,
    panel_width,
)
from lstm_scratch.fast.sync import run_lanes
from lstm_scratch.reference.cell import LayerWeights
from lstm_scratch.reference.gru import GRUCache
from lstm_scratch.reference.recurrent import hidden_grads, input_grads, project_inputs
from lstm_scratch.reference.rnn import RNNCache, check_nonlinearity


def _packed(matrix, dtype):
    """matrix (K, N) in the kernel's panels (P, K, PANEL), zero-padded, and a (…, P·PANEL) row
    width for the products' scratch."""
    span = panel_width(dtype)
    panels = empty_aligned((-(-matrix.shape[1] // span), matrix.shape[0], span), dtype)
    pack_columns(matrix, 0, matrix.shape[1], panels)
    return panels, panels.shape[0] * span


@cached_njit(nogil=True, inline="always", error_model="numpy")
def _products(a, panels, out):
    """out (R, P·PANEL) = a (R, K) @ the packed matrix, panel by panel."""
    span = panels.shape[2]
    for p in range(panels.shape[0]):
        full_width_product(a, panels[p], out, p * span, False)


def _by_rows(loop, batch, hidden, *args):
    """loop(*args, first, last) for rows first…last-1 of the batch on each of a few threads
    (``host.step_lanes()`` for large steps, one for small ones), this one among them. Every
    row's recurrence is its own, so the lanes need no barrier, and each row's arithmetic is
    the same whatever the split: the same bits on any number of lanes."""
    count = 1 if is_small_step(batch, hidden) else max(1, min(step_lanes(), batch // ROWS))
    bounds = [k * batch // count for k in range(count + 1)]
    run_lanes(lambda k: loop(*args, bounds[k], bounds[k + 1]), count)


# ------------------------------------------------------------------------------------ the GRU


@cached_njit(nogil=True, inline="always", error_model="numpy")
def _gru_units(xr, xz, xn, hr, hz, hn, br, bz, bn, h_prev, h, hidden_n):
    """One row of one step: xr, xz, xn (H,) arrive holding gx and leave holding r, z, n;
    hr, hz, hn the row's h_{t-1} W_hhᵀ, br, bz, bn b_hh; writes h_t and gh_n (H,)."""
    for j in range(h.size):
        xr[j] = sigmoid(xr[j] + (hr[j] + br[j]))
        xz[j] = sigmoid(xz[j] + (hz[j] + bz[j]))
    for j in range(h.size):
        hidden_n[j] = hn[j] + bn[j]
        n = tanh(xn[j] + xr[j] * hidden_n[j])
        xn[j] = n
        h[j] = n + xz[j] * (h_prev[j] - n)


@cached_njit(nogil=True, error_model="numpy")
def gru_forward_loop(gates, panels, bias_hh, hs, hidden_n, product, first, last):
    """Rows first…last-1 of the batch: gates (T, B, 3H) arrive holding gx = x W_ihᵀ + b_ih and
    leave holding r, z, n; panels: W_hhᵀ (H, 3H) packed; hs (T+1, B, H) arrives with h_0 in row
    0; hidden_n (T, B, H) gets gh_n; product (B, P·PANEL) is scratch for each step's
    h_{t-1} W_hhᵀ."""
    steps, three_h = gates.shape[0], gates.shape[2]
    n = three_h // 3
    br, bz, bn = bias_hh[:n], bias_hh[n : 2 * n], bias_hh[2 * n :]
    for t in range(steps):
        _products(hs[t, first:last], panels, product[first:last])  # (R, H) @ (H, 3H)
        for b in range(first, last):
            g, p = gates[t, b], product[b]
            _gru_units(
                g[:n], g[n : 2 * n], g[2 * n :], p[:n], p[n : 2 * n], p[2 * n : 3 * n],
                br, bz, bn, hs[t, b], hs[t + 1, b], hidden_n[t, b],
            )  # fmt: skip


@cached_njit(nogil=True, inline="always", error_model="numpy")
def _gru_grad_units(dh, dy, r, z, n, hidden_n, h_prev, dxr, dxz, dxn, dhr, dhz, dhn):
    """One row of one step backward: dh (H,) arrives as the gradient from step t+1 and leaves
    as dh_t ⊙ z (the direct part of dh_{t-1}); writes dgx (dxr, dxz, dxn) and dgh (dhr, dhz,
    dhn)."""
    one = like(dh[0], 1.0)
    for j in range(dh.size):
        total = dh[j] + dy[j]
        da_n = total * (one - z[j]) * (one - n[j] * n[j])
        da_z = total * (h_prev[j] - n[j]) * z[j] * (one - z[j])
        da_r = da_n * hidden_n[j] * r[j] * (one - r[j])
        dxr[j], dxz[j], dxn[j] = da_r, da_z, da_n
        dhr[j], dhz[j], dhn[j] = da_r, da_z, da_n * r[j]
        dh[j] = total * z[j]


@cached_njit(nogil=True, error_model="numpy")
def gru_backward_loop(
    dy, gates, hidden_n, hs, panels, dh, dgates_x, dgates_h, product, first, last
):
    """Rows first…last-1 of the batch: dy (T, B, H); dh (B, H) arrives as dh_T and leaves as
    dh_0; dgates_x, dgates_h (T, B, 3H) get the gradients of gx and gh; panels: W_hh (3H, H)
    packed; product (B, P·PANEL) is scratch for each step's dgh_t W_hh."""
    steps, hidden = dy.shape[0], dy.shape[2]
    n = hidden
    for t in range(steps - 1, -1, -1):
        for b in range(first, last):
            g, dx_, dh_ = gates[t, b], dgates_x[t, b], dgates_h[t, b]
            _gru_grad_units(
                dh[b], dy[t, b], g[:n], g[n : 2 * n], g[2 * n :], hidden_n[t, b], hs[t, b],
                dx_[:n], dx_[n : 2 * n], dx_[2 * n :], dh_[:n], dh_[n : 2 * n], dh_[2 * n :],
            )  # fmt: skip
        _products(dgates_h[t, first:last], panels, product[first:last])  # (R, 3H) @ (3H, H)
        for b in range(first, last):  # dh_{t-1} = dh_t ⊙ z + dgh_t W_hh
            row, done = dh[b], product[b]
            for j in range(hidden):
                row[j] += done[j]


def gru_forward(x, weights: LayerWeights, h0):
    """As ``reference.gru.gru_forward``: y (T, B, H), h_T (B, H), the cache."""
    gates = project_inputs(x, weights.weight_ih, weights.bias_ih)  # (T, B, 3H) gx
    steps, (batch, hidden) = gates.shape[0], h0.shape
    hs = np.empty((steps + 1, batch, hidden), dtype=h0.dtype)  # (T+1, B, H)
    hidden_n = np.empty((steps, batch, hidden), dtype=h0.dtype)  # (T, B, H)
    hs[0] = h0
    panels, width = _packed(weights.weight_hh.T, gates.dtype)  # W_hhᵀ (H, 3H)
    product = empty_aligned((batch, width), gates.dtype)  # (B, P·PANEL)
    bias_hh = np.ascontiguousarray(weights.bias_hh)  # (3H,)
    _by_rows(gru_forward_loop, batch, hidden, gates, panels, bias_hh, hs, hidden_n, product)
    return hs[1:], hs[-1].copy(), GRUCache(x, hs, gates, hidden_n)


def gru_backward(dy, cache: GRUCache, weights: LayerWeights, dh_n=None, grads=None):
    """As ``reference.gru.gru_backward``: dx (None for ids), dh_0, grads."""
    steps, batch, hidden = dy.shape
    dh = np.zeros((batch, hidden), dy.dtype) if dh_n is None else np.array(dh_n, dy.dtype)
    dgates_x = np.empty((steps, batch, 3 * hidden), dtype=dy.dtype)  # (T, B, 3H)
    dgates_h = np.empty_like(dgates_x)  # (T, B, 3H)
    panels, width = _packed(weights.weight_hh, dy.dtype)  # W_hh (3H, H)
    product = empty_aligned((batch, width), dy.dtype)  # (B, P·PANEL)
    state = (cache.gates, cache.hidden_n, cache.hs, panels, dh, dgates_x, dgates_h, product)
    _by_rows(gru_backward_loop, batch, hidden, np.ascontiguousarray(dy), *state)
    grads = grads or LayerWeights(*(np.empty_like(w) for w in weights))
    dx = input_grads(dgates_x, cache.x, weights.weight_ih, grads.weight_ih, grads.bias_ih)
    hidden_grads(dgates_h, cache.hs, grads.weight_hh, grads.bias_hh)
    return dx, dh, grads


# ------------------------------------------------------------------------------------ the RNN


@cached_njit(nogil=True, error_model="numpy")
def rnn_forward_loop(pre, panels, hs, relu, product, first, last):
    """Rows first…last-1 of the batch: pre (T, B, H) is x W_ihᵀ + b_ih + b_hh; hs (T+1, B, H)
    arrives with h_0 in row 0; panels: W_hhᵀ (H, H) packed; product (B, P·PANEL) scratch.
    h_t = φ(pre_t + h_{t-1} W_hhᵀ)."""
    steps, hidden = pre.shape[0], pre.shape[2]
    zero = like(hs[0, 0, 0], 0.0)
    for t in range(steps):
        _products(hs[t, first:last], panels, product[first:last])  # (R, H) @ (H, H)
        for b in range(first, last):
            a, p, h = pre[t, b], product[b], hs[t + 1, b]
            for j in range(hidden):
                value = a[j] + p[j]
                h[j] = max(value, zero) if relu else tanh(value)


@cached_njit(nogil=True, error_model="numpy")
def rnn_backward_loop(dy, hs, panels, relu, dh, dpre, product, first, last):
    """Rows first…last-1 of the batch: dy (T, B, H); dh (B, H) arrives as dh_T and leaves as
    dh_0; dpre (T, B, H) gets the pre-activations' gradients; panels: W_hh (H, H) packed;
    product (B, P·PANEL) scratch."""
    steps, hidden = dy.shape[0], dy.shape[2]
    zero, one = like(dh[0, 0], 0.0), like(dh[0, 0], 1.0)
    for t in range(steps - 1, -1, -1):
        for b in range(first, last):
            g, h, target = dy[t, b], hs[t + 1, b], dpre[t, b]
            for j in range(hidden):
                total = dh[b, j] + g[j]
                slope = (one if h[j] > zero else zero) if relu else one - h[j] * h[j]
                target[j] = total * slope
        _products(dpre[t, first:last], panels, product[first:last])  # dh_{t-1} = da_t W_hh
        for b in range(first, last):
            dh[b] = product[b, :hidden]


def rnn_forward(x, weights: LayerWeights, h0, nonlinearity="tanh"):
    """As ``reference.rnn.rnn_forward``: y (T, B, H), h_T (B, H), the cache."""
    relu = check_nonlinearity(nonlinearity) == "relu"
    pre = project_inputs(x, weights.weight_ih, weights.bias_ih + weights.bias_hh)  # (T, B, H)
    steps, (batch, hidden) = pre.shape[0], h0.shape
    hs = np.empty((steps + 1, batch, hidden), dtype=h0.dtype)  # (T+1, B, H)
    hs[0] = h0
    panels, width = _packed(weights.weight_hh.T, pre.dtype)  # W_hhᵀ (H, H)
    product = empty_aligned((batch, width), pre.dtype)  # (B, P·PANEL)
    _by_rows(rnn_forward_loop, batch, hidden, pre, panels, hs, relu, product)
    return hs[1:], hs[-1].copy(), RNNCache(x, hs, nonlinearity)


def rnn_backward(dy, cache: RNNCache, weights: LayerWeights, dh_n=None, grads=None):
    """As ``reference.rnn.rnn_backward``: dx (None for ids), dh_0, grads."""
    steps, batch, hidden = dy.shape
    dh = np.zeros((batch, hidden), dy.dtype) if dh_n is None else np.array(dh_n, dy.dtype)
    dpre = np.empty((steps, batch, hidden), dtype=dy.dtype)  # (T, B, H)
    panels, width = _packed(weights.weight_hh, dy.dtype)  # W_hh (H, H)
    product = empty_aligned((batch, width), dy.dtype)  # (B, P·PANEL)
    relu = cache.nonlinearity == "relu"
    state = (cache.hs, panels, relu, dh, dpre, product)
    _by_rows(rnn_backward_loop, batch, hidden, np.ascontiguousarray(dy), *state)
    grads = grads or LayerWeights(*(np.empty_like(w) for w in weights))
    dx = input_grads(dpre, cache.x, weights.weight_ih, grads.weight_ih, grads.bias_ih)
    hidden_grads(dpre, cache.hs, grads.weight_hh, grads.bias_hh)
    return dx, dh, grads
