"""The GEMM kernel of the recurrent products (the large-step lanes of ``lanes.py``, the small-step
time loops of ``fused.py``) and the packing of its weights, compiled. Letters: K the shared
dimension of a product, PANEL the columns of one packed panel.

The kernel. ``panel_product`` computes rows (≤ ROWS) of out[:, col:col + PANEL] = a @ panel
with 2·rows vector accumulators held in registers for the whole K loop: per k, two vector loads
of the panel, one broadcast of a[r, k] per row, two fused multiply-adds per row. It is written
in LLVM IR (numba cannot keep an array of accumulators in registers), for the vectors of the
host (``host.kernel_isa``: 256-bit, or 512-bit with AVX-512). On one thread, float32,
(64, 256) @ (256, 1024), 256-bit: 92 GFLOP/s, OpenBLAS 70 (its packing included).
Packing the weights into panels once per layer call is what BLAS would redo on every step's
small GEMM.

The compiled functions here are inlined into ``lanes.py``, ``fused.py`` and ``gru_rnn.py``; an
edit here recompiles those too (``jit.cached_njit``).
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


class _PanelCode:
    """The LLVM IR of ``panel_product`` for one call site: the vector types, the fused
    multiply-add and the operands' strides, then per count of rows the pointers to the rows'
    starts, the K loop and the stores."""

    def __init__(self, context, builder, signature, args):
        self.context, self.builder = context, builder
        self.a_type, _, _, self.panel_type, self.out_type, _, _ = signature.args
        self.a, self.row0, self.count, self.panel, self.out, self.col0, self.add = args
        self.scalar = context.get_value_type(self.panel_type.dtype)
        self.size = context.get_abi_sizeof(self.scalar)
        width = VECTOR_BYTES // self.size  # elements of one vector
        self.vector = ir.VectorType(self.scalar, width)
        fma_type = ir.FunctionType(self.vector, [self.vector] * 3)
        fma_name = f"llvm.fma.v{width}{self.scalar.intrinsic_name}"
        self.fma = cgutils.get_or_insert_function(builder.module, fma_type, fma_name)
        a_array = context.make_array(self.a_type)(context, builder, self.a)
        self.depth = builder.extract_value(a_array.shape, 1)
        self.a_step = builder.extract_value(a_array.strides, 1)  # bytes from a[r, k] to a[r, k+1]
        panel_array = context.make_array(self.panel_type)(context, builder, self.panel)
        self.panel_step = builder.extract_value(panel_array.strides, 0)
        self.undef = ir.Constant(self.vector, ir.Undefined)
        self.zero = ir.Constant(self.vector, [0.0] * width)
        self.splat = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)

    def constant(self, n):
        return ir.Constant(ir.IntType(64), n)

    def broadcast(self, value):
        """One scalar into every element of a vector."""
        value = self.builder.insert_element(self.undef, value, ir.Constant(ir.IntType(32), 0))
        return self.builder.shuffle_vector(value, self.undef, self.splat)

    def starts(self, rows):
        """Byte pointers to a[row + r, 0] for each row, then to panel[0, 0]."""
        c, b, zero = self.context, self.builder, self.constant(0)
        starts = [
            _pointer(c, b, self.a_type, self.a, b.add(self.row0, self.constant(r)), zero)
            for r in range(rows)
        ]
        starts.append(_pointer(c, b, self.panel_type, self.panel, zero, zero))
        return [b.bitcast(start, ir.IntType(8).as_pointer()) for start in starts]

    def k_loop(self, rows):
        """The K loop: per k, the panel's two vectors, one broadcast and two fused
        multiply-adds per row. Returns the 2·rows sums (row r: [2r], [2r + 1])."""
        b, entry, starts = self.builder, self.builder.block, self.starts(rows)
        loop = b.append_basic_block(f"panel.loop{rows}")
        b.branch(loop)
        b.position_at_end(loop)
        k = b.phi(ir.IntType(64))
        places = [b.phi(ir.IntType(8).as_pointer()) for _ in starts]  # a[row + r, k], panel[k]
        sums = [b.phi(self.vector) for _ in range(2 * rows)]
        initial = [self.constant(0), *starts] + [self.zero] * len(sums)
        for phi, start in zip([k, *places, *sums], initial, strict=True):
            phi.add_incoming(start, entry)
        panel_row = b.bitcast(places[-1], self.vector.as_pointer())  # two vectors
        halves = [b.load(b.gep(panel_row, [self.constant(j)]), align=self.size) for j in (0, 1)]
        updated = []
        for r in range(rows):
            a_rk = b.load(b.bitcast(places[r], self.scalar.as_pointer()), align=self.size)
            updated += [
                b.call(self.fma, [halves[j], self.broadcast(a_rk), sums[2 * r + j]]) for j in (0, 1)
            ]
        following = b.add(k, self.constant(1))
        advanced = [b.gep(place, [self.a_step]) for place in places[:-1]]
        advanced.append(b.gep(places[-1], [self.panel_step]))
        for phi, value in zip([k, *places, *sums], [following, *advanced, *updated], strict=True):
            phi.add_incoming(value, b.block)
        after = b.append_basic_block(f"panel.store{rows}")
        b.cbranch(b.icmp_signed("<", following, self.depth), loop, after)
        b.position_at_end(after)
        return updated

    def store(self, rows, sums):
        """out[row + r, col:col + PANEL] = (out +) the row's two sums."""
        b = self.builder
        for r in range(rows):
            row_r = b.add(self.row0, self.constant(r))
            target = _pointer(self.context, b, self.out_type, self.out, row_r, self.col0)
            target = b.bitcast(target, self.vector.as_pointer())
            for j in (0, 1):
                place, value = b.gep(target, [self.constant(j)]), sums[2 * r + j]
                total = b.fadd(b.load(place, align=self.size), value)
                b.store(b.select(self.add, total, value), place, align=self.size)

    def emit(self):
        """A switch on the count of rows, each case its own K loop and stores."""
        b = self.builder
        done = b.append_basic_block("panel.done")
        choose = b.switch(self.count, done)
        for rows in range(1, ROWS + 1):
            block = b.append_basic_block(f"panel.rows{rows}")
            choose.add_case(self.constant(rows), block)
            b.position_at_end(block)
            self.store(rows, self.k_loop(rows))
            b.branch(done)
        b.position_at_end(done)


@intrinsic
def panel_product(typingctx, a, row, rows, panel, out, col, accumulate):
    """out[row:row + rows, col:col + PANEL] (+)= a[row:row + rows] (rows, K) @ panel (K, PANEL)
    for 1 ≤ rows ≤ ROWS; a of any strides, panel and out with unit column stride. For each
    count of rows the K loop is emitted apart (``_PanelCode``), with its 2·rows accumulators in
    registers and one pointer per row of a and one for the panel, each advanced by its stride
    (computing addresses from k would make LLVM spill broadcasts to the stack)."""

    def codegen(context, builder, signature, args):
        _PanelCode(context, builder, signature, args).emit()
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
def full_width_product(a, panel, out, col, accumulate):
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
        full_width_product(a, panel, out, col, accumulate)
        return
    scratch = np.empty((a.shape[0], panel.shape[1]), dtype=out.dtype)  # (R, PANEL)
    full_width_product(a, panel, scratch, 0, False)
    for r in range(a.shape[0]):
        target = out[r, col : col + width]
        for j in range(width):
            target[j] = target[j] + scratch[r, j] if accumulate else scratch[r, j]
