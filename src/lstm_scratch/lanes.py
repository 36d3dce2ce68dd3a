"""Large steps on all cores: a layer's time loop run by a few threads ("lanes") at once, with
the recurrent GEMM done by ``kernel.py``'s register-blocked kernel over weights packed once per
call. Compiled; ``fast_layer.py`` packs the weights, picks the split and starts the lanes.
Letters: T time, B batch, H hidden, G = 4H gates, U a lane's hidden units.

Why. Calling BLAS for each step's small GEMM (B, H) @ (H, G) costs a re-packing of all of
W_hh every step (OpenBLAS packs both operands on each call), and the step's gate arithmetic
then runs on one core while the others wait. Two ways to share a step between lanes:

- By rows of the batch (``forward_rows_lane``, ``backward_rows_lane``), when the batch gives
  every lane enough rows for the kernel: each lane runs the whole recurrence of its rows, all
  units, reading all of the packed W_hh, and each lane's rows of a step lie together in memory.
  The forward has no barrier in its time loop and no data from another core. The backward's
  sums over rows (the bias gradient, or one-hot input's dW_ih) are split by columns instead,
  one step behind the time loop (each lane waits until every lane has finished step t + 1,
  then adds its columns of all of that step's rows), in the same order as one lane would add
  them: the results do not depend on how the rows are split, and are those of the split by
  units wherever the units' bounds fall on panel boundaries (``fast_layer.lane_bounds``).
- By hidden units (``forward_lane``, ``backward_lane``), for small batches: lane k computes
  only its units' gate columns, z[:, gate·H + units_k] = h_{t-1} W_hh[gate·H + units_k]ᵀ for
  the four gates, runs those units' gate arithmetic, writes its part of h_t, and waits at a
  barrier for the other lanes before step t+1 (which reads all of h_t). Backward: each lane
  turns its units' dh, dc into their dz, a barrier, then dh_{t-1}[:, units_k] =
  dz W_hh[:, units_k] over all of dz.

No Python and no GIL inside either. numba checks a cached function against its own file only:
this file inlines the gate arithmetic of ``fused.py`` and the kernel of ``kernel.py``, so it
carries their hashes (kept equal by a test), and an edit there forces one here, which
refreshes this cache.
"""

from __future__ import annotations

import numba

from .fused import activate_units, gate_grads_units
from .kernel import add_into, arrive, arrive_and_wait, product, wait_for_all

INLINED_SHA256 = {
    "fused.py": "1b3a9b42c36304d038bf1506d285a3469d04f793897e31eb85f6533f4839036c",
    "kernel.py": "b60dbd4faf67403565e70218274446b3a7d6b1027fddfedcee77a956b0cc48b0",
}


@numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _gates_product(h_prev, packed, z, first, last, accumulate):
    """z[:, gate·H + first…last-1] (+)= h_prev W_hh[gate·H + first…last-1]ᵀ for the four gates:
    h_prev (R, H), z (R, G), packed (4·P, H, PANEL) those rows of W_hh in panels."""
    hidden, per_gate, span = z.shape[1] // 4, packed.shape[0] // 4, packed.shape[2]
    for p in range(packed.shape[0]):
        gate, start = p // per_gate, first + p % per_gate * span
        product(h_prev, packed[p], z, gate * hidden + start, min(span, last - start), accumulate)


@numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _activate_row(z, source, first, last, c_prev, c, h, tanh_c):
    """Units first…last-1 of one batch row: z (G,) += source (G,) (a row of W_ihᵀ + b, or b),
    then the gate arithmetic, writing c, h, tanh(c) (H,) from c_prev (H,)."""
    hidden, own = c.size, slice(first, last)
    z_4, source_4 = z.reshape(4, hidden), source.reshape(4, hidden)  # (4, H) i, f, g, o
    for gate in range(4):
        add_into(z_4[gate, own], source_4[gate, own])
    activate_units(z_4[0, own], z_4[1, own], z_4[2, own], z_4[3, own], c_prev[own], c[own],
                   h[own], tanh_c[own])  # fmt: skip


@numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _gate_grads_row(a, dz, first, last, dy, dh, dc, c_prev, tanh_c):
    """Units first…last-1 of one batch row backward: a (G,) the activated gates; dh, dc (H,)
    arrive from step t+1 and dc leaves as dc_{t-1}; dz (G,) gets the pre-activations'."""
    hidden, own = dh.size, slice(first, last)
    a_4, dz_4 = a.reshape(4, hidden), dz.reshape(4, hidden)  # (4, H) i, f, g, o
    gate_grads_units(a_4[0, own], a_4[1, own], a_4[2, own], a_4[3, own], dy[own], dh[own],
                     dc[own], c_prev[own], tanh_c[own], dz_4[0, own], dz_4[1, own],
                     dz_4[2, own], dz_4[3, own])  # fmt: skip


@numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _state_grad_product(dz, packed, dh, first, last):
    """dh[:, first…last-1] = dz W_hh[:, first…last-1]: dz (R, G), dh (R, H), packed (P, G,
    PANEL) those columns of W_hh in panels."""
    span = packed.shape[2]
    for p in range(packed.shape[0]):
        start = first + p * span
        product(dz, packed[p], dh, start, min(span, last - start), False)


@numba.njit(cache=True, nogil=True, error_model="numpy")
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
            _activate_row(gates[t, b], table[rows[t, b]], first, last, cs[t, b], cs[t + 1, b],
                          hs[t + 1, b], tanh_cs[t, b])  # fmt: skip
        waited += arrive_and_wait(flags, lane, t + 1)  # all of h_t is written
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
    bias_4 = bias_grad.reshape(4, hidden)  # (4, H)
    own = slice(first, last)
    waited = 0
    for t in range(steps - 1, -1, -1):
        for b in range(batch):
            _gate_grads_row(gates[t, b], dgates[t, b], first, last, dy[t, b], dh[b], dc[b],
                            cs[t, b], tanh_cs[t, b])  # fmt: skip
            dz = dgates[t, b].reshape(4, hidden)  # (4, H)
            target = bias_4 if table_grad is None else table_grad[rows[t, b]].reshape(4, hidden)
            for gate in range(4):  # target (4, H)
                add_into(target[gate, own], dz[gate, own])
        waited += arrive_and_wait(flags, lane, steps - t)  # all of dz_t is written
        _state_grad_product(dgates[t], packed, dh, first, last)  # (B, H) own columns
    flags[1, lane] = waited


@numba.njit(cache=True, nogil=True, error_model="numpy")
def forward_rows_lane(lane, first, last, packed, gates, has_input, table, rows, hs, cs, tanh_cs,
                      flags):  # fmt: skip
    """Lane ``lane``'s part of ``cell.lstm_forward``: batch rows first…last-1, all units.

    packed (4·P, H, PANEL): all of W_hh's rows, P panels per gate, each transposed (H, PANEL);
    the other arguments as ``forward_lane``'s."""
    steps, hidden = gates.shape[0], hs.shape[2]
    for t in range(steps):
        _gates_product(hs[t, first:last], packed, gates[t, first:last], 0, hidden, has_input)
        for b in range(first, last):
            _activate_row(gates[t, b], table[rows[t, b]], 0, hidden, cs[t, b], cs[t + 1, b],
                          hs[t + 1, b], tanh_cs[t, b])  # fmt: skip
    arrive(flags, lane, 1)  # done: the time it waits for the others tells its speed
    flags[1, lane] = wait_for_all(flags, 1)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def backward_rows_lane(lane, first, last, packed, dy, gates, cs, tanh_cs, dh, dc, dgates,
                       bias_grad, table_grad, rows, flags):  # fmt: skip
    """Lane ``lane``'s part of ``cell.lstm_backward``'s time loop: batch rows first…last-1.

    packed (P, G, PANEL): all of W_hh's columns in panels; the other arguments as
    ``backward_lane``'s. The sums over rows into bias_grad or table_grad are split by columns:
    this lane adds columns G·lane/lanes … G·(lane+1)/lanes of every row of step t + 1, once
    every lane has finished that step (it announces t's after t's product), in the order of
    ``backward_lane``: t descending, then b."""
    steps, batch, four_h = gates.shape
    hidden, count = four_h // 4, flags.shape[1]
    low, high = lane * four_h // count, (lane + 1) * four_h // count  # (this lane's columns)
    waited = 0
    for t in range(steps - 1, -2, -1):  # t = -1: only step 0's sums
        if t >= 0:
            for b in range(first, last):
                _gate_grads_row(gates[t, b], dgates[t, b], 0, hidden, dy[t, b], dh[b], dc[b],
                                cs[t, b], tanh_cs[t, b])  # fmt: skip
            _state_grad_product(dgates[t, first:last], packed, dh[first:last], 0, hidden)
            arrive(flags, lane, steps - t)  # this lane's rows of dz_t are written
        if t + 1 < steps:  # the sums of step t + 1, for which every lane's dz is written
            waited += wait_for_all(flags, steps - t - 1)
            for b in range(batch):
                target = bias_grad if table_grad is None else table_grad[rows[t + 1, b]]
                add_into(target[low:high], dgates[t + 1, b, low:high])
    flags[1, lane] = waited
