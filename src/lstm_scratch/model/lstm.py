"""A stack of LSTM layers, and the public ``LSTM`` class with torch.nn.LSTM's parameter names.

Letters for shapes: T time, B batch, D input features, H hidden units, L layers.
Layer k reads layer k-1's output y (T, B, H); during training that input passes through inverted
dropout first (k >= 1), as in torch.nn.LSTM. States are stacked per layer: h and c are (L, B, H).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from lstm_scratch.model import backend as backends
from lstm_scratch.reference import init
from lstm_scratch.reference.cell import LayerCache, LayerWeights
from lstm_scratch.reference.ops import dropout_mask
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


def layer_dropout_masks(rng, num_layers: int, shape, p: float, dtype) -> list:
    """Inverted-dropout masks (T, B, H) for the inputs of layers 1..L-1 (None for layer 0)."""
    return [None] + [dropout_mask(rng, shape, p, dtype) for _ in range(1, num_layers)]


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


def initialise_lstm(layers, rng, scheme: str = "pytorch", forget_bias: float | None = None):
    """Fill LayerWeights in place.

    "pytorch": every weight and bias U(-1/√H, 1/√H), torch.nn.LSTM's default.
    "xavier": each gate's block Xavier-uniform with fan_in = D + H (the gate sees [x, h]) and
    fan_out = H, biases zero: the original notebook's scheme.
    forget_bias, when given, sets the forget gate's total bias (b_ih + b_hh) to that value.
    """
    if scheme not in ("pytorch", "xavier"):
        raise ValueError(f"unknown init scheme {scheme!r}: use 'pytorch' or 'xavier'")
    for weights in layers:
        hidden = weights.weight_hh.shape[1]
        for w in weights:
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


class LSTM:
    """A multi-layer LSTM with torch.nn.LSTM's parameter names, in NumPy.

    >>> lstm = LSTM(input_size=8, hidden_size=16, num_layers=2)
    >>> y, (h_n, c_n), cache = lstm.forward(np.zeros((5, 3, 8), dtype=np.float32))
    >>> dx, (dh_0, dc_0), grads = lstm.backward(np.ones_like(y), cache)
    """

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers=1,
        dropout=0.0,
        dtype=np.float32,
        seed=0,
        *,
        init="pytorch",
        forget_bias=None,
        backend="auto",
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
        self.dtype = np.dtype(dtype)
        self.params = FlatParams(lstm_parameter_shapes(input_size, hidden_size, num_layers), dtype)
        self.layers = layer_views(self.params, self.num_layers)
        self.rng = np.random.default_rng(seed)
        initialise_lstm(self.layers, self.rng, init, forget_bias)
        self.training = True
        backends.resolve(backend)  # fail early on a bad name
        self.backend = backend

    def train(self, mode: bool = True) -> LSTM:
        """Dropout on (the default)."""
        self.training = mode
        return self

    def eval(self) -> LSTM:
        """Dropout off."""
        return self.train(False)

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.params.state_dict()

    def load_state_dict(self, state) -> None:
        self.params.load_state_dict(state)

    def zero_state(self, batch: int):
        shape = (self.num_layers, batch, self.hidden_size)  # (L, B, H)
        return np.zeros(shape, dtype=self.dtype), np.zeros(shape, dtype=self.dtype)

    def forward(self, x, state=None, *, rng: np.random.Generator | None = None):
        """x (T, B, D) floats, or (T, B) integer ids in [0, D) meaning one-hot rows (gathered,
        not multiplied); state (h_0, c_0) each (L, B, H) or None for zeros.

        Returns y (T, B, H), (h_n, c_n), cache. Dropout masks are drawn from ``rng`` when given
        (pass a freshly seeded generator to hold them fixed), else from the LSTM's own generator.
        """
        x = np.asarray(x)
        if x.dtype.kind in "iu":
            if x.ndim != 2 or x.size == 0 or x.min() < 0 or x.max() >= self.input_size:
                raise ValueError(f"ids must be (T, B) integers in [0, {self.input_size})")
        elif x.ndim != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"x must have shape (T, B, {self.input_size}), got {x.shape}")
        elif x.dtype != self.dtype:
            raise ValueError(f"x has dtype {x.dtype} but the LSTM's weights are {self.dtype}")
        h0, c0 = self.zero_state(x.shape[1]) if state is None else state
        masks = None
        if self.training and self.dropout > 0:
            shape = (*x.shape[:2], self.hidden_size)  # (T, B, H)
            masks = layer_dropout_masks(
                self.rng if rng is None else rng, self.num_layers, shape, self.dropout, self.dtype
            )
        return stacked_lstm_forward(x, self.layers, h0, c0, masks, self.backend)

    def backward(self, dy, cache: StackCache, dstate=None):
        """dy (T, B, H); dstate (dh_n, dc_n) each (L, B, H) or None.

        Returns dx (T, B, D) (None for ids), (dh_0, dc_0), and grads: a dict with state_dict()'s
        keys and shapes (views into one flat gradient buffer).
        """
        grads = self.params.zeros_like()
        dh_n, dc_n = (None, None) if dstate is None else dstate
        dx, dstate_0 = stacked_lstm_backward(
            dy, cache, self.layers, dh_n, dc_n, layer_views(grads, self.num_layers), self.backend
        )
        return dx, dstate_0, grads.arrays
