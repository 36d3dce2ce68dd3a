"""Chunks for truncated BPTT: every character is a target once, states chain across chunks."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from lstm_scratch.model.batches import ChunkedText, fit_batch


@given(st.integers(2, 300), st.integers(1, 8), st.integers(1, 40))
def test_every_character_after_the_first_is_a_target_once(n, batch, seq_len):
    batch, seq_len, _ = fit_batch(n, batch, seq_len)
    text = ChunkedText(np.arange(n), batch, seq_len)  # ids equal to positions
    inputs, targets = zip(*(text.chunk(k) for k in range(text.num_chunks)), strict=True)
    inputs, targets = np.concatenate(inputs), np.concatenate(targets)  # (N-1, B)
    assert np.array_equal(targets, inputs + 1)  # each target is the next character
    assert np.array_equal(np.sort(targets.ravel()), np.arange(1, targets.size + 1))
    assert n - 1 - targets.size < batch  # at most batch - 1 left over at the end
    # along each row, chunk k+1 continues where chunk k stopped: the carried state is right
    assert np.array_equal(inputs[1:], inputs[:-1] + 1)


def test_fit_batch_shrinks_and_says_so():
    assert fit_batch(10_000, 32, 64) == (32, 64, None)
    batch, seq_len, note = fit_batch(30, 32, 64)
    assert (batch, seq_len) == (14, 2) and "too short" in note and "14 x 2" in note
    assert fit_batch(2, 4, 8)[:2] == (1, 1)
