"""The recurrent family with torch.nn's API, stacked, bidirectional and batch-first: what
``LSTM`` (``model/lstm.py``), ``GRU`` and ``RNN`` share, and the latter two, whose layers are
the reference's (``reference/gru.py``, ``reference/rnn.py``) or their compiled twins
(``fast/gru_rnn.py``) by ``backend``.

Letters for shapes: T time, B batch, D input features, H hidden units, L layers, K = L·dirs
(dirs 2 when bidirectional, else 1). A bidirectional layer runs a second layer of its own
weights (names ending ``_reverse``) over the sequence backwards, and its output is the two
directions' (T, B, H) side by side: (T, B, 2H), the next layer's input. The state is h (K, B, H)
(and c for the LSTM), row k·dirs + d for layer k, direction d, as in torch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from lstm_scratch.model import backend as backends
from lstm_scratch.reference import init
from lstm_scratch.reference.cell import LayerWeights
from lstm_scratch.reference.ops import dropout_mask
from lstm_scratch.reference.params import FlatParams
from lstm_scratch.reference.rnn import check_nonlinearity


class Cell(NamedTuple):
    """One kind of layer: its stacked pre-activations per unit, and its sequence functions
    forward(x, weights, state_0) -> (y, state_T, cache) and backward(dy, cache, weights,
    dstate_T, grads) -> (dx, dstate_0, grads), a state being a tuple of (B, H) arrays (h; or h
    and c) and dstate_T None for zeros."""

    gates: int
    forward: Callable
    backward: Callable


class RecurrentCache(NamedTuple):
    layers: tuple  # per layer, per direction: the layer's cache
    masks: tuple  # per layer: the dropout mask on its input (T, B, dirs·H), or None
    batch_first: bool


def parameter_shapes(gates: int, input_size, hidden_size, num_layers, bias, directions) -> dict:
    """torch.nn's names and shapes, in its order: per layer, per direction (suffix ``_reverse``
    for the second), weight_ih (G, D_k), weight_hh (G, H), and bias_ih, bias_hh (G,) when
    ``bias``; G = gates·H (``Cell.gates``), D_k = D for layer 0, else dirs·H."""
    shapes, width = {}, gates * hidden_size
    for k in range(num_layers):
        features = input_size if k == 0 else directions * hidden_size
        for suffix in ("", "_reverse")[:directions]:
            shapes[f"weight_ih_l{k}{suffix}"] = (width, features)
            shapes[f"weight_hh_l{k}{suffix}"] = (width, hidden_size)
            if bias:
                shapes[f"bias_ih_l{k}{suffix}"] = (width,)
                shapes[f"bias_hh_l{k}{suffix}"] = (width,)
    return shapes


def layer_weights(
    params: FlatParams, num_layers, directions, prefix: str = ""
) -> list[list[LayerWeights]]:
    """Per layer, per direction, LayerWeights as views into ``params`` (weights or gradients)
    named ``prefix`` + torch's names; zero biases where the model has none."""
    layers = []
    for k in range(num_layers):
        layers.append([])
        for suffix in ("", "_reverse")[:directions]:
            ih = params[f"{prefix}weight_ih_l{k}{suffix}"]
            hh = params[f"{prefix}weight_hh_l{k}{suffix}"]
            names = (f"{prefix}bias_ih_l{k}{suffix}", f"{prefix}bias_hh_l{k}{suffix}")
            no_bias = np.zeros(ih.shape[0], dtype=ih.dtype)  # (G,)
            biases = [params[n] if n in params.arrays else no_bias.copy() for n in names]
            layers[-1].append(LayerWeights(ih, hh, *biases))
    return layers


def initialise_layers(
    layers, rng, scheme: str = "pytorch", forget_bias: float | None = None, bias: bool = True
):
    """Fill LayerWeights of any cell in place (their biases too only where ``bias``: a model
    without biases holds zeros in their place).

    "pytorch": every weight and bias U(-1/√H, 1/√H), torch.nn's default for all three cells.
    "xavier": each gate's block Xavier-uniform with fan_in = D + H (the gate sees [x, h]) and
    fan_out = H, biases zero: the original notebook's scheme.
    forget_bias, when given, sets an LSTM's forget gate's total bias (b_ih + b_hh) to that value.
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
    """Fill one of ``weights``' arrays, ``w``, by ``scheme`` (see ``initialise_layers``)."""
    hidden, features = weights.weight_hh.shape[1], weights.weight_ih.shape[1]
    dtype = weights.weight_ih.dtype
    if scheme == "pytorch":
        w[...] = init.pytorch_default(rng, w.shape, hidden, dtype)
    elif w.ndim == 1:
        w[...] = 0
    else:  # every gate's (H, D) or (H, H) block by the same bound, drawn in one go
        w[...] = init.xavier_uniform(rng, w.shape, features + hidden, hidden, dtype)


def layer_dropout_masks(rng, num_layers: int, shape, p: float, dtype) -> list:
    """Inverted-dropout masks (T, B, dirs·H) for the inputs of layers 1..L-1 (None for layer 0)."""
    return [None] + [dropout_mask(rng, shape, p, dtype) for _ in range(1, num_layers)]


def stack_forward(cell: Cell, x, layers, state, masks):
    """x (T, B, D), or (T, B) ids; layers from ``layer_weights``; state a tuple of (K, B, H)
    arrays; masks per layer. Returns y (T, B, dirs·H), the final state (a tuple as ``state``),
    and per layer, per direction, the caches."""
    state_n, caches, inputs = tuple(np.empty_like(s) for s in state), [], x
    for k, directions in enumerate(layers):
        if masks[k] is not None:
            inputs = inputs * masks[k]  # (T, B, dirs·H)
        outputs, caches_k = [], []
        for d, weights in enumerate(directions):
            row = k * len(directions) + d
            sequence = inputs if d == 0 else np.ascontiguousarray(inputs[::-1])  # read T..1
            y, last, cache = cell.forward(sequence, weights, tuple(s[row] for s in state))
            for whole, part in zip(state_n, last, strict=True):
                whole[row] = part
            outputs.append(y if d == 0 else y[::-1])  # (T, B, H), in time order
            caches_k.append(cache)
        inputs = outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=-1)
        caches.append(tuple(caches_k))  # inputs: (T, B, dirs·H)
    return inputs, state_n, tuple(caches)


def stack_backward(cell: Cell, dy, caches, layers, dstate_n, masks, grads):
    """dy (T, B, dirs·H); dstate_n a tuple of (K, B, H) arrays, or None; grads as ``layers``,
    written into. Returns dx (T, B, D) (None for ids) and dstate_0 (a tuple of (K, B, H))."""
    dirs, hidden = len(layers[0]), layers[0][0].weight_hh.shape[1]
    dstate_0 = None
    for k in reversed(range(len(layers))):
        dx = None
        for d, weights in enumerate(layers[k]):
            row = k * dirs + d
            dy_d = dy[..., d * hidden : (d + 1) * hidden]  # (T, B, H) this direction's part
            dy_d = np.ascontiguousarray(dy_d if d == 0 else dy_d[::-1])
            dlast = None if dstate_n is None else tuple(s[row] for s in dstate_n)
            dx_d, dfirst, _ = cell.backward(dy_d, caches[k][d], weights, dlast, grads[k][d])
            if dstate_0 is None:  # (K, B, H) each
                dstate_0 = tuple(np.empty((len(layers) * dirs, *g.shape), g.dtype) for g in dfirst)
            for whole, part in zip(dstate_0, dfirst, strict=True):
                whole[row] = part
            if dx_d is not None:  # both directions read the same input: their dx add up
                dx_d = dx_d if d == 0 else dx_d[::-1]
                dx = dx_d if dx is None else dx + dx_d
        if masks[k] is not None:
            dx *= masks[k]  # (T, B, dirs·H) back through the dropout of layer k's input
        dy = dx
    return dy, dstate_0


def one_state(forward, backward) -> tuple:
    """Layer functions of a single state h (GRU, RNN) as a ``Cell``'s, of state tuples."""

    def cell_forward(x, weights, state):
        y, h_n, cache = forward(x, weights, state[0])
        return y, (h_n,), cache

    def cell_backward(dy, cache, weights, dstate, grads):
        dx, dh_0, grads = backward(dy, cache, weights, None if dstate is None else dstate[0], grads)
        return dx, (dh_0,), grads

    return cell_forward, cell_backward


def gru_cell(backend: str) -> Cell:
    """The GRU as a ``Cell``, its layers on ``backend`` (``backends.gru_functions``)."""
    return Cell(3, *one_state(*backends.gru_functions(backend)))


def rnn_cell(backend: str, nonlinearity: str = "tanh") -> Cell:
    """The Elman RNN as a ``Cell``, its layers on ``backend`` (``backends.rnn_functions``)."""
    forward, backward = backends.rnn_functions(backend)
    forward = functools.partial(forward, nonlinearity=check_nonlinearity(nonlinearity))
    return Cell(1, *one_state(forward, backward))


class Recurrent:
    """What LSTM, GRU and RNN share: torch.nn's constructor, parameter names and shapes, and the
    stacked, bidirectional, batch-first forward and backward over ``self.cell``. A subclass
    sets ``cell`` and ``state_size`` (2: the LSTM's (h, c); 1: h alone, given and returned
    as an array)."""

    cell: Cell
    state_size = 1

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
            self.cell.gates, input_size, hidden_size, num_layers, self.bias, self.directions
        )
        self.params = FlatParams(shapes, dtype)
        self.layers = layer_weights(self.params, self.num_layers, self.directions)
        self.rng = np.random.default_rng(seed)
        self.initialise()
        self.training = True

    def initialise(self) -> None:
        """torch's default: every weight and bias U(-1/√H, 1/√H)."""
        for array in self.params.arrays.values():
            array[...] = init.pytorch_default(self.rng, array.shape, self.hidden_size, self.dtype)

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

    def zero_state(self, batch: int):
        """Zeros for every state array, (K, B, H) each: h, or (h, c) for the LSTM."""
        shape = (self.num_layers * self.directions, batch, self.hidden_size)  # (K, B, H)
        zeros = tuple(np.zeros(shape, dtype=self.dtype) for _ in range(self.state_size))
        return self._public(zeros)

    def forward(self, x, state=None, *, rng: np.random.Generator | None = None):
        """x (T, B, D) floats, or (T, B) integer ids in [0, D) meaning one-hot rows; (B, T, …)
        when batch_first. state: h_0 (K, B, H) ((h_0, c_0) for the LSTM), or None for zeros.

        Returns y (T, B, dirs·H) ((B, T, dirs·H) when batch_first), the final state shaped as
        ``state``, and the cache. Dropout masks are drawn from ``rng`` when given, else from the
        model's own generator."""
        x = self._time_first(self._checked_input(np.asarray(x)))  # (T, B, …)
        x = np.ascontiguousarray(x)  # a copy only when batch_first
        state = self.zero_state(x.shape[1]) if state is None else state
        state = self._checked_state(state, x.shape[1])
        masks = (None,) * self.num_layers
        if self.training and self.dropout > 0:
            shape = (*x.shape[:2], self.directions * self.hidden_size)  # (T, B, dirs·H)
            masks = layer_dropout_masks(
                self.rng if rng is None else rng, self.num_layers, shape, self.dropout, self.dtype
            )
        y, state_n, caches = stack_forward(self.cell, x, self.layers, state, masks)
        cache = RecurrentCache(caches, tuple(masks), self.batch_first)
        return self._time_first(y), self._public(state_n), cache

    def backward(self, dy, cache: RecurrentCache, dstate=None):
        """dy shaped as forward's y; dstate shaped as its final state, or None for zeros.

        Returns dx shaped as forward's x (None for ids), the initial state's gradient shaped as
        the state, and grads: a dict with state_dict()'s keys and shapes (views into one flat
        gradient buffer)."""
        grads = self.params.zeros_like()
        dy = np.asarray(dy, dtype=self.dtype)
        dy = np.swapaxes(dy, 0, 1) if cache.batch_first else dy  # (T, B, dirs·H)
        first = cache.layers[0][0]  # layer 0's first direction: its h (T+1, B, H)
        expected = (first.hs.shape[0] - 1, first.hs.shape[1], self.directions * self.hidden_size)
        if dy.shape != expected:
            order = "(B, T, dirs·H)" if cache.batch_first else "(T, B, dirs·H)"
            shape = expected[1::-1] + expected[2:] if cache.batch_first else expected
            raise ValueError(f"dy must have forward's y shape {shape} {order}, got {dy.shape}")
        dstate = None if dstate is None else self._checked_state(dstate, dy.shape[1])
        grad_layers = layer_weights(grads, self.num_layers, self.directions)
        dx, dstate_0 = stack_backward(
            self.cell, dy, cache.layers, self.layers, dstate, cache.masks, grad_layers
        )
        dx = np.swapaxes(dx, 0, 1) if dx is not None and cache.batch_first else dx
        return dx, self._public(dstate_0), grads.arrays

    def _public(self, state: tuple):
        """A state tuple as the API gives it: the array itself where there is one."""
        return state[0] if self.state_size == 1 else state

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

    def _checked_state(self, state, batch: int) -> tuple:
        """``state`` as a tuple of (K, B, H) arrays of the model's dtype, or a ValueError."""
        expected = (self.num_layers * self.directions, batch, self.hidden_size)  # (K, B, H)
        parts = (state,) if self.state_size == 1 else state
        if self.state_size > 1 and (not isinstance(parts, tuple | list) or len(parts) != 2):
            raise ValueError("the state must be a pair (h, c), each (K, B, H)")
        parts = tuple(np.asarray(part) for part in parts)
        for part in parts:
            if part.shape != expected:
                raise ValueError(f"state must have shape {expected} (K, B, H), got {part.shape}")
            if part.dtype != self.dtype:
                raise ValueError(f"the state has dtype {part.dtype} but the weights {self.dtype}")
        return parts


class GRU(Recurrent):
    """A multi-layer GRU with torch.nn.GRU's constructor, parameter names and equations (gates
    r, z, n; ``reference/gru.py``), in NumPy, on the compiled path where numba is installed
    (``backend``: "auto", "numba" or "numpy", a keyword beyond torch's arguments).

    >>> gru = GRU(input_size=8, hidden_size=16, num_layers=2, bidirectional=True)
    >>> y, h_n, cache = gru.forward(np.zeros((5, 3, 8), dtype=np.float32))
    >>> dx, dh_0, grads = gru.backward(np.ones_like(y), cache)
    """

    def __init__(self, input_size, hidden_size, num_layers=1, *args, backend="auto", **kwargs):
        self.backend = backend
        self.cell = gru_cell(backend)
        super().__init__(input_size, hidden_size, num_layers, *args, **kwargs)


class RNN(Recurrent):
    """A multi-layer Elman RNN with torch.nn.RNN's constructor (``nonlinearity`` "tanh" or
    "relu"), parameter names and equations (``reference/rnn.py``), in NumPy, on the compiled
    path where numba is installed (``backend``, as ``GRU``'s)."""

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers=1,
        nonlinearity="tanh",
        *args,
        backend="auto",
        **kwargs,
    ):
        self.nonlinearity, self.backend = check_nonlinearity(nonlinearity), backend
        self.cell = rnn_cell(backend, nonlinearity)
        super().__init__(input_size, hidden_size, num_layers, *args, **kwargs)
