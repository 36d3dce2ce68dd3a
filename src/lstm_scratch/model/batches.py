"""Minibatches for truncated backprop through time, the char-rnn way.

The text's ids are cut into B contiguous rows of N characters, each row starting on the last
character of the one before, so that every character but the first is a target exactly once
(up to B − 1 at the very end are left over). Chunk k takes characters [k·T, k·T + T) of every row
as inputs and the next character of each as targets, so the recurrent state left by chunk k is
exactly the state chunk k+1 should start from. The last chunk may be shorter.
"""

from __future__ import annotations

import math

import numpy as np


class ChunkedText:
    """ids cut into ``batch_size`` rows, read ``seq_len`` characters at a time."""

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int):
        targets_per_row = (len(ids) - 1) // batch_size
        if targets_per_row < 1:
            raise ValueError(f"{len(ids)} characters cannot fill {batch_size} rows of 2 or more")
        self.ids = ids  # (N,) read a window at a time: it may be a memory map of a large file
        self.starts = np.arange(batch_size) * targets_per_row  # (B,) row b starts where b-1 ends
        self.row_length = targets_per_row + 1
        self.seq_len = seq_len
        self.num_chunks = math.ceil(targets_per_row / seq_len)

    @property
    def batch_size(self) -> int:
        return self.starts.size

    def chunk(self, k: int, rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets of chunk k, time-major: each (T, B) with T <= seq_len; ``rows``
        selects some of the B rows (one rank's share), and only they are read."""
        start = k * self.seq_len
        stop = min(start + self.seq_len, self.row_length - 1)
        positions = self.starts[None, rows] + np.arange(start, stop + 1)[:, None]  # (T+1, B)
        window = self.ids[positions].astype(np.int64)  # (T+1, B) read from ids, nothing more
        return np.ascontiguousarray(window[:-1]), np.ascontiguousarray(window[1:])


def fit_batch(num_chars: int, batch_size: int, seq_len: int) -> tuple[int, int, str | None]:
    """Shrink batch size and sequence length so that ``num_chars`` characters can fill them.

    Returns (batch_size, seq_len, a one-line note saying what changed, or None).
    """
    new_batch = min(batch_size, max(1, (num_chars - 1) // 2))  # rows of 2+ targets if possible
    new_seq = min(seq_len, (num_chars - 1) // new_batch)
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
