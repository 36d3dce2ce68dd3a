"""How the large-step lanes (``lanes.py``) work together, compiled: barriers, and the hand-over
of batch rows from a busy lane to one that has finished.

All of it goes through one int64 array, ``flags`` (FLAG_ROWS, lanes), read and written
atomically (release/acquire), one column per lane. A barrier: each lane announces the step it
reached (row BARRIER), polls the others' (yielding the core after a while) and times its wait.

The hand-over (``offer``, ``steal``, ``close``). Lanes that own batch rows run each row's whole
recurrence; the cores' speeds differ and drift within a call, so one lane finishes first. It
then asks (row REQUEST of the lane with the most row-steps left, set by compare-and-swap) for
part of that lane's rows. The busy lane looks for a request before each step t; it hands over
the upper half of its rows from step t on (writing their first, last row and t into the
asking lane's GIVEN rows, then READY), having finished step t − 1 for them: the release of
READY publishes their h and c. A row's arithmetic is the same in any lane, so the results do
not depend on who computed which row at which step. A lane waiting for an answer answers the
requests made of it (with nothing); a lane that leaves closes its REQUEST first.

Rows done per step (``count_rows``, ``rows_done``): an int64 count per time step, added to
atomically, which tells a lane that every row of a step is done whoever did it (the backward
sums over rows by it).

The compiled functions here are inlined into ``lanes.py``; an edit here recompiles those too
(``jit.cached_njit``).
"""

from __future__ import annotations

import threading
import time

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from lstm_scratch.fast.jit import cached_njit
from lstm_scratch.fast.kernel import _pointer


def run_lanes(lane, count: int) -> None:
    """lane(k) for k = 0…count-1, each on a thread of its own, lane 0 on this one (the compiled
    lanes release the GIL). The first error a lane raised is raised here, once all are done."""
    errors = []

    def guarded(k):
        try:
            lane(k)
        except BaseException as error:  # let the other lanes finish, then raise it here
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(k,)) for k in range(1, count)]
    for thread in threads:
        thread.start()
    guarded(0)
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


SPIN_BEFORE_YIELD = 2000  # polls before each further poll also yields the core
# rows of flags, each one int64 per lane: the barrier's step, ns waited, work done (row-steps
# or units), the hand-over's steps done and rows owned, request, answer, and the answer's rows
BARRIER, WAITED, WORK, PROGRESS, ROWS, REQUEST, READY = range(7)
GIVEN_FIRST, GIVEN_LAST, GIVEN_STEP = range(7, 10)
FLAG_ROWS = 10
CLOSED = -1  # REQUEST of a lane that takes no more requests
FAILED = 2**63 - 1  # BARRIER of every lane when one has failed (``layer._run_lanes``)
MIN_STEPS_TO_SPLIT = 3  # a lane with fewer steps left keeps its rows (the asker waits ≤ 1 step)


@intrinsic
def _load_acquire(typingctx, flags, i):
    """flags[i] of an int64 array, read atomically (acquire)."""

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
def _compare_exchange(typingctx, flags, i, expected, value):
    """flags[i] = value if it holds ``expected``, atomically (acquire and release); returns
    what it held."""

    def codegen(context, builder, signature, args):
        pointer = _pointer(context, builder, signature.args[0], args[0], args[1])
        pair = builder.cmpxchg(pointer, args[2], args[3], "acq_rel", "acquire")
        return builder.extract_value(pair, 0)

    return types.int64(flags, types.intp, types.int64, types.int64), codegen


@intrinsic
def _fetch_add(typingctx, counts, i, value):
    """counts[i] += value, atomically (acquire and release), for an int64 array."""

    def codegen(context, builder, signature, args):
        pointer = _pointer(context, builder, signature.args[0], args[0], args[1])
        builder.atomic_rmw("add", pointer, args[2], "acq_rel")
        return context.get_dummy_value()

    return types.void(counts, types.intp, types.int64), codegen


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
        seconds, nanoseconds = (
            builder.load(cgutils.gep_inbounds(builder, place, 0, j)) for j in (0, 1)
        )
        return builder.add(builder.mul(seconds, ir.Constant(word, 10**9)), nanoseconds)

    return types.int64(), codegen


@cached_njit(nogil=True, inline="always")
def failed(flags, lane):
    """Whether a lane has failed (``layer._run_lanes`` then sets every BARRIER to FAILED)."""
    return _load_acquire(flags[BARRIER], lane) == FAILED


@cached_njit(nogil=True, inline="always")
def pause(polls):
    """One poll of a wait: after SPIN_BEFORE_YIELD of them, each also yields the core."""
    if polls > SPIN_BEFORE_YIELD:
        _sched_yield()


@cached_njit(nogil=True, inline="always")
def arrive(flags, lane, step):
    """Lane ``lane`` announces that it reached ``step`` (flags[BARRIER, lane]), not waiting."""
    _store_release(flags[BARRIER], lane, step)


@cached_njit(nogil=True, inline="always")
def wait_for_all(flags, step):
    """Wait until every lane has reached ``step``; returns the nanoseconds waited."""
    start = _monotonic_ns()
    for other in range(flags.shape[1]):
        polls = 0
        while _load_acquire(flags[BARRIER], other) < step:
            polls += 1
            pause(polls)
    return _monotonic_ns() - start


@cached_njit(nogil=True, inline="always")
def arrive_and_wait(flags, lane, step):
    """A barrier: ``arrive``, then ``wait_for_all``. Returns the nanoseconds waited."""
    arrive(flags, lane, step)
    return wait_for_all(flags, step)


@cached_njit(nogil=True, inline="always")
def publish(flags, row, lane, value):
    """flags[row, lane] = value, seen by the other lanes' atomic reads."""
    _store_release(flags[row], lane, value)


@cached_njit(nogil=True, inline="always")
def count_rows(counts, step, rows):
    """Announce ``rows`` more rows of ``step`` done: counts[step] += rows (atomic)."""
    _fetch_add(counts, step, rows)


@cached_njit(nogil=True, inline="always")
def rows_done(counts, step):
    """How many rows of ``step`` the lanes have announced done."""
    return _load_acquire(counts, step)


@cached_njit(nogil=True, inline="always")
def wait_for_rows(counts, step, rows, flags, lane):
    """Wait until ``rows`` rows of ``step`` are announced done (or a lane has failed); returns
    the nanoseconds waited."""
    start, polls = _monotonic_ns(), 0
    while rows_done(counts, step) < rows and not failed(flags, lane):
        polls += 1
        pause(polls)
    return _monotonic_ns() - start


@cached_njit(nogil=True, inline="always")
def offer(flags, lane, first, last, step, steps):
    """At the start of ``step``, for a lane owning rows first…last-1: if a lane asked, hand it
    the upper half of them from this step on (nothing where fewer than MIN_STEPS_TO_SPLIT steps
    or 2 rows are left). Returns the rows' new end: the lane keeps first…keep-1."""
    request = _load_acquire(flags[REQUEST], lane)
    if request <= 0:
        return last
    asker = request - 1
    keep = last
    if steps - step >= MIN_STEPS_TO_SPLIT and last - first >= 2:
        keep = last - (last - first) // 2
        _store_release(flags[ROWS], lane, keep - first)
    flags[GIVEN_FIRST, asker], flags[GIVEN_LAST, asker], flags[GIVEN_STEP, asker] = keep, last, step
    _store_release(flags[READY], asker, 1)
    _store_release(flags[REQUEST], lane, 0)
    return keep


@cached_njit(nogil=True, inline="always")
def steal(flags, lane, steps):
    """For a lane that has finished its rows: ask the lane with the most row-steps left for
    some. Returns (first, last, step, ns waited): rows first…last-1 are this lane's from
    ``step`` on; first == last when no lane has MIN_STEPS_TO_SPLIT steps and 2 rows left."""
    start = _monotonic_ns()
    while True:
        victim, most = -1, 0
        for other in range(flags.shape[1]):
            left = steps - _load_acquire(flags[PROGRESS], other)
            rows = _load_acquire(flags[ROWS], other)
            if other != lane and left >= MIN_STEPS_TO_SPLIT and rows >= 2 and left * rows > most:
                victim, most = other, left * rows
        if victim < 0 or failed(flags, lane):
            return 0, 0, steps, _monotonic_ns() - start
        _store_release(flags[READY], lane, 0)
        if _compare_exchange(flags[REQUEST], victim, 0, lane + 1) != 0:
            _sched_yield()  # it is closing, or another lane asked first: look again
            continue
        polls = 0
        while _load_acquire(flags[READY], lane) == 0:
            offer(flags, lane, 0, 0, steps, steps)  # asked meanwhile: nothing to give
            if failed(flags, lane):
                return 0, 0, steps, _monotonic_ns() - start
            polls += 1
            pause(polls)
        first, last = flags[GIVEN_FIRST, lane], flags[GIVEN_LAST, lane]
        if first < last:
            return first, last, flags[GIVEN_STEP, lane], _monotonic_ns() - start


@cached_njit(nogil=True, inline="always")
def close(flags, lane):
    """Take no more requests (answering one that came meanwhile with nothing)."""
    publish(flags, ROWS, lane, 0)
    while True:
        held = _compare_exchange(flags[REQUEST], lane, 0, CLOSED)
        if held == 0 or held == CLOSED:
            return
        offer(flags, lane, 0, 0, 0, 0)
