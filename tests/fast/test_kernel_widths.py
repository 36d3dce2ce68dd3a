"""The kernel's two vector widths (``host.kernel_isa``: 256-bit for AVX2, 512-bit for AVX-512)
on this host, whatever it has: LLVM splits vectors wider than the CPU's, so both run here. Each
width's layer is checked against the reference, and the two give the same bits."""

import os
import subprocess
import sys

import pytest

# forward and backward of one large layer on the lanes, split by units and by rows, float32
# and float64, ids and dense input, dy given and deferred: each checked against the reference
# layer, then a digest of every result
_LAYERS = """
import hashlib
import numpy as np
from lstm_scratch.fast import host, kernel
from lstm_scratch.fast import layer as fast
from lstm_scratch.reference import cell
fast.is_small_step = lambda batch, hidden: False
digest = hashlib.sha256()
for dtype, one_hot, deferred, rows_per_lane, lanes in [
    (np.float32, True, False, 10**9, 2), (np.float32, False, True, 1, 2),
    (np.float64, True, True, 10**9, 2), (np.float64, False, False, 1, 2),
    (np.float32, False, False, 1, 1),
]:
    fast.ROWS_PER_LANE, fast.step_lanes = rows_per_lane, lambda: lanes
    steps, batch, hidden, vocab = 5, 26, 72, 11  # 72: panels and a narrower last one
    rng = np.random.default_rng(0)
    shapes = [(4 * hidden, vocab), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,)]
    weights = cell.LayerWeights(*(rng.normal(size=s, scale=0.3).astype(dtype) for s in shapes))
    x = rng.integers(0, vocab, (steps, batch))
    if not one_hot:
        x = rng.normal(size=(steps, batch, vocab)).astype(dtype)
    h0, c0 = rng.normal(size=(2, batch, hidden)).astype(dtype)
    dy = rng.normal(size=(steps, batch, hidden)).astype(dtype)
    given = dy
    if deferred:  # dy = dout W, multiplied out in the lanes
        dout = rng.normal(size=(steps, batch, 7)).astype(dtype)
        w = rng.normal(size=(7, hidden)).astype(dtype)
        dy, given = dout @ w, fast.LinearInputGrad(dout, w)
    y, state, cache = fast.lstm_forward(x, weights, h0, c0)
    results = [y, *state]
    dx, dstate, grads = fast.lstm_backward(given, cache, weights)
    results += [*dstate, *grads] + ([] if dx is None else [dx])
    y_ref, state_ref, cache_ref = cell.lstm_forward(x, weights, h0, c0)
    dx_ref, dstate_ref, grads_ref = cell.lstm_backward(dy, cache_ref, weights)
    expected = [y_ref, *state_ref, *dstate_ref, *grads_ref] + ([] if dx_ref is None else [dx_ref])
    tolerance = 2e-3 if dtype == np.float32 else 1e-9
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
    digest.update(b"".join(np.ascontiguousarray(a).tobytes() for a in results))
print(host.kernel_isa(), kernel.VECTOR_BYTES, digest.hexdigest())
"""


@pytest.mark.slow
def test_both_vector_widths_match_the_reference_with_the_same_bits(tmp_path):
    printed = {}
    for bits in ("256", "512"):
        env = os.environ | {"LSTM_SCRATCH_VECTOR_BITS": bits}
        env["NUMBA_CACHE_DIR"] = str(tmp_path / bits)  # one width's cache, not the suite's
        done = subprocess.run(
            [sys.executable, "-c", _LAYERS], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stderr
        printed[bits] = done.stdout.split()
    assert printed["256"][:2] == ["avx2", "32"] and printed["512"][:2] == ["avx512", "64"]
    assert printed["256"][2] == printed["512"][2]
