"""The large-step lanes (lanes.py, kernel.py): the packed GEMM kernel, the unit and row
splits, the barrier's failure path, the thread count, and the cache stamp. Their results
against the reference layer are in test_backends.py (the fast_path fixture)."""

import itertools
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

import lstm_scratch
from lstm_scratch.fast import host, kernel, lanes
from lstm_scratch.fast import layer as fast_layer

# lanes._gates_product (kernel.py's product inlined) from the package copy in argv[1], for
# H 2 (one panel, narrower than a full one): prints z[0, 0] and the cache hits and misses
_GATES_PRODUCT = """
import sys
import numpy as np
from lstm_scratch.fast import kernel
from lstm_scratch.fast import lanes
assert lanes.__file__.startswith(sys.argv[1]), lanes.__file__
h_prev, z = np.full((1, 2), 0.5), np.zeros((1, 8))
packed = np.ones((4, 2, kernel.panel_width(np.float64)))  # (4·P, H, PANEL)
lanes._gates_product(h_prev, packed, z, 0, 2, False)
stats = lanes._gates_product.stats
print(float(z[0, 0]), sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
"""


@pytest.mark.slow
def test_numba_cache_is_used_and_an_edit_to_an_inlined_file_recompiles(tmp_path):
    """numba checks a cached function against its own file; lanes.py's compiled code holds
    kernel.py's product too. On a copy of the package, with its own cache: a second run loads
    from the cache, and after an edit to kernel.py alone the result is the new code's."""
    package = tmp_path / "src" / "lstm_scratch"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(Path(lstm_scratch.__file__).parent, package, ignore=ignore)
    path = os.pathsep.join(filter(None, [str(package.parent), os.environ.get("PYTHONPATH")]))
    cache = str(tmp_path / "cache")
    env = os.environ | {"PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"}
    env["NUMBA_CACHE_DIR"] = cache

    def run():
        command = [sys.executable, "-c", _GATES_PRODUCT, str(package)]
        done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        z, hits, misses = done.stdout.split()
        return float(z), int(hits), int(misses)

    assert run() == (1.0, 0, 1)  # 0.5 + 0.5, compiled
    assert list((tmp_path / "cache").rglob("lanes._gates_product-*.nbi"))
    with open(package / "model" / "data.py", "a") as data:  # outside fast/: nothing recompiles
        data.write("# an edit\n")
    assert run() == (1.0, 1, 0)
    kernel_py = package / "fast" / "kernel.py"
    source, line = kernel_py.read_text(), "if accumulate else scratch[r, j]"
    assert source.count(line) == 1
    kernel_py.write_text(source.replace(line, "if accumulate else -scratch[r, j]"))
    assert run() == (-1.0, 0, 1)
    other = "256" if host.kernel_isa() == "avx512" else "512"
    env[host.VECTOR_BITS] = other  # the other vector width: its own machine code
    assert run() == (-1.0, 0, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 7, 13])
@pytest.mark.parametrize("width", ["full", "narrower"])
def test_panel_product_equals_matmul(dtype, accumulate, rows, width):
    rng = np.random.default_rng(rows)
    span = kernel.panel_width(dtype)
    used = span if width == "full" else span - 3
    depth, col = 37, 5
    a = rng.normal(size=(rows, depth)).astype(dtype)  # (R, K)
    panel = np.zeros((depth, span), dtype=dtype)  # (K, PANEL) zero-padded beyond `used`
    panel[:, :used] = rng.normal(size=(depth, used))
    out = rng.normal(size=(rows, col + span + 2)).astype(dtype)
    expected = out.copy()
    product = a.astype(np.float64) @ panel[:, :used].astype(np.float64)
    expected[:, col : col + used] = product + (expected[:, col : col + used] if accumulate else 0)
    kernel.product(a, panel, out, col, used, accumulate)
    tolerance = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(out, expected, rtol=tolerance, atol=tolerance)  # rest untouched


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_panel_product_follows_the_strides_of_views(dtype):
    """The kernel walks a's rows and the panel's rows by their strides: a transposed a and a
    panel cut out of a wider array give the same product as contiguous copies."""
    rng = np.random.default_rng(0)
    span, depth, rows = kernel.panel_width(dtype), 29, 11
    a = rng.normal(size=(depth, rows)).astype(dtype).T  # (R, K) with column stride R
    wide = rng.normal(size=(depth, 3 * span)).astype(dtype)
    panel = wide[:, span : 2 * span]  # (K, PANEL), row stride 3·PANEL
    out = np.zeros((rows, span), dtype=dtype)
    kernel.product(a, panel, out, 0, span, False)
    tolerance = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(out, a.astype(np.float64) @ panel, rtol=tolerance, atol=tolerance)


@given(st.integers(1, 600), st.integers(1, 8), st.sampled_from([8, 16]))
def test_lane_bounds_split_all_units_into_non_empty_slices(hidden, count, span):
    bounds = fast_layer.lane_bounds(hidden, count, span)
    assert bounds[0] == 0 and bounds[-1] == hidden
    assert len(bounds) == min(count, hidden) + 1
    assert all(a < b for a, b in itertools.pairwise(bounds))
    if hidden % (span * count) == 0:  # even slices of whole panels
        assert all(b % span == 0 for b in bounds)


def test_balanced_bounds_follow_the_lanes_speeds_on_panel_boundaries(monkeypatch):
    lane = lanes.forward_lane
    assert fast_layer._balanced_bounds(lane, 256, 2, 16) == [0, 128, 256]  # nothing measured
    monkeypatch.setitem(fast_layer._lane_speeds, (lane, 256, 2), np.array([0.75, 0.25]))
    assert fast_layer._balanced_bounds(lane, 256, 2, 16) == [0, 192, 256]
    monkeypatch.setitem(fast_layer._lane_speeds, (lane, 256, 3), np.array([1e-9, 1e-9, 1.0]))
    assert fast_layer._balanced_bounds(lane, 256, 3, 16) == [0, 16, 32, 256]  # a panel each
    monkeypatch.setitem(fast_layer._lane_speeds, (lane, 256, 3), np.array([0.5, 1e-9, 0.5]))
    assert fast_layer._balanced_bounds(lane, 256, 3, 16) == [0, 128, 144, 256]
    monkeypatch.setitem(fast_layer._lane_speeds, (lane, 256, 3), np.array([1.0, 1e-9, 1e-9]))
    assert fast_layer._balanced_bounds(lane, 256, 3, 16) == [0, 224, 240, 256]
    monkeypatch.setitem(fast_layer._lane_speeds, (lane, 40, 2), np.array([0.9, 0.1]))
    assert fast_layer._balanced_bounds(lane, 40, 2, 16) == [0, 16, 40]  # too few panels
    rows = lanes.forward_rows_lane  # a split of batch rows: any row is a boundary
    monkeypatch.setitem(fast_layer._lane_speeds, (rows, 64, 2), np.array([0.75, 0.25]))
    assert fast_layer._balanced_bounds(rows, 64, 2, 1) == [0, 48, 64]


@pytest.mark.parametrize("one_hot", [True, False], ids=["ids input", "dense input"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_how_the_work_is_split(dtype, one_hot, monkeypatch):
    """Bounds on panel boundaries give every unit the same arithmetic in any lane, and every
    batch row has it in any lane: the same bits, whatever split the speeds chose (a resumed
    run repeats an unbroken one), and the same by rows as by units. (Sums over rows in another
    order change float64's bits here; float32's, added in float64, often not.)"""
    monkeypatch.setattr(fast_layer, "is_small_step", lambda batch, hidden: False)
    monkeypatch.setattr(fast_layer, "step_lanes", lambda: 2)
    steps, batch, hidden, vocab = 4, 9, 72, 7  # 72 = 4 whole panels and a narrow one (float32)
    rng = np.random.default_rng(0)
    shapes = [(4 * hidden, vocab), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,)]
    weights = fast_layer.LayerWeights(*(rng.normal(size=s).astype(dtype) for s in shapes))
    x = rng.integers(0, vocab, (steps, batch))
    if not one_hot:  # the bias gradient is then summed over rows in the lanes
        x = rng.normal(size=(steps, batch, vocab)).astype(dtype)
    h0 = rng.normal(size=(batch, hidden)).astype(dtype)
    dy = rng.normal(size=(steps, batch, hidden)).astype(dtype)

    def run(speeds):
        for lane in (lanes.forward_lane, lanes.backward_lane):
            monkeypatch.setitem(fast_layer._lane_speeds, (lane, hidden, 2), np.array(speeds))
        for lane in (lanes.forward_rows_lane, lanes.backward_rows_lane):
            monkeypatch.setitem(fast_layer._lane_speeds, (lane, batch, 2), np.array(speeds))
        y, state, cache = fast_layer.lstm_forward(x, weights, h0, h0)
        dx, (dh, dc), grads = fast_layer.lstm_backward(dy, cache, weights)
        return [y, *state, dh, dc, *grads] + ([] if dx is None else [dx])

    runs = []
    for rows_per_lane in (10**9, 1):  # by units, then by rows
        monkeypatch.setattr(fast_layer, "ROWS_PER_LANE", rows_per_lane)
        runs += [run([0.5, 0.5]), run([0.9, 0.1]), run([0.2, 0.8])]
    monkeypatch.setattr(fast_layer, "step_lanes", lambda: 1)
    runs.append(run([0.5, 0.5]))  # one lane (by rows)
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("deferred", [False, True], ids=["dy", "dy = dout W"])
@pytest.mark.parametrize("one_hot", [True, False], ids=["ids input", "dense input"])
def test_a_lane_that_finishes_first_takes_over_rows_with_the_same_results(
    one_hot, deferred, monkeypatch
):
    """By rows, forward and backward: lane 1 starts with one row, finishes first and is handed
    some of lane 0's (``sync.steal``, ``sync.offer``); every output and gradient is that of one
    lane, bit for bit, dy given as an array or as a ``LinearInputGrad`` that the lanes
    multiply out. Whether a hand-over happens depends on timing, so up to twenty tries must
    show one in each direction."""
    monkeypatch.setattr(fast_layer, "is_small_step", lambda batch, hidden: False)
    steps, batch, hidden, vocab = 60, 24, 128, 11
    rng = np.random.default_rng(3)
    shapes = [(4 * hidden, vocab), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,)]
    weights = fast_layer.LayerWeights(*(rng.normal(size=s, scale=0.3) for s in shapes))
    x = rng.integers(0, vocab, (steps, batch))
    if not one_hot:
        x = rng.normal(size=(steps, batch, vocab))
    h0, c0 = rng.normal(size=(2, batch, hidden))
    dy = rng.normal(size=(steps, batch, hidden))
    if deferred:  # dy = dout W, as the decoder's gradient reaches the last layer
        dout, weight = rng.normal(size=(steps, batch, 7)), rng.normal(size=(7, hidden))
        dy = fast_layer.LinearInputGrad(dout, weight)

    def run():
        y, state, cache = fast_layer.lstm_forward(x, weights, h0, c0)
        outputs = [y, *state, cache.gates.copy(), cache.tanh_cs]
        dx, (dh, dc), grads = fast_layer.lstm_backward(dy, cache, weights, consume_cache=True)
        return outputs + [dh, dc, *grads] + ([] if dx is None else [dx])

    monkeypatch.setattr(fast_layer, "step_lanes", lambda: 1)
    expected = run()
    work = {}
    run_lanes = fast_layer._run_lanes

    def recording(kernel, *args):
        busy, done = run_lanes(kernel, *args)
        work[kernel.__name__] = done
        return busy, done

    monkeypatch.setattr(fast_layer, "_run_lanes", recording)
    monkeypatch.setattr(fast_layer, "_balanced_bounds", lambda *args: [0, batch - 1, batch])
    monkeypatch.setattr(fast_layer, "step_lanes", lambda: 2)
    taken = set()
    for _ in range(20):  # a loaded host may run lane 0 alone a few times
        for a, b in zip(expected, run(), strict=True):
            np.testing.assert_array_equal(a, b)
        for name, done in work.items():
            assert done.sum() == steps * batch  # every row of every step, once
            if done[1] > steps:
                taken.add(name)
        if len(taken) == 2:
            return
    pytest.fail(f"lane 1 took over no row in 20 tries in { ({*work} - taken) }: work {work}")


def test_a_failing_lane_releases_the_others_and_its_error_is_raised():
    released = []

    def failing(lane, first, last, packed, flags):
        if lane == 1:
            raise ValueError("lane 1 failed")
        deadline = time.monotonic() + 10
        while flags[0, 1] < 1:  # lane 0 waits at a barrier for lane 1
            if time.monotonic() > deadline:
                return
            time.sleep(0.001)
        released.append(lane)

    with pytest.raises(ValueError, match="lane 1 failed"):
        fast_layer._run_lanes(failing, [0, 4, 8], [None, None])
    assert released == [0], "lane 0 was never released"


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
def test_step_lanes_follow_the_blas_thread_limit(monkeypatch):
    monkeypatch.setattr(host, "_idle_poll_short", True)  # as if the poll were settled
    with threadpool_limits(1, user_api="blas"):
        assert host.step_lanes() == 1
    with threadpool_limits(2, user_api="blas"):
        assert host.step_lanes() == 2


def _in_subprocess(code, **environment):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"} | environment
    result = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", code],
        capture_output=True,
        text=True,
        env=env,
    )
    return result


# one large layer, forward and backward, on the public LSTM: prints the lanes, the poll each
# OpenBLAS uses, whether the variable is visible to other code, and a digest of every result
_LAYER = """
import hashlib, os
from lstm_scratch import LSTM
from lstm_scratch.fast import host
rng = np.random.default_rng(0)
lstm = LSTM(16, 128, num_layers=1, seed=0, dtype=np.float32)  # a large step: lanes
x = rng.normal(size=(20, 32, 16)).astype(np.float32)
y, state, cache = lstm.forward(x)
dx, dstate, grads = lstm.backward(rng.normal(size=y.shape).astype(np.float32), cache)
digest = hashlib.sha256(b"".join(a.tobytes() for a in [y, *state, dx, *grads.values()]))
print(host.step_lanes(), host.blas_idle_polls(), "OPENBLAS_THREAD_TIMEOUT" in os.environ,
      digest.hexdigest()[:16])
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
def test_the_lanes_and_their_bits_do_not_hang_on_what_was_imported_first():
    """NumPy and SciPy (each with an OpenBLAS of its own) imported before lstm_scratch, or
    after: the same two lanes, every OpenBLAS polling 2^20 cycles, no variable left behind,
    the same bits."""
    first = _in_subprocess("import lstm_scratch\nimport numpy as np\n" + _LAYER)
    numpy_first = _in_subprocess("import numpy as np, scipy.linalg\n" + _LAYER)
    assert first.returncode == numpy_first.returncode == 0, first.stderr + numpy_first.stderr
    results = {}
    for name, done in (("first", first), ("numpy first", numpy_first)):
        lanes, rest = done.stdout.split(" ", 1)
        polls, visible, digest = rest.rsplit(" ", 2)
        results[name] = lanes, polls, visible, digest.strip()
    assert results["first"][0] == results["numpy first"][0] == "2"  # lanes
    assert results["first"][1] == "[20]"
    assert results["numpy first"][1] == "[20, 20]"  # SciPy's own OpenBLAS is settled too
    assert results["first"][2] == results["numpy first"][2] == "False"  # nothing left in os.environ
    assert results["first"][3] == results["numpy first"][3]  # the same bits


def test_a_long_poll_set_by_the_user_is_kept_with_one_lane_and_a_warning():
    kept = _in_subprocess("import numpy as np\n" + _LAYER, OPENBLAS_THREAD_TIMEOUT="28")
    assert kept.returncode == 1 and "OPENBLAS_THREAD_TIMEOUT=20 before" in kept.stderr
    quiet = _in_subprocess(
        "import warnings; warnings.simplefilter('ignore')\nimport numpy as np\n" + _LAYER,
        OPENBLAS_THREAD_TIMEOUT="28",
    )
    assert quiet.stdout.split()[:3] == ["1", "[28]", "True"]


# CPU time the process spends during a 0.1 s sleep right after a two-thread GEMM: about 0.1 s
# while OpenBLAS's idle thread polls, about nothing once it sleeps
_IDLE_CPU = """
import time
import numpy as np
from lstm_scratch.fast import host
if {settle}:
    host.step_lanes()
a = np.ones((1024, 1024), np.float32)
for _ in range(3):
    a @ a
    start = time.process_time()
    time.sleep(0.1)
    print(time.process_time() - start)
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
def test_openblas_idle_threads_stop_polling_when_numpy_came_first():
    """The effect itself, not a variable: after settling the poll, BLAS's idle thread takes
    well under the time it takes when left to poll."""
    spent = {}
    for settle in (False, True):
        done = _in_subprocess(_IDLE_CPU.format(settle=settle), OPENBLAS_NUM_THREADS="2")
        assert done.returncode == 0, done.stderr
        spent[settle] = min(float(line) for line in done.stdout.split())
    assert spent[False] > 0.04, spent  # the default: the idle thread polls ~0.1 s
    assert spent[True] < 0.02, spent


@pytest.mark.parametrize("count", [1, 2])
def test_lanes_take_state_gradients_in_any_memory_order(count, monkeypatch):
    """The GEMM kernel writes dh by rows: a column-major dh_n must not reach it as it is."""
    from lstm_scratch.reference import cell
    from lstm_scratch.reference.cell import LayerWeights

    monkeypatch.setattr(fast_layer, "is_small_step", lambda batch, hidden: False)
    monkeypatch.setattr(fast_layer, "step_lanes", lambda: count)
    rng = np.random.default_rng(1)
    T, B, D, H = 3, 2, 4, 24
    shapes = [(4 * H, D), (4 * H, H), (4 * H,), (4 * H,)]
    weights = LayerWeights(*(rng.normal(size=shape) for shape in shapes))
    x = rng.normal(size=(T, B, D))
    h0, c0 = rng.normal(size=(2, B, H))
    dy = rng.normal(size=(T, B, H))
    dh_n, dc_n = (np.asfortranarray(rng.normal(size=(B, H))) for _ in range(2))
    results = []
    for layer in (cell, fast_layer):
        _, _, cache = layer.lstm_forward(x, weights, h0, c0)
        dx, (dh_0, dc_0), grads = layer.lstm_backward(dy, cache, weights, dh_n, dc_n)
        results.append([dx, dh_0, dc_0, *grads])
    for fast, reference in zip(results[1], results[0], strict=True):
        np.testing.assert_allclose(fast, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("split", ["one thread", "units", "rows"])
@pytest.mark.parametrize("one_hot", [True, False], ids=["ids input", "dense input"])
def test_a_consumed_cache_gives_the_same_gradients(split, one_hot, monkeypatch):
    """``consume_cache`` writes each row's dz over the gates it was computed from; reading all
    four gates of a unit before writing any of its dz keeps every result the same bits."""
    monkeypatch.setattr(fast_layer, "is_small_step", lambda batch, hidden: split == "one thread")
    monkeypatch.setattr(fast_layer, "step_lanes", lambda: 2)
    monkeypatch.setattr(fast_layer, "ROWS_PER_LANE", 1 if split == "rows" else 10**9)
    steps, batch, hidden, vocab = 5, 4, 40, 6
    rng = np.random.default_rng(2)
    shapes = [(4 * hidden, vocab), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,)]
    weights = fast_layer.LayerWeights(*(rng.normal(size=s) for s in shapes))
    x = rng.integers(0, vocab, (steps, batch))
    if not one_hot:
        x = rng.normal(size=(steps, batch, vocab))
    h0, c0 = rng.normal(size=(2, batch, hidden))
    dy = rng.normal(size=(steps, batch, hidden))
    results = []
    for consume in (False, True):
        _, _, cache = fast_layer.lstm_forward(x, weights, h0, c0)
        gates = cache.gates.copy()
        dx, (dh, dc), grads = fast_layer.lstm_backward(dy, cache, weights, consume_cache=consume)
        assert np.array_equal(cache.gates, gates) != consume  # written over only when consumed
        results.append([dh, dc, *grads] + ([] if dx is None else [dx]))
    for kept, consumed in zip(*results, strict=True):
        np.testing.assert_array_equal(consumed, kept)


@given(
    shape=st.lists(st.integers(0, 7), min_size=1, max_size=3),
    dtype=st.sampled_from([np.float32, np.float64, np.int64]),
)
def test_empty_aligned_starts_on_a_cache_line(shape, dtype):
    array = kernel.empty_aligned(tuple(shape), dtype)
    assert array.shape == tuple(shape) and array.dtype == dtype
    assert array.flags.c_contiguous and array.flags.writeable
    assert array.size == 0 or array.ctypes.data % kernel.LINE == 0  # (empty: no memory)
    array[...] = 1  # all of it is writable memory of its own
    assert array.sum() == array.size


def _misaligned(shape, dtype):
    """As ``kernel.empty_aligned``, but 16 bytes past a cache line: half of the kernel's
    32-byte vectors then straddle two lines."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize  # bytes
    return kernel.empty_aligned(size + 16, np.uint8)[16:].view(dtype).reshape(shape)


@pytest.mark.parametrize("split", ["units", "rows"])
def test_lanes_arrays_start_on_cache_lines_and_alignment_changes_no_bit(split, monkeypatch):
    """The cache, the packed weights and the state gradients the lanes' kernel reads and writes
    start on cache lines (a speed matter only: the same bits 16 bytes off them)."""
    monkeypatch.setattr(fast_layer, "is_small_step", lambda batch, hidden: False)
    monkeypatch.setattr(fast_layer, "step_lanes", lambda: 2)
    monkeypatch.setattr(fast_layer, "ROWS_PER_LANE", 1 if split == "rows" else 10**9)
    steps, batch, hidden, vocab = 4, 4, 32, 5
    rng = np.random.default_rng(3)
    shapes = [(4 * hidden, vocab), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,)]
    weights = fast_layer.LayerWeights(*(rng.normal(size=s).astype(np.float32) for s in shapes))
    x = rng.integers(0, vocab, (steps, batch))
    h0, c0 = rng.normal(size=(2, batch, hidden)).astype(np.float32)
    dy = rng.normal(size=(steps, batch, hidden)).astype(np.float32)
    packed_starts = []
    run_lanes = fast_layer._run_lanes

    def spy(kernel_function, bounds, packed, *args):
        packed_starts.extend(panels.ctypes.data % kernel.LINE for panels in packed)
        return run_lanes(kernel_function, bounds, packed, *args)

    monkeypatch.setattr(fast_layer, "_run_lanes", spy)
    results = []
    for allocate, offset in ((kernel.empty_aligned, 0), (_misaligned, 16)):
        monkeypatch.setattr(fast_layer, "empty_aligned", allocate)
        packed_starts.clear()
        _, _, cache = fast_layer.lstm_forward(x, weights, h0, c0)
        arrays = [cache.gates, cache.hs, cache.cs, cache.tanh_cs]
        starts = [a.ctypes.data % kernel.LINE for a in arrays]
        _, (dh, dc), grads = fast_layer.lstm_backward(dy, cache, weights, consume_cache=True)
        starts += [a.ctypes.data % kernel.LINE for a in (dh, dc)] + packed_starts
        assert len(packed_starts) == 4 and set(starts) == {offset}  # 2 lanes, 2 passes
        results.append([cache.hs, cache.cs, dh, dc, *grads])
    for aligned, off in zip(*results, strict=True):
        np.testing.assert_array_equal(aligned, off)
