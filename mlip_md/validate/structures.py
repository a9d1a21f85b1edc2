"""Structures for the validation workflows: crystal supercells, vacancy cells, the default
nearest-neighbour vacancy hop, equilibrium lattice constants and relaxations.

Units: Å, eV, eV/Å. Every function takes any ASE calculator.

Lattices: ``fcc``, ``bcc``, ``sc``, ``diamond`` (cubic conventional cell, ``a`` = cubic lattice
constant) and ``hcp`` (orthorhombic 4-atom cell, ``a`` = basal lattice constant, c/a fixed at
ASE's reference value for the element or the ideal sqrt(8/3)).

Relaxations use :class:`ase.optimize.BFGS` to ``fmax`` (default 1e-3 eV/Å, energies converged to
well below 0.1 meV); ``volume=True`` also relaxes the cell isotropically (FrechetCellFilter with
``hydrostatic_strain=True``, zero pressure).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.data import atomic_numbers, reference_states
from ase.geometry import find_mic

from .common import LATTICE_NAMES, RELAX_FMAX

#: lattices the workflows can build, with the nearest-neighbour distance in units of ``a``
LATTICES = {"fcc": 1 / np.sqrt(2), "bcc": np.sqrt(3) / 2, "sc": 1.0, "diamond": np.sqrt(3) / 4, "hcp": 1.0}
assert tuple(LATTICES) == LATTICE_NAMES


@dataclasses.dataclass
class RelaxInfo:
    steps: int
    converged: bool
    fmax: float
    volume: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_lattice(lattice: str) -> str:
    lattice = lattice.lower()
    if lattice not in LATTICES:
        raise ValueError(f"unknown lattice {lattice!r}; known: {', '.join(LATTICES)}")
    return lattice


def _check_element(element: str) -> int:
    if element not in atomic_numbers:
        raise ValueError(f"unknown element {element!r}")
    return atomic_numbers[element]


def _c_over_a(element: str) -> float:
    state = reference_states[_check_element(element)] or {}
    if state.get("symmetry") == "hcp" and "c/a" in state:
        return float(state["c/a"])
    return float(np.sqrt(8.0 / 3.0))


def guess_lattice_constant(element: str, lattice: str) -> float:
    """A starting value for ``a`` from ASE's reference data (nearest-neighbour distance kept)."""
    lattice = _check_lattice(lattice)
    z = _check_element(element)
    state = reference_states[z] or {}
    sym = state.get("symmetry")
    if sym == lattice and "a" in state:
        return float(state["a"])
    if sym in LATTICES and sym != "hcp" and "a" in state:
        nn = state["a"] * LATTICES[sym]
    elif sym == "hcp" and "a" in state:
        nn = state["a"]
    else:
        from ase.data import covalent_radii

        nn = 2.0 * covalent_radii[z]
    return float(nn / LATTICES[lattice])


def unit_cell(element: str, lattice: str, a: float) -> Atoms:
    lattice = _check_lattice(lattice)
    _check_element(element)
    if a <= 0:
        raise ValueError(f"lattice constant must be positive, got {a}")
    if lattice == "hcp":
        return bulk(element, "hcp", a=a, c=a * _c_over_a(element), orthorhombic=True)
    return bulk(element, lattice, a=a, cubic=True)


def perfect_cell(element: str, lattice: str, a: float, supercell: int) -> Atoms:
    """The ``supercell`` x ``supercell`` x ``supercell`` repeat of the conventional cell."""
    if int(supercell) < 1:
        raise ValueError(f"supercell must be a positive integer, got {supercell}")
    atoms = unit_cell(element, lattice, a).repeat(int(supercell))
    atoms.pbc = True
    return atoms


def vacancy_cell(perfect: Atoms, site: int = 0) -> Atoms:
    """``perfect`` with atom ``site`` removed."""
    atoms = perfect.copy()
    del atoms[site]
    return atoms


def hop_endpoints(perfect: Atoms, site: int = 0, neighbour: Optional[int] = None) -> Tuple[Atoms, Atoms, int]:
    """Unrelaxed end points of a nearest-neighbour vacancy hop.

    The vacancy sits on ``site`` of ``perfect``; the atom jumping into it is ``neighbour`` (an
    index into ``perfect``; default: the lowest-index nearest neighbour of ``site``). Returns
    ``(initial, final, j)`` with the same atom order in both, ``j`` the hopping atom's index in
    them; in ``final`` it sits on the vacant site (the image next to its initial position).
    """
    d = perfect.get_distances(site, range(len(perfect)), mic=True)
    d[site] = np.inf
    nn = np.flatnonzero(d < d.min() + 1e-3)
    if neighbour is None:
        neighbour = int(nn[0])
    elif neighbour not in nn:
        raise ValueError(f"atom {neighbour} is not a nearest neighbour of site {site}")
    initial = vacancy_cell(perfect, site)
    j = neighbour - (1 if neighbour > site else 0)
    final = initial.copy()
    vec, _ = find_mic(perfect.positions[site] - perfect.positions[neighbour], perfect.cell, perfect.pbc)
    final.positions[j] = perfect.positions[neighbour] + vec
    return initial, final, j


def relax(atoms: Atoms, calc, fmax: float = RELAX_FMAX, steps: int = 2000, volume: bool = False) -> Tuple[Atoms, RelaxInfo]:
    """Relax a copy of ``atoms`` with ``calc`` (positions, or positions + isotropic volume).

    Returns the relaxed copy (with ``calc`` attached) and a :class:`RelaxInfo`.
    """
    from ase.optimize import BFGS

    out = atoms.copy()
    out.calc = calc
    target = out
    if volume:
        from ase.filters import FrechetCellFilter

        target = FrechetCellFilter(out, hydrostatic_strain=True, scalar_pressure=0.0)
    opt = BFGS(target, logfile=None, maxstep=0.1)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    return out, RelaxInfo(steps=int(opt.nsteps), converged=converged, fmax=float(fmax), volume=bool(volume))


def equilibrium_lattice_constant(calc, element: str, lattice: str, supercell: int = 1, xatol: float = 1e-5) -> float:
    """Lattice constant minimising the energy of the perfect crystal (bounded Brent in ``a``,
    +-15 % around :func:`guess_lattice_constant`; hcp at fixed c/a). ``supercell`` repeats the
    conventional cell (so short-ranged and cutoff-limited calculators see the same cell as
    later)."""
    from scipy.optimize import minimize_scalar

    guess = guess_lattice_constant(element, lattice)
    n = None

    def energy(a: float) -> float:
        nonlocal n
        atoms = perfect_cell(element, lattice, a, supercell)
        n = len(atoms)
        atoms.calc = calc
        return atoms.get_potential_energy() / n

    res = minimize_scalar(energy, bounds=(0.85 * guess, 1.15 * guess), method="bounded",
                          options={"xatol": xatol})
    a = float(res.x)
    if min(abs(a - 0.85 * guess), abs(a - 1.15 * guess)) < 1e-3 * guess:
        raise ValueError(f"no energy minimum of {element} {lattice} within +-15 % of a = {guess:.3f} Å "
                         f"(found a = {a:.4f} Å at the bound); give --a explicitly")
    return a


def path_displacements(images) -> np.ndarray:
    """Minimum-image displacement vectors between consecutive images, shape [M-1, N, 3]."""
    out = []
    for a, b in zip(images[:-1], images[1:]):
        d, _ = find_mic(b.positions - a.positions, a.cell, a.pbc)
        out.append(d)
    return np.array(out)
