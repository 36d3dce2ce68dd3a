"""The numba backend's layer: one LSTM layer forward and backward, and the loss, in Python around
the compiled kernels of ``fused.py`` and ``lanes.py``.

Same equations, shapes and cache as ``cell.py`` (the readable reference; tests hold this one to
it). Small steps (``host.is_small_step``) run each layer's whole time loop compiled, the
recurrent matrix product included (by ``kernel.py``'s register kernel), on one thread. Large
ones run it on a few threads (``lanes.py``), with the recurrent GEMM over weights packed once
per call: each lane owns some rows of the batch where the batch gives every lane
``ROWS_PER_LANE`` of them, else a slice of the hidden units; each lane's share follows the
speed it showed. The all-timestep GEMMs stay in BLAS (dense input's x W_ihᵀ, and the weight
gradients after the loop). Generation's one step (``lstm_step_forward``) is BLAS plus one
compiled call. Where the reference's work around the time loops does not suit the compiled
loops (the one-hot gather, aligned arrays, sums already made in the loop, a consumed cache, a
deferred dy), this module has its own variant of that piece and reuses the rest. Letters: T
time, B batch, D input, H hidden, G = 4H gates.

Large steps wait on memory more than on arithmetic: at T 100, B 64, H 256 the (T, B, G) gate
arrays are 26 MB each, beyond every cache. So the lanes do the all-timestep work that touches
one step's rows while those rows are in cache: the forward adds each row's W_ihᵀ row + b
(one-hot input: no gather over (T, B, G) first) or b (dense: no pass after the GEMM), and the
backward scatters dW_ih (one-hot; the bias gradient is then its column sums) or sums the bias
gradient (dense), instead of more passes over dgates.
"""

from __future__ import annotations

import itertools
import time
from typing import NamedTuple

import numpy as np

from lstm_scratch.fast import fused, lanes, sync
from lstm_scratch.fast.host import is_small_step, keep_freed_memory_for, step_lanes
from lstm_scratch.fast.kernel import empty_aligned, pack_columns, pack_gate_rows, panel_width
from lstm_scratch.reference.cell import (
    LayerCache,
    LayerWeights,
    StepBuffers,
    StepCache,
    allocate_forward,
    finish_forward,
    is_ids,
    new_step_buffers,
    start_backward,
    start_forward,
)
from lstm_scratch.reference.ops import linear_input_grad


class LinearInputGrad(NamedTuple):
    """A linear layer's input gradient dx = dout W (..., H), not yet multiplied out, as the
    model hands the decoder's gradient to the last LSTM layer. The lanes by rows fold the
    product into their time loop, each step's rows while they are in cache; every other path
    multiplies it out first (``array()``)."""

    dout: np.ndarray  # (..., V)
    weight: np.ndarray  # (V, H)

    @property
    def shape(self) -> tuple:
        return (*self.dout.shape[:-1], self.weight.shape[1])  # (..., H)

    @property
    def dtype(self) -> np.dtype:
        return self.dout.dtype

    def array(self) -> np.ndarray:
        """dx (..., H), ``ops.linear_input_grad``: one (N, V) @ (V, H) GEMM."""
        return linear_input_grad(self.dout, self.weight)


def _dense(dy):
    """dy (T, B, H) as an array: itself, or a ``LinearInputGrad`` multiplied out."""
    return dy.array() if isinstance(dy, LinearInputGrad) else dy


def cross_entropy(logits, targets, reduction="mean"):
    """As ``ops.cross_entropy``: (loss, dlogits (N, V)), one compiled pass."""
    num_classes = logits.shape[-1]
    flat = np.ascontiguousarray(logits.reshape(-1, num_classes))  # (N, V)
    flat_targets = np.ascontiguousarray(targets.reshape(-1))  # (N,)
    dlogits = np.empty_like(flat)  # (N, V)
    scale = 1.0 / flat_targets.size if reduction == "mean" else 1.0
    total = fused.cross_entropy_rows(flat, flat_targets, dlogits, flat.dtype.type(scale))
    return logits.dtype.type(total * scale), dlogits


def lstm_step_forward(gates_x, h_prev, c_prev, weight_hh, out: StepBuffers | None = None):
    """As ``cell.lstm_step_forward`` (generation's one step): the recurrent product in BLAS,
    the gate arithmetic in one compiled call instead of ten NumPy ones."""
    batch, hidden = h_prev.shape
    out = out or new_step_buffers(batch, hidden, h_prev.dtype)
    np.matmul(h_prev, weight_hh.T, out=out.scratch)  # (B, 4H) the recurrent GEMM
    gates = np.add(gates_x, out.scratch, out=out.gates)  # (B, 4H) pre-activations z
    fused.activate_step(gates, np.ascontiguousarray(c_prev), out.c, out.h, out.tanh_c)
    return out.h, out.c, StepCache(h_prev, c_prev, gates, out.tanh_c)


def lstm_forward(x, weights: LayerWeights, h0, c0):
    """As ``cell.lstm_forward``. Small steps run the whole time loop compiled on one thread;
    large ones on ``host.step_lanes()`` threads (``lanes.py``, split by ``_split``)."""
    batch, hidden = h0.shape
    vocab = weights.weight_ih.shape[1]
    if is_ids(x) and x.size and (x.min() < 0 or x.max() >= vocab):  # the compiled gathers
        raise ValueError(f"ids must be in [0, {vocab})")  # do not check their indices
    # the cache and the backward's arrays: about four times the gates (T, B, 4H)
    keep_freed_memory_for(4 * x.shape[0] * batch * 4 * hidden * h0.dtype.itemsize)
    if is_small_step(batch, hidden):
        cache = _start_forward(x, weights, h0, c0)
        span = panel_width(cache.gates.dtype)
        panels = _pack_columns(weights.weight_hh.T, 0, 4 * hidden, span)  # (P, H, span)
        product = empty_aligned((batch, panels.shape[0] * span), cache.gates.dtype)
        fused.forward_loop(cache.gates, panels, cache.hs, cache.cs, cache.tanh_cs, product)
        return finish_forward(cache)
    return _forward_on_lanes(x, weights, h0, c0, step_lanes())


def lstm_backward(
    dy,
    cache: LayerCache,
    weights: LayerWeights,
    dh_n=None,
    dc_n=None,
    grads=None,
    consume_cache=False,
):
    """As ``cell.lstm_backward``, with the same split by step size as ``lstm_forward``. dy may
    be a ``LinearInputGrad``: the lanes by rows multiply out each step's rows in the time loop,
    the other paths multiply it out first.

    ``consume_cache``: the caller is done with ``cache``, so dgates is written over
    cache.gates, each (t, b) row once its gates are read: one (T, B, G) array less at
    training's peak memory, for the same results."""
    dh, dc, dgates = _start_backward(dy, dh_n, dc_n, cache.gates if consume_cache else None)
    batch, hidden = dh.shape
    if is_small_step(batch, hidden):
        dy = np.ascontiguousarray(_dense(dy))  # (T, B, H)
        span = panel_width(dgates.dtype)
        panels = _pack_columns(weights.weight_hh, 0, hidden, span)  # (P, G, span)
        product = empty_aligned((batch, panels.shape[0] * span), dgates.dtype)
        state = (cache.gates, cache.cs, cache.tanh_cs, panels, dh, dc, dgates, product)
        fused.backward_loop(dy, *state)
        dx, grads = _finish_backward(dgates, cache, weights, grads, _weight_ih_grad_from_ids)
        return dx, (dh, dc), grads
    return _backward_on_lanes(dy, cache, weights, dh, dc, dgates, grads, step_lanes())


# ------------------------------ the reference's work around the time loops, as the loops need it


def _start_forward(x, weights, h0, c0):
    """``cell.start_forward``, one-hot input gathered by ``fused.gather_rows`` in one pass."""
    if not is_ids(x):
        return start_forward(x, weights, h0, c0)
    cache = allocate_forward(x, weights, h0, c0)
    gates_2d = cache.gates.reshape(-1, cache.gates.shape[-1])  # (T, B, G) -> (T·B, G), a view
    bias = weights.bias_ih + weights.bias_hh  # (G,)
    table = np.ascontiguousarray(weights.weight_ih.T)  # (G, D) -> (D, G)
    fused.gather_rows(table, bias, x.reshape(-1), gates_2d)  # ids (T·B,) -> (T·B, G)
    return cache


def _allocate_aligned(x, weights, h0, c0):
    """``cell.allocate_forward`` with every array on a cache line (``kernel.empty_aligned``),
    as the lanes' kernel reads and writes them."""
    steps, batch = x.shape[:2]
    four_h, hidden = weights.weight_hh.shape
    dtype = weights.weight_hh.dtype
    gates = empty_aligned((steps, batch, four_h), dtype)  # (T, B, G)
    hs = empty_aligned((steps + 1, batch, hidden), dtype)  # (T+1, B, H)
    cs = empty_aligned((steps + 1, batch, hidden), dtype)  # (T+1, B, H)
    tanh_cs = empty_aligned((steps, batch, hidden), dtype)  # (T, B, H)
    hs[0], cs[0] = h0, c0
    return LayerCache(x, hs, cs, gates, tanh_cs)


def _start_backward(dy, dh_n, dc_n, dgates):
    """``cell.start_backward``, with dgates the given array (a consumed cache's gates) when
    there is one."""
    if dgates is None:
        return start_backward(dy, dh_n, dc_n)
    batch, hidden = dy.shape[1:]
    dh = np.zeros((batch, hidden), dtype=dy.dtype) if dh_n is None else np.array(dh_n, dy.dtype)
    dc = np.zeros((batch, hidden), dtype=dy.dtype) if dc_n is None else np.array(dc_n, dy.dtype)
    return dh, dc, dgates


def _finish_backward(dgates, cache, weights, grads, weight_ih_grad, bias_grad=None):
    """``cell.finish_backward``, with dW_ih for one-hot input made by
    ``weight_ih_grad(ids, dgates_2d, out)``, and Σ_t dz_t (G,) taken from ``bias_grad`` when
    the time loop has summed it already."""
    steps, batch, four_h = dgates.shape
    if grads is None:
        grads = LayerWeights(*(np.empty_like(w) for w in weights))
    dgates_2d = dgates.reshape(-1, four_h)  # (T, B, G) -> (T·B, G)
    if is_ids(cache.x):
        weight_ih_grad(cache.x, dgates_2d, grads.weight_ih)  # (G, D)
    else:  # (G, T·B) @ (T·B, D)
        np.matmul(dgates_2d.T, cache.x.reshape(steps * batch, -1), out=grads.weight_ih)
    # (G, T·B) @ (T·B, H)
    np.matmul(dgates_2d.T, cache.hs[:-1].reshape(steps * batch, -1), out=grads.weight_hh)
    if bias_grad is None:
        np.sum(dgates_2d, axis=0, out=grads.bias_ih)  # (T·B, G) -> (G,)
    else:
        grads.bias_ih[...] = bias_grad
    grads.bias_hh[...] = grads.bias_ih
    if is_ids(cache.x):
        return None, grads  # integer input has no gradient
    dx = (dgates_2d @ weights.weight_ih).reshape(steps, batch, -1)  # (T·B, D) -> (T, B, D)
    return dx, grads


def _weight_ih_grad_from_ids(ids, dgates_2d, out):
    """``cell.weight_ih_grad_from_ids`` as a compiled scatter-add."""
    transposed = np.empty((out.shape[1], out.shape[0]), dtype=out.dtype)  # (D, G)
    fused.scatter_rows(ids.reshape(-1), dgates_2d, transposed)
    out[...] = transposed.T  # (D, G) -> (G, D)


# ------------------------------------------------------------------------- the large-step lanes


def lane_bounds(hidden, count, span):
    """Unit ranges of ``count`` lanes: [bounds[k], bounds[k+1]) for lane k, as even as can be,
    on panel boundaries (multiples of ``span``) where that leaves every lane some units."""
    count = max(1, min(count, hidden))
    bounds = [k * hidden // count for k in range(count + 1)]
    for k in range(1, count):
        snapped = round(bounds[k] / span) * span
        if bounds[k - 1] < snapped < bounds[k + 1]:
            bounds[k] = snapped
    return bounds


def _pack_columns(matrix, first, last, span):
    """Columns first…last-1 of a (K, N) matrix, zero-padded to whole panels of ``span``
    columns: (P, K, span). For the backward lanes, of W_hh (G, H)."""
    count = -(-(last - first) // span)  # panels
    panels = empty_aligned((count, matrix.shape[0], span), matrix.dtype)  # (P, K, span)
    pack_columns(matrix, first, last, panels)
    return panels


def _pack_rows(weight, first, last, span):
    """W_hh (G, H) rows gate·H + first…last-1 as panels of each gate's W_hhᵀ (H, H), zero-padded
    to whole panels: (4·P, H, span), for the forward lanes."""
    hidden, count = weight.shape[1], -(-(last - first) // span)  # panels per gate
    panels = empty_aligned((4, count, hidden, span), weight.dtype)  # (4, P, H, span)
    pack_gate_rows(weight, first, last, panels)
    return panels.reshape(4 * count, hidden, span)


def _aligned_copy(array):
    """A copy of ``array`` on a cache line (``kernel.empty_aligned``)."""
    copy = empty_aligned(array.shape, array.dtype)
    copy[...] = array
    return copy


def _run_lanes(kernel, bounds, packed, *args):
    """kernel(lane, first, last, packed[lane], *args, flags) on one thread per lane, lane 0 on
    this one. A lane that fails releases the others from the barrier; its error is raised.
    Returns each lane's busy seconds (the call's, less its waits) and the work it reported."""
    count = len(bounds) - 1
    flags = np.zeros((sync.FLAG_ROWS, count), dtype=np.int64)  # see sync.py

    def lane(k):
        try:
            kernel(k, bounds[k], bounds[k + 1], packed[k], *args, flags)
        except BaseException:  # release the others from the barrier
            flags[sync.BARRIER] = sync.FAILED
            raise

    start = time.perf_counter()
    sync.run_lanes(lane, count)
    busy = np.maximum(time.perf_counter() - start - flags[sync.WAITED] * 1e-9, 1e-9)  # (lanes,)
    return busy, flags[sync.WORK].astype(np.float64)


ROWS_PER_LANE = 12  # the split by rows when every lane gets this many (two kernel calls' worth)
_lane_speeds: dict = {}  # (kernel, size split, lanes) -> each lane's share per busy second


def _balanced_bounds(kernel, size, count, span):
    """``lane_bounds`` of ``size`` units (or batch rows), moved so that each lane gets a share in
    proportion to the speed it showed in earlier calls (cores may run at different speeds, and
    their speeds change). Bounds stay on multiples of
    ``span`` (panel boundaries for units), so which lane does a unit or a row never changes
    its arithmetic: the results are the same for any split."""
    bounds = lane_bounds(size, count, span)
    speeds = _lane_speeds.get((kernel, size, count))
    panels = size // span
    if speeds is None or panels < 2 * count or any(b % span for b in bounds[1:-1]):
        return bounds
    cuts = np.rint(np.cumsum(speeds / speeds.sum()) * panels).astype(int)  # (lanes,)
    cuts[-1], bounds = panels, [0]  # a cut after the last panel: the last lane takes the rest
    for k in range(count - 1):  # each lane at least one panel, and one left for each after it
        cut = min(max(int(cuts[k]), bounds[-1] // span + 1), panels - (count - 1 - k))
        bounds.append(cut * span)
    return [*bounds, size]


def _split(batch, hidden, count, span, by_units, by_rows, pack):
    """The arguments of ``_run_balanced`` (lane kernel, size split, count, granularity, pack):
    by rows of the batch where every lane gets ``ROWS_PER_LANE`` of them, all lanes then sharing
    one packing of all units; else by units, on panel boundaries, each lane packing its own.

    Rows are the faster split where the batch allows it: each lane's rows of a step lie
    together in memory, the dz of its product are its own, and the forward's time loop needs no
    barrier; the price is that every lane reads all of W_hh each step, not its slice. Units
    remain for small batches, where a lane's few rows would leave the kernel's accumulators
    idle (a lane the balancer finds much slower may still get fewer rows)."""
    if batch >= ROWS_PER_LANE * count:
        packed = pack(0, hidden)
        return by_rows, batch, count, 1, lambda first, last: packed
    return by_units, hidden, count, span, pack


def _run_balanced(kernel, size, count, span, pack, *args):
    """Split ``size`` units or rows by ``_balanced_bounds``, pack each lane's weights
    (``pack(first, last)``), run the lanes, and fold the speeds they showed into the next
    calls' split."""
    bounds = _balanced_bounds(kernel, size, count, span)
    packed = [pack(first, last) for first, last in itertools.pairwise(bounds)]
    busy, work = _run_lanes(kernel, bounds, packed, *args)
    if count > 1 and work.all():
        key, speeds = (kernel, size, count), work / busy  # (lanes,) share per s
        speeds /= speeds.sum()
        previous = _lane_speeds.get(key)
        _lane_speeds[key] = speeds if previous is None else (previous + speeds) / 2


def _forward_on_lanes(x, weights, h0, c0, count):
    """``lstm_forward`` for large steps on ``count`` lanes (``lanes.forward_rows_lane`` or
    ``lanes.forward_lane``, by ``_split``)."""
    hidden = h0.shape[1]
    cache = _allocate_aligned(x, weights, h0, c0)
    bias = weights.bias_ih + weights.bias_hh  # (G,)
    if is_ids(x):
        table = np.ascontiguousarray(weights.weight_ih.T) + bias  # (D, G)
        rows = np.ascontiguousarray(x)  # (T, B) ids
    else:  # x W_ihᵀ in one GEMM; the lanes add b to each row while it is in cache
        steps, batch = x.shape[:2]
        gates_2d = cache.gates.reshape(steps * batch, -1)  # (T·B, G)
        np.matmul(x.reshape(steps * batch, -1), weights.weight_ih.T, out=gates_2d)
        table, rows = bias.reshape(1, -1), np.zeros((steps, batch), dtype=np.intp)  # (1, G)
    span = panel_width(cache.gates.dtype)

    def pack(first, last):
        return _pack_rows(weights.weight_hh, first, last, span)

    split = _split(
        h0.shape[0], hidden, count, span, lanes.forward_lane, lanes.forward_rows_lane, pack
    )
    _run_balanced(
        *split, cache.gates, not is_ids(x), table, rows, cache.hs, cache.cs, cache.tanh_cs
    )
    return finish_forward(cache)


def _rows_dy(dy, span):
    """dy for ``lanes.backward_rows_lane``: (dy (T, B, H), W (P, V, PANEL), dout (T, B, V)). For
    a ``LinearInputGrad`` dy = dout W: no dy array (0, B, H), W packed by columns, dout;
    for an array: dy itself, no panels (0, 1, PANEL), no dout (0, B, 1)."""
    batch, hidden = dy.shape[1:]
    if isinstance(dy, LinearInputGrad):
        no_dy = np.empty((0, batch, hidden), dtype=dy.dtype)
        return no_dy, _pack_columns(dy.weight, 0, hidden, span), np.ascontiguousarray(dy.dout)
    no_panels = np.empty((0, 1, span), dtype=dy.dtype)
    return np.ascontiguousarray(dy), no_panels, np.empty((0, batch, 1), dtype=dy.dtype)


def _backward_on_lanes(dy, cache, weights, dh, dc, dgates, grads, count):
    """``lstm_backward`` for large steps on ``count`` lanes (``lanes.backward_rows_lane`` or
    ``lanes.backward_lane``, by ``_split``)."""
    hidden, four_h = dh.shape[1], dgates.shape[-1]
    dh, dc = _aligned_copy(dh), _aligned_copy(dc)  # (B, H) each; the kernel writes dh's rows
    bias_grad = np.zeros(four_h, dtype=np.float64)  # (G,) sums over T·B rows, in float64
    if is_ids(cache.x):
        table_grad = np.zeros((weights.weight_ih.shape[1], four_h), dtype=np.float64)  # (D, G)
        rows = np.ascontiguousarray(cache.x)  # (T, B)
    else:
        table_grad, rows = None, np.zeros((dgates.shape[0], 0), dtype=np.intp)
    span = panel_width(dgates.dtype)

    def pack(first, last):
        return _pack_columns(weights.weight_hh, first, last, span)

    split = _split(
        dh.shape[0], hidden, count, span, lanes.backward_lane, lanes.backward_rows_lane, pack
    )
    if split[0] is lanes.backward_rows_lane:  # the sums as steps are done
        dy, dy_weight, dy_dout = _rows_dy(dy, span)
        sums = bias_grad.reshape(1, four_h) if table_grad is None else table_grad  # (D, G)
        ids = rows if is_ids(cache.x) else np.zeros(dgates.shape[:2], dtype=np.intp)  # (T, B)
        counts = np.zeros(dgates.shape[0], dtype=np.int64)  # rows done per step
        state = (dy, cache.gates, cache.cs, cache.tanh_cs, dh, dc, dgates)
        lane_args = (*state, sums, ids, counts, dy_weight, dy_dout)
    else:  # the sums in the time loop
        lane_args = (
            np.ascontiguousarray(_dense(dy)),
            cache.gates,
            cache.cs,
            cache.tanh_cs,
            dh,
            dc,
            dgates,
            bias_grad,
            table_grad,
            rows,
        )
    _run_balanced(*split, *lane_args)

    def weight_ih_grad(ids, dgates_2d, out):  # summed in the loop: (D, G) -> (G, D)
        out[...] = table_grad.T

    if table_grad is not None:  # each row's dz went into its id's row: their sum is the bias's
        table_grad.sum(axis=0, out=bias_grad)

    dx, grads = _finish_backward(dgates, cache, weights, grads, weight_ih_grad, bias_grad)
    return dx, (dh, dc), grads
