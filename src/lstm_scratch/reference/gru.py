"""One GRU layer: the time step and the whole sequence, each a forward/backward pair, with
torch.nn.GRU's equations and layout.

Letters for shapes: T time steps, B batch, D input features, H hidden units. The three gates
are stacked along the last axis in PyTorch's order (r, z, n), so gate arrays are (…, 3H);
weight_ih (3H, D), weight_hh (3H, H), bias_ih and bias_hh (3H,) (``cell.LayerWeights``).

Forward, for t = 1..T (σ the logistic sigmoid, ⊙ elementwise), with the input's part of every
step computed before the loop, gx_t = x_t W_ihᵀ + b_ih, and the state's inside it,
gh_t = h_{t-1} W_hhᵀ + b_hh (both (B, 3H), split into r, z, n parts):
    r = σ(gx_r + gh_r)                reset gate
    z = σ(gx_z + gh_z)                update gate
    n = tanh(gx_n + r ⊙ gh_n)         candidate: the reset gate scales the state's part only
    h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}   = n + z ⊙ (h_{t-1} − n)

Backward, for t = T..1, with dh the total gradient reaching h_t (from y_t and from step t+1);
a_n = gx_n + r ⊙ gh_n is n's pre-activation:
    da_n = dh ⊙ (1 − z) ⊙ (1 − n²)
    da_z = dh ⊙ (h_{t-1} − n) ⊙ z(1 − z)
    da_r = da_n ⊙ gh_n ⊙ r(1 − r)
    dgx  = [da_r, da_z, da_n]              the gradient of gx_t
    dgh  = [da_r, da_z, da_n ⊙ r]          the gradient of gh_t: r scales its n part
    dh_{t-1} = dh ⊙ z + dgh W_hh
and after the loop, over all steps at once:
    dW_ih = Σ_t dgx_tᵀ x_t   db_ih = Σ_t dgx_t   dW_hh = Σ_t dgh_tᵀ h_{t-1}   db_hh = Σ_t dgh_t
    dx_t = dgx_t W_ih
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lstm_scratch.reference.cell import LayerWeights
from lstm_scratch.reference.ops import sigmoid_
from lstm_scratch.reference.recurrent import hidden_grads, input_grads, project_inputs


def split3(gates: np.ndarray):
    """(…, 3H) -> three views (…, H): r, z, n."""
    hidden = gates.shape[-1] // 3
    return gates[..., :hidden], gates[..., hidden : 2 * hidden], gates[..., 2 * hidden :]


# ---------------------------------------------------------------------------------- one step


class GRUStepCache(NamedTuple):
    h_prev: np.ndarray  # (B, H)
    gates: np.ndarray  # (B, 3H) r, z, n after their nonlinearities
    hidden_n: np.ndarray  # (B, H) gh_n = h_{t-1} W_hnᵀ + b_hn, before r scales it


def gru_step_forward(gates_x, h_prev, weight_hh, bias_hh):
    """One step. gates_x (B, 3H) is x_t W_ihᵀ + b_ih, computed for all steps beforehand.

    Returns h_t (B, H) and the step's cache.
    """
    gates_h = h_prev @ weight_hh.T + bias_hh  # (B, H) @ (H, 3H): gh_t
    gates = gates_x.copy()  # (B, 3H), becomes r, z, n
    r, z, n = split3(gates)  # three (B, H) views
    hx_r, hx_z, hidden_n = split3(gates_h)
    r += hx_r
    sigmoid_(r)  # r = σ(gx_r + gh_r)
    z += hx_z
    sigmoid_(z)  # z = σ(gx_z + gh_z)
    n += r * hidden_n
    np.tanh(n, out=n)  # n = tanh(gx_n + r ⊙ gh_n)
    h = n + z * (h_prev - n)  # (B, H)
    return h, GRUStepCache(h_prev, gates, hidden_n.copy())


def gru_step_backward(dh, cache: GRUStepCache, weight_hh):
    """Backward through one step: dh (B, H) is the gradient reaching h_t.

    Returns dh_{t-1} (B, H), dgx (B, 3H) and dgh (B, 3H), the gradients of x_t W_ihᵀ + b_ih and
    of h_{t-1} W_hhᵀ + b_hh.
    """
    r, z, n = split3(cache.gates)  # three (B, H) views
    da_n = dh * (1 - z) * (1 - n * n)
    da_z = dh * (cache.h_prev - n) * z * (1 - z)
    da_r = da_n * cache.hidden_n * r * (1 - r)
    dgates_x = np.concatenate([da_r, da_z, da_n], axis=-1)  # (B, 3H)
    dgates_h = np.concatenate([da_r, da_z, da_n * r], axis=-1)  # (B, 3H)
    dh_prev = dh * z + dgates_h @ weight_hh  # (B, 3H) @ (3H, H)
    return dh_prev, dgates_x, dgates_h


# ---------------------------------------------------------------------------------- a sequence


class GRUCache(NamedTuple):
    x: np.ndarray  # (T, B, D) the layer's input, or (T, B) ids for one-hot input
    hs: np.ndarray  # (T+1, B, H) h_0 … h_T
    gates: np.ndarray  # (T, B, 3H) activated r, z, n
    hidden_n: np.ndarray  # (T, B, H) gh_n of every step

    def step(self, t: int) -> GRUStepCache:
        return GRUStepCache(self.hs[t], self.gates[t], self.hidden_n[t])


def gru_forward(x, weights: LayerWeights, h0):
    """Run one layer over a sequence. x (T, B, D), or (T, B) integer ids for one-hot input;
    h0 (B, H).

    Returns y (T, B, H), h_T (B, H) and the cache. y is a view into the cache: read it, do not
    write into it.
    """
    gates_x = project_inputs(x, weights.weight_ih, weights.bias_ih)  # (T, B, 3H)
    steps, (batch, hidden) = gates_x.shape[0], h0.shape
    hs = np.empty((steps + 1, batch, hidden), dtype=h0.dtype)  # (T+1, B, H)
    hidden_n = np.empty((steps, batch, hidden), dtype=h0.dtype)  # (T, B, H)
    hs[0] = h0
    for t in range(steps):
        hs[t + 1], step = gru_step_forward(gates_x[t], hs[t], weights.weight_hh, weights.bias_hh)
        gates_x[t], hidden_n[t] = step.gates, step.hidden_n  # gates_x becomes the cache's gates
    return hs[1:], hs[-1].copy(), GRUCache(x, hs, gates_x, hidden_n)


def gru_backward(dy, cache: GRUCache, weights: LayerWeights, dh_n=None, grads=None):
    """Backprop through time for one layer. dy (T, B, H); dh_n (B, H) or None (zero).

    Returns dx (T, B, D) (None for ids), dh_0 (B, H), and the weight gradients as LayerWeights
    (written into ``grads`` when given: overwritten, not accumulated).
    """
    steps, batch, hidden = dy.shape
    dh = np.zeros((batch, hidden), dtype=dy.dtype) if dh_n is None else np.array(dh_n, dy.dtype)
    dgates_x = np.empty((steps, batch, 3 * hidden), dtype=dy.dtype)  # (T, B, 3H)
    dgates_h = np.empty_like(dgates_x)  # (T, B, 3H)
    for t in reversed(range(steps)):
        dh, dgates_x[t], dgates_h[t] = gru_step_backward(
            dh + dy[t], cache.step(t), weights.weight_hh
        )
    grads = grads or LayerWeights(*(np.empty_like(w) for w in weights))
    dx = input_grads(dgates_x, cache.x, weights.weight_ih, grads.weight_ih, grads.bias_ih)
    hidden_grads(dgates_h, cache.hs, grads.weight_hh, grads.bias_hh)
    return dx, dh, grads
