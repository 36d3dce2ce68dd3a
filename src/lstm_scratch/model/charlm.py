"""The character language model: (embedding or one-hot) -> L recurrent layers (LSTM, GRU or
tanh RNN) -> linear -> softmax.

Letters for shapes: T time, B batch, E embedding size (V when the input is one-hot), H hidden,
V vocabulary, L layers. Parameter names are PyTorch's, the recurrent layers' under the cell's
name (``embedding.weight``, ``lstm.weight_ih_l0`` or ``gru.…`` or ``rnn.…``, …,
``decoder.weight``, ``decoder.bias``), all views into one flat buffer (``model.params.flat``).
The state is a tuple of (L, B, H) arrays: (h, c) for the LSTM, (h,) for the GRU and the RNN.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from lstm_scratch.model import backend as backends
from lstm_scratch.model.lstm import StackCache, stacked_lstm_backward, stacked_lstm_forward
from lstm_scratch.model.recurrent import (
    gru_cell,
    initialise_layers,
    layer_dropout_masks,
    layer_weights,
    parameter_shapes,
    rnn_cell,
    stack_backward,
    stack_forward,
)
from lstm_scratch.reference import init, ops
from lstm_scratch.reference.cell import new_step_buffers
from lstm_scratch.reference.params import FlatParams

#: the recurrent cells, and the pre-activations each stacks per hidden unit
CELLS = {"lstm": 4, "gru": 3, "rnn": 1}


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int = 128
    num_layers: int = 1
    embed_size: int = 0  # 0: one-hot input, as the original notebook
    dropout: float = 0.0  # on the input of LSTM layers 2..L and on the last layer's output
    init: str = "pytorch"  # or "xavier" (the notebook's)
    forget_bias: float | None = None
    dtype: str = "float32"
    cell: str = "lstm"  # or "gru", or "rnn" (tanh); a checkpoint without it holds an LSTM

    def __post_init__(self):
        check_cell(self)


class CharLMCache(NamedTuple):
    embedding: ops.EmbeddingCache | None  # None for one-hot input, which needs no gradient
    recurrent: StackCache  # for the GRU and RNN, each layer's cache is a 1-tuple (one direction)
    top_mask: np.ndarray | None  # (T, B, H) dropout on the last layer's output
    decoder_input: ops.LinearCache


class CharLM:
    """A character-level language model (LSTM, GRU or RNN by ``config.cell``) with hand-written
    forward and backward passes.

    >>> model = CharLM(ModelConfig(vocab_size=30, hidden_size=32))
    >>> ids = np.zeros((10, 4), dtype=np.int64)                 # (T, B)
    >>> loss, grads, state = model.loss_and_grads(ids, ids)   # grads: a FlatParams
    """

    def __init__(self, config: ModelConfig, seed: int = 0, backend: str = "auto"):
        self.config = config
        backends.resolve(backend)  # fail early on a bad name
        self.backend = backend  # how the layers run, never what they compute
        self.dtype = np.dtype(config.dtype)
        V, H, E, L = config.vocab_size, config.hidden_size, config.embed_size, config.num_layers
        shapes = {"embedding.weight": (V, E)} if E else {}
        layer_shapes = parameter_shapes(CELLS[config.cell], E or V, H, L, True, 1)
        shapes.update({f"{config.cell}.{name}": shape for name, shape in layer_shapes.items()})
        shapes.update({"decoder.weight": (V, H), "decoder.bias": (V,)})
        self.params = FlatParams(shapes, self.dtype)
        self.layers = self._layers(self.params)  # per layer, LayerWeights
        self.state_size = 2 if config.cell == "lstm" else 1  # (h, c) or (h,)
        self.cell = _family_cell(config.cell, backend)  # None: the LSTM's own stack
        rng = np.random.default_rng(seed)
        initialise_layers(self.layers, rng, config.init, config.forget_bias)
        if E:  # torch.nn.Embedding's default N(0, 1)
            self.params["embedding.weight"][...] = rng.standard_normal((V, E)).astype(self.dtype)
        if config.init == "xavier":  # the notebook: Xavier output weights, zero bias
            self.params["decoder.weight"][...] = init.xavier_uniform(rng, (V, H), H, V, self.dtype)
        else:  # torch.nn.Linear's default U(-1/√H, 1/√H) for weight and bias
            bound = 1 / math.sqrt(H)
            self.params["decoder.weight"][...] = init.uniform(rng, (V, H), bound, self.dtype)
            self.params["decoder.bias"][...] = init.uniform(rng, (V,), bound, self.dtype)

    @property
    def num_parameters(self) -> int:
        return self.params.flat.size

    def _layers(self, params: FlatParams) -> list:
        """The recurrent layers' LayerWeights, as views into ``params`` (weights or grads)."""
        stack = layer_weights(params, self.config.num_layers, 1, prefix=f"{self.config.cell}.")
        return [weights for (weights,) in stack]

    def zero_state(self, batch: int) -> tuple:
        shape = (self.config.num_layers, batch, self.config.hidden_size)  # (L, B, H)
        return tuple(np.zeros(shape, dtype=self.dtype) for _ in range(self.state_size))

    def forward(self, ids, state=None, rng: np.random.Generator | None = None, rows=None):
        """ids (T, B) -> logits (T, B, V), final state ((h, c) or (h,), each (L, B, H)), cache.

        Dropout is applied when ``rng`` is given (training), never otherwise. ``rows`` = (start,
        stop, total) says these B rows are rows start..stop of a batch of ``total`` (one rank's
        share in data-parallel training): the masks are drawn for the whole batch and sliced, so
        every rank count draws the same masks as one process.
        """
        steps, batch = ids.shape
        p, masks, top_mask = self.config.dropout, None, None
        if rng is not None and p > 0:
            start, stop, total = rows or (0, batch, batch)
            shape = (steps, total, self.config.hidden_size)  # (T, B_total, H)
            masks = layer_dropout_masks(rng, self.config.num_layers, shape, p, self.dtype)
            masks = [None if m is None else m[:, start:stop] for m in masks]  # (T, B, H)
            top_mask = ops.dropout_mask(rng, shape, p, self.dtype)[:, start:stop]
        state = self.zero_state(batch) if state is None else self._checked_state(state, batch)
        if self.config.embed_size:
            x, embed_cache = ops.embedding_forward(ids, self.params["embedding.weight"])  # (T,B,E)
        else:
            x, embed_cache = ids, None  # (T, B): layer 0 gathers one-hot rows' weights
        if self.cell is None:  # the LSTM's own stack
            y, state, layers_cache = stacked_lstm_forward(
                x, self.layers, *state, masks, self.backend
            )
        else:
            masks = masks or [None] * self.config.num_layers
            stack = [[weights] for weights in self.layers]  # one direction
            y, state, caches = stack_forward(self.cell, x, stack, state, masks)  # y (T, B, H)
            layers_cache = StackCache(caches, tuple(masks))
        if top_mask is not None:
            y = y * top_mask  # (T, B, H)
        logits, decoder_cache = ops.linear_forward(
            y, self.params["decoder.weight"], self.params["decoder.bias"]
        )  # (T, B, V)
        return logits, state, CharLMCache(embed_cache, layers_cache, top_mask, decoder_cache)

    def loss_and_grads(self, inputs, targets, state=None, reduction="mean", rng=None, rows=None):
        """Forward, softmax cross-entropy against ``targets`` (T, B), and backward.

        Returns the loss (nats per character for "mean"), the gradients as a FlatParams laid out
        like ``self.params`` (so ``grads.flat`` lines up with ``params.flat``), and the final
        state for the next chunk of truncated BPTT (no gradient flows back across chunks).
        """
        logits, state, cache = self.forward(inputs, state, rng, rows)
        cross_entropy = backends.loss_function(self.backend)  # forward and backward together
        loss, dlogits = cross_entropy(logits, targets, reduction)
        dlogits = dlogits.reshape(logits.shape)  # (T, B, V)
        grads = self.params.empty_like()  # every entry is written below
        grads["decoder.weight"][...], grads["decoder.bias"][...] = ops.linear_weight_grads(
            dlogits, cache.decoder_input
        )
        dx = self._layers_backward(dlogits, cache, grads)  # (T, B, E), or None for one-hot
        if cache.embedding is not None:  # dx (T, B, E) scatters into the embedding rows
            grads["embedding.weight"][...] = ops.embedding_backward(
                dx, cache.embedding, self.config.vocab_size
            )
        return float(loss), grads, state

    def _layers_backward(self, dlogits, cache: CharLMCache, grads: FlatParams):
        """dlogits (T, B, V) back through the top dropout and the recurrent layers, their
        gradients written into ``grads``; returns the gradient of their input (None for ids)."""
        decoder_weight = self.params["decoder.weight"]  # (V, H)
        grad_layers = self._layers(grads)
        if cache.top_mask is not None:
            dy = ops.linear_input_grad(dlogits, decoder_weight) * cache.top_mask  # (T, B, H)
        elif self.cell is None:  # dy = dlogits W (T, B, H), or for numba the product left to
            dy = backends.linear_input_grad(self.backend)(dlogits, decoder_weight)  # the LSTM
        else:
            dy = ops.linear_input_grad(dlogits, decoder_weight)  # (T, B, H)
        if self.cell is None:
            dx, _ = stacked_lstm_backward(
                dy, cache.recurrent, self.layers, None, None, grad_layers, self.backend, True
            )
            return dx
        stack, grad_stack = [[w] for w in self.layers], [[g] for g in grad_layers]
        layers, masks = cache.recurrent
        dx, _ = stack_backward(self.cell, dy, layers, stack, None, masks, grad_stack)
        return dx

    def _checked_state(self, state, batch: int) -> tuple:
        """``state`` as a tuple of (L, B, H) arrays, or a ValueError naming what is expected."""
        shape = (self.config.num_layers, batch, self.config.hidden_size)  # (L, B, H)
        what = "(h, c)" if self.state_size == 2 else "(h,)"
        parts = tuple(state) if isinstance(state, tuple | list) else None
        if (
            parts is None
            or len(parts) != self.state_size
            or any(np.shape(part) != shape for part in parts)
        ):
            raise ValueError(f"the state must be a tuple {what} of {shape} (L, B, H) arrays")
        return parts

    def on_reference(self) -> CharLM:
        """This model, its parameters shared, on the reference's layers (``backend`` numpy)."""
        twin = copy.copy(self)
        twin.backend, twin.cell = "numpy", _family_cell(self.config.cell, "numpy")
        return twin

    def stepper(self, state):
        """A generation stepper from ``state``: ``Stepper`` for the LSTM, ``SequenceStepper``
        for the GRU and the RNN."""
        return Stepper(self, state) if self.cell is None else SequenceStepper(self, state)


def _family_cell(cell: str, backend: str):
    """The ``recurrent.Cell`` of a GRU or RNN model on ``backend``; None for the LSTM."""
    return {"gru": gru_cell, "rnn": rnn_cell}[cell](backend) if cell != "lstm" else None


def check_cell(config: ModelConfig) -> None:
    """A ValueError for a cell the model does not know, or an option its cell lacks."""
    if config.cell not in CELLS:
        raise ValueError(f"unknown cell {config.cell!r}: choose from {', '.join(CELLS)}")
    if config.forget_bias is not None and config.cell != "lstm":
        raise ValueError(f"forget_bias sets an LSTM's forget gate; a {config.cell} has none")


class SequenceStepper:
    """Generation for the GRU and RNN models: each step is ``CharLM.forward`` on a sequence of
    length 1 from the carried state, through the reference layers whatever the model's backend:
    at T = 1 the compiled loop's packing of W_hh costs more than the step itself (a GRU of H 512
    samples at 0.12 ms a character so, 2.6 ms through the compiled loop)."""

    def __init__(self, model: CharLM, state):
        self.model = model.on_reference()
        self.state = tuple(np.array(a, dtype=model.dtype) for a in state)  # (L, B, H) each

    def step(self, ids) -> np.ndarray:
        """ids (B,) -> logits (B, V)."""
        ids = np.asarray(ids).reshape(1, -1)  # (B,) -> (1, B)
        logits, self.state, _ = self.model.forward(ids, self.state)  # (1, B, V)
        return logits[0]


class Stepper:
    """The LSTM model's generation: the model one time step at a time from a state, keeping no
    cache. The state lives in the stepper's own arrays (L, B, H) and each ``step`` overwrites
    it; every buffer is made once, and for one-hot input each step gathers rows of one table of
    W_ihᵀ + b_ih + b_hh made once. At batch 1 a step is a few matrix-vector products, which
    stream every weight through the caches, and a few dozen small NumPy calls, which then run
    cold: so as few calls as can be, and no allocations.

    It computes what ``CharLM.forward`` computes on a sequence of length 1, to rounding (the
    tests hold them equal). The table is a copy: make a new stepper after the parameters
    change."""

    def __init__(self, model: CharLM, state):
        self.model = model
        self.h, self.c = (np.array(a, dtype=model.dtype) for a in state)  # (L, B, H) each
        self.state = (self.h, self.c)  # the same arrays, which each step overwrites
        _, batch, hidden = self.h.shape
        self.layer = backends.layer_functions(model.backend, batch, hidden)
        self.buffers = [new_step_buffers(batch, hidden, model.dtype) for _ in model.layers]
        first = model.layers[0]
        self.table = None  # (V, 4H) for one-hot input: W_ihᵀ + b_ih + b_hh
        if not model.config.embed_size:
            rows = np.ascontiguousarray(first.weight_ih.T)  # (V, 4H): a row per id, together
            self.table = (rows + first.bias_ih) + first.bias_hh
        vocab = model.config.vocab_size
        self.logits = np.empty((batch, vocab), dtype=model.dtype)  # (B, V)

    def step(self, ids) -> np.ndarray:
        """ids (B,) -> logits (B, V), the stepper's own array (the next step overwrites it)."""
        params = self.model.params
        if self.table is None:
            x = params["embedding.weight"][ids]  # (B, E)
        for k, weights in enumerate(self.model.layers):
            out = self.buffers[k]
            if k == 0 and self.table is not None:
                gates_x = np.take(self.table, ids, axis=0, out=out.gates)  # (B, 4H)
            else:
                gates_x = np.matmul(x, weights.weight_ih.T, out=out.gates)  # (B, 4H)
                gates_x += weights.bias_ih
                gates_x += weights.bias_hh
            h, c, _ = self.layer.lstm_step_forward(
                gates_x, self.h[k], self.c[k], weights.weight_hh, out=out
            )
            self.h[k], self.c[k] = h, c
            x = self.h[k]  # (B, H)
        np.matmul(x, params["decoder.weight"].T, out=self.logits)  # (B, V)
        self.logits += params["decoder.bias"]
        return self.logits
