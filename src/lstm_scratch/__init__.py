"""lstm-scratch: an LSTM written from scratch in NumPy, and a character language model on it."""

from .lstm import LSTM

__all__ = ["LSTM"]
__version__ = "0.1.0"
