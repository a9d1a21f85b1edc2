"""Evaluate a model on one structure: input checks, neighbour list, backend call,
assembly of forces / virial / stress, and the per-atom monitor values.

This is the single place where the Python engines (ASE calculator, i-PI driver, workflows)
turn positions into predictions. Units: Å, eV, eV/Å, eV/Å^3 (ASE stress sign).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Optional, Union

import ase
import ase.data
import numpy as np
import torch

from ..errors import InvalidStructureError
from ..model.assemble import (
    forces_and_virial,
    member_forces_from_edge_grad,
    stress_from_virial,
)
from ..neighbors import neighbor_list
from .backend import ModelBackend
from .factory import open_model
from .model_info import ModelInfo
from .neighbor_reuse import VerletList
from .request import EvaluationRequest

#: the request of a structure evaluation, by (monitors, force_sigma): made once, not per call
_REQUESTS = {(m, f): EvaluationRequest(monitors=m, force_sigma=f) for m in (False, True) for f in (False, True)}


@dataclasses.dataclass
class Prediction:
    """Results for one structure of N atoms with a K-member model. ``energy_members`` is None
    for an evaluator without a committee (the QM/ML hybrid: ``info.ensemble_size`` 0)."""

    energy: float  # eV
    energies: np.ndarray  # [N] eV (ensemble mean)
    forces: np.ndarray  # [N, 3] eV/Å
    virial: np.ndarray  # [3, 3] eV
    stress: Optional[np.ndarray]  # [3, 3] eV/Å^3, None unless periodic in 3D
    energy_members: Optional[np.ndarray] = None  # [K, N] eV; None: no committee
    energy_uncertainty: float = 0.0  # calibrated std of the total energy, eV
    energy_sigma: Optional[np.ndarray] = None  # [N] eV (calibrated)
    mahalanobis: Optional[np.ndarray] = None  # [N]
    d_min: Optional[np.ndarray] = None  # [N], kernel distance to the training reference set
    energy_variance: Optional[np.ndarray] = None  # [N] eV^2, calibrated (evidential heads)
    min_distance: Optional[np.ndarray] = None  # [N] Å
    min_distance_ratio: Optional[np.ndarray] = None  # [N]
    features: Optional[np.ndarray] = None  # [N, D]
    force_members: Optional[np.ndarray] = None  # [K, N, 3] eV/Å
    force_sigma: Optional[np.ndarray] = None  # [N, 3] eV/Å (calibrated)
    member_virials: Optional[np.ndarray] = None  # [K, 3, 3] eV

    @property
    def close_contacts(self) -> np.ndarray:
        """Indices of atoms closer to a neighbour than any pair seen in training."""
        if self.min_distance_ratio is None:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self.min_distance_ratio < 1.0)


def check_structure(numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray) -> None:
    """Raise InvalidStructureError for empty structures and non-finite coordinates."""
    if len(numbers) == 0:
        raise InvalidStructureError("the structure has no atoms; nothing to evaluate")
    if positions.shape != (len(numbers), 3):
        raise InvalidStructureError(f"positions must have shape [{len(numbers)}, 3], got {positions.shape}")
    bad = ~np.isfinite(positions).all(axis=1)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise InvalidStructureError(
            f"positions of atom(s) {idx[:10].tolist()} are NaN or infinite; the structure "
            "(or the MD run producing it) is broken — check the time step and the input"
        )
    if not np.isfinite(cell).all():
        raise InvalidStructureError("the cell contains NaN or infinite values")


class Predictor:
    """Evaluates a model on structures; holds the model backend and its calibration (an
    :class:`~mlip_md.runtime.backend.Evaluator`).

    ``model`` is a loaded backend, a path, or None for the shipped default model.
    """

    def __init__(self, model: Union[ModelBackend, str, Path, None] = None, device: str = "cpu",
                 skin: float = 0.0, compiled: Union[str, Path, None] = None, fused: Optional[bool] = None,
                 dtype: Optional[str] = None):
        """``skin`` (Å) > 0 reuses the neighbour list between calls
        (:class:`mlip_md.runtime.neighbor_reuse.VerletList`); ``compiled``, ``fused``, ``dtype``:
        which backend evaluates the model (:func:`mlip_md.runtime.factory.open_model`):
        ``compiled`` a ``.pt2`` package of ``model`` (``mlip-md compile``) to evaluate instead;
        ``fused`` the fused C++ descriptor kernel: None = when the model and device support it
        (not with ``compiled``), True = required (FusedModelError otherwise), False = never;
        ``dtype`` ("float32"/"float64", default: the file's) the precision the model runs in (a
        ``.pt2`` package has its own, fixed by ``mlip-md compile --dtype``)."""
        self.model = open_model(model, device=device, dtype=dtype, fused=fused, compiled=compiled)
        self.device = device
        self.verlet = VerletList(self.model.cutoff, skin) if skin > 0 else None
        calibration = self.model.info.calibration
        self.force_scale = float(np.sqrt(calibration.force_variance_scale))
        self.model_seconds = 0.0  # accumulated wall time inside the model call (profiling)
        self.energy_scale = float(np.sqrt(calibration.energy_variance_scale))
        self.energy_floor = float(calibration.energy_variance_floor)  # eV^2 per atom
        self._assembles = self.model.capabilities.assembles_forces

    @property
    def info(self) -> ModelInfo:
        """The model's :class:`~mlip_md.runtime.model_info.ModelInfo`."""
        return self.model.info

    def check_elements(self, numbers) -> None:
        """Raise UnknownElementError naming the elements of ``numbers`` the model does not know."""
        self.model.check_elements(numbers)

    def total_energy_uncertainty(self, member_totals: np.ndarray, n_atoms: int) -> float:
        """Calibrated std of a total energy (eV) from the members' totals [K] over ``n_atoms``
        centre atoms: sqrt(alpha var_K + floor * n_atoms)."""
        spread = member_totals.std(ddof=1) * self.energy_scale if len(member_totals) > 1 else 0.0
        return float(np.sqrt(spread**2 + self.energy_floor * n_atoms))

    @property
    def cutoff(self) -> float:
        return self.model.cutoff

    def predict_atoms(self, atoms: ase.Atoms, monitors: bool = True, force_sigma: bool = False) -> Prediction:
        return self.predict(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, monitors, force_sigma)

    def predict(
        self,
        numbers,
        positions,
        cell,
        pbc,
        monitors: bool = True,
        force_sigma: bool = False,
        centres: Optional[slice] = None,
    ) -> Prediction:
        """Evaluate one structure (Å, ASE cell rows). With ``centres`` = slice(a, b) only atoms
        a..b-1 are centres: energies and monitor values of the others are zero and forces /
        virial are this slice's contributions (summing the slices of all MPI ranks gives the
        full result, see :mod:`mlip_md.runtime.parallel`)."""
        numbers = np.asarray(numbers, dtype=np.int64)
        positions = np.asarray(positions, dtype=np.float64)
        cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
        check_structure(numbers, positions, cell)
        self.model.check_elements(numbers)
        try:
            if self.verlet is not None:
                nl = self.verlet.update(positions, cell, pbc, details=False)
                closest = self.verlet.min_distance
            else:
                nl = neighbor_list(positions, cell, pbc, self.cutoff, vectors=True, distances=True)
                closest = nl.distances.min(initial=np.inf)
        except ValueError as exc:
            raise InvalidStructureError(str(exc)) from exc
        if closest <= 1e-8:
            _raise_overlap(nl)
        n = len(numbers)
        start, stop = (0, n) if centres is None else centres.indices(n)[:2]
        if (start, stop) == (0, n):
            ij = self.verlet.edge_index if self.verlet is not None else np.stack([nl.i, nl.j])
            edge_index = torch.from_numpy(ij)
            vectors = torch.from_numpy(nl.vectors)
            out = self._call_model(torch.from_numpy(numbers), edge_index, vectors, n, monitors, force_sigma)
            return self._assemble(out, edge_index, vectors, n, cell, pbc, force_sigma)
        return self._predict_slice(numbers, nl, start, stop, cell, pbc, monitors, force_sigma)

    def _predict_slice(self, numbers, nl, start, stop, cell, pbc, monitors, force_sigma) -> Prediction:
        """Centres start..stop-1 only. The model contract wants the centres first, so atoms are
        relabelled [start..stop) + [0..start) + [stop..n); the neighbour list is sorted by i, so
        this slice's edges are one contiguous block."""
        n, n_local = len(numbers), stop - start
        lo, hi = np.searchsorted(nl.i, [start, stop])
        i = nl.i[lo:hi] - start
        j = nl.j[lo:hi]
        j = np.where(j < start, j + n_local, np.where(j < stop, j - start, j))
        order = np.concatenate([np.arange(start, stop), np.arange(0, start), np.arange(stop, n)])
        edge_index = torch.from_numpy(np.stack([i, j]))
        vectors = torch.from_numpy(np.ascontiguousarray(nl.vectors[lo:hi]))
        out = self._call_model(torch.from_numpy(numbers[order]), edge_index, vectors, n_local, monitors, force_sigma)
        part = self._assemble(out, edge_index, vectors, n, cell, pbc, force_sigma)
        return _unpermute(part, order, n_local)

    def _call_model(self, species, edge_index, vectors, n_local, monitors, force_sigma):
        """The backend's outputs for these edges, its wall time added to ``model_seconds``."""
        request = _REQUESTS[bool(monitors), bool(force_sigma)]
        start = time.perf_counter()
        out = self.model.evaluate(species, edge_index, vectors, n_local, request)
        self.model_seconds += time.perf_counter() - start
        return out

    def _assemble(self, out, edge_index, vectors, n, cell, pbc, force_sigma) -> Prediction:
        device = self.model.device
        edge_index = edge_index.to(device)
        vectors64 = vectors.to(device=device, dtype=torch.float64)
        if self._assembles:  # the backend returned forces [n, 3] and virial
            forces = out["forces"].to(torch.float64)
            virial = out["virial"].to(torch.float64)
        else:
            grad = out["edge_grad"].detach().to(torch.float64)
            forces, virial = forces_and_virial(grad, edge_index, vectors64, n)
        volume = abs(float(np.linalg.det(cell)))
        stress = None
        if bool(np.all(pbc)) and volume > 0:
            stress = stress_from_virial(virial, volume).cpu().numpy()
        members = out["energy_members"].detach().to(torch.float64).cpu().numpy()
        totals = members.sum(axis=1)
        energies = out["atomic_energy"].detach().to(torch.float64).cpu().numpy()
        pred = Prediction(
            energy=float(energies.sum()),
            energies=energies,
            forces=forces.cpu().numpy(),
            virial=virial.cpu().numpy(),
            stress=stress,
            energy_members=members,
            energy_uncertainty=self.total_energy_uncertainty(totals, len(energies)),
        )
        if "energy_variance" in out:  # evidential head: atoms independent, calibrated in the model
            pred.energy_variance = out["energy_variance"].detach().to(torch.float64).cpu().numpy()
            pred.energy_uncertainty = float(np.sqrt(pred.energy_variance.sum()))
        if force_sigma and "force_sigma" in out:
            pred.force_sigma = out["force_sigma"].detach().to(torch.float64).cpu().numpy()
        for key in ("energy_sigma", "mahalanobis", "d_min", "min_distance", "min_distance_ratio", "features"):
            if key in out:
                setattr(pred, key, out[key].detach().to(torch.float64).cpu().numpy())
        if force_sigma and "member_edge_grad" in out:
            member_grad = out["member_edge_grad"].detach().to(torch.float64)
            fm = member_forces_from_edge_grad(member_grad, edge_index, n)
            pred.force_members = fm.cpu().numpy()
            pred.member_virials = (-torch.einsum("ea,keb->kab", vectors64, member_grad)).cpu().numpy()
            k = pred.force_members.shape[0]
            std = pred.force_members.std(axis=0, ddof=1) if k > 1 else np.zeros_like(pred.forces)
            pred.force_sigma = std * self.force_scale
        return pred


def _raise_overlap(nl) -> None:
    """InvalidStructureError naming the closest pair of ``nl`` (vectors in Å)."""
    distances = np.linalg.norm(nl.vectors, axis=1)
    k = int(np.argmin(distances))
    raise InvalidStructureError(
        f"atoms {int(nl.i[k])} and {int(nl.j[k])} sit on top of each other (distance "
        f"{distances[k]:.2e} Å); remove the duplicate atom"
    )


def _unpermute(part: Prediction, order: np.ndarray, n_local: int) -> Prediction:
    """Map a slice prediction made in relabelled order back to the original atom order,
    zero-padding per-atom values of non-centre atoms."""
    n = len(order)

    def pad(values: Optional[np.ndarray]) -> Optional[np.ndarray]:
        if values is None:
            return None
        full = np.zeros((n,) + values.shape[1:], dtype=values.dtype)
        full[order[:n_local]] = values[:n_local]
        return full

    forces = np.empty_like(part.forces)
    forces[order] = part.forces
    members = np.zeros((part.energy_members.shape[0], n))
    members[:, order[:n_local]] = part.energy_members
    force_members = None
    if part.force_members is not None:
        force_members = np.empty_like(part.force_members)
        force_members[:, order] = part.force_members
    return dataclasses.replace(
        part,
        energies=pad(part.energies),
        forces=forces,
        energy_members=members,
        energy_sigma=pad(part.energy_sigma),
        mahalanobis=pad(part.mahalanobis),
        d_min=pad(part.d_min),
        energy_variance=pad(part.energy_variance),
        min_distance=pad(part.min_distance),
        min_distance_ratio=pad(part.min_distance_ratio),
        features=pad(part.features),
        force_members=force_members,
        force_sigma=pad(part.force_sigma) if part.force_members is None else None,  # recomputed from members
    )
