"""High and low level on separate MPI sub-communicators, run concurrently.

Under ``mpiexec -n P`` the world communicator is split: the last ``high_ranks`` ranks form the
high-level group, the others (rank 0 among them: it talks to the MD engine and combines) the
low-level group. Per evaluation rank 0 broadcasts the structure; every rank builds the same
plan (cluster carving, switch values: cheap and deterministic); the high group evaluates the high
level on the cluster, its centres split in contiguous blocks over the group's ranks, while the
low group evaluates the low level on the whole structure, atoms split likewise; one Allreduce
sums the packed parts (per-atom energies, weighted forces, virial) and rank 0 adds the switching
terms. Wall time per step is about max(high, low) rather than their sum; the result equals the
serial :class:`~mlip_md.qmml.hybrid.HybridModel` to round-off (the parts are summed in a
different order only when a group has several ranks).
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np

from ..errors import HybridSetupError
from ..runtime.parallel import block_slice, broadcast_structure, receive_structure
from .hybrid import HybridModel, HybridResult

_EVALUATE, _STOP = 1, 0


class HybridParallel:
    """A :class:`HybridModel` spread over ``comm`` (size >= 2); see the module docstring."""

    def __init__(self, model: HybridModel, comm, high_ranks: Optional[int] = None):
        size = comm.Get_size()
        if size < 2:
            raise HybridSetupError("HybridParallel needs at least 2 MPI ranks (one per level); use HybridModel serially")
        n_high = max(1, size // 2) if high_ranks is None else int(high_ranks)
        if not 1 <= n_high <= size - 1:
            raise HybridSetupError(f"high_ranks must be between 1 and {size - 1} for {size} ranks (rank 0 runs the low "
                             f"level), got {n_high}")
        self.model, self.comm = model, comm
        self.rank, self.size, self.n_high = comm.Get_rank(), size, n_high
        self.is_high = self.rank >= size - n_high
        self.group = comm.Split(1 if self.is_high else 0, self.rank)
        self._header = np.zeros(2, dtype=np.int64)
        self.timings = {"high": 0.0, "low": 0.0, "total": 0.0}  #: seconds of the last evaluation (rank 0)
        self.totals = {"high": 0.0, "low": 0.0, "total": 0.0}  #: accumulated seconds

    def evaluate(self, numbers, positions, cell, pbc) -> HybridResult:
        """Rank 0: one hybrid evaluation with every rank's help."""
        start = time.perf_counter()
        self._header[:] = (_EVALUATE, len(numbers))
        result = self._work(*broadcast_structure(self.comm, self._header, numbers, positions, cell, pbc))
        self.timings["total"] = time.perf_counter() - start
        for key in self.totals:
            self.totals[key] += self.timings[key]
        return result

    def serve(self) -> None:
        """Ranks > 0: evaluate parts until rank 0 calls :meth:`shutdown`."""
        while True:
            self.comm.Bcast(self._header, root=0)
            command, n = (int(v) for v in self._header)
            if command == _STOP:
                return
            self._work(*receive_structure(self.comm, n))

    def shutdown(self) -> None:
        """Rank 0: release the serving ranks."""
        if self.rank == 0:
            self._header[:] = (_STOP, 0)
            self.comm.Bcast(self._header, root=0)

    def _work(self, numbers, positions, cell, pbc) -> Optional[HybridResult]:
        from mpi4py import MPI

        n = len(numbers)
        plan = self.model.plan(numbers, positions, cell, pbc)
        m = len(plan.inner)
        # packed: e_high [m], e_low [n], forces [3n], virial [9]
        buf = np.zeros(m + n + 3 * n + 9)
        clock = np.zeros(2)
        start = time.perf_counter()
        if self.is_high:
            block = block_slice(m, self.group.Get_size(), self.group.Get_rank())
            part = self.model.high_part(plan, numbers, block)
            buf[block] = part.energies
            clock[0] = time.perf_counter() - start
        else:
            block = block_slice(n, self.group.Get_size(), self.group.Get_rank())
            part = self.model.low_part(plan, numbers, positions, cell, pbc, block)
            buf[m + block.start:m + block.stop] = part.energies
            clock[1] = time.perf_counter() - start
        buf[m + n:m + 4 * n] = part.forces.reshape(-1)
        buf[m + 4 * n:] = part.virial.reshape(-1)
        total = np.empty_like(buf)
        self.comm.Allreduce(buf, total, op=MPI.SUM)
        clocks = np.empty(2)
        self.comm.Allreduce(clock, clocks, op=MPI.MAX)
        if self.rank != 0:
            return None
        self.timings["high"], self.timings["low"] = float(clocks[0]), float(clocks[1])
        return self.model.combine(plan, numbers, cell, pbc, total[:m], total[m:m + n],
                                  total[m + n:m + 4 * n].reshape(n, 3), total[m + 4 * n:].reshape(3, 3))


class SerialHybrid:
    """:class:`HybridParallel`'s interface for one process: ``evaluate`` runs the model,
    ``serve`` and ``shutdown`` have nothing to do."""

    def __init__(self, model: HybridModel):
        self.model = model

    def evaluate(self, numbers, positions, cell, pbc) -> HybridResult:
        return self.model.evaluate(numbers, positions, cell, pbc)

    def serve(self) -> None:
        """Nothing to serve without other ranks."""

    def shutdown(self) -> None:
        """Nothing to release without other ranks."""


def hybrid_runner(model: HybridModel, comm=None, high_ranks: Optional[int] = None):
    """What evaluates ``model`` for an engine: :class:`HybridParallel` over ``comm`` when it has
    several ranks, else :class:`SerialHybrid`. Rank 0 calls ``evaluate`` and finally
    ``shutdown``; the other ranks call ``serve``."""
    if comm is not None and comm.Get_size() > 1:
        return HybridParallel(model, comm, high_ranks=high_ranks)
    return SerialHybrid(model)

