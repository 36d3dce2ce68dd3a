"""lstm-scratch: an LSTM (and a GRU and a plain RNN) written from scratch in NumPy, and a
character language model on it.

The package is a house of floors; each imports only the floors below it (docs/architecture.md):
``reference`` (the NumPy math), ``fast`` (the compiled path), ``model``, ``training``, ``app``
(the command line, plots, PyTorch interop); ``bench`` stands apart. ``errors`` serves them all.
"""

from lstm_scratch.model.lstm import LSTM
from lstm_scratch.model.recurrent import GRU, RNN

__all__ = ["GRU", "LSTM", "RNN"]
__version__ = "0.1.0"
