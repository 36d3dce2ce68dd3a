"""One plain (Elman) RNN layer: the time step and the whole sequence, each a forward/backward
pair, with torch.nn.RNN's equations and layout.

Letters for shapes: T time steps, B batch, D input features, H hidden units. weight_ih (H, D),
weight_hh (H, H), bias_ih and bias_hh (H,) (``cell.LayerWeights``). The nonlinearity φ is tanh
or relu (``NONLINEARITIES``).

Forward, for t = 1..T, with the input's part of every step computed before the loop:
    a_t = x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh      (B, H)
    h_t = φ(a_t)

Backward, for t = T..1, with dh the total gradient reaching h_t (from y_t and from step t+1):
    da = dh ⊙ φ'(a_t)          tanh: 1 − h_t²     relu: 1 where h_t > 0, else 0
    dh_{t-1} = da W_hh
and after the loop, over all steps at once:
    dW_ih = Σ_t da_tᵀ x_t   dW_hh = Σ_t da_tᵀ h_{t-1}   db_ih = db_hh = Σ_t da_t   dx_t = da_t W_ih
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lstm_scratch.reference.cell import LayerWeights
from lstm_scratch.reference.recurrent import hidden_grads, input_grads, project_inputs

NONLINEARITIES = ("tanh", "relu")


def check_nonlinearity(nonlinearity: str) -> str:
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    return nonlinearity


def rnn_step_forward(pre_x, h_prev, weight_hh, nonlinearity="tanh"):
    """One step. pre_x (B, H) is x_t W_ihᵀ + b_ih + b_hh, computed for all steps beforehand.
    Returns h_t (B, H); h_t is all the backward needs of the step besides h_{t-1}."""
    pre = pre_x + h_prev @ weight_hh.T  # (B, H) @ (H, H): a_t
    return np.tanh(pre) if nonlinearity == "tanh" else np.maximum(pre, 0)


def rnn_step_backward(dh, h, weight_hh, nonlinearity="tanh"):
    """Backward through one step: dh (B, H) reaches h_t = h. Returns dh_{t-1} (B, H) and da
    (B, H), the gradient of the pre-activation a_t."""
    da = dh * (1 - h * h) if nonlinearity == "tanh" else dh * (h > 0)  # (B, H)
    return da @ weight_hh, da  # (B, H) @ (H, H)


class RNNCache(NamedTuple):
    x: np.ndarray  # (T, B, D) the layer's input, or (T, B) ids for one-hot input
    hs: np.ndarray  # (T+1, B, H) h_0 … h_T
    nonlinearity: str


def rnn_forward(x, weights: LayerWeights, h0, nonlinearity="tanh"):
    """Run one layer over a sequence. x (T, B, D), or (T, B) integer ids for one-hot input;
    h0 (B, H).

    Returns y (T, B, H), h_T (B, H) and the cache. y is a view into the cache: read it, do not
    write into it.
    """
    check_nonlinearity(nonlinearity)
    bias = weights.bias_ih + weights.bias_hh  # (H,) summed once
    pre_x = project_inputs(x, weights.weight_ih, bias)  # (T, B, H)
    steps, (batch, hidden) = pre_x.shape[0], h0.shape
    hs = np.empty((steps + 1, batch, hidden), dtype=h0.dtype)  # (T+1, B, H)
    hs[0] = h0
    for t in range(steps):
        hs[t + 1] = rnn_step_forward(pre_x[t], hs[t], weights.weight_hh, nonlinearity)
    return hs[1:], hs[-1].copy(), RNNCache(x, hs, nonlinearity)


def rnn_backward(dy, cache: RNNCache, weights: LayerWeights, dh_n=None, grads=None):
    """Backprop through time for one layer. dy (T, B, H); dh_n (B, H) or None (zero).

    Returns dx (T, B, D) (None for ids), dh_0 (B, H), and the weight gradients as LayerWeights
    (written into ``grads`` when given: overwritten, not accumulated).
    """
    steps, batch, hidden = dy.shape
    dh = np.zeros((batch, hidden), dtype=dy.dtype) if dh_n is None else np.array(dh_n, dy.dtype)
    dpre = np.empty((steps, batch, hidden), dtype=dy.dtype)  # (T, B, H)
    for t in reversed(range(steps)):
        dh, dpre[t] = rnn_step_backward(
            dh + dy[t], cache.hs[t + 1], weights.weight_hh, cache.nonlinearity
        )
    grads = grads or LayerWeights(*(np.empty_like(w) for w in weights))
    dx = input_grads(dpre, cache.x, weights.weight_ih, grads.weight_ih, grads.bias_ih)
    hidden_grads(dpre, cache.hs, grads.weight_hh, grads.bias_hh)
    return dx, dh, grads
