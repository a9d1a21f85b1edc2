"""Training data: labelled structures (extxyz via ase.io) -> neighbour graphs -> batches.

Units: energies eV, forces eV/Å, stress eV/Å^3 (ASE convention), lengths Å.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import List, Optional, Sequence, Union

import ase
import ase.io
import numpy as np
import torch

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


def read_structures(path: Union[str, Path], index: str = ":") -> List[ase.Atoms]:
    """Read labelled structures; each must carry energy and forces (e.g. extxyz)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    frames = ase.io.read(path, index=index)
    if isinstance(frames, ase.Atoms):
        frames = [frames]
    for k, atoms in enumerate(frames):
        if atoms.calc is None:
            raise ValueError(f"{path}: frame {k} has no energy/forces labels")
        try:
            atoms.get_potential_energy()
            atoms.get_forces()
        except Exception as exc:
            raise ValueError(f"{path}: frame {k} lacks energy or forces ({exc})") from exc
    return list(frames)


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
