"""What the GRU and the plain RNN layer do around their time loops, the same for both: the input
projection of every step before the loop, and the gradients that flow through it after.

Letters: T time, B batch, D input features, G the layer's stacked pre-activations (3H for the
GRU, H for the RNN). Input given as (T, B) integer ids stands for one-hot rows of width D.
"""

from __future__ import annotations

import numpy as np

from lstm_scratch.reference.cell import gather_rows, is_ids, weight_ih_grad_from_ids


def project_inputs(x, weight_ih, bias):
    """x_t W_ihᵀ + bias for every step at once: (T, B, G). x (T, B, D) is one GEMM; (T, B) ids
    pick rows of W_ihᵀ (``cell.gather_rows``) instead of multiplying by one-hot rows."""
    steps, batch = x.shape[:2]
    out = np.empty((steps * batch, weight_ih.shape[0]), dtype=weight_ih.dtype)  # (T·B, G)
    if is_ids(x):
        table = np.ascontiguousarray(weight_ih.T)  # (G, D) -> (D, G)
        gather_rows(table, bias, x.reshape(-1), out)  # ids (T·B,) -> (T·B, G)
    else:
        np.matmul(x.reshape(steps * batch, -1), weight_ih.T, out=out)  # (T·B, D) @ (D, G)
        out += bias
    return out.reshape(steps, batch, -1)  # (T·B, G) -> (T, B, G)


def input_grads(dgates_x, x, weight_ih, weight_ih_grad, bias_ih_grad):
    """From dgates_x (T, B, G), the gradient of x_t W_ihᵀ + b_ih at every step: dW_ih and db_ih
    written into the given arrays, and dx (T, B, D) returned (None for ids)."""
    steps, batch, width = dgates_x.shape
    dgates_2d = dgates_x.reshape(-1, width)  # (T, B, G) -> (T·B, G)
    np.sum(dgates_2d, axis=0, out=bias_ih_grad)  # (G,)
    if is_ids(x):
        weight_ih_grad_from_ids(x, dgates_2d, weight_ih_grad)  # (G, D)
        return None  # integer input has no gradient
    np.matmul(dgates_2d.T, x.reshape(steps * batch, -1), out=weight_ih_grad)  # (G, T·B) @ (T·B, D)
    return (dgates_2d @ weight_ih).reshape(steps, batch, -1)  # (T·B, D) -> (T, B, D)


def hidden_grads(dgates_h, hs, weight_hh_grad, bias_hh_grad):
    """From dgates_h (T, B, G), the gradient of h_{t-1} W_hhᵀ + b_hh at every step: dW_hh and
    db_hh written into the given arrays. hs (T+1, B, H) holds h_0 … h_T."""
    dgates_2d = dgates_h.reshape(-1, dgates_h.shape[-1])  # (T, B, G) -> (T·B, G)
    np.sum(dgates_2d, axis=0, out=bias_hh_grad)  # (G,)
    h_prev = hs[:-1].reshape(dgates_2d.shape[0], -1)  # (T, B, H) -> (T·B, H): h_0 … h_{T-1}
    np.matmul(dgates_2d.T, h_prev, out=weight_hh_grad)  # (G, T·B) @ (T·B, H)
