"""lstm-scratch: an LSTM written from scratch in NumPy, and a character language model on it."""
