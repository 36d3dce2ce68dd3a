"""The choice of backend: which code runs a layer's time loop (LSTM, GRU, RNN) and the loss.
Each provides ``lstm_forward`` / ``lstm_backward`` for one layer with the signatures of
``reference/cell.py`` (numba's backward takes one more, ``consume_cache``: see
``layer_backward``), and the GRU's and RNN's layers (``gru_functions``, ``rnn_functions``):

- "numpy": ``reference.cell``, the readable reference, one NumPy call per operation per step;
- "numba": ``fast.layer`` around the compiled kernels of ``fast.fused`` and ``fast.lanes``, held
  to the reference by the tests. Small steps (B·4H·H up to ``fast.host.SMALL_STEP``
  multiply-adds) run each layer's whole time loop compiled; larger ones run it on
  ``fast.host.step_lanes()`` threads with a register-blocked GEMM over packed weights.

"auto" is numba when it is installed; ``lstm-scratch bench`` compares the two.
"""

from __future__ import annotations

import functools
import importlib.util
from types import ModuleType

BACKENDS = ("auto", "numpy", "numba")


def numba_available() -> bool:
    return importlib.util.find_spec("numba") is not None


def resolve(name: str = "auto", batch: int = 1, hidden: int = 1) -> str:
    """The concrete backend that ``name`` means on this machine for steps of (batch, hidden)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: choose from {', '.join(BACKENDS)}")
    if name == "auto":
        return "numba" if numba_available() else "numpy"
    if name == "numba" and not numba_available():
        raise ValueError("the numba backend needs numba: pip install numba")
    return name


def loss_function(name: str = "auto"):
    """Softmax cross-entropy, forward and backward at once: (logits, targets, reduction) ->
    (loss, dlogits (N, V)). ``ops.cross_entropy`` for numpy, a compiled pass for numba."""
    if resolve(name) == "numba":
        from lstm_scratch.fast.layer import cross_entropy

        return cross_entropy
    from lstm_scratch.reference.ops import cross_entropy

    return cross_entropy


def adam_kernel():
    """The compiled one-pass Adam update (``fused.adam_step``), or None without numba."""
    if not numba_available():
        return None
    from lstm_scratch.fast.fused import adam_step

    return adam_step


def layer_functions(name: str = "auto", batch: int = 1, hidden: int = 1) -> ModuleType:
    """A module with ``lstm_forward`` and ``lstm_backward`` for the chosen backend."""
    if resolve(name, batch, hidden) == "numba":
        from lstm_scratch.fast import layer

        return layer
    from lstm_scratch.reference import cell

    return cell


def layer_backward(name: str = "auto", batch: int = 1, hidden: int = 1, consume_cache=False):
    """The chosen backend's ``lstm_backward`` (the signature of ``cell.lstm_backward``).
    ``consume_cache``: the caller is done with the caches it passes, so the numba backend
    writes each step's gate gradients over its gates (one (T, B, 4H) array less at the peak);
    the reference never writes into a cache."""
    if resolve(name, batch, hidden) == "numba":
        from lstm_scratch.fast import layer

        return functools.partial(layer.lstm_backward, consume_cache=consume_cache)
    from lstm_scratch.reference import cell

    return cell.lstm_backward


def linear_input_grad(name: str = "auto"):
    """(dout (..., V), weight (V, H)) -> a linear layer's input gradient dx = dout W (..., H),
    for an LSTM layer's backward to take as its dy: ``ops.linear_input_grad`` for numpy; for
    numba a ``fast.layer.LinearInputGrad`` standing for the product, which the lanes by rows
    multiply out a step at a time while its rows are in cache."""
    if resolve(name) == "numba":
        from lstm_scratch.fast.layer import LinearInputGrad

        return LinearInputGrad
    from lstm_scratch.reference.ops import linear_input_grad

    return linear_input_grad


def gru_functions(name: str = "auto") -> tuple:
    """(gru_forward, gru_backward) of the chosen backend, with the signatures of
    ``reference/gru.py``: ``fast.gru_rnn`` (the whole time loop compiled, at every size) for
    numba."""
    if resolve(name) == "numba":
        from lstm_scratch.fast import gru_rnn as module
    else:
        from lstm_scratch.reference import gru as module
    return module.gru_forward, module.gru_backward


def rnn_functions(name: str = "auto") -> tuple:
    """(rnn_forward, rnn_backward) of the chosen backend, as ``gru_functions``."""
    if resolve(name) == "numba":
        from lstm_scratch.fast import gru_rnn as module
    else:
        from lstm_scratch.reference import rnn as module
    return module.rnn_forward, module.rnn_backward
