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
from lstm_scratch.model.recurrent import Cell, Recurrent
from lstm_scratch.reference import init
from lstm_scratch.reference.cell import LayerCache, LayerWeights
from lstm_scratch.reference.params import FlatParams


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


def lstm_parameter_shapes(input_size: int, hidden_size: int, num_layers: int) -> dict:
    """torch.nn.LSTM's names and shapes.

    weight_ih_l{k} (4H, D_k), weight_hh_l{k} (4H, H), bias_ih_l{k} and bias_hh_l{k} (4H,).
    """
    shapes = {}
    for k in range(num_layers):
        features = input_size if k == 0 else hidden_size
        shapes[f"weight_ih_l{k}"] = (4 * hidden_size, features)
        shapes[f"weight_hh_l{k}"] = (4 * hidden_size, hidden_size)
        shapes[f"bias_ih_l{k}"] = (4 * hidden_size,)
        shapes[f"bias_hh_l{k}"] = (4 * hidden_size,)
    return shapes


def layer_views(params: FlatParams, num_layers: int, prefix: str = "") -> list[LayerWeights]:
    """The LayerWeights of each layer as views into ``params`` (weights or gradients)."""
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    return [LayerWeights(*(params[f"{prefix}{n}_l{k}"] for n in names)) for k in range(num_layers)]


def initialise_lstm(
    layers, rng, scheme: str = "pytorch", forget_bias: float | None = None, bias: bool = True
):
    """Fill LayerWeights in place (their biases too only where ``bias``: a model without
    biases holds zeros in their place).

    "pytorch": every weight and bias U(-1/√H, 1/√H), torch.nn.LSTM's default.
    "xavier": each gate's block Xavier-uniform with fan_in = D + H (the gate sees [x, h]) and
    fan_out = H, biases zero: the original notebook's scheme.
    forget_bias, when given, sets the forget gate's total bias (b_ih + b_hh) to that value.
    """
    if scheme not in ("pytorch", "xavier"):
        raise ValueError(f"unknown init scheme {scheme!r}: use 'pytorch' or 'xavier'")
    for weights in layers:
        hidden = weights.weight_hh.shape[1]
        for w in weights if bias else weights[:2]:
            _initialise(w, rng, scheme, weights)
        if forget_bias is not None:
            weights.bias_ih[hidden : 2 * hidden] = forget_bias
            weights.bias_hh[hidden : 2 * hidden] = 0


def _initialise(w, rng, scheme: str, weights: LayerWeights):
    """Fill one of ``weights``' arrays, ``w``, by ``scheme`` (see ``initialise_lstm``)."""
    hidden, features = weights.weight_hh.shape[1], weights.weight_ih.shape[1]
    dtype = weights.weight_ih.dtype
    if scheme == "pytorch":
        w[...] = init.pytorch_default(rng, w.shape, hidden, dtype)
    elif w.ndim == 1:
        w[...] = 0
    else:
        for gate in np.split(w, 4, axis=0):  # (4H, D) or (4H, H) -> four (H, D) or (H, H)
            gate[...] = init.xavier_uniform(rng, gate.shape, features + hidden, hidden, dtype)


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
    (``initialise_lstm``), and ``backend`` ("auto", "numba" or "numpy").
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
        """``initialise_lstm`` with the scheme and forget bias given."""
        every_layer = [weights for layer in self.layers for weights in layer]
        initialise_lstm(every_layer, self.rng, self.init, self.forget_bias, self.bias)
