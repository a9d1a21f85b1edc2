"""MPI parallel evaluation: centre atoms split across the ranks of a communicator.

Rank 0 (the one talking to the MD engine) calls :meth:`ParallelPredictor.predict`; every other
rank sits in :meth:`ParallelPredictor.serve`. Per step rank 0 broadcasts the structure, each
rank evaluates its contiguous block of centre atoms (all neighbours are visible to every rank,
so the model's strict locality makes the blocks independent), and the partial forces, virial,
energies and per-atom values are summed. The result equals one rank to round-off.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from .backend import WrappedEvaluator
from .predictor import Prediction, Predictor

_EVALUATE, _STOP = 1, 0


def block_slice(n: int, size: int, rank: int) -> slice:
    """Rank ``rank``'s contiguous share of ``n`` items over ``size`` ranks (sizes differ by <= 1)."""
    bounds = np.linspace(0, n, size + 1).round().astype(int)
    return slice(int(bounds[rank]), int(bounds[rank + 1]))


def broadcast_structure(comm, header: np.ndarray, numbers, positions, cell, pbc):
    """Rank 0: broadcast ``header`` (int64, the command first) and one structure (Å, ASE cell
    rows); returns (numbers int64 [N], positions float64 [N, 3], cell [3, 3], pbc bool [3])."""
    numbers = np.ascontiguousarray(numbers, dtype=np.int64)
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    geometry = np.concatenate([np.asarray(cell, dtype=np.float64).reshape(9),
                               np.broadcast_to(np.asarray(pbc, dtype=np.float64), (3,))])
    for array in (header, numbers, positions, geometry):
        comm.Bcast(array, root=0)
    return numbers, positions, geometry[:9].reshape(3, 3), geometry[9:] > 0.5


def receive_structure(comm, n_atoms: int):
    """Ranks > 0: the structure that follows a header from :func:`broadcast_structure`."""
    numbers = np.empty(n_atoms, dtype=np.int64)
    positions = np.empty((n_atoms, 3), dtype=np.float64)
    geometry = np.empty(12, dtype=np.float64)
    for array in (numbers, positions, geometry):
        comm.Bcast(array, root=0)
    return numbers, positions, geometry[:9].reshape(3, 3), geometry[9:] > 0.5


class ParallelPredictor(WrappedEvaluator):
    """Wraps a :class:`Predictor` with an mpi4py communicator (``comm.size`` may be 1); an
    :class:`~mlip_md.runtime.backend.Evaluator` on rank 0."""

    def __init__(self, predictor: Predictor, comm):
        super().__init__(predictor)
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self._header = np.zeros(4, dtype=np.int64)  # command, n_atoms, monitors, force_sigma

    @property
    def model(self):
        return self.predictor.model

    def block(self, n_atoms: int, rank: Optional[int] = None) -> slice:
        """The centre atoms of ``rank``: contiguous, sizes differing by at most one."""
        return block_slice(n_atoms, self.size, self.rank if rank is None else rank)

    # ------------------------------------------------------------------ rank 0
    def predict(self, numbers, positions, cell, pbc, monitors: bool = True, force_sigma: bool = False) -> Prediction:
        if self.size == 1:
            return self.predictor.predict(numbers, positions, cell, pbc, monitors, force_sigma)
        self._header[:] = (_EVALUATE, len(numbers), int(monitors), int(force_sigma))
        structure = broadcast_structure(self.comm, self._header, numbers, positions, cell, pbc)
        return self._evaluate_and_reduce(*structure, monitors, force_sigma)

    def shutdown(self) -> None:
        """Release the serving ranks (call once on rank 0 when done)."""
        if self.size > 1 and self.rank == 0:
            self._header[:] = (_STOP, 0, 0, 0)
            self.comm.Bcast(self._header, root=0)

    # ------------------------------------------------------------------ ranks > 0
    def serve(self) -> None:
        """Evaluate blocks until rank 0 calls :meth:`shutdown`."""
        while True:
            self.comm.Bcast(self._header, root=0)
            command, n, monitors, force_sigma = (int(v) for v in self._header)
            if command == _STOP:
                return
            self._evaluate_and_reduce(*receive_structure(self.comm, n), bool(monitors), bool(force_sigma))

    # ------------------------------------------------------------------ both
    def _evaluate_and_reduce(self, numbers, positions, cell, pbc, monitors, force_sigma) -> Optional[Prediction]:
        from mpi4py import MPI

        part = self.predictor.predict(numbers, positions, cell, pbc, monitors, force_sigma,
                                      centres=self.block(len(numbers)))

        def total(array: Optional[np.ndarray]) -> Optional[np.ndarray]:
            if array is None:
                return None
            array = np.ascontiguousarray(array, dtype=np.float64)
            result = np.empty_like(array)
            self.comm.Allreduce(array, result, op=MPI.SUM)
            return result

        summed = dataclasses.replace(
            part,
            energies=total(part.energies),
            forces=total(part.forces),
            virial=total(part.virial),
            stress=total(part.stress),
            energy_members=total(part.energy_members),
            energy_sigma=total(part.energy_sigma),
            mahalanobis=total(part.mahalanobis),
            d_min=total(part.d_min),
            energy_variance=total(part.energy_variance),
            force_sigma=total(part.force_sigma),
            min_distance=total(part.min_distance),
            min_distance_ratio=total(part.min_distance_ratio),
            features=None,  # not reduced: per-atom descriptors stay on their rank
            force_members=total(part.force_members),
            member_virials=total(part.member_virials),
        )
        summed.energy = float(summed.energies.sum())
        totals = summed.energy_members.sum(axis=1)
        k = len(totals)
        summed.energy_uncertainty = self.predictor.total_energy_uncertainty(totals, len(summed.energies))
        if summed.energy_variance is not None:
            summed.energy_uncertainty = float(np.sqrt(summed.energy_variance.sum()))
        if summed.force_members is not None:
            std = summed.force_members.std(axis=0, ddof=1) if k > 1 else np.zeros_like(summed.forces)
            summed.force_sigma = std * self.predictor.force_scale
        return summed


def launched_with_mpi() -> bool:
    """True when this process is one of several started by mpiexec/mpirun/srun."""
    import os

    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS"):
        value = os.environ.get(var)
        if value and value.isdigit() and int(value) > 1:
            return True
    return False


def world_communicator():
    """mpi4py's COMM_WORLD when started under MPI with several ranks, else None (no MPI init)."""
    if not launched_with_mpi():
        return None
    from mpi4py import MPI

    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None
