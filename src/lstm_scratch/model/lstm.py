"""A stack of LSTM layers (the character model's), and the public ``LSTM`` class with
torch.nn.LSTM's constructor and parameter names, stacked, bidirectional and batch-first as its
family in ``model/recurrent.py``.

Letters for shapes: T time, B batch, D input features, H hidden units, L layers.
Layer k reads layer k-1's output y (T, B, H); during training that input passes through inverted
dropout first (k >= 1), as in torch.nn.LSTM. States are stacked per layer: h and c are (L, B, H).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from lstm_scratch.model import backend as backends
from lstm_scratch.model.recurrent import Cell, Recurrent, initialise_layers
from lstm_scratch.reference.cell import LayerCache, LayerWeights


class StackCache(NamedTuple):
    layers: tuple[LayerCache, ...]
    masks: tuple[np.ndarray | None, ...]  # dropout mask on layer k's input, (T, B, H) or None


def stacked_lstm_forward(x, layers: Sequence[LayerWeights], h0, c0, masks=None, backend="auto"):
    """x (T, B, D), or (T, B) ids for one-hot input; h0 and c0 (L, B, H); masks: per layer a
    (T, B, H) dropout mask or None. Each layer runs on ``backend`` (``model.backend``).

    Returns y (T, B, H) of the last layer, (h_n, c_n) each (L, B, H), and the cache.
    """
    masks = masks or (None,) * len(layers)
    lstm_forward = backends.layer_functions(backend, x.shape[1], h0.shape[2]).lstm_forward
    h_n, c_n = np.empty_like(h0), np.empty_like(c0)  # (L, B, H)
    caches = []
    inputs = x
    for k, weights in enumerate(layers):
        if masks[k] is not None:
            inputs = inputs * masks[k]  # (T, B, H)
        inputs, (h_n[k], c_n[k]), cache = lstm_forward(inputs, weights, h0[k], c0[k])
        caches.append(cache)
    return inputs, (h_n, c_n), StackCache(tuple(caches), tuple(masks))


def stacked_lstm_backward(
    dy,
    cache: StackCache,
    layers: Sequence[LayerWeights],
    dh_n,
    dc_n,
    grads,
    backend="auto",
    consume_cache=False,
):
    """dy (T, B, H), or what ``backends.linear_input_grad`` made for it; dh_n, dc_n (L, B, H) or
    None; grads: per layer LayerWeights to write into. ``consume_cache``: the caller is done
    with ``cache`` (see ``backends.layer_backward``).

    Returns dx (T, B, D) (None for ids) and (dh_0, dc_0) each (L, B, H).
    """
    num_layers = len(layers)
    lstm_backward = backends.layer_backward(backend, dy.shape[1], dy.shape[2], consume_cache)
    dh_0 = np.empty((num_layers, *dy.shape[1:]), dtype=dy.dtype)  # (L, B, H)
    dc_0 = np.empty_like(dh_0)  # (L, B, H)
    for k in reversed(range(num_layers)):
        dh_k = None if dh_n is None else dh_n[k]
        dc_k = None if dc_n is None else dc_n[k]
        dy, (dh_0[k], dc_0[k]), _ = lstm_backward(
            dy, cache.layers[k], layers[k], dh_k, dc_k, grads[k]
        )
        if cache.masks[k] is not None:
            dy *= cache.masks[k]  # (T, B, H) back through the dropout of layer k's input
    return dy, (dh_0, dc_0)


def lstm_cell(backend: str) -> Cell:
    """The LSTM as a ``recurrent.Cell``: each layer call on ``backend`` (``model.backend``,
    which picks the path by the call's batch and hidden size)."""

    def forward(x, weights, state):
        functions = backends.layer_functions(backend, x.shape[1], weights.weight_hh.shape[1])
        return functions.lstm_forward(x, weights, *state)

    def backward(dy, cache, weights, dstate, grads):
        dh_n, dc_n = (None, None) if dstate is None else dstate
        layer_backward = backends.layer_backward(backend, dy.shape[1], dy.shape[2])
        return layer_backward(dy, cache, weights, dh_n, dc_n, grads)

    return Cell(4, forward, backward)


class LSTM(Recurrent):
    """A multi-layer LSTM with torch.nn.LSTM's constructor and parameter names, in NumPy
    (``reference/cell.py``), on the compiled path where numba is installed (``backend``).
    Its state is (h, c), each (L·dirs, B, H).

    >>> lstm = LSTM(input_size=8, hidden_size=16, num_layers=2)
    >>> y, (h_n, c_n), cache = lstm.forward(np.zeros((5, 3, 8), dtype=np.float32))
    >>> dx, (dh_0, dc_0), grads = lstm.backward(np.ones_like(y), cache)

    Beyond torch's arguments: ``init`` ("pytorch" or "xavier") and ``forget_bias``
    (``recurrent.initialise_layers``), and ``backend`` ("auto", "numba" or "numpy").
    """

    state_size = 2

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers=1,
        bias=True,
        batch_first=False,
        dropout=0.0,
        bidirectional=False,
        dtype=np.float32,
        seed=0,
        *,
        init="pytorch",
        forget_bias=None,
        backend="auto",
    ):
        if init not in ("pytorch", "xavier"):
            raise ValueError(f"unknown init scheme {init!r}: use 'pytorch' or 'xavier'")
        if forget_bias is not None and not bias:
            raise ValueError("forget_bias needs the biases: bias=True")
        backends.resolve(backend)  # fail early on a bad name
        self.backend, self.init, self.forget_bias = backend, init, forget_bias
        self.cell = lstm_cell(backend)
        options = (bias, batch_first, dropout, bidirectional, dtype, seed)
        super().__init__(input_size, hidden_size, num_layers, *options)

    def initialise(self) -> None:
        """``initialise_layers`` with the scheme and forget bias given."""
        every_layer = [weights for layer in self.layers for weights in layer]
        initialise_layers(every_layer, self.rng, self.init, self.forget_bias, self.bias)
