"""Minibatches for truncated backprop through time, the char-rnn way.

The text's ids are cut into B contiguous rows of N characters. Chunk k takes characters
[k·T, k·T + T) of every row as inputs and the next character of each as targets, so the LSTM state
left by chunk k is exactly the state chunk k+1 should start from. The last chunk may be shorter,
so every character of the rows is used.
"""

from __future__ import annotations

import math

import numpy as np


class ChunkedText:
    """ids cut into ``batch_size`` rows, read ``seq_len`` characters at a time."""

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int):
        row_len = len(ids) // batch_size
        if row_len < 2:
            raise ValueError(f"{len(ids)} characters cannot fill {batch_size} rows of 2 or more")
        self.rows = ids[: batch_size * row_len].reshape(batch_size, row_len)  # (B, N)
        self.seq_len = seq_len
        self.num_chunks = math.ceil((row_len - 1) / seq_len)

    @property
    def batch_size(self) -> int:
        return self.rows.shape[0]

    def chunk(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets of chunk k, time-major: each (T, B) with T <= seq_len."""
        start = k * self.seq_len
        stop = min(start + self.seq_len, self.rows.shape[1] - 1)
        inputs = self.rows[:, start:stop].T  # (T, B)
        targets = self.rows[:, start + 1 : stop + 1].T  # (T, B)
        return np.ascontiguousarray(inputs), np.ascontiguousarray(targets)


def fit_batch(num_chars: int, batch_size: int, seq_len: int) -> tuple[int, int, str | None]:
    """Shrink batch size and sequence length so that ``num_chars`` characters can fill them.

    Returns (batch_size, seq_len, a one-line note saying what changed, or None).
    """
    new_batch = min(batch_size, max(1, num_chars // 2))
    new_seq = min(seq_len, num_chars // new_batch - 1)
    if (new_batch, new_seq) == (batch_size, seq_len):
        return batch_size, seq_len, None
    return (
        new_batch,
        new_seq,
        (
            f"the text ({num_chars} characters) is too short for batch size {batch_size} x "
            f"sequence length {seq_len}: using {new_batch} x {new_seq}"
        ),
    )
