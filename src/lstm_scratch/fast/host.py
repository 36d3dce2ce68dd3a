"""How the compiled path shares this process's cores and memory: the size at which a step
is large, OpenBLAS's idle threads, the threads of the step lanes and of BLAS, and malloc's
handling of freed blocks. It imports no NumPy.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import warnings

SMALL_STEP = 2**20  # multiply-adds of one step's recurrent GEMM, B·4H·H


def is_small_step(batch: int, hidden: int) -> bool:
    return batch * 4 * hidden * hidden <= SMALL_STEP


VECTOR_BITS = "LSTM_SCRATCH_VECTOR_BITS"  # 256 or 512: the kernel's vectors on any host (tests)


@functools.cache
def kernel_isa() -> str:
    """The vectors ``kernel.py`` is compiled for: "avx512" where the CPU has AVX-512F (512-bit
    vectors, 32 registers), else "avx2" (256-bit, 16 registers). LSTM_SCRATCH_VECTOR_BITS=256
    or 512 chooses either on any host: LLVM splits vectors wider than the CPU's into its own,
    so both run everywhere, with the same bits."""
    chosen = os.environ.get(VECTOR_BITS, "")
    if chosen in ("256", "512"):
        return "avx512" if chosen == "512" else "avx2"
    from llvmlite import binding

    return "avx512" if binding.get_host_cpu_features().get("avx512f") else "avx2"


BLAS_IDLE_POLL = 20  # OpenBLAS's idle threads poll for work 2^20 cycles (~0.4 ms), then sleep
_TIMEOUT = "OPENBLAS_THREAD_TIMEOUT"
_blas = None  # a threadpoolctl controller of the BLAS libraries, made on first use
_idle_poll_short: bool | None = None  # whether every OpenBLAS polls briefly; None: not yet known


def _short(timeout: int) -> bool:
    return 0 < timeout <= BLAS_IDLE_POLL + 2


def _timeout_reader(library: ctypes.CDLL):
    """The library's ``openblas_thread_timeout()`` (the variable as it read it, 0 for unset), or
    None where it has none."""
    timeout = getattr(library, "openblas_thread_timeout", None)
    if timeout is not None:
        timeout.restype = ctypes.c_uint
    return timeout


def shorten_blas_idle_poll(library: ctypes.CDLL) -> bool:
    """Have one loaded OpenBLAS's idle threads stop polling for new work about 0.4 ms after a
    call (2^20 cycles) instead of ~0.1 s (2^28, its default); True where they now do.

    The step lanes (``step_lanes``) run right after BLAS calls, on the same cores: with the
    default, one layer's forward at H 256, B 64, T 100 on two lanes takes twice as long right
    after a 1024² GEMM (85-90 against 44-46 ms), whatever was imported first. OpenBLAS reads
    OPENBLAS_THREAD_TIMEOUT when it loads and applies it when its threads start: where it was
    not set, the variable is set for one ``openblas_read_env()`` and removed at once (nothing
    is left for other code to see), and the threads are stopped (``blas_thread_shutdown_``,
    what OpenBLAS does before every fork); the next BLAS call starts them with the short poll.
    A value the user set is kept: one above 22 keeps the lanes to one thread. As before a
    fork, no other thread may be inside this OpenBLAS then: ``step_lanes`` calls this once per
    process, at the first large step."""
    timeout = _timeout_reader(library)
    read_env = getattr(library, "openblas_read_env", None)
    shutdown = getattr(library, "blas_thread_shutdown_", None)
    if timeout is None:
        return False
    if timeout() == 0 and read_env is not None and shutdown is not None:
        ours = _TIMEOUT not in os.environ  # else the user set it after OpenBLAS loaded
        if ours:
            os.environ[_TIMEOUT] = str(BLAS_IDLE_POLL)
        try:
            read_env()
        finally:
            if ours:
                del os.environ[_TIMEOUT]
        shutdown()
    return _short(timeout())


def _openblas_libraries() -> list | None:
    """threadpoolctl's controllers of the loaded BLAS libraries when all are OpenBLAS."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController().select(user_api="blas")
    libraries = _blas.lib_controllers
    if not libraries or any(library.internal_api != "openblas" for library in libraries):
        return None
    return libraries


def _settle_idle_poll(libraries) -> bool:
    """Once per process: every OpenBLAS's poll shortened, or a warning saying how to get it."""
    global _idle_poll_short
    if _idle_poll_short is None:
        _idle_poll_short = all(
            shorten_blas_idle_poll(ctypes.CDLL(library.filepath)) for library in libraries
        )
        if not _idle_poll_short:
            warnings.warn(
                "lstm_scratch: OpenBLAS's idle threads poll for ~0.1 s after each call here, "
                "so the step lanes keep to one thread; set OPENBLAS_THREAD_TIMEOUT=20 before "
                "starting Python for the full speed",
                RuntimeWarning,
                stacklevel=4,
            )
    return _idle_poll_short


def blas_idle_polls() -> list[int]:
    """OPENBLAS_THREAD_TIMEOUT as each loaded OpenBLAS uses it (0: unset, its default 2^28
    cycles), for reports."""
    polls = []
    for library in _openblas_libraries() or []:
        timeout = _timeout_reader(ctypes.CDLL(library.filepath))
        if timeout is not None:
            polls.append(int(timeout()))
    return polls


def step_lanes() -> int:
    """Threads for a large step's time loop (``lanes.py``): as many as OpenBLAS may use now
    (threadpoolctl), so a limit set for BLAS (by training under MPI, or by a user) holds for
    the lanes too. One where another thread would share a core with polling BLAS threads
    (another BLAS than OpenBLAS, or one whose poll ``shorten_blas_idle_poll`` could not
    shorten), or where the lanes' barrier cannot yield its core (sched_yield: Linux and macOS
    only)."""
    if platform.system() not in ("Linux", "Darwin"):
        return 1
    libraries = _openblas_libraries()
    if libraries is None or not _settle_idle_poll(libraries):
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
_kept = 0  # the limit last set by keep_freed_memory; KEEP_FREED where it cannot be set


def keep_freed_memory(limit: int = KEEP_FREED) -> bool:
    """Ask glibc's malloc to keep freed blocks up to ``limit`` bytes for reuse by this process.

    A training step allocates its activations afresh (tens of MB at H 256, B 64) and frees them
    at its end. By default glibc serves such blocks with mmap, or trims the heap once enough is
    free, and hands the pages back to the kernel: the next step then page-faults every 4 KiB of
    them in again, zeroed: at H 256, B 64, T 100, 3,700 page faults and 28 ms of kernel time
    per step (155 ms a step, 114 with this set). Whether it happens depends on
    the order of allocations, so it is set for the process: by the training entry points, and
    by ``keep_freed_memory_for`` on each layer call; the price is that the process keeps up to
    ``limit`` bytes it has freed. glibc up to 2.34 refuses an mmap threshold above 32 MiB: then
    32 MiB is used. Returns False, changing nothing, where malloc is not glibc's.
    """
    global _kept
    if not 0 < limit < 2**31:
        raise ValueError(f"limit must be in (0, 2**31) bytes, got {limit}")
    _kept = KEEP_FREED  # where it cannot be set, keep_freed_memory_for does not try again
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
    _kept = limit
    return bool(mallopt(_M_TRIM_THRESHOLD, limit))


def keep_freed_memory_for(size: int) -> None:
    """``keep_freed_memory`` for a call that allocates about ``size`` bytes: the limit raised
    to the power of two above (at most KEEP_FREED), never lowered, so that the library's LSTM
    reuses its last call's pages as training does (config b, forward + backward: 127,000
    chars/s with glibc's default, 210,000 with 8 MiB kept) while keeping no more than that."""
    if size > _kept:
        keep_freed_memory(min(KEEP_FREED, 1 << (size - 1).bit_length()))
