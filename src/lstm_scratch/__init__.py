"""lstm-scratch: an LSTM written from scratch in NumPy, and a character language model on it."""

from .backend import shorten_blas_idle_poll

shorten_blas_idle_poll()  # before NumPy loads OpenBLAS

from .lstm import LSTM  # noqa: E402

__all__ = ["LSTM"]
__version__ = "0.1.0"
