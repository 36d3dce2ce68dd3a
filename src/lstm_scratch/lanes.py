"""Large steps on all cores: a layer's time loop run by a few threads ("lanes") at once, each
owning a slice of the hidden units, with the recurrent GEMM done by a register-blocked kernel
over weights packed once per call. Compiled; ``fast_layer.py`` packs the weights and starts
the lanes. Letters: T time, B batch, H hidden, G = 4H gates, U a lane's hidden units.

Why. Calling BLAS for each step's small GEMM (B, H) @ (H, G) costs a re-packing of all of
W_hh every step (OpenBLAS packs both operands on each call), and the step's gate arithmetic
then runs on one core while the others wait. Here lane k computes only its units' gate
columns, z[:, gate·H + units_k] = h_{t-1} W_hh[gate·H + units_k]ᵀ for the four gates, from
panels of W_hh packed once, runs those units' gate arithmetic, writes its part of h_t, and
waits at a barrier for the other lanes before step t+1 (which reads all of h_t). Backward:
each lane turns its units' dh, dc into their dz, a barrier, then dh_{t-1}[:, units_k] =
dz W_hh[:, units_k] over all of dz. One barrier per step, no Python and no GIL inside.

The kernel. ``_panel_product`` computes rows (≤ 6) of out[:, col:col + PANEL] = a @ panel with
2·rows vector accumulators held in registers for the whole K loop: per k, two vector loads of
the panel, one broadcast of a[r, k] per row, two fused multiply-adds per row. It is written
in LLVM IR (numba cannot keep an array of accumulators in registers). Measured here, 1 thread,
float32, (64, 256) @ (256, 1024): 92 GFLOP/s, against OpenBLAS's 70 (its packing included).

numba checks a cached function against its own file only: this file inlines the gate
arithmetic of ``fused.py``, so it carries that file's hash (FUSED_SHA256, kept equal by a
test), and an edit there forces one here, which refreshes this cache.
"""

from __future__ import annotations

import time

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from .fused import activate_units, gate_grads_units

FUSED_SHA256 = "d1b4202f08a00d4f70afd20babee389e2d1c2eeef7acec0ccd40fc4b81354635"
ROWS = 6  # rows of one kernel call: 12 accumulators + 2 panel vectors + 1 broadcast ≤ 16 registers
SPIN_BEFORE_YIELD = 2000  # barrier polls before each further poll also yields the core


def panel_width(dtype) -> int:
    """Columns of one packed panel: two 256-bit vectors of the dtype (16 float32, 8 float64)."""
    return 2 * 32 // np.dtype(dtype).itemsize


def _pointer(context, builder, array_type, array, row, col=None):
    """A pointer to array[row, col] (2-D, through its strides) or array[row] (1-D)."""
    value = context.make_array(array_type)(context, builder, array)
    if col is None:
        return cgutils.get_item_pointer(context, builder, array_type, value, [row])
    offset = builder.mul(row, builder.extract_value(value.strides, 0))
    offset = builder.add(offset, builder.mul(col, builder.extract_value(value.strides, 1)))
    base = builder.bitcast(value.data, ir.IntType(8).as_pointer())
    return builder.bitcast(builder.gep(base, [offset]), value.data.type)


@intrinsic
def _panel_product(typingctx, a, row, rows, panel, out, col, accumulate):
    """out[row:row + rows, col:col + PANEL] (+)= a[row:row + rows] (rows, K) @ panel (K, PANEL)
    for 1 ≤ rows ≤ ROWS; a of any strides, panel and out with unit column stride. For each
    count of rows the K loop is emitted apart, with its 2·rows accumulators in registers and
    one pointer per row of a and one for the panel, each advanced by its stride (computing
    addresses from k instead made LLVM spill broadcasts to the stack)."""

    def codegen(context, builder, signature, args):
        a_type, _, _, panel_type, out_type, _, _ = signature.args
        a, row0, count, panel, out, col0, add = args
        scalar = context.get_value_type(panel_type.dtype)
        size = context.get_abi_sizeof(scalar)
        width, index = 32 // size, ir.IntType(64)  # elements of one 256-bit vector
        vector = ir.VectorType(scalar, width)
        fma_type = ir.FunctionType(vector, [vector] * 3)
        fma_name = f"llvm.fma.v{width}{scalar.intrinsic_name}"
        fma = cgutils.get_or_insert_function(builder.module, fma_type, fma_name)
        a_array = context.make_array(a_type)(context, builder, a)
        depth = builder.extract_value(a_array.shape, 1)
        a_step = builder.extract_value(a_array.strides, 1)  # bytes from a[r, k] to a[r, k + 1]
        panel_array = context.make_array(panel_type)(context, builder, panel)
        panel_step = builder.extract_value(panel_array.strides, 0)
        bytes_pointer = ir.IntType(8).as_pointer()
        undef, zero = ir.Constant(vector, ir.Undefined), ir.Constant(vector, [0.0] * width)
        splat = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)

        def constant(n):
            return ir.Constant(index, n)

        def broadcast(value):  # one scalar into every element of a vector
            value = builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
            return builder.shuffle_vector(value, undef, splat)

        def emit(rows):  # the K loop for this many rows, then the stores
            entry = builder.block
            starts = [_pointer(context, builder, a_type, a, builder.add(row0, constant(r)),
                               constant(0)) for r in range(rows)]  # fmt: skip
            starts.append(_pointer(context, builder, panel_type, panel, constant(0), constant(0)))
            starts = [builder.bitcast(start, bytes_pointer) for start in starts]
            loop = builder.append_basic_block(f"panel.loop{rows}")
            builder.branch(loop)
            builder.position_at_end(loop)
            k = builder.phi(index)
            places = [builder.phi(bytes_pointer) for _ in starts]  # a[row + r, k], panel[k]
            sums = [builder.phi(vector) for _ in range(2 * rows)]  # row r: sums[2r], sums[2r+1]
            for phi, start in zip([k, *places, *sums], [constant(0), *starts] + [zero] * len(sums),
                                  strict=True):  # fmt: skip
                phi.add_incoming(start, entry)
            panel_row = builder.bitcast(places[-1], vector.as_pointer())  # two vectors
            halves = [builder.load(builder.gep(panel_row, [constant(j)]), align=size)
                      for j in (0, 1)]  # fmt: skip
            updated = []
            for r in range(rows):
                a_rk = builder.load(builder.bitcast(places[r], scalar.as_pointer()), align=size)
                updated += [builder.call(fma, [halves[j], broadcast(a_rk), sums[2 * r + j]])
                            for j in (0, 1)]  # fmt: skip
            following = builder.add(k, constant(1))
            advanced = [builder.gep(place, [a_step]) for place in places[:-1]]
            advanced.append(builder.gep(places[-1], [panel_step]))
            for phi, value in zip([k, *places, *sums], [following, *advanced, *updated],
                                  strict=True):  # fmt: skip
                phi.add_incoming(value, builder.block)
            after = builder.append_basic_block(f"panel.store{rows}")
            builder.cbranch(builder.icmp_signed("<", following, depth), loop, after)
            builder.position_at_end(after)
            for r in range(rows):
                row_r = builder.add(row0, constant(r))
                target = _pointer(context, builder, out_type, out, row_r, col0)
                target = builder.bitcast(target, vector.as_pointer())
                for j in (0, 1):
                    place, value = builder.gep(target, [constant(j)]), updated[2 * r + j]
                    total = builder.fadd(builder.load(place, align=size), value)
                    builder.store(builder.select(add, total, value), place, align=size)

        done = builder.append_basic_block("panel.done")
        choose = builder.switch(count, done)
        for rows in range(1, ROWS + 1):
            block = builder.append_basic_block(f"panel.rows{rows}")
            choose.add_case(constant(rows), block)
            builder.position_at_end(block)
            emit(rows)
            builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return types.void(a, types.intp, types.intp, panel, out, types.intp, types.boolean), codegen


@intrinsic
def _load_acquire(typingctx, flags, i):
    """flags[i] of an int64 array, read atomically (acquire): the barrier's poll."""

    def codegen(context, builder, signature, args):
        pointer = _pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(pointer, "acquire", 8)

    return types.int64(flags, types.intp), codegen


@intrinsic
def _store_release(typingctx, flags, i, value):
    """flags[i] = value, written atomically (release): everything written before it is seen
    by a thread that reads the value with ``_load_acquire``."""

    def codegen(context, builder, signature, args):
        pointer = _pointer(context, builder, signature.args[0], args[0], args[1])
        builder.store_atomic(args[2], pointer, "release", 8)
        return context.get_dummy_value()

    return types.void(flags, types.intp, types.int64), codegen


@intrinsic
def _sched_yield(typingctx):
    """libc's sched_yield(): let another runnable thread have this core."""

    def codegen(context, builder, signature, args):
        function_type = ir.FunctionType(ir.IntType(32), [])
        function = cgutils.get_or_insert_function(builder.module, function_type, "sched_yield")
        builder.call(function, [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _monotonic_ns(typingctx):
    """libc's clock_gettime(CLOCK_MONOTONIC) in nanoseconds: what the barrier waits are timed
    with."""

    def codegen(context, builder, signature, args):
        word = ir.IntType(64)
        timespec = ir.LiteralStructType([word, word])  # seconds, nanoseconds
        function_type = ir.FunctionType(ir.IntType(32), [ir.IntType(32), timespec.as_pointer()])
        function = cgutils.get_or_insert_function(builder.module, function_type, "clock_gettime")
        place = cgutils.alloca_once(builder, timespec)
        builder.call(function, [ir.Constant(ir.IntType(32), time.CLOCK_MONOTONIC), place])
        seconds, nanoseconds = (builder.load(cgutils.gep_inbounds(builder, place, 0, j))
                                for j in (0, 1))  # fmt: skip
        return builder.add(builder.mul(seconds, ir.Constant(word, 10**9)), nanoseconds)

    return types.int64(), codegen


@numba.njit(cache=True, nogil=True, inline="always")
def _arrive_and_wait(flags, lane, step):
    """A barrier: lane announces it reached ``step`` in flags[0] and waits until every lane
    has. Returns the nanoseconds it waited."""
    start = _monotonic_ns()
    _store_release(flags[0], lane, step)
    for other in range(flags.shape[1]):
        polls = 0
        while _load_acquire(flags[0], other) < step:
            polls += 1
            if polls > SPIN_BEFORE_YIELD:
                _sched_yield()
    return _monotonic_ns() - start


@numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _add_into(target, values):
    for j in range(target.size):
        target[j] += values[j]


@numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _product(a, panel, out, col, width, accumulate):
    """out[:, col:col + width] (+)= a (R, K) @ panel[:, :width], panel (K, PANEL) zero-padded
    beyond width. Full panels go to the register kernel, ROWS rows at a time but for the last
    rows: those are split so that no call gets fewer than 4 where that can be (32 rows: 6, 6,
    6, 6, 4, 4, not 6, …, 2), since a call's 2·rows multiply-adds per k must cover the FMA
    units' latency (measured, (32, 512) @ (512, 512) alone, best of 30, six alternating pairs:
    66–85 → 76–90 GFLOP/s, ahead in five)."""
    if width == panel.shape[1]:
        row = 0
        while row < a.shape[0]:
            left = a.shape[0] - row
            rows = left if left <= ROWS else ROWS if left >= ROWS + 4 else max(left - 4, 4)
            _panel_product(a, row, rows, panel, out, col, accumulate)
            row += rows
        return
    for r in range(a.shape[0]):  # a last, narrower panel: a plain loop
        target = out[r, col : col + width]
        if not accumulate:
            target[:] = 0
        for k in range(a.shape[1]):
            a_rk = a[r, k]
            for j in range(width):
                target[j] += a_rk * panel[k, j]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def forward_lane(lane, first, last, packed, gates, has_input, table, rows, hs, cs, tanh_cs, flags):
    """Lane ``lane``'s part of ``cell.lstm_forward``: units first…last-1 (U of them).

    packed (4·P, H, PANEL): W_hh's rows gate·H + units, P panels per gate, each transposed
    (H, PANEL). gates (T, B, G) arrive holding x W_ihᵀ if has_input (dense input), else
    nothing; row rows[t, b] of table (R, G) is added to step t's row b: W_ihᵀ + b for one-hot
    input (rows the ids), b alone (R = 1, rows 0) for dense. hs, cs (T+1, B, H) hold h_0, c_0
    in row 0."""
    steps, batch, four_h = gates.shape
    hidden, per_gate = four_h // 4, packed.shape[0] // 4
    span = packed.shape[2]
    own = slice(first, last)
    waited = 0
    for t in range(steps):
        z, h_prev = gates[t], hs[t]  # (B, G), (B, H)
        for p in range(packed.shape[0]):
            gate, q = p // per_gate, p % per_gate
            start = first + q * span
            width = min(span, last - start)
            _product(h_prev, packed[p], z, gate * hidden + start, width, has_input)
        for b in range(batch):
            z_b = z[b].reshape(4, hidden)  # (4, H) i, f, g, o
            source = table[rows[t, b]].reshape(4, hidden)  # (4, H)
            for gate in range(4):
                _add_into(z_b[gate, own], source[gate, own])
            activate_units(
                z_b[0, own], z_b[1, own], z_b[2, own], z_b[3, own],
                cs[t, b, own], cs[t + 1, b, own], hs[t + 1, b, own], tanh_cs[t, b, own],
            )  # fmt: skip
        waited += _arrive_and_wait(flags, lane, t + 1)  # all of h_t is written
    flags[1, lane] = waited


@numba.njit(cache=True, nogil=True, error_model="numpy")
def backward_lane(lane, first, last, packed, dy, gates, cs, tanh_cs, dh, dc, dgates, bias_grad,
                  table_grad, rows, flags):  # fmt: skip
    """Lane ``lane``'s part of ``cell.lstm_backward``'s time loop: units first…last-1.

    packed (P, G, PANEL): W_hh's columns first…last-1 in panels. dh, dc (B, H) arrive as dh_T,
    dc_T and leave as dh_0, dc_0; dgates (T, B, G) is filled. The lane adds its gate columns
    of each dz into table_grad[rows[t, b]] (D, G), or into bias_grad (G,) when table_grad is
    None (with one-hot input, the bias gradient is then table_grad's column sums)."""
    steps, batch, four_h = gates.shape
    hidden = four_h // 4
    span = packed.shape[2]
    bias_4 = bias_grad.reshape(4, hidden)  # (4, H)
    own = slice(first, last)
    waited = 0
    for t in range(steps - 1, -1, -1):
        for b in range(batch):
            a = gates[t, b].reshape(4, hidden)  # (4, H) i, f, g, o
            dz = dgates[t, b].reshape(4, hidden)  # (4, H)
            gate_grads_units(
                a[0, own], a[1, own], a[2, own], a[3, own], dy[t, b, own], dh[b, own], dc[b, own],
                cs[t, b, own], tanh_cs[t, b, own], dz[0, own], dz[1, own], dz[2, own], dz[3, own],
            )  # fmt: skip
            target = bias_4 if table_grad is None else table_grad[rows[t, b]].reshape(4, hidden)
            for gate in range(4):  # target (4, H)
                _add_into(target[gate, own], dz[gate, own])
        waited += _arrive_and_wait(flags, lane, steps - t)  # all of dz_t is written
        for p in range(packed.shape[0]):
            start = first + p * span
            _product(dgates[t], packed[p], dh, start, min(span, last - start), False)
    flags[1, lane] = waited
