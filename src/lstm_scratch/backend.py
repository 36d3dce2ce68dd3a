"""The one module that knows about backends. Each provides ``lstm_forward`` / ``lstm_backward``
for one layer with the signatures of ``cell.py``:

- "numpy": ``cell.py``, the readable reference, one NumPy call per operation per time step;
- "numba": ``fused.py``, each layer's time loop compiled (needs numba), held to the reference by
  the tests.

"auto" picks numba for small steps and numpy (BLAS for the recurrent GEMM) for large ones. Measured
on this project's 2-core machine (float32 training step, chars/s, numba vs numpy backend):
H 25 B 1: 133k vs 15k; H 64 B 16: 58k vs 44k; H 128 B 32: 23k vs 40k; H 256 B 64: 9k vs 22k.
The crossover lies between B·4H·H = 262k and 2.1M multiply-adds per step.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

BACKENDS = ("auto", "numpy", "numba")
SMALL_STEP = 2**20  # multiply-adds of one step's recurrent GEMM, B·4H·H


def numba_available() -> bool:
    return importlib.util.find_spec("numba") is not None


def is_small_step(batch: int, hidden: int) -> bool:
    return batch * 4 * hidden * hidden <= SMALL_STEP


def resolve(name: str = "auto", batch: int = 1, hidden: int = 1) -> str:
    """The concrete backend that ``name`` means on this machine for steps of (batch, hidden)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: choose from {', '.join(BACKENDS)}")
    if name == "auto":
        return "numba" if numba_available() and is_small_step(batch, hidden) else "numpy"
    if name == "numba" and not numba_available():
        raise ValueError("the numba backend needs numba: pip install numba")
    return name


def blas_threads(batch: int, hidden: int) -> int | None:
    """BLAS threads for training at this size: 1 for small steps, where a second thread only
    adds synchronisation (measured: 2.5x slower at H 25, B 1), else BLAS's own default."""
    return 1 if is_small_step(batch, hidden) else None


def layer_functions(name: str = "auto", batch: int = 1, hidden: int = 1) -> ModuleType:
    """A module with ``lstm_forward`` and ``lstm_backward`` for the chosen backend."""
    if resolve(name, batch, hidden) == "numba":
        from . import fused

        return fused
    from . import cell

    return cell
