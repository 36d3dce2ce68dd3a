"""The numba backend's layer: one LSTM layer forward and backward, and the loss, in Python
around the compiled kernels of ``fused.py`` (which holds everything numba compiles).

Same equations, shapes and cache as ``cell.py`` (the readable reference; tests hold this one to
it). Small steps (``backend.is_small_step``) run each layer's whole time loop compiled, the
recurrent matrix product included; large ones call BLAS (two threads) for each step's recurrent
GEMM and one compiled kernel for the step's gate arithmetic. The all-timestep GEMMs stay in
BLAS (``cell.start_forward`` / ``finish_backward``). Letters: T time, B batch, D input,
H hidden, G = 4H gates.

Large steps wait on memory more than on arithmetic: at T 100, B 64, H 256 the (T, B, G) gate
arrays are 26 MB each, beyond every cache. So the step kernels do the all-timestep work that
touches one step's rows while those rows are in cache: with one-hot input the forward kernel
adds the input's row of W_ihᵀ + b to the GEMM's output (no gather over (T, B, G) first), and
the backward kernel sums the bias gradient and scatters dW_ih (no two more passes over dgates).
"""

from __future__ import annotations

import numpy as np

from . import fused
from .backend import is_small_step, transposed_step_gemm
from .cell import (
    LayerCache,
    LayerWeights,
    allocate_forward,
    finish_backward,
    finish_forward,
    is_ids,
    start_backward,
    start_forward,
)


def _weight_ih_grad_from_ids(ids, dgates_2d, out):
    """``cell.weight_ih_grad_from_ids`` as a compiled scatter-add."""
    transposed = np.empty((out.shape[1], out.shape[0]), dtype=out.dtype)  # (D, G)
    fused.scatter_rows(ids.reshape(-1), dgates_2d, transposed)
    out[...] = transposed.T


def cross_entropy(logits, targets, reduction="mean"):
    """As ``ops.cross_entropy``: (loss, dlogits (N, V)), one compiled pass."""
    num_classes = logits.shape[-1]
    flat = np.ascontiguousarray(logits.reshape(-1, num_classes))  # (N, V)
    flat_targets = np.ascontiguousarray(targets.reshape(-1))  # (N,)
    dlogits = np.empty_like(flat)  # (N, V)
    total = fused.cross_entropy_rows(flat, flat_targets, dlogits)
    scale = 1.0 / flat_targets.size if reduction == "mean" else 1.0
    if scale != 1.0:
        dlogits *= flat.dtype.type(scale)
    return logits.dtype.type(total * scale), dlogits


def lstm_forward(x, weights: LayerWeights, h0, c0):
    """As ``cell.lstm_forward``. Small steps run the whole time loop compiled; large ones call
    BLAS for each step's recurrent GEMM (two threads) and one compiled kernel for its gates.

    For large steps with one-hot input, the gather of W_ihᵀ + b happens inside the step's
    kernel, on the GEMM's output while it is in cache: a (T, B, 4H) array the size of the
    input projection is then written and read once less per layer (memory bandwidth, not
    arithmetic, is what these steps wait on). Not with a transposed GEMM output
    (``backend.transposed_step_gemm``): there the gather comes first, over all steps."""
    batch, hidden = h0.shape
    vocab = weights.weight_ih.shape[1]
    if is_ids(x) and x.size and (x.min() < 0 or x.max() >= vocab):  # the compiled gathers
        raise ValueError(f"ids must be in [0, {vocab})")  # do not check their indices
    if is_small_step(batch, hidden):
        cache = start_forward(x, weights, h0, c0, fused.gather_rows)
        weight_hh_t = np.ascontiguousarray(weights.weight_hh.T)  # (H, G)
        fused.forward_loop(cache.gates, weight_hh_t, cache.hs, cache.cs, cache.tanh_cs)
        return finish_forward(cache)
    transposed = transposed_step_gemm(batch, hidden)
    ids = is_ids(x) and not transposed
    if ids:
        cache = allocate_forward(x, weights, h0, c0)
        table = np.ascontiguousarray(weights.weight_ih.T)  # (D, G)
        addend = table + (weights.bias_ih + weights.bias_hh)  # (D, G) W_ihᵀ + b
        rows = x  # (T, B) each step adds addend[ids] into the GEMM's output in gates[t]
    else:  # the input part first, for all steps (a gather, or one GEMM)
        cache = start_forward(x, weights, h0, c0, fused.gather_rows)  # gates hold x W_ihᵀ + b
        four_h, dtype = cache.gates.shape[-1], cache.gates.dtype
        if transposed:
            product = np.empty((four_h, batch), dtype=dtype)  # (G, B) the GEMM's output
            addend = product.T  # (B, G) a view, read with a stride
        else:
            addend = np.empty((batch, four_h), dtype=dtype)  # (B, G) the GEMM's output
        rows = np.broadcast_to(np.arange(batch), x.shape[:2])  # (T, B) the GEMM's output, row b
    for t in range(cache.gates.shape[0]):
        gates = cache.gates[t]  # (B, G)
        if transposed:
            np.matmul(weights.weight_hh, cache.hs[t].T, out=product)  # (G, B) W_hh h_{t-1}ᵀ
        else:
            np.matmul(cache.hs[t], weights.weight_hh.T, out=gates if ids else addend)  # (B, G)
        fused.activate_rows(
            gates, addend, rows[t], cache.cs[t], cache.cs[t + 1], cache.hs[t + 1], cache.tanh_cs[t]
        )
    return finish_forward(cache)


def lstm_backward(dy, cache: LayerCache, weights: LayerWeights, dh_n=None, dc_n=None, grads=None):
    """As ``cell.lstm_backward``; the same split by step size as ``lstm_forward``. For large
    steps the bias gradient and (for one-hot input) dW_ih are summed inside the step kernel
    while each step's dz is in cache, not in two more passes over dgates (T, B, 4H)."""
    dh, dc, dgates = start_backward(dy, dh_n, dc_n)
    dy = np.ascontiguousarray(dy)
    batch, hidden = dh.shape
    if is_small_step(batch, hidden):
        weight_hh = np.ascontiguousarray(weights.weight_hh)  # (G, H)
        fused.backward_loop(dy, cache.gates, cache.cs, cache.tanh_cs, weight_hh, dh, dc, dgates)
        dx, grads = finish_backward(dgates, cache, weights, grads, _weight_ih_grad_from_ids)
        return dx, (dh, dc), grads
    # The sums over T·B rows are kept in float64 (np.sum's pairwise sum is as exact in float32)
    four_h = dgates.shape[-1]
    bias_grad = np.zeros(four_h, dtype=np.float64)  # (G,)
    if is_ids(cache.x):
        table_grad = np.zeros((weights.weight_ih.shape[1], four_h), dtype=np.float64)  # (D, G)
        rows = cache.x  # (T, B)
    else:  # dW_ih comes from one GEMM in finish_backward
        table_grad, rows = None, np.empty((dy.shape[0], 0), dtype=np.intp)  # rows unused
    transposed = transposed_step_gemm(batch, hidden)
    if transposed:  # the GEMM writes dh_{t-1}ᵀ (H, B); the kernel reads it through dh (B, H)
        dh_t = np.ascontiguousarray(dh.T)  # (H, B)
        dh = dh_t.T  # (B, H) a view
        weight_hh_t = np.ascontiguousarray(weights.weight_hh.T)  # (H, G)
    for t in reversed(range(dy.shape[0])):
        fused.gate_grads_rows(
            cache.gates[t], dy[t], dh, dc, cache.cs[t], cache.tanh_cs[t], dgates[t],
            bias_grad, table_grad, rows[t],
        )  # fmt: skip
        if transposed:
            np.matmul(weight_hh_t, dgates[t].T, out=dh_t)  # (H, B) dh_{t-1}ᵀ = W_hhᵀ dzᵀ
        else:
            np.matmul(dgates[t], weights.weight_hh, out=dh)  # (B, H) dh_{t-1} = dz W_hh
    dh = np.ascontiguousarray(dh)  # (B, H)

    def weight_ih_grad(ids, dgates_2d, out):  # summed in the loop: (D, G) -> (G, D)
        out[...] = table_grad.T

    dx, grads = finish_backward(dgates, cache, weights, grads, weight_ih_grad, bias_grad)
    return dx, (dh, dc), grads
