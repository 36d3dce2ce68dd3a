"""The GEMM kernel of the large-step lanes (``lanes.py``) and the packing of its weights,
compiled. Letters: K the shared dimension of a product, PANEL the columns of one packed panel.

The kernel. ``panel_product`` computes rows (≤ ROWS) of out[:, col:col + PANEL] = a @ panel
with 2·rows vector accumulators held in registers for the whole K loop: per k, two vector loads
of the panel, one broadcast of a[r, k] per row, two fused multiply-adds per row. It is written
in LLVM IR (numba cannot keep an array of accumulators in registers), for the vectors of the
host (``host.kernel_isa``: 256-bit, or 512-bit with AVX-512). On one thread, float32,
(64, 256) @ (256, 1024), 256-bit: 92 GFLOP/s, OpenBLAS 70 (its packing included).
Packing the weights into panels once per layer call is what BLAS would redo on every step's
small GEMM.

The compiled functions here are inlined into ``lanes.py``; an edit here recompiles those too
(``jit.cached_njit``).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from lstm_scratch.fast.host import kernel_isa
from lstm_scratch.fast.jit import cached_njit

VECTOR_BYTES = 64 if kernel_isa() == "avx512" else 32  # one vector register
# rows of one kernel call: 2·ROWS accumulators, 2 panel vectors and 1 broadcast in registers.
# AVX2 has 16: 6 rows. AVX-512 has 32, but more rows than 8 gain nothing: on a Zen 4 core,
# one thread, (32, 512) @ W_hh packed: 6, 8, 12 and 14 rows all make 108-116 GFLOP/s; 512-bit
# vectors make config c's training step 1.12x as fast as 256-bit ones (8 rows; 12: 1.02x).
ROWS = 8 if VECTOR_BYTES == 64 else 6


LINE = 64  # bytes of a cache line


def empty_aligned(shape, dtype) -> np.ndarray:
    """``np.empty`` starting on a cache line. The kernel's vector loads and stores (32 or 64
    bytes) then never straddle two lines wherever its rows' lengths are multiples of a vector
    (panels always; the gate and state rows for H a multiple of 8 or 16 float32s): NumPy's
    buffers start wherever malloc puts them, 16-byte aligned, and split 32-byte vectors cost
    config d (T 100, B 64, H 256) 2.5-3 ms a step when every lane array starts 16 bytes past
    a line."""
    dtype = np.dtype(dtype)
    shape = tuple(shape) if np.iterable(shape) else (int(shape),)
    size = math.prod(shape) * dtype.itemsize  # bytes (math.prod: np.prod takes 8 µs a call)
    buffer = np.empty(size + LINE, dtype=np.uint8)  # raw bytes
    start = -buffer.ctypes.data % LINE
    return buffer[start : start + size].view(dtype).reshape(shape)


def panel_width(dtype) -> int:
    """Columns of one packed panel: two vectors of the dtype (AVX2: 16 float32, 8 float64)."""
    return 2 * VECTOR_BYTES // np.dtype(dtype).itemsize


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
def panel_product(typingctx, a, row, rows, panel, out, col, accumulate):
    """out[row:row + rows, col:col + PANEL] (+)= a[row:row + rows] (rows, K) @ panel (K, PANEL)
    for 1 ≤ rows ≤ ROWS; a of any strides, panel and out with unit column stride. For each
    count of rows the K loop is emitted apart, with its 2·rows accumulators in registers and
    one pointer per row of a and one for the panel, each advanced by its stride (computing
    addresses from k would make LLVM spill broadcasts to the stack)."""

    def codegen(context, builder, signature, args):
        a_type, _, _, panel_type, out_type, _, _ = signature.args
        a, row0, count, panel, out, col0, add = args
        scalar = context.get_value_type(panel_type.dtype)
        size = context.get_abi_sizeof(scalar)
        width, index = VECTOR_BYTES // size, ir.IntType(64)  # elements of one vector
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
            starts = [
                _pointer(context, builder, a_type, a, builder.add(row0, constant(r)), constant(0))
                for r in range(rows)
            ]
            starts.append(_pointer(context, builder, panel_type, panel, constant(0), constant(0)))
            starts = [builder.bitcast(start, bytes_pointer) for start in starts]
            loop = builder.append_basic_block(f"panel.loop{rows}")
            builder.branch(loop)
            builder.position_at_end(loop)
            k = builder.phi(index)
            places = [builder.phi(bytes_pointer) for _ in starts]  # a[row + r, k], panel[k]
            sums = [builder.phi(vector) for _ in range(2 * rows)]  # row r: sums[2r], sums[2r+1]
            for phi, start in zip(
                [k, *places, *sums], [constant(0), *starts] + [zero] * len(sums), strict=True
            ):
                phi.add_incoming(start, entry)
            panel_row = builder.bitcast(places[-1], vector.as_pointer())  # two vectors
            halves = [
                builder.load(builder.gep(panel_row, [constant(j)]), align=size) for j in (0, 1)
            ]
            updated = []
            for r in range(rows):
                a_rk = builder.load(builder.bitcast(places[r], scalar.as_pointer()), align=size)
                updated += [
                    builder.call(fma, [halves[j], broadcast(a_rk), sums[2 * r + j]]) for j in (0, 1)
                ]
            following = builder.add(k, constant(1))
            advanced = [builder.gep(place, [a_step]) for place in places[:-1]]
            advanced.append(builder.gep(places[-1], [panel_step]))
            for phi, value in zip(
                [k, *places, *sums], [following, *advanced, *updated], strict=True
            ):
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


@cached_njit(nogil=True, error_model="numpy")
def pack_columns(matrix, first, last, panels):
    """panels (P, K, PANEL)[p, k] = matrix (K, N)[k, first + p·PANEL …], zero beyond ``last``:
    columns first…last-1 in panels, read row by row (a (1024, 256) matrix out of cache:
    0.45 ms, NumPy's copy through a transposed view 0.95)."""
    span = panels.shape[2]
    for k in range(matrix.shape[0]):
        row = matrix[k]
        for p in range(panels.shape[0]):
            start, target = first + p * span, panels[p, k]
            width = max(0, min(span, last - start))
            for j in range(width):
                target[j] = row[start + j]
            for j in range(width, span):
                target[j] = 0


@cached_njit(nogil=True, error_model="numpy")
def pack_gate_rows(weight, first, last, panels):
    """panels (4, P, H, PANEL)[gate, p, :, j] = weight (G, H)[gate·H + first + p·PANEL + j]:
    each gate's rows first…last-1 of W_hh, transposed into panels, zero beyond ``last``; read
    row by row ((1024, 256) out of cache: 0.31 ms, NumPy's transposing copy 0.50)."""
    hidden, span = weight.shape[1], panels.shape[3]
    for gate in range(4):
        for p in range(panels.shape[1]):
            start = first + p * span
            width = max(0, min(span, last - start))
            for j in range(width):
                source = weight[gate * hidden + start + j]
                for k in range(hidden):
                    panels[gate, p, k, j] = source[k]
            for j in range(width, span):
                for k in range(hidden):
                    panels[gate, p, k, j] = 0


@cached_njit(nogil=True, inline="always", error_model="numpy")
def add_into(target, values):
    """target += values, elementwise (1-D)."""
    for j in range(target.size):
        target[j] += values[j]


@cached_njit(nogil=True, inline="always", error_model="numpy")
def _panels(a, panel, out, col, accumulate):
    """out[:, col:col + PANEL] (+)= a (R, K) @ panel (K, PANEL) by the register kernel, ROWS
    rows at a time but for the last rows: those are split so that no call gets fewer than 4
    where that can be (ROWS 6, 32 rows: 6, 6, 6, 6, 4, 4, not 6, …, 2), since a call's 2·rows
    multiply-adds per k must cover the FMA units' latency ((32, 512) @ (512, 512): 76–90
    GFLOP/s, against 66–85 split 6, …, 2)."""
    row = 0
    while row < a.shape[0]:
        left = a.shape[0] - row
        rows = left if left <= ROWS else ROWS if left >= ROWS + 4 else max(left - 4, 4)
        panel_product(a, row, rows, panel, out, col, accumulate)
        row += rows


@cached_njit(nogil=True, inline="always", error_model="numpy")
def product(a, panel, out, col, width, accumulate):
    """out[:, col:col + width] (+)= a (R, K) @ panel[:, :width], panel (K, PANEL) zero-padded
    beyond width. A narrower last panel goes through the same kernel into a scratch block, so
    that every column is the same sum of the same fused multiply-adds, whatever the vector
    width and wherever the panels' edges fall."""
    if width == panel.shape[1]:
        _panels(a, panel, out, col, accumulate)
        return
    scratch = np.empty((a.shape[0], panel.shape[1]), dtype=out.dtype)  # (R, PANEL)
    _panels(a, panel, scratch, 0, False)
    for r in range(a.shape[0]):
        target = out[r, col : col + width]
        for j in range(width):
            target[j] = target[j] + scratch[r, j] if accumulate else scratch[r, j]
