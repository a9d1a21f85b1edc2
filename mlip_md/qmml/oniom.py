"""Subtractive ONIOM with a fixed region, for high levels that give only a total energy.

    E = E_low(all) + E_high(cluster) - E_low(cluster)

``cluster`` = the region's atoms (a FIXED list of indices, so E is one smooth function) plus
optional hydrogen link atoms, cut out as an isolated molecule: every region atom is placed at the
minimum image of its vector from the first region atom (the region must stay smaller than half
the cell). Any ASE calculator with energy and forces can be high or low (tblite GFN2-xTB, pyscf,
EMT, LAMMPS, an mlip_md model); per-atom energies are not needed.

Link and buffer handling:

* Metals and other non-covalent systems: no link atoms. The region's surface atoms see a
  vacuum in both E_high(cluster) and E_low(cluster), and the subtraction cancels that error to
  the extent that high and low agree on surfaces; make the region a few neighbour shells larger
  than the part you care about (a buffer) so that the atoms of interest are far from the cut.
* Covalent bonds cut by the region boundary (Q inside, M outside): ``links=[(q, m), ...]`` adds a
  link atom (``link_element``, default H) at r_L = r_Q + g (r_M - r_Q) with the fixed ratio
  ``g`` (``link_ratio``, default 0.709 = d(C-H) / d(C-C)); its force is passed on by the chain rule,
  F_Q += (1 - g) F_L, F_M += g F_L, so energy is conserved. The link atom is in the cluster of
  both E_high and E_low.

Forces: F = F_low(all) + F_high(cluster) - F_low(cluster) mapped back; virial
W = W_low(all) + sum_k r_k (x) (F_high,k - F_low,k) over cluster atoms (eV); stress = -W^T / V.
"""
from __future__ import annotations

import time
from typing import Sequence, Tuple

import ase
import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from ..errors import HybridSetupError
from .region import minimum_image


class ONIOMCalculator(Calculator):
    """ASE calculator: subtractive two-layer ONIOM (see the module docstring).

    Parameters
    ----------
    high, low: ASE calculators (energy and forces; low also stress for stress results).
    region: atom indices of the high-level region (fixed for the calculator's lifetime).
    links: (q, m) pairs, q in the region and m outside, for bonds the region boundary cuts.
    link_element, link_ratio: element and fixed ratio g of the link atoms.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, high: Calculator, low: Calculator, region: Sequence[int],
                 links: Sequence[Tuple[int, int]] = (), link_element: str = "H", link_ratio: float = 0.709, **kwargs):
        super().__init__(**kwargs)
        self.high, self.low = high, low
        self.region = np.asarray(region, dtype=np.int64).reshape(-1)
        if self.region.size == 0 or len(np.unique(self.region)) != self.region.size:
            raise HybridSetupError("the ONIOM region needs a non-empty list of distinct atom indices")
        self.links = np.asarray(links, dtype=np.int64).reshape(-1, 2)
        if np.isin(self.links[:, 1], self.region).any() or not np.isin(self.links[:, 0], self.region).all():
            raise HybridSetupError("each link (q, m) needs q inside the region and m outside it")
        if not 0.0 < link_ratio < 1.0:
            raise HybridSetupError(f"link_ratio must lie in (0, 1), got {link_ratio}")
        self.link_number = ase.data.atomic_numbers[link_element]
        self.link_ratio = float(link_ratio)
        self.seconds = {"high": 0.0, "low": 0.0}

    @classmethod
    def sphere(cls, high, low, atoms: ase.Atoms, centre_atom: int, radius: float, **kwargs) -> "ONIOMCalculator":
        """Region = atoms within ``radius`` (Å, minimum image) of ``centre_atom`` in ``atoms`` now."""
        d = minimum_image(atoms.positions - atoms.positions[centre_atom], atoms.cell.array, atoms.pbc)
        region = np.flatnonzero(np.linalg.norm(d, axis=1) < radius)
        return cls(high, low, region, **kwargs)

    def cluster(self, atoms: ase.Atoms) -> ase.Atoms:
        """The isolated cluster: region atoms unwrapped around the first one, then link atoms."""
        if self.region.max() >= len(atoms) or (self.links.size and self.links.max() >= len(atoms)):
            raise HybridSetupError(f"the ONIOM region refers to atoms beyond the structure's {len(atoms)}")
        pos = atoms.positions
        ref = pos[self.region[0]]
        inner = ref + minimum_image(pos[self.region] - ref, atoms.cell.array, atoms.pbc)
        numbers = list(atoms.numbers[self.region])
        positions = [inner]
        if self.links.size:
            slot = {int(a): k for k, a in enumerate(self.region)}
            q = inner[[slot[int(a)] for a in self.links[:, 0]]]
            m = q + minimum_image(pos[self.links[:, 1]] - pos[self.links[:, 0]], atoms.cell.array, atoms.pbc)
            positions.append(q + self.link_ratio * (m - q))
            numbers += [self.link_number] * len(self.links)
        return ase.Atoms(numbers=numbers, positions=np.concatenate(positions), pbc=False)

    def _run(self, calc: Calculator, atoms: ase.Atoms, name: str, stress: bool):
        start = time.perf_counter()
        atoms = atoms.copy()
        atoms.calc = calc
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        s = atoms.get_stress(voigt=False) if stress else None
        self.seconds[name] += time.perf_counter() - start
        return energy, forces, s

    def calculate(self, atoms=None, properties=("energy",), system_changes=tuple(all_changes)) -> None:
        super().calculate(atoms, properties, system_changes)
        a = self.atoms
        periodic = bool(a.pbc.all()) and a.cell.rank == 3
        e_all, f_all, s_all = self._run(self.low, a, "low", periodic and "stress" in properties)
        cl = self.cluster(a)
        e_hi, f_hi, _ = self._run(self.high, cl, "high", False)
        e_lo, f_lo, _ = self._run(self.low, cl, "low", False)
        df = f_hi - f_lo
        n_region = len(self.region)
        forces = f_all.copy()
        forces[self.region] += df[:n_region]
        if self.links.size:
            f_link = df[n_region:]
            np.add.at(forces, self.links[:, 0], (1.0 - self.link_ratio) * f_link)
            np.add.at(forces, self.links[:, 1], self.link_ratio * f_link)
        energy = e_all + e_hi - e_lo
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}
        if s_all is not None:
            volume = a.get_volume()
            virial = -s_all * volume + cl.positions.T @ df
            self.results["stress"] = full_3x3_to_voigt_6_stress(-virial.T / volume)


def total_energy_only(calc: Calculator) -> Calculator:
    """Wrap ``calc`` so that it reports energy and forces only (as a QM code does): for tests and
    to make sure a high level's per-atom energies are not used."""

    class TotalEnergyOnly(Calculator):
        implemented_properties = ["energy", "free_energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=tuple(all_changes)):
            super().calculate(atoms, properties, system_changes)
            b = self.atoms.copy()
            b.calc = calc
            self.results = {"energy": b.get_potential_energy(), "free_energy": b.get_potential_energy(),
                            "forces": b.get_forces()}

    return TotalEnergyOnly()


