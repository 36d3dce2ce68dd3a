"""One LSTM layer: the time step and the whole sequence, each a forward/backward pair.

Letters for shapes: T time steps, B batch, D input features, H hidden units. Input given as
(T, B) integer ids stands for one-hot rows of width D (then D is the vocabulary V). The four
gates are stacked along the last axis in PyTorch's order (i, f, g, o), so gate arrays are
(…, 4H).

Forward, for t = 1..T (σ the logistic sigmoid, ⊙ elementwise):
    z_t = x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh           (B, 4H), split into z_i, z_f, z_g, z_o
    i = σ(z_i)   f = σ(z_f)   g = tanh(z_g)   o = σ(z_o)    input, forget, candidate, output
    c_t = f ⊙ c_{t-1} + i ⊙ g
    h_t = o ⊙ tanh(c_t)

Backward, for t = T..1, with dh the total gradient reaching h_t (from the output y_t and from
step t+1) and dc the gradient reaching c_t from step t+1:
    dc  = dc + dh ⊙ o ⊙ (1 − tanh²(c_t))      the original notebook wrote 1 − c_t² and an extra tanh
    do  = dh ⊙ tanh(c_t) ⊙ o(1 − o)
    di  = dc ⊙ g ⊙ i(1 − i)
    df  = dc ⊙ c_{t-1} ⊙ f(1 − f)
    dg  = dc ⊙ i ⊙ (1 − g²)
    dc_{t-1} = dc ⊙ f          dh_{t-1} = dz_t W_hh
and after the loop, over all steps at once:
    dW_ih = Σ_t dz_tᵀ x_t     dW_hh = Σ_t dz_tᵀ h_{t-1}     db_ih = db_hh = Σ_t dz_t
    dx_t = dz_t W_ih

Cost by construction: the input projection of all T steps is one GEMM, each step does one
recurrent GEMM, and the weight gradients are one GEMM each after the loop. The step functions
write into buffers that the sequence functions allocate once (views of (T, …) arrays), so the
time loops allocate nothing.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lstm_scratch.reference.ops import one_hot, sigmoid_


class LayerWeights(NamedTuple):
    """The parameters of one layer, in torch.nn.LSTM's layout (also used for their gradients)."""

    weight_ih: np.ndarray  # (4H, D)
    weight_hh: np.ndarray  # (4H, H)
    bias_ih: np.ndarray  # (4H,)
    bias_hh: np.ndarray  # (4H,)


def split_gates(gates: np.ndarray):
    """(…, 4H) -> four views (…, H): i, f, g, o."""
    hidden = gates.shape[-1] // 4
    return (
        gates[..., :hidden],
        gates[..., hidden : 2 * hidden],
        gates[..., 2 * hidden : 3 * hidden],
        gates[..., 3 * hidden :],
    )


# ---------------------------------------------------------------------------------- one step


class StepCache(NamedTuple):
    h_prev: np.ndarray  # (B, H)
    c_prev: np.ndarray  # (B, H)
    gates: np.ndarray  # (B, 4H) i, f, g, o after their nonlinearities
    tanh_c: np.ndarray  # (B, H) tanh(c_t)


class StepBuffers(NamedTuple):
    """Where a forward step writes; ``gates`` may be the same array as the step's ``gates_x``."""

    gates: np.ndarray  # (B, 4H)
    c: np.ndarray  # (B, H)
    h: np.ndarray  # (B, H)
    tanh_c: np.ndarray  # (B, H)
    scratch: np.ndarray  # (B, 4H)


def new_step_buffers(batch: int, hidden: int, dtype) -> StepBuffers:
    gates, scratch = (np.empty((batch, 4 * hidden), dtype=dtype) for _ in range(2))  # (B, 4H)
    c, h, tanh_c = (np.empty((batch, hidden), dtype=dtype) for _ in range(3))  # (B, H)
    return StepBuffers(gates, c, h, tanh_c, scratch)


def lstm_step_forward(gates_x, h_prev, c_prev, weight_hh, out: StepBuffers | None = None):
    """One step. gates_x (B, 4H) is x_t W_ihᵀ + b_ih + b_hh, computed for all steps beforehand.

    Returns h_t (B, H), c_t (B, H) and the step's cache; writes into ``out`` when given.
    """
    batch, hidden = h_prev.shape
    out = out or new_step_buffers(batch, hidden, h_prev.dtype)
    np.matmul(h_prev, weight_hh.T, out=out.scratch)  # (B, H) @ (H, 4H): the recurrent GEMM
    gates = np.add(gates_x, out.scratch, out=out.gates)  # (B, 4H) pre-activations z
    sigmoid_(gates[:, : 2 * hidden])  # i, f
    np.tanh(gates[:, 2 * hidden : 3 * hidden], out=gates[:, 2 * hidden : 3 * hidden])  # g
    sigmoid_(gates[:, 3 * hidden :])  # o
    i, f, g, o = split_gates(gates)  # (B, 4H) -> four (B, H) views
    c = np.multiply(f, c_prev, out=out.c)  # c = f ⊙ c_prev
    np.multiply(i, g, out=out.tanh_c)  #     (i ⊙ g, kept in tanh_c for a moment)
    c += out.tanh_c  # c = f ⊙ c_prev + i ⊙ g
    tanh_c = np.tanh(c, out=out.tanh_c)
    h = np.multiply(o, tanh_c, out=out.h)  # h = o ⊙ tanh(c)
    return h, c, StepCache(h_prev, c_prev, gates, tanh_c)


def lstm_step_backward(dh, dc, cache: StepCache, weight_hh, dgates=None, scratch=None):
    """Backward through one step, in place: dh (B, H) and dc (B, H) come in as the gradients
    reaching h_t and c_t and leave as the gradients reaching h_{t-1} and c_{t-1}.

    Returns dgates (B, 4H), the gradient of the pre-activations z_t (written into ``dgates``
    when given; ``scratch`` (B, H) is working space).
    """
    hidden = dh.shape[1]
    dgates = np.empty((dh.shape[0], 4 * hidden), dtype=dh.dtype) if dgates is None else dgates
    tmp = np.empty_like(dh) if scratch is None else scratch  # (B, H)
    i, f, g, o = split_gates(cache.gates)  # (B, 4H) -> four (B, H) views
    di, df, dg, do = split_gates(dgates)
    # dc += dh ⊙ o ⊙ (1 − tanh²(c))
    np.multiply(cache.tanh_c, cache.tanh_c, out=tmp)
    np.subtract(1, tmp, out=tmp)
    tmp *= o
    tmp *= dh
    dc += tmp
    # do = dh ⊙ tanh(c) ⊙ o(1 − o)
    np.subtract(1, o, out=do)
    do *= o
    do *= cache.tanh_c
    do *= dh
    # di = dc ⊙ g ⊙ i(1 − i)
    np.subtract(1, i, out=di)
    di *= i
    di *= g
    di *= dc
    # df = dc ⊙ c_prev ⊙ f(1 − f)
    np.subtract(1, f, out=df)
    df *= f
    df *= cache.c_prev
    df *= dc
    # dg = dc ⊙ i ⊙ (1 − g²)
    np.multiply(g, g, out=dg)
    np.subtract(1, dg, out=dg)
    dg *= i
    dg *= dc
    dc *= f  # dc_{t-1} = dc ⊙ f
    np.matmul(dgates, weight_hh, out=dh)  # (B, 4H) @ (4H, H): dh_{t-1} = dz W_hh
    return dgates


# ---------------------------------------------------------------------------------- a sequence


class LayerCache(NamedTuple):
    x: np.ndarray  # (T, B, D) the layer's input, or (T, B) ids for one-hot input
    hs: np.ndarray  # (T+1, B, H) h_0 … h_T
    cs: np.ndarray  # (T+1, B, H) c_0 … c_T
    gates: np.ndarray  # (T, B, 4H) activated i, f, g, o
    tanh_cs: np.ndarray  # (T, B, H) tanh(c_1) … tanh(c_T)

    def step(self, t: int) -> StepCache:
        return StepCache(self.hs[t], self.cs[t], self.gates[t], self.tanh_cs[t])


def lstm_forward(x, weights: LayerWeights, h0, c0):
    """Run one layer over a sequence. x (T, B, D), or (T, B) integer ids for one-hot input;
    h0 and c0 (B, H).

    Returns y (T, B, H), (h_T, c_T) each (B, H), and the cache. y is a view into the cache:
    read it, do not write into it.
    """
    cache = start_forward(x, weights, h0, c0)
    scratch = np.empty(cache.gates.shape[1:], dtype=cache.gates.dtype)  # (B, 4H)
    for t in range(x.shape[0]):
        buffers = StepBuffers(  # step t's (B, …) views of the (T, …) arrays
            cache.gates[t], cache.cs[t + 1], cache.hs[t + 1], cache.tanh_cs[t], scratch
        )
        lstm_step_forward(cache.gates[t], cache.hs[t], cache.cs[t], weights.weight_hh, buffers)
    return finish_forward(cache)


def lstm_backward(dy, cache: LayerCache, weights: LayerWeights, dh_n=None, dc_n=None, grads=None):
    """Backprop through time for one layer. dy (T, B, H); dh_n, dc_n (B, H) or None (zero).

    Returns dx (T, B, D) (None for ids), (dh_0, dc_0) each (B, H), and the weight gradients as
    LayerWeights (written into ``grads`` when given: overwritten, not accumulated).
    """
    dh, dc, dgates = start_backward(dy, dh_n, dc_n)
    scratch = np.empty_like(dh)  # (B, H)
    for t in reversed(range(dy.shape[0])):
        dh += dy[t]
        lstm_step_backward(dh, dc, cache.step(t), weights.weight_hh, dgates[t], scratch)
    dx, grads = finish_backward(dgates, cache, weights, grads)
    return dx, (dh, dc), grads


# --------------------------------------- a sequence's work before and after its time loop


def start_forward(x, weights: LayerWeights, h0, c0) -> LayerCache:
    """Allocate the layer's activations; fill gates with the input projection of every step,
    x_t W_ihᵀ + b_ih + b_hh.

    For (T, B) ids standing for one-hot rows, x_t W_ihᵀ is row ids[t] of W_ihᵀ: gathered
    (``gather_rows``) instead of multiplied.
    """
    cache = allocate_forward(x, weights, h0, c0)
    steps, batch, four_h = cache.gates.shape
    gates_2d = cache.gates.reshape(-1, four_h)  # (T, B, 4H) -> (T*B, 4H), a view
    bias = weights.bias_ih + weights.bias_hh  # (4H,) summed once
    if is_ids(x):
        table = np.ascontiguousarray(weights.weight_ih.T)  # (4H, D) -> (D, 4H), rows together
        gather_rows(table, bias, x.reshape(-1), gates_2d)  # ids (T*B,) -> (T*B, 4H)
    else:  # one GEMM for all steps: (T*B, D) @ (D, 4H)
        np.matmul(x.reshape(steps * batch, -1), weights.weight_ih.T, out=gates_2d)
        gates_2d += bias
    return cache


def allocate_forward(x, weights: LayerWeights, h0, c0) -> LayerCache:
    """The cache's arrays, with h_0 and c_0 in place and gates (T, B, 4H) not yet filled."""
    steps, batch = x.shape[:2]
    four_h, hidden = weights.weight_hh.shape
    dtype = weights.weight_hh.dtype
    gates = np.empty((steps, batch, four_h), dtype=dtype)  # (T, B, 4H)
    hs = np.empty((steps + 1, batch, hidden), dtype=dtype)  # (T+1, B, H)
    cs = np.empty((steps + 1, batch, hidden), dtype=dtype)  # (T+1, B, H)
    tanh_cs = np.empty((steps, batch, hidden), dtype=dtype)  # (T, B, H)
    hs[0], cs[0] = h0, c0
    return LayerCache(x, hs, cs, gates, tanh_cs)


def gather_rows(table, bias, ids, out):
    """out (N, G) = table[ids] + bias: rows of table (D, G) picked by ids (N,), bias (G,) added."""
    np.take(table, ids, axis=0, out=out)  # (N, G)
    out += bias


def finish_forward(cache: LayerCache):
    """y (T, B, H) as a view, the final state as copies, and the cache."""
    return cache.hs[1:], (cache.hs[-1].copy(), cache.cs[-1].copy()), cache


def start_backward(dy, dh_n, dc_n):
    """dh and dc (B, H) set to the final state's gradients (or zero), and dgates (T, B, 4H) for
    the time loop to fill."""
    steps, batch, hidden = dy.shape
    dh = np.zeros((batch, hidden), dtype=dy.dtype) if dh_n is None else np.array(dh_n, dy.dtype)
    dc = np.zeros((batch, hidden), dtype=dy.dtype) if dc_n is None else np.array(dc_n, dy.dtype)
    dgates = np.empty((steps, batch, 4 * hidden), dtype=dy.dtype)  # (T, B, 4H)
    return dh, dc, dgates


def finish_backward(dgates, cache: LayerCache, weights: LayerWeights, grads=None):
    """The weight gradients, one GEMM each over all steps, and dx (T, B, D) (None for ids)."""
    steps, batch, four_h = dgates.shape
    if grads is None:
        grads = LayerWeights(*(np.empty_like(w) for w in weights))
    dgates_2d = dgates.reshape(-1, four_h)  # (T, B, 4H) -> (T*B, 4H)
    if is_ids(cache.x):
        weight_ih_grad_from_ids(cache.x, dgates_2d, grads.weight_ih)  # (4H, D)
    else:  # (4H, T*B) @ (T*B, D)
        np.matmul(dgates_2d.T, cache.x.reshape(steps * batch, -1), out=grads.weight_ih)
    # (4H, T*B) @ (T*B, H): h_0 … h_{T-1}, the state each step read
    np.matmul(dgates_2d.T, cache.hs[:-1].reshape(steps * batch, -1), out=grads.weight_hh)
    np.sum(dgates_2d, axis=0, out=grads.bias_ih)  # (T*B, 4H) -> (4H,)
    grads.bias_hh[...] = grads.bias_ih
    if is_ids(cache.x):
        return None, grads  # integer input has no gradient
    dx = (dgates_2d @ weights.weight_ih).reshape(steps, batch, -1)  # (T*B, D) -> (T, B, D)
    return dx, grads


def weight_ih_grad_from_ids(ids, dgates_2d, out):
    """dW_ih (4H, D) for one-hot input given as ids: dgates_2dᵀ (4H, N) @ one_hot(ids) (N, D)."""
    np.matmul(dgates_2d.T, one_hot(ids.reshape(-1), out.shape[1], dgates_2d.dtype), out=out)


def is_ids(x: np.ndarray) -> bool:
    """True for integer ids (T, B) that stand for one-hot input."""
    return x.dtype.kind in "iu"
