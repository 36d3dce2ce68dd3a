"""Data-parallel training over MPI: the one module that knows about mpi4py.

``mpiexec -n N lstm-scratch train …`` runs N copies. Each takes its rows of every global batch
(``--batch-size`` stays the global batch B; rank r gets rows ``rows_of(r)``, as even as B allows),
computes its gradients, and one in-place Allreduce of one flat buffer (all gradients and the loss)
sums them, each rank's share weighted by its rows, so every rank applies the same update and the
weights stay identical. Rank 0 alone prints, evaluates, decides when to stop (broadcast each
step) and writes checkpoints; the carried recurrent state is gathered to it for the checkpoint, so a
run saved under N ranks resumes under M. Without mpiexec, ``world()`` is a one-rank stand-in and
none of this costs anything.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time

import numpy as np

from lstm_scratch.errors import ConfigError

# variables that mpiexec (MPICH/Hydra, Open MPI, Slurm's PMI) sets in the processes it starts
_LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")


def mpi4py_available() -> bool:
    return importlib.util.find_spec("mpi4py") is not None


def launched_by_mpiexec() -> bool:
    return any(int(os.environ.get(v, "1") or 1) > 1 for v in _LAUNCHER_SIZE_VARIABLES)


class SingleProcess:
    """The one-rank stand-in: every collective is the identity."""

    rank, size, local_size = 0, 1, 1
    allreduce_seconds = 0.0  # time spent in Allreduce so far

    def rows_of(self, batch: int) -> tuple[int, int]:
        return 0, batch

    def allreduce_(self, buffer: np.ndarray) -> np.ndarray:
        return buffer

    def bcast(self, value):
        return value

    def gather_rows(self, local: np.ndarray, batch: int) -> np.ndarray:
        return local


class MPIWorld(SingleProcess):
    """MPI.COMM_WORLD through mpi4py's buffer interface (no pickling of arrays)."""

    def __init__(self):
        from mpi4py import MPI

        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        # ranks sharing this host (and its cores)
        self.local_size = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
        self.allreduce_seconds = 0.0

    def rows_of(self, batch: int, rank: int | None = None) -> tuple[int, int]:
        """Rank ``rank``'s rows [start, stop) of a global batch of ``batch`` rows."""
        rank = self.rank if rank is None else rank
        bounds = np.linspace(0, batch, self.size + 1).round().astype(int)
        return int(bounds[rank]), int(bounds[rank + 1])

    def allreduce_(self, buffer: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)
        self.allreduce_seconds += time.perf_counter() - started
        return buffer

    def bcast(self, value):
        return self.comm.bcast(value, root=0)

    def gather_rows(self, local: np.ndarray, batch: int) -> np.ndarray | None:
        """(…, b_r, H) per rank -> (…, B, H) on rank 0 (None elsewhere), rows in rank order."""
        moved = np.ascontiguousarray(np.moveaxis(local, -2, 0))  # (b_r, …, H)
        row_size = int(np.prod(moved.shape[1:]))
        shares = [self.rows_of(batch, r) for r in range(self.size)]
        counts = [(stop - start) * row_size for start, stop in shares]
        whole = None
        if self.rank == 0:
            whole = np.empty((batch, *moved.shape[1:]), dtype=local.dtype)  # (B, …, H)
        self.comm.Gatherv(moved, (whole, counts) if self.rank == 0 else None, root=0)
        return None if whole is None else np.ascontiguousarray(np.moveaxis(whole, 0, -2))


def world():
    """The MPI world when launched by mpiexec with more than one process, else one rank."""
    if not launched_by_mpiexec():
        return SingleProcess()
    if not mpi4py_available():
        raise ConfigError(
            'launched by mpiexec, but mpi4py is missing: pip install "lstm-scratch[mpi]" '
            "for data-parallel training (or run without mpiexec)"
        )
    return MPIWorld()


def abort_peers(code: int) -> None:
    """After an error on this rank: end every rank of the MPI job (they would otherwise wait in
    the next collective for ever). Nothing happens outside an MPI job of several processes."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and mpi.COMM_WORLD.Get_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        mpi.COMM_WORLD.Abort(code)


def blas_threads(comm, wanted: int | None) -> int | None:
    """BLAS threads per rank: ranks on one host share its cores, so never more than
    cores / local ranks (two ranks × two threads on two cores make GEMMs 10-60x slower)."""
    if comm.local_size == 1:
        return wanted
    share = max(1, (os.cpu_count() or 1) // comm.local_size)
    return share if wanted is None else min(wanted, share)


def sum_gradients(comm, grads: np.ndarray, loss: float, share: float) -> float:
    """Σ over ranks of share·grads (in place, in ``grads``) and of share·loss (returned): one
    Allreduce of one buffer holding both. ``share`` is this rank's weight in the global mean
    (its rows / B for a mean loss, 1 for a summed one). One rank: nothing to do."""
    if comm.size == 1:
        return loss
    buffer = np.empty(grads.size + 1, dtype=grads.dtype)  # (P + 1,) gradients, then the loss
    np.multiply(grads, grads.dtype.type(share), out=buffer[:-1])
    buffer[-1] = loss * share
    comm.allreduce_(buffer)
    grads[...] = buffer[:-1]
    return float(buffer[-1])
