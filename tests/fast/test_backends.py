"""The numba backend (compiled time loops) against the NumPy reference, and the backend choice."""

import platform
import subprocess
import sys

import numpy as np
import pytest

from conftest import rel_error
from lstm_scratch import LSTM
from lstm_scratch.fast import fused, host
from lstm_scratch.fast import layer as fast_layer
from lstm_scratch.model import backend
from lstm_scratch.model.charlm import CharLM, ModelConfig
from lstm_scratch.reference import ops


@pytest.fixture(
    params=["compiled loop", "1 lane", "2 lanes", "3 lanes", "2 row lanes", "3 row lanes"]
)
def fast_path(request, monkeypatch):
    """The numba backend compiles the whole time loop for small steps and runs large ones on
    lanes (threads owning slices of the hidden units, or rows of the batch); test each at any
    size, with one lane, two, and three (uneven slices, panels cut short)."""
    small = request.param == "compiled loop"
    count = 1 if small else int(request.param.split()[0])
    by_rows = "row" in request.param
    monkeypatch.setattr(fast_layer, "is_small_step", lambda batch, hidden: small)
    monkeypatch.setattr(fast_layer, "step_lanes", lambda: count)
    monkeypatch.setattr(fast_layer, "ROWS_PER_LANE", 1 if by_rows else 10**9)
    return request.param


@pytest.mark.parametrize("one_hot", [False, True], ids=["dense input", "ids input"])
@pytest.mark.parametrize(("dtype", "tolerance"), [(np.float64, 1e-12), (np.float32, 1e-4)])
@pytest.mark.parametrize(
    ("T", "B", "D", "H", "L"),
    [(9, 4, 6, 16, 2), (1, 1, 3, 5, 1), (4, 7, 2, 40, 3), (3, 13, 5, 64, 2), (1, 6, 3, 24, 2)],
)
def test_fast_path_equals_reference(T, B, D, H, L, dtype, tolerance, fast_path, one_hot):
    rng = np.random.default_rng(T + B + H)
    reference = LSTM(D, H, L, dtype=dtype, backend="numpy")
    reference.load_state_dict(
        {k: rng.normal(0, 0.7, v.shape) for k, v in reference.state_dict().items()}
    )
    fast = LSTM(D, H, L, dtype=dtype, backend="numba")
    fast.load_state_dict(reference.state_dict())
    # ids from a vocabulary of D (repeats within a step, so the scatter-add must accumulate),
    # int32 and not contiguous (as one MPI rank's rows of a batch are)
    ids = rng.integers(0, D, (T, 2 * B)).astype(np.int32)[:, ::2]  # (T, B)
    x = ids if one_hot else rng.normal(size=(T, B, D)).astype(dtype)
    state = tuple(rng.normal(0, 2, (L, B, H)).astype(dtype) for _ in range(2))
    dy = rng.normal(size=(T, B, H)).astype(dtype)
    dstate = tuple(rng.normal(size=(L, B, H)).astype(dtype) for _ in range(2))
    results = []
    for lstm in (reference, fast):
        y, (h_n, c_n), cache = lstm.forward(x, state)
        dx, (dh_0, dc_0), grads = lstm.backward(dy, cache, dstate)
        results.append(
            {"y": y, "h_n": h_n, "c_n": c_n, "dx": dx, "dh_0": dh_0, "dc_0": dc_0, **grads}
        )
    for name, value in results[1].items():
        if one_hot and name == "dx":
            assert value is None and results[0][name] is None  # ids have no gradient
            continue
        assert value.dtype == dtype, name
        assert rel_error(value, results[0][name]) < tolerance, name


@pytest.mark.parametrize("bad", [-1, 6])
def test_compiled_layer_refuses_ids_out_of_range(bad, fast_path):
    """The compiled gathers do not check their indices, so the layer checks them first."""
    lstm = LSTM(6, 8, 1, dtype=np.float64, backend="numba")
    ids = np.zeros((3, 2), dtype=np.int64)
    ids[1, 1] = bad
    (weights,) = lstm.layers[0]  # layer 0's one direction
    h0 = np.zeros((2, 8))
    with pytest.raises(ValueError, match=r"ids must be in \[0, 6\)"):
        fast_layer.lstm_forward(ids, weights, h0, h0)


@pytest.mark.parametrize("dropout", [0.0, 0.2], ids=["dy = dout W deferred", "dropout"])
def test_char_model_same_loss_and_gradients_on_both_backends(fast_path, dropout):
    """Without dropout on the last output, the decoder's input gradient reaches the last layer
    as a ``fast.layer.LinearInputGrad``, which the lanes by rows multiply out step by step."""
    config = ModelConfig(
        vocab_size=11,
        hidden_size=12,
        num_layers=2,
        embed_size=5,
        dropout=dropout,
        dtype="float64",
    )
    rng = np.random.default_rng(0)
    ids, targets = rng.integers(0, 11, (8, 3)), rng.integers(0, 11, (8, 3))
    out = []
    for name in ("numpy", "numba"):
        model = CharLM(config, seed=4, backend=name)
        loss, grads, (h, c) = model.loss_and_grads(ids, targets, rng=np.random.default_rng(9))
        out.append((loss, grads.flat, h, c))
    assert abs(out[0][0] - out[1][0]) < 1e-12 * out[0][0]
    for a, b in zip(out[0][1:], out[1][1:], strict=True):
        assert rel_error(b, a) < 1e-12


def test_the_deferred_decoder_gradient_is_the_reference_product():
    """numba's dy = dout W, left unmultiplied for the lanes, stands for exactly what numpy's is
    (``ops.linear_input_grad``), bit for bit when multiplied out."""
    rng = np.random.default_rng(6)
    dout = rng.normal(size=(5, 3, 7)).astype(np.float32)  # (T, B, V)
    weight = rng.normal(size=(7, 12)).astype(np.float32)  # (V, H)
    assert backend.linear_input_grad("numpy") is ops.linear_input_grad
    deferred = backend.linear_input_grad("numba")(dout, weight)
    assert isinstance(deferred, fast_layer.LinearInputGrad)
    assert deferred.shape == (5, 3, 12) and deferred.dtype == np.float32
    assert np.array_equal(deferred.array(), ops.linear_input_grad(dout, weight))


def test_only_numba_is_asked_to_consume_the_cache():
    from lstm_scratch.reference import cell

    assert backend.layer_backward("numpy", consume_cache=True) is cell.lstm_backward
    consuming = backend.layer_backward("numba", consume_cache=True)
    assert consuming.func is fast_layer.lstm_backward and consuming.keywords["consume_cache"]


def test_auto_picks_numba_when_installed():
    assert backend.resolve("auto", batch=1, hidden=25) == "numba"
    assert backend.resolve("auto", batch=64, hidden=256) == "numba"
    assert host.is_small_step(1, 25) and not host.is_small_step(64, 256)
    assert backend.resolve("numpy", batch=1, hidden=25) == "numpy"
    assert host.blas_threads(1, 25) == 1 and host.blas_threads(64, 256) is None
    with pytest.raises(ValueError, match="unknown backend"):
        backend.resolve("cupy")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(("dtype", "tolerance"), [(np.float64, 1e-13), (np.float32, 1e-5)])
def test_compiled_cross_entropy_equals_reference(reduction, dtype, tolerance):
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 3, (6, 4, 13)).astype(dtype)  # (T, B, V)
    logits[0, 0] = [300.0] + [-300.0] * 12  # far-apart logits: no overflow either way
    targets = rng.integers(0, 13, (6, 4))
    expected_loss, expected_grad = ops.cross_entropy(logits, targets, reduction)
    loss, grad = fast_layer.cross_entropy(logits, targets, reduction)
    assert loss.dtype == grad.dtype == dtype
    assert abs(loss - expected_loss) <= tolerance * abs(expected_loss)
    assert rel_error(grad, expected_grad) < tolerance


@pytest.mark.parametrize(("dtype", "tolerance"), [(np.float64, 1e-15), (np.float32, 4e-7)])
def test_compiled_sigmoid_and_tanh_match_numpy_everywhere(dtype, tolerance):
    """The vectorisable exp-based sigmoid and tanh, from tiny to saturating arguments."""
    import numba

    @numba.njit
    def both(z, sig, tanh):
        for i in range(z.size):
            sig[i], tanh[i] = fused.sigmoid(z[i]), fused.tanh(z[i])

    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(0, 4, 5000), rng.normal(0, 1e-6, 500), [0.0, -0.0]])
    z = np.concatenate([z, [-80.0, 80.0, -30.0, 30.0, 1e-30, -1e-30]]).astype(dtype)
    sig, tanh = np.empty_like(z), np.empty_like(z)
    both(z, sig, tanh)
    exact = z.astype(np.float64)
    e = np.exp(-np.abs(exact))
    expected_sig = np.where(exact >= 0, 1 / (1 + e), e / (1 + e))
    assert sig.dtype == tanh.dtype == dtype
    assert np.max(np.abs(sig - expected_sig) / expected_sig) < tolerance
    nonzero = exact != 0
    relative = np.abs(tanh - np.tanh(exact))[nonzero] / np.abs(np.tanh(exact))[nonzero]
    assert relative.max() < tolerance and np.all(tanh[~nonzero] == 0)


FRESH_ACTIVATIONS = """
import resource, sys, numpy as np
from lstm_scratch.fast import host
if sys.argv[1] == "keep":
    assert host.keep_freed_memory()
def step():  # a training step's pattern: many large arrays allocated, written, then freed
    arrays = [np.ones(2**20, np.float32) for _ in range(24)]  # 24 x 4 MiB
    del arrays
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_keep_freed_memory_stops_page_faults_between_steps():
    """By default glibc returns freed large blocks to the kernel, so every step faults its
    pages in again; with keep_freed_memory, none."""

    def faults(mode):
        run = subprocess.run(
            [sys.executable, "-c", FRESH_ACTIVATIONS, mode], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        return int(run.stdout)

    kept, default = faults("keep"), faults("default")
    assert default > 100  # 5 x 24 x 1,024 pages of 4 KiB (fewer where huge pages are used)
    assert kept < default / 10


LIBRARY_CALLS = """
import resource, sys, numpy as np
from lstm_scratch import LSTM
from lstm_scratch.fast import host
from lstm_scratch.fast import layer
if sys.argv[1] == "default":  # the library's own setting left out
    layer.keep_freed_memory_for = lambda size: None
lstm = LSTM(65, 128, dtype=np.float32)  # config b: a large step
x = np.random.default_rng(0).standard_normal((64, 32, 65), dtype=np.float32)
def call():  # as a user: forward, backward, everything freed
    y, _, cache = lstm.forward(x)
    lstm.backward(np.ones_like(y), cache)
call()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    call()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, host._kept)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_the_library_lstm_reuses_its_last_call_s_pages():
    """The public LSTM, called as a library (no training entry point), keeps what a call frees
    for the next (``host.keep_freed_memory_for``): 16 MiB for config b's 4 MiB of gates, and
    the pages not faulted in again on every call."""

    def faults(mode):
        run = subprocess.run(
            [sys.executable, "-c", LIBRARY_CALLS, mode], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        count, limit = run.stdout.split()
        return int(count), int(limit)

    (kept, limit), (default, _) = faults("keep"), faults("default")
    assert limit == 16 * 2**20  # 4 x the gates (64 x 32 x 512 float32), a power of two
    assert default > 1000 and kept < default / 4  # (a few hundred remain: threads, zeros)
