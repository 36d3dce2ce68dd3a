"""The recurrent family with torch.nn's API: ``GRU`` and ``RNN`` (stacked, bidirectional,
batch-first), over the reference's layers (``reference/gru.py``, ``reference/rnn.py``).

Letters for shapes: T time, B batch, D input features, H hidden units, L layers, K = L·dirs
(dirs 2 when bidirectional, else 1). A bidirectional layer runs a second layer of its own
weights (names ending ``_reverse``) over the sequence backwards, and its output is the two
directions' (T, B, H) side by side: (T, B, 2H), the next layer's input. The state h is
(K, B, H), row k·dirs + d for layer k, direction d, as in torch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from lstm_scratch.model.lstm import layer_dropout_masks
from lstm_scratch.reference import init
from lstm_scratch.reference.cell import LayerWeights
from lstm_scratch.reference.gru import gru_backward, gru_forward
from lstm_scratch.reference.params import FlatParams
from lstm_scratch.reference.rnn import check_nonlinearity, rnn_backward, rnn_forward


class Cell(NamedTuple):
    """One kind of layer: its stacked pre-activations per unit, and its sequence functions
    forward(x, weights, h0) -> (y, h_T, cache) and backward(dy, cache, weights, dh_T, grads)
    -> (dx, dh_0, grads)."""

    gates: int
    forward: Callable
    backward: Callable


class StackCache(NamedTuple):
    layers: tuple  # per layer, per direction: the layer's cache
    masks: tuple  # per layer: the dropout mask on its input (T, B, dirs·H), or None
    batch_first: bool


def parameter_shapes(cell: Cell, input_size, hidden_size, num_layers, bias, directions) -> dict:
    """torch.nn's names and shapes, in its order: per layer, per direction (suffix ``_reverse``
    for the second), weight_ih (G, D_k), weight_hh (G, H), and bias_ih, bias_hh (G,) when
    ``bias``; G = gates·H, D_k = D for layer 0, else dirs·H."""
    shapes, width = {}, cell.gates * hidden_size
    for k in range(num_layers):
        features = input_size if k == 0 else directions * hidden_size
        for suffix in ("", "_reverse")[:directions]:
            shapes[f"weight_ih_l{k}{suffix}"] = (width, features)
            shapes[f"weight_hh_l{k}{suffix}"] = (width, hidden_size)
            if bias:
                shapes[f"bias_ih_l{k}{suffix}"] = (width,)
                shapes[f"bias_hh_l{k}{suffix}"] = (width,)
    return shapes


def layer_weights(params: FlatParams, num_layers, directions) -> list[list[LayerWeights]]:
    """Per layer, per direction, LayerWeights as views into ``params`` (weights or gradients);
    zero biases where the model has none."""
    layers = []
    for k in range(num_layers):
        layers.append([])
        for suffix in ("", "_reverse")[:directions]:
            ih, hh = params[f"weight_ih_l{k}{suffix}"], params[f"weight_hh_l{k}{suffix}"]
            names = (f"bias_ih_l{k}{suffix}", f"bias_hh_l{k}{suffix}")
            no_bias = np.zeros(ih.shape[0], dtype=ih.dtype)  # (G,)
            biases = [params[n] if n in params.arrays else no_bias.copy() for n in names]
            layers[-1].append(LayerWeights(ih, hh, *biases))
    return layers


def stack_forward(cell: Cell, x, layers, h0, masks):
    """x (T, B, D), or (T, B) ids; layers from ``layer_weights``; h0 (K, B, H); masks per layer.
    Returns y (T, B, dirs·H), h_n (K, B, H), and per layer, per direction, the caches."""
    h_n, caches, inputs = np.empty_like(h0), [], x
    for k, directions in enumerate(layers):
        if masks[k] is not None:
            inputs = inputs * masks[k]  # (T, B, dirs·H)
        outputs, caches_k = [], []
        for d, weights in enumerate(directions):
            row = k * len(directions) + d
            sequence = inputs if d == 0 else inputs[::-1]  # the reverse direction reads T..1
            y, h_n[row], cache = cell.forward(sequence, weights, h0[row])
            outputs.append(y if d == 0 else y[::-1])  # (T, B, H), in time order
            caches_k.append(cache)
        inputs = np.concatenate(outputs, axis=-1)  # (T, B, dirs·H)
        caches.append(tuple(caches_k))
    return inputs, h_n, tuple(caches)


def stack_backward(cell: Cell, dy, caches, layers, dh_n, masks, grads):
    """dy (T, B, dirs·H); dh_n (K, B, H) or None; grads as ``layers``, written into.
    Returns dx (T, B, D) (None for ids) and dh_0 (K, B, H)."""
    dirs, hidden = len(layers[0]), layers[0][0].weight_hh.shape[1]
    dh_0 = np.empty((len(layers) * dirs, dy.shape[1], hidden), dtype=dy.dtype)  # (K, B, H)
    for k in reversed(range(len(layers))):
        dx = None
        for d, weights in enumerate(layers[k]):
            row = k * dirs + d
            dy_d = dy[..., d * hidden : (d + 1) * hidden]  # (T, B, H) this direction's part
            dy_d = np.ascontiguousarray(dy_d if d == 0 else dy_d[::-1])
            dh_row = None if dh_n is None else dh_n[row]
            dx_d, dh_0[row], _ = cell.backward(dy_d, caches[k][d], weights, dh_row, grads[k][d])
            if dx_d is not None:  # both directions read the same input: their dx add up
                dx_d = dx_d if d == 0 else dx_d[::-1]
                dx = dx_d if dx is None else dx + dx_d
        if masks[k] is not None:
            dx *= masks[k]  # (T, B, dirs·H) back through the dropout of layer k's input
        dy = dx
    return dy, dh_0


class Recurrent:
    """What GRU and RNN share: torch.nn's constructor, parameter names and shapes, and the
    stacked, bidirectional, batch-first forward and backward over ``self.cell``."""

    cell: Cell

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
    ):
        for name, value in (
            ("input_size", input_size),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
        ):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.num_layers, self.dropout = int(num_layers), float(dropout)
        self.bias, self.batch_first = bool(bias), bool(batch_first)
        self.bidirectional, self.directions = bool(bidirectional), 2 if bidirectional else 1
        self.dtype = np.dtype(dtype)
        shapes = parameter_shapes(
            self.cell, input_size, hidden_size, num_layers, self.bias, self.directions
        )
        self.params = FlatParams(shapes, dtype)
        self.layers = layer_weights(self.params, self.num_layers, self.directions)
        self.rng = np.random.default_rng(seed)
        for array in self.params.arrays.values():  # torch's default: U(-1/√H, 1/√H)
            array[...] = init.pytorch_default(self.rng, array.shape, hidden_size, dtype)
        self.training = True

    def train(self, mode: bool = True):
        """Dropout on (the default)."""
        self.training = mode
        return self

    def eval(self):
        """Dropout off."""
        return self.train(False)

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.params.state_dict()

    def load_state_dict(self, state) -> None:
        self.params.load_state_dict(state)

    def zero_state(self, batch: int) -> np.ndarray:
        shape = (self.num_layers * self.directions, batch, self.hidden_size)  # (K, B, H)
        return np.zeros(shape, dtype=self.dtype)

    def forward(self, x, state=None, *, rng: np.random.Generator | None = None):
        """x (T, B, D) floats, or (T, B) integer ids in [0, D) meaning one-hot rows; (B, T, …)
        when batch_first. state h_0 (K, B, H), or None for zeros.

        Returns y (T, B, dirs·H) ((B, T, dirs·H) when batch_first), h_n (K, B, H), and the
        cache. Dropout masks are drawn from ``rng`` when given, else from the model's own."""
        x = self._time_first(self._checked_input(np.asarray(x)))  # (T, B, …)
        h0 = self.zero_state(x.shape[1]) if state is None else self._checked_state(state, x)
        masks = (None,) * self.num_layers
        if self.training and self.dropout > 0:
            shape = (*x.shape[:2], self.directions * self.hidden_size)  # (T, B, dirs·H)
            masks = layer_dropout_masks(
                self.rng if rng is None else rng, self.num_layers, shape, self.dropout, self.dtype
            )
        y, h_n, caches = stack_forward(self.cell, x, self.layers, h0, masks)
        cache = StackCache(caches, tuple(masks), self.batch_first)
        return self._time_first(y), h_n, cache

    def backward(self, dy, cache: StackCache, dstate=None):
        """dy shaped as forward's y; dstate dh_n (K, B, H) or None.

        Returns dx shaped as forward's x (None for ids), dh_0 (K, B, H), and grads: a dict
        with state_dict()'s keys and shapes (views into one flat gradient buffer)."""
        grads = self.params.zeros_like()
        dy = self._time_first(np.asarray(dy, dtype=self.dtype))  # (T, B, dirs·H)
        grad_layers = layer_weights(grads, self.num_layers, self.directions)
        dx, dh_0 = stack_backward(
            self.cell, dy, cache.layers, self.layers, dstate, cache.masks, grad_layers
        )
        return (None if dx is None else self._time_first(dx)), dh_0, grads.arrays

    def _time_first(self, array):
        """(B, T, …) <-> (T, B, …) when batch_first (a view), else the array itself."""
        return np.swapaxes(array, 0, 1) if self.batch_first else array

    def _checked_input(self, x):
        order = "(B, T" if self.batch_first else "(T, B"
        if x.dtype.kind in "iu":
            if x.ndim != 2 or x.size == 0 or x.min() < 0 or x.max() >= self.input_size:
                raise ValueError(f"ids must be {order}) integers in [0, {self.input_size})")
        elif x.ndim != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"x must have shape {order}, {self.input_size}), got {x.shape}")
        elif x.dtype != self.dtype:
            raise ValueError(f"x has dtype {x.dtype} but the weights are {self.dtype}")
        return x

    def _checked_state(self, state, x):
        expected = self.zero_state(x.shape[1]).shape  # (K, B, H)
        state = np.asarray(state)
        if state.shape != expected:
            raise ValueError(f"state must have shape {expected} (K, B, H), got {state.shape}")
        return state.astype(self.dtype, copy=False)


class GRU(Recurrent):
    """A multi-layer GRU with torch.nn.GRU's constructor, parameter names and equations (gates
    r, z, n; ``reference/gru.py``), in NumPy.

    >>> gru = GRU(input_size=8, hidden_size=16, num_layers=2, bidirectional=True)
    >>> y, h_n, cache = gru.forward(np.zeros((5, 3, 8), dtype=np.float32))
    >>> dx, dh_0, grads = gru.backward(np.ones_like(y), cache)
    """

    cell = Cell(3, gru_forward, gru_backward)


class RNN(Recurrent):
    """A multi-layer Elman RNN with torch.nn.RNN's constructor (``nonlinearity`` "tanh" or
    "relu"), parameter names and equations (``reference/rnn.py``), in NumPy."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", **kwargs):
        self.nonlinearity = check_nonlinearity(nonlinearity)
        forward = functools.partial(rnn_forward, nonlinearity=nonlinearity)
        self.cell = Cell(1, forward, rnn_backward)
        super().__init__(input_size, hidden_size, num_layers, **kwargs)
