"""Start structures of an active-learning run: fcc bulk, bulk with a vacancy, with two
neighbouring vacancies (divacancy), (111), (100) and (110) surface slabs (lengths in Å), and
the randomly distorted initial training set."""
from __future__ import annotations

from typing import Dict, List

import ase
import ase.data
import numpy as np
from ase.build import bulk, fcc100, fcc110, fcc111

from .config import SystemSection


def lattice_constant(system: SystemSection) -> float:
    if system.a > 0:
        return system.a
    z = ase.data.atomic_numbers[system.element]
    ref = ase.data.reference_states[z]
    if not ref or ref.get("symmetry") != "fcc":
        raise ValueError(f"[system] a: {system.element} is not fcc in ase.data; give the lattice constant a")
    return float(ref["a"])


def start_structures(system: SystemSection) -> Dict[str, ase.Atoms]:
    """name -> ideal structure for every entry of ``system.structures``."""
    a = lattice_constant(system)
    out: Dict[str, ase.Atoms] = {}
    for name in system.structures:
        if name in ("bulk", "vacancy", "divacancy"):
            atoms = bulk(system.element, "fcc", a=a, cubic=True).repeat(system.supercell)
            if name == "vacancy":
                del atoms[0]
            elif name == "divacancy":  # atom 0 and its nearest neighbour (a / sqrt 2 away)
                d = atoms.get_distances(0, range(1, len(atoms)), mic=True)
                del atoms[[0, 1 + int(np.argmin(d))]]
        else:
            build = {"surface111": fcc111, "surface100": fcc100, "surface110": fcc110}[name]
            atoms = build(system.element, size=tuple(system.slab_size), a=a, vacuum=system.vacuum, periodic=True)
        atoms.info["structure"] = name
        out[name] = atoms
    return out


def distorted(atoms: ase.Atoms, rng: np.random.Generator, rattle: float, strain: float) -> ase.Atoms:
    """A copy with a random symmetric strain (|e_ij| <= strain) and Gaussian displacements
    (std ``rattle`` Å)."""
    out = atoms.copy()
    e = rng.uniform(-strain, strain, (3, 3))
    out.set_cell(out.cell.array @ (np.eye(3) + 0.5 * (e + e.T)), scale_atoms=True)
    out.positions += rng.normal(scale=rattle, size=out.positions.shape)
    return out


def initial_structures(system: SystemSection, n: int, rattle: float, strain: float, seed: int) -> List[ase.Atoms]:
    """``n`` distorted copies of the start structures, cycling through them."""
    rng = np.random.default_rng([seed, 7])
    starts = list(start_structures(system).values())
    return [distorted(starts[k % len(starts)], rng, rattle, strain) for k in range(n)]
