"""Training data: labelled structures (extxyz via ase.io) -> neighbour graphs -> batches.

Units: energies eV, forces eV/Å, stress eV/Å^3 (ASE convention), lengths Å.
"""
from __future__ import annotations

import dataclasses
import hashlib
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Union

import ase
import ase.io
import numpy as np
import torch

from ..errors import LabelledDataError, NonFiniteLabelsWarning
from ..neighbors import neighbor_list


@dataclasses.dataclass
class LabelledGraph:
    """One structure with its neighbour graph and reference labels (float64 tensors)."""

    numbers: torch.Tensor  # int64 [N]
    edge_index: torch.Tensor  # int64 [2, E]
    edge_vectors: torch.Tensor  # [E, 3] Å
    energy: float  # eV
    forces: torch.Tensor  # [N, 3] eV/Å
    stress: Optional[torch.Tensor]  # [3, 3] eV/Å^3 or None
    volume: float  # Å^3, 0 when not fully periodic

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])


@dataclasses.dataclass
class Batch:
    """Several graphs concatenated; atom and edge indices offset per structure."""

    numbers: torch.Tensor  # [N_total]
    edge_index: torch.Tensor  # [2, E_total]
    edge_vectors: torch.Tensor  # [E_total, 3]
    atom_structure: torch.Tensor  # [N_total] structure index of each atom
    edge_structure: torch.Tensor  # [E_total]
    n_atoms: torch.Tensor  # [B]
    energy: torch.Tensor  # [B]
    forces: torch.Tensor  # [N_total, 3]
    stress: torch.Tensor  # [B, 3, 3] (zeros where missing)
    has_stress: torch.Tensor  # [B] bool
    volume: torch.Tensor  # [B]

    @property
    def n_structures(self) -> int:
        return int(self.energy.shape[0])

    def to(self, dtype: torch.dtype, device: str = "cpu") -> "Batch":
        def conv(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)

        return Batch(**{f.name: conv(getattr(self, f.name)) for f in dataclasses.fields(self)})


#: how a user leaves out structures with non-finite labels (named in the errors)
DROP_HINT = "pass --drop-nonfinite (Python: read_structures(..., drop_nonfinite=True)) to leave such frames out"


def read_structures(path: Union[str, Path], index: str = ":", drop_nonfinite: bool = False) -> List[ase.Atoms]:
    """Read labelled structures; each must carry energy and forces (e.g. extxyz) and every label
    must be finite (see :func:`check_frames`; ``drop_nonfinite`` leaves such frames out with one
    :class:`NonFiniteLabelsWarning` listing them)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    frames = ase.io.read(path, index=index)
    if isinstance(frames, ase.Atoms):
        frames = [frames]
    return check_frames(list(frames), str(path), drop_nonfinite)


def missing_labels(atoms: ase.Atoms) -> Optional[str]:
    """Why ``atoms`` cannot be trained on for lack of labels (no energy, no forces), or None."""
    if atoms.calc is None:
        return "no energy/forces labels"
    for name, get in (("energy", atoms.get_potential_energy), ("forces", atoms.get_forces)):
        try:
            get()
        except Exception as exc:
            return f"no {name} label ({type(exc).__name__}: {exc})"
    return None


def _atom_list(indices: np.ndarray, shown: int = 5) -> str:
    text = ", ".join(str(int(i)) for i in indices[:shown])
    more = f" and {len(indices) - shown} more" if len(indices) > shown else ""
    return f"atom{'s' if len(indices) > 1 else ''} {text}{more}"


def nonfinite_labels(atoms: ase.Atoms) -> List[str]:
    """The NaN/inf values training would read from ``atoms``: energy, forces (which atoms),
    stress (fully periodic frames, where it is a training target), positions, cell. Empty when
    every value is finite. ``atoms`` must carry energy and forces (see :func:`missing_labels`)."""
    problems = []
    energy = float(atoms.get_potential_energy())
    if not np.isfinite(energy):
        problems.append(f"energy is {energy}")
    for name, values in (("forces", atoms.get_forces()), ("positions", atoms.positions)):
        bad = np.flatnonzero(~np.isfinite(np.asarray(values, dtype=float)).all(axis=1))
        if bad.size:
            problems.append(f"{name} of {_atom_list(bad)} are not finite")
    stress = _stress_or_none(atoms)
    if stress is not None and not np.isfinite(stress).all():
        problems.append("stress is not finite")
    if not np.isfinite(atoms.cell.array).all():
        problems.append("cell is not finite")
    return problems


def check_frames(frames: Sequence[ase.Atoms], source: str, drop_nonfinite: bool = False) -> List[ase.Atoms]:
    """``frames`` if every one carries finite energy and forces (and stress where used).

    A frame without energy or forces raises :class:`LabelledDataError`. Frames with non-finite
    values raise it too, naming every such frame (counted from 0, as ``ase.io.read(path, index=k)``)
    and the label at fault, or, with ``drop_nonfinite``, are left out with one
    :class:`NonFiniteLabelsWarning` listing them. ``source`` names the data in messages.
    """
    frames = list(frames)
    bad = []
    for k, atoms in enumerate(frames):
        reason = missing_labels(atoms)
        if reason is not None:
            raise LabelledDataError(
                f"{source}: frame {k} (counted from 0) has {reason}; label it (extxyz: energy=... in the "
                "comment line and a forces column in Properties) or remove it")
        problems = nonfinite_labels(atoms)
        if problems:
            bad.append((k, problems))
    if not bad:
        return frames
    details = "; ".join(f"frame {k}: {', '.join(p)}" for k, p in bad[:10])
    more = f"; {len(bad) - 10} more" if len(bad) > 10 else ""
    listing = f"({details}{more}; frames counted from 0)"
    ids = ", ".join(str(k) for k, _ in bad[:50]) + (", ..." if len(bad) > 50 else "")
    which = f"{len(bad)} of {len(frames)} frames"
    plural = "s" if len(bad) > 1 else ""
    if not drop_nonfinite:
        raise LabelledDataError(f"{source}: non-finite values in {which} {listing}; remove frame{plural} {ids} "
                                f"or {DROP_HINT}")
    if len(bad) == len(frames):
        raise LabelledDataError(f"{source}: non-finite values in every frame {listing}; nothing left to use")
    warnings.warn(f"{source}: left out {which} with non-finite values: frame{plural} {ids} {listing}",
                  NonFiniteLabelsWarning, stacklevel=2)
    dropped = {k for k, _ in bad}
    return [atoms for k, atoms in enumerate(frames) if k not in dropped]


def dataset_hash(frames: Sequence[ase.Atoms]) -> str:
    """SHA-256 over numbers, positions, cell, pbc and labels (provenance of a model)."""
    h = hashlib.sha256()
    for atoms in frames:
        for arr in (atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(np.float64(atoms.get_potential_energy()).tobytes())
        h.update(np.ascontiguousarray(atoms.get_forces()).tobytes())
    return h.hexdigest()


def _stress_or_none(atoms: ase.Atoms) -> Optional[np.ndarray]:
    if not atoms.pbc.all():
        return None
    try:
        return atoms.get_stress(voigt=False)
    except Exception:
        return None


def to_graph(atoms: ase.Atoms, cutoff: float) -> LabelledGraph:
    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff, vectors=True)
    stress = _stress_or_none(atoms)
    return LabelledGraph(
        numbers=torch.as_tensor(atoms.numbers, dtype=torch.long),
        edge_index=torch.stack([torch.as_tensor(nl.i), torch.as_tensor(nl.j)]),
        edge_vectors=torch.as_tensor(nl.vectors, dtype=torch.float64),
        energy=float(atoms.get_potential_energy()),
        forces=torch.as_tensor(atoms.get_forces(), dtype=torch.float64),
        stress=None if stress is None else torch.as_tensor(stress, dtype=torch.float64),
        volume=float(abs(np.linalg.det(atoms.cell.array))) if atoms.pbc.all() else 0.0,
    )


def collate(graphs: Sequence[LabelledGraph]) -> Batch:
    offsets = np.cumsum([0] + [g.n_atoms for g in graphs[:-1]])
    return Batch(
        numbers=torch.cat([g.numbers for g in graphs]),
        edge_index=torch.cat([g.edge_index + int(o) for g, o in zip(graphs, offsets)], dim=1),
        edge_vectors=torch.cat([g.edge_vectors for g in graphs]),
        atom_structure=torch.cat(
            [torch.full((g.n_atoms,), k, dtype=torch.long) for k, g in enumerate(graphs)]
        ),
        edge_structure=torch.cat(
            [torch.full((g.edge_index.shape[1],), k, dtype=torch.long) for k, g in enumerate(graphs)]
        ),
        n_atoms=torch.tensor([g.n_atoms for g in graphs], dtype=torch.long),
        energy=torch.tensor([g.energy for g in graphs], dtype=torch.float64),
        forces=torch.cat([g.forces for g in graphs]),
        stress=torch.stack(
            [g.stress if g.stress is not None else torch.zeros(3, 3, dtype=torch.float64) for g in graphs]
        ),
        has_stress=torch.tensor([g.stress is not None for g in graphs]),
        volume=torch.tensor([g.volume for g in graphs], dtype=torch.float64),
    )
