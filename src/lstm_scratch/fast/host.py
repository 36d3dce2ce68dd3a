"""How the compiled path shares this process's cores and memory: the size at which a step
is large, OpenBLAS's idle threads, the threads of the step lanes and of BLAS, and malloc's
handling of freed blocks. Imported by ``lstm_scratch`` before NumPy, so it imports no NumPy.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

SMALL_STEP = 2**20  # multiply-adds of one step's recurrent GEMM, B·4H·H


def is_small_step(batch: int, hidden: int) -> bool:
    return batch * 4 * hidden * hidden <= SMALL_STEP


BLAS_IDLE_POLL = 20  # OpenBLAS's idle threads poll for work 2^20 cycles (~0.4 ms), then sleep
_blas_idle_poll_short = False  # whether OpenBLAS was loaded with it (see shorten_blas_idle_poll)
_blas = None  # a threadpoolctl controller of the BLAS libraries, made on first use


def shorten_blas_idle_poll() -> None:
    """Called on importing lstm_scratch, before it imports NumPy: unless set, sets
    OPENBLAS_THREAD_TIMEOUT so that OpenBLAS's idle threads stop polling for new work about
    0.4 ms after a call (by default they poll, holding a core, for 2^28 cycles, ~0.1 s).

    The step lanes (``step_lanes``) run right after BLAS calls, on the same cores: with the
    default, one layer's forward at H 256, B 64, T 100 on two lanes takes twice as long right
    after a 1024² GEMM (85-90 against 44-46 ms).
    OpenBLAS reads the variable once, when NumPy loads it; where NumPy was imported first
    without it, the lanes keep to one thread."""
    global _blas_idle_poll_short
    variable = "OPENBLAS_THREAD_TIMEOUT"
    if "numpy" not in sys.modules:
        os.environ.setdefault(variable, str(BLAS_IDLE_POLL))
    value = os.environ.get(variable, "")
    _blas_idle_poll_short = value.isdigit() and int(value) <= BLAS_IDLE_POLL + 2


def step_lanes() -> int:
    """Threads for a large step's time loop (``lanes.py``): as many as OpenBLAS may use now
    (threadpoolctl), so a limit set for BLAS (by training under MPI, or by a user) holds for
    the lanes too. One where another thread would share a core with OpenBLAS's polling threads
    (another BLAS, or OpenBLAS loaded before ``shorten_blas_idle_poll``), or where the lanes'
    barrier cannot yield its core (sched_yield: Linux and macOS only)."""
    global _blas
    if not _blas_idle_poll_short or platform.system() not in ("Linux", "Darwin"):
        return 1
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController().select(user_api="blas")
    libraries = _blas.lib_controllers
    if not libraries or any(library.internal_api != "openblas" for library in libraries):
        return 1
    return max(1, min(library.get_num_threads() for library in libraries))


def blas_threads(batch: int, hidden: int) -> int | None:
    """BLAS threads for training at this size: 1 for small steps, where a second thread only
    adds synchronisation (2.5x slower at H 25, B 1), else BLAS's own default."""
    return 1 if is_small_step(batch, hidden) else None


LARGE_WEIGHTS = 4 * 2**20  # bytes; above this, generation streams weights from beyond L2


def generation_blas_threads(weight_bytes: int) -> int | None:
    """BLAS threads for generating one character at a time. Each character reads every weight
    once, so a model larger than the cores' caches is memory-bound and two threads double the
    bandwidth (2 layers of 512: 488 µs per character, 1348 on one); below, one thread."""
    return None if weight_bytes > LARGE_WEIGHTS else 1


KEEP_FREED = 512 * 2**20  # bytes of freed memory malloc keeps for reuse (see keep_freed_memory)
OLD_GLIBC_MMAP_MAX = 32 * 2**20  # the largest mmap threshold glibc <= 2.34 accepts (64-bit)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory(limit: int = KEEP_FREED) -> bool:
    """Ask glibc's malloc to keep freed blocks up to ``limit`` bytes for reuse by this process.

    A training step allocates its activations afresh (tens of MB at H 256, B 64) and frees them
    at its end. By default glibc serves such blocks with mmap, or trims the heap once enough is
    free, and hands the pages back to the kernel: the next step then page-faults every 4 KiB of
    them in again, zeroed: at H 256, B 64, T 100, 3,700 page faults and 28 ms of kernel time
    per step (155 ms a step, 114 with this set). Whether it happens depends on
    the order of allocations, so it is set once, for the process, by the training entry points;
    the price is that the process keeps up to ``limit`` bytes it has freed. glibc up to 2.34
    refuses an mmap threshold above 32 MiB: then 32 MiB is used. Returns False, changing
    nothing, where malloc is not glibc's.
    """
    if not 0 < limit < 2**31:
        raise ValueError(f"limit must be in (0, 2**31) bytes, got {limit}")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc is loaded in every Linux CPython
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # The mmap threshold first: setting either one stops glibc adjusting the other.
    if not mallopt(_M_MMAP_THRESHOLD, limit):
        limit = min(limit, OLD_GLIBC_MMAP_MAX)
        if not mallopt(_M_MMAP_THRESHOLD, limit):
            return False
    return bool(mallopt(_M_TRIM_THRESHOLD, limit))
