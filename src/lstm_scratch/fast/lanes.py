"""Large steps on all cores: a layer's time loop run by a few threads ("lanes") at once, with
the recurrent GEMM done by ``kernel.py``'s register-blocked kernel over weights packed once per
call. Compiled; ``layer.py`` packs the weights, picks the split and starts the lanes.
Letters: T time, B batch, H hidden, G = 4H gates, U a lane's hidden units, V the decoder's
outputs (when dy arrives as ``layer.LinearInputGrad``).

Why. Calling BLAS for each step's small GEMM (B, H) @ (H, G) costs a re-packing of all of
W_hh every step (OpenBLAS packs both operands on each call), and the step's gate arithmetic
then runs on one core while the others wait. Two ways to share a step between lanes:

- By rows of the batch (``forward_rows_lane``, ``backward_rows_lane``), when the batch gives
  every lane enough rows for the kernel: each lane runs the whole recurrence of its rows, all
  units, reading all of the packed W_hh, and each lane's rows of a step lie together in memory.
  No barrier in either time loop. A lane that has finished its rows is handed half of a
  busier lane's remaining ones (``sync.py``): the cores' speeds drift within a call, and a
  split made from earlier calls' speeds alone leaves one lane idle 1-3 ms per call on d. The
  backward's sums over rows (the bias gradient, or one-hot input's dW_ih) are split by
  columns: each lane adds its columns of every step all lanes have finished (rows done are
  counted per step), between its own steps, in the same order as one lane would add them: the
  results do not depend on how the rows are split or handed over, and are those of the split
  by units wherever the units' bounds fall on panel boundaries (``layer.lane_bounds``).
- By hidden units (``forward_lane``, ``backward_lane``), for small batches: lane k computes
  only its units' gate columns, z[:, gate·H + units_k] = h_{t-1} W_hh[gate·H + units_k]ᵀ for
  the four gates, runs those units' gate arithmetic, writes its part of h_t, and waits at a
  barrier for the other lanes before step t+1 (which reads all of h_t). Backward: each lane
  turns its units' dh, dc into their dz, a barrier, then dh_{t-1}[:, units_k] =
  dz W_hh[:, units_k] over all of dz.

No Python and no GIL inside either. This file inlines the gate arithmetic of ``fused.py``, the
kernel of ``kernel.py`` and the synchronisation of ``sync.py``; its cached machine code is
stamped with all of those files (``jit.cached_njit``), so an edit to any of them recompiles it.
"""

from __future__ import annotations

import numpy as np

from lstm_scratch.fast import sync
from lstm_scratch.fast.fused import activate, activate_units, gate_grads, gate_grads_units, is_apart
from lstm_scratch.fast.jit import cached_njit
from lstm_scratch.fast.kernel import add_into, product
from lstm_scratch.fast.sync import (
    arrive,
    arrive_and_wait,
    close,
    offer,
    publish,
    steal,
    wait_for_all,
)


@cached_njit(nogil=True, inline="always", error_model="numpy")
def _gates_product(h_prev, packed, z, first, last, accumulate):
    """z[:, gate·H + first…last-1] (+)= h_prev W_hh[gate·H + first…last-1]ᵀ for the four gates:
    h_prev (R, H), z (R, G), packed (4·P, H, PANEL) those rows of W_hh in panels."""
    hidden, per_gate, span = z.shape[1] // 4, packed.shape[0] // 4, packed.shape[2]
    for p in range(packed.shape[0]):
        gate, start = p // per_gate, first + p % per_gate * span
        product(h_prev, packed[p], z, gate * hidden + start, min(span, last - start), accumulate)


@cached_njit(nogil=True, inline="always", error_model="numpy")
def _activate_row(z, source, first, last, c_prev, c, h, tanh_c):
    """Units first…last-1 of one batch row: z (G,) += source (G,) (a row of W_ihᵀ + b, or b),
    then the gate arithmetic, writing c, h, tanh(c) (H,) from c_prev (H,)."""
    hidden, own = c.size, slice(first, last)
    z_4, source_4 = z.reshape(4, hidden), source.reshape(4, hidden)  # (4, H) i, f, g, o
    for gate in range(4):
        add_into(z_4[gate, own], source_4[gate, own])
    activate_units(
        z_4[0, own], z_4[1, own], z_4[2, own], z_4[3, own], c_prev[own], c[own], h[own], tanh_c[own]
    )


@cached_njit(nogil=True, inline="always", error_model="numpy")
def _gate_grads_row(a, dz, first, last, dy, dh, dc, c_prev, tanh_c, apart):
    """Units first…last-1 of one batch row backward: a (G,) the activated gates; dh, dc (H,)
    arrive from step t+1 and dc leaves as dc_{t-1}; dz (G,) gets the pre-activations' (dz is
    a, or ``apart`` from it: as ``fused.gate_grads``)."""
    hidden, own = dh.size, slice(first, last)
    a_4, dz_4 = a.reshape(4, hidden), dz.reshape(4, hidden)  # (4, H) i, f, g, o
    if apart:
        for gate in range(4):
            dz_4[gate, own] = a_4[gate, own]
    gate_grads_units(
        dz_4[0, own],
        dz_4[1, own],
        dz_4[2, own],
        dz_4[3, own],
        dy[own],
        dh[own],
        dc[own],
        c_prev[own],
        tanh_c[own],
    )


@cached_njit(nogil=True, inline="always", error_model="numpy")
def _state_grad_product(dz, packed, dh, first, last):
    """dh[:, first…last-1] = dz W[:, first…last-1]: dz (R, K), dh (R, H), packed (P, K, PANEL)
    those columns of W (K, H) in panels. The state gradient's product (W = W_hh, K = G), and
    in ``_backward_rows`` also dy's (W the decoder's weight, K = V)."""
    span = packed.shape[2]
    for p in range(packed.shape[0]):
        start = first + p * span
        product(dz, packed[p], dh, start, min(span, last - start), False)


@cached_njit(nogil=True, error_model="numpy")
def forward_lane(lane, first, last, packed, gates, has_input, table, rows, hs, cs, tanh_cs, flags):
    """Lane ``lane``'s part of ``cell.lstm_forward``: units first…last-1 (U of them).

    packed (4·P, H, PANEL): W_hh's rows gate·H + units, P panels per gate, each transposed
    (H, PANEL). gates (T, B, G) arrive holding x W_ihᵀ if has_input (dense input), else
    nothing; row rows[t, b] of table (R, G) is added to step t's row b: W_ihᵀ + b for one-hot
    input (rows the ids), b alone (R = 1, rows 0) for dense. hs, cs (T+1, B, H) hold h_0, c_0
    in row 0."""
    steps, batch = gates.shape[:2]
    waited = 0
    for t in range(steps):
        _gates_product(hs[t], packed, gates[t], first, last, has_input)  # (B, G) own columns
        for b in range(batch):
            _activate_row(
                gates[t, b],
                table[rows[t, b]],
                first,
                last,
                cs[t, b],
                cs[t + 1, b],
                hs[t + 1, b],
                tanh_cs[t, b],
            )
        waited += arrive_and_wait(flags, lane, t + 1)  # all of h_t is written
    flags[sync.WORK, lane], flags[sync.WAITED, lane] = (last - first) * steps, waited


@cached_njit(nogil=True, error_model="numpy")
def backward_lane(
    lane,
    first,
    last,
    packed,
    dy,
    gates,
    cs,
    tanh_cs,
    dh,
    dc,
    dgates,
    bias_grad,
    table_grad,
    rows,
    flags,
):
    """Lane ``lane``'s part of ``cell.lstm_backward``'s time loop: units first…last-1.

    packed (P, G, PANEL): W_hh's columns first…last-1 in panels. dh, dc (B, H) arrive as dh_T,
    dc_T and leave as dh_0, dc_0; dgates (T, B, G) is filled. The lane adds its gate columns
    of each dz into table_grad[rows[t, b]] (D, G), or into bias_grad (G,) when table_grad is
    None (with one-hot input, the bias gradient is then table_grad's column sums)."""
    steps, batch, four_h = gates.shape
    hidden = four_h // 4
    bias_4 = bias_grad.reshape(4, hidden)  # (4, H)
    own = slice(first, last)
    apart = is_apart(dgates, gates)
    waited = 0
    for t in range(steps - 1, -1, -1):
        for b in range(batch):
            _gate_grads_row(
                gates[t, b],
                dgates[t, b],
                first,
                last,
                dy[t, b],
                dh[b],
                dc[b],
                cs[t, b],
                tanh_cs[t, b],
                apart,
            )
            dz = dgates[t, b].reshape(4, hidden)  # (4, H)
            target = bias_4 if table_grad is None else table_grad[rows[t, b]].reshape(4, hidden)
            for gate in range(4):  # target (4, H)
                add_into(target[gate, own], dz[gate, own])
        waited += arrive_and_wait(flags, lane, steps - t)  # all of dz_t is written
        _state_grad_product(dgates[t], packed, dh, first, last)  # (B, H) own columns
    flags[sync.WORK, lane], flags[sync.WAITED, lane] = (last - first) * steps, waited


@cached_njit(nogil=True, error_model="numpy")
def _forward_rows(
    lane, first, last, start, packed, gates, has_input, table, rows, hs, cs, tanh_cs, flags
):
    """Rows first…last-1 from step ``start`` on; before each step, the upper half of them is
    handed over to a lane that has asked (``sync.offer``). Returns the row-steps done."""
    steps, hidden = gates.shape[0], hs.shape[2]
    # views from step ``start``, under new names, so that the loop counts from 0 (a loop from
    # a variable start is 17 % slower: LLVM does not know the sign of its steps)
    gates_, rows_, hs_, cs_ = gates[start:], rows[start:], hs[start:], cs[start:]
    tanh_cs_ = tanh_cs[start:]
    work = 0
    publish(flags, sync.ROWS, lane, last - first)
    for t in range(steps - start):
        publish(flags, sync.PROGRESS, lane, start + t)
        last = offer(flags, lane, first, last, start + t, steps)
        _gates_product(hs_[t, first:last], packed, gates_[t, first:last], 0, hidden, has_input)
        for b in range(first, last):  # whole rows: no per-gate views (see _backward_rows)
            add_into(gates_[t, b], table[rows_[t, b]])
            activate(gates_[t, b], cs_[t, b], cs_[t + 1, b], hs_[t + 1, b], tanh_cs_[t, b])
        work += last - first
    publish(flags, sync.ROWS, lane, 0)
    return work


@cached_njit(nogil=True, error_model="numpy")
def forward_rows_lane(
    lane, first, last, packed, gates, has_input, table, rows, hs, cs, tanh_cs, flags
):
    """Lane ``lane``'s part of ``cell.lstm_forward``: batch rows first…last-1, all units, then
    rows handed over by busier lanes (``sync.steal``), whose requests it answers before each
    step (``sync.offer``).

    packed (4·P, H, PANEL): all of W_hh's rows, P panels per gate, each transposed (H, PANEL);
    the other arguments as ``forward_lane``'s."""
    steps = gates.shape[0]
    start, waited, work = np.int64(0), 0, 0  # (a literal 0 would compile _forward_rows twice)
    while first < last:
        work += _forward_rows(
            lane, first, last, start, packed, gates, has_input, table, rows, hs, cs, tanh_cs, flags
        )
        first, last, start, asked = steal(flags, lane, steps)
        waited += asked
    close(flags, lane)
    flags[sync.WORK, lane] = work
    arrive(flags, lane, 1)  # done: the time it waits for the others tells its speed
    flags[sync.WAITED, lane] = waited + wait_for_all(flags, 1)


@cached_njit(nogil=True, inline="always", error_model="numpy")
def _add_sums(dgates, ids, sums, low, high, counts, cursor, upto):
    """Columns low…high-1 of the sums over rows (``backward_rows_lane``), step by step in the
    time loop's order (step index n is t = T-1-n), from index ``cursor`` to ``upto`` as long as
    every row of the step is done. Returns the index of the first step not added."""
    steps, batch = dgates.shape[:2]
    while cursor <= upto and sync.rows_done(counts, cursor) == batch:
        t = steps - 1 - cursor
        for b in range(batch):
            add_into(sums[ids[t, b], low:high], dgates[t, b, low:high])
        cursor += 1
    return cursor


@cached_njit(nogil=True, error_model="numpy")
def _backward_rows(lane, first, last, done, cursor, arrays, shared, step_dy):
    """Rows first…last-1 backward from step T-1-done down to 0 (``done`` steps of them are done
    already); before each step the upper half of them is handed over to a lane that has asked
    (``sync.offer``; steps counted as steps done, T-1-t); after each, the lane's columns of the
    sums of the steps before it that every lane has finished (``_add_sums`` from ``cursor``).
    With ``dy_weight`` panels, each step's rows of dy are dy_dout[t] W, made in ``step_dy``.
    ``arrays`` and ``shared`` are ``backward_rows_lane``'s arguments, as it groups them.
    Returns the row-steps done and the sums' next step."""
    packed, dy, gates, cs, tanh_cs, dh, dc, dgates = arrays
    flags, counts, sums, ids, low, high, dy_weight, dy_dout = shared
    steps, hidden = gates.shape[0], dh.shape[1]
    left = steps - done  # views of the steps left, under new names (a loop from T-1-done is
    # 15 % slower, and so are views under the arguments' names)
    dy_, gates_, cs_, dgates_ = dy[:left], gates[:left], cs[:left], dgates[:left]
    tanh_cs_, dy_dout_ = tanh_cs[:left], dy_dout[:left]
    apart = is_apart(dgates, gates)
    work = 0
    publish(flags, sync.ROWS, lane, last - first)
    for t in range(left - 1, -1, -1):
        publish(flags, sync.PROGRESS, lane, steps - 1 - t)
        last = offer(flags, lane, first, last, steps - 1 - t, steps)
        if dy_weight.shape[0]:  # dy_t = dout_t W for these rows, while dout_t is in cache
            dy_t = step_dy[: last - first]  # (R, H)
            _state_grad_product(dy_dout_[t, first:last], dy_weight, dy_t, 0, hidden)
        else:
            dy_t = dy_[t, first:last]  # (R, H)
        for b in range(first, last):  # whole rows (the units' views of _gate_grads_row cost
            # 0.5 ns per unit more in cache: 1.39 against 0.88)
            gate_grads(
                gates_[t, b],
                dy_t[b - first],
                dh[b],
                dc[b],
                cs_[t, b],
                tanh_cs_[t, b],
                dgates_[t, b],
                apart,
            )
        _state_grad_product(dgates_[t, first:last], packed, dh[first:last], 0, hidden)
        sync.count_rows(counts, steps - 1 - t, last - first)
        work += last - first
        cursor = _add_sums(dgates, ids, sums, low, high, counts, cursor, steps - 2 - t)
    publish(flags, sync.ROWS, lane, 0)
    return work, cursor


@cached_njit(nogil=True, error_model="numpy")
def backward_rows_lane(
    lane,
    first,
    last,
    packed,
    dy,
    gates,
    cs,
    tanh_cs,
    dh,
    dc,
    dgates,
    sums,
    ids,
    counts,
    dy_weight,
    dy_dout,
    flags,
):
    """Lane ``lane``'s part of ``cell.lstm_backward``'s time loop: batch rows first…last-1, then
    rows handed over by busier lanes (as ``forward_rows_lane``), and its columns of the sums
    over rows.

    packed (P, G, PANEL): all of W_hh's columns in panels; dy … dgates as ``backward_lane``'s.
    sums (D, G) float64 gets each dz_t[b] added into its row ids[t, b]: one-hot input's dW_ihᵀ,
    or (D = 1, ids all 0) the bias gradient. This lane adds columns G·lane/lanes …
    G·(lane+1)/lanes of every row, t descending, then b, as ``backward_lane`` does (the results
    do not depend on the split): step by step once counts[T-1-t] (zeros on entry) shows every
    row of the step done, between its own steps while dz is still in cache, and after its
    rows the steps left. (Summed after the whole time loop, the sums would read dgates from
    memory again; a step behind it with a barrier, they would hold the lanes in step.)

    dy_weight (P, V, PANEL), dy_dout (T, B, V): with panels, dy = dy_dout W for W (V, H) packed
    by columns (``layer.LinearInputGrad``, the decoder's gradient on the last layer), each
    step's rows multiplied out before their gate gradients, and dy (0, B, H) is not read;
    without (P = 0), dy (T, B, H) as given."""
    steps, four_h = gates.shape[0], gates.shape[2]
    count = flags.shape[1]
    low, high = lane * four_h // count, (lane + 1) * four_h // count  # (this lane's columns)
    done, cursor = np.int64(0), np.int64(0)  # (literal 0s would compile _backward_rows twice)
    step_dy = np.empty((dh.shape[0], dh.shape[1]), dtype=dh.dtype)  # (B, H) one step's dy rows
    waited, work = 0, 0
    arrays = (packed, dy, gates, cs, tanh_cs, dh, dc, dgates)
    shared = (flags, counts, sums, ids, low, high, dy_weight, dy_dout)
    while first < last:
        rows_work, cursor = _backward_rows(lane, first, last, done, cursor, arrays, shared, step_dy)
        work += rows_work
        first, last, done, asked = steal(flags, lane, steps)
        waited += asked
    close(flags, lane)
    batch = gates.shape[1]
    while cursor < steps and not sync.failed(flags, lane):  # the steps others were still on
        waited += sync.wait_for_rows(counts, cursor, batch, flags, lane)
        cursor = _add_sums(dgates, ids, sums, low, high, counts, cursor, steps - 1)
    flags[sync.WORK, lane] = work
    flags[sync.WAITED, lane] = waited + arrive_and_wait(flags, lane, 1)
