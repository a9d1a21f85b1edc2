"""Energy-conserving QM/ML hybrid with smooth switching.

    E_hyb = sum_i [ s(r_i) E_i^high + (1 - s(r_i)) E_i^low ]
          = sum_i (1 - s_i) E_i^low + sum_i s_i E_i^high

r_i = |d_i|, d_i the minimum-image vector from the region centre c (:mod:`.region`) to atom i;
s = 1 inside r_inner, 0 beyond r_outer, C^2 or smoother between (:mod:`.switching`).

How each part is evaluated (forces are the exact gradient of E_hyb):

* low level: once on the whole (periodic) structure, every atom a centre with weight 1 - s_i;
  the level returns -d/dR sum_i (1 - s_i) E_i^low at fixed s (:mod:`.levels`);
* high level: only on a carved, non-periodic cluster (:mod:`.cluster`): the atoms and periodic
  images within r_outer + buffer of c, buffer >= the high level's cutoff. Only atoms with s_i > 0
  (r_i < r_outer) are centres, weight s_i; their whole environment lies in the cluster, so E_i^high
  is exact; forces on images add into the atom they are images of;
* switching terms: with Delta_i = E_i^high - E_i^low, d E_hyb / d d_i = Delta_i s'(r_i) d_i / r_i =: G_i;
  atom i gets -G_i and the atoms defining a moving centre get +a_k sum_i G_i (c = sum_k a_k r_k);
* virial W = W_low + W_high - sum_i d_i (x) G_i (eV); stress = -W^T / V (ASE sign, eV/Å^3), with a
  fixed centre taken as moving affinely with the cell.

The levels must share an energy zero per element, or Delta_i carries a constant that acts as a
spurious radial force in the shell: ``energy_shift`` = {Z: eV} is added to every E_i^high of
element Z, or ``"auto"`` sets it on the first evaluation to the mean of E^low - E^high over the
region's atoms of each element (then frozen, so the energy stays a fixed function).

Requirement: r_outer below half the smallest cell width, so no atom has two images with s > 0.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Union

import ase
import numpy as np

from ..errors import HybridSetupError
from .cluster import Cluster, carve
from .levels import Level, LevelResult, as_level
from .region import Region, region_from_spec
from .switching import Switch


@dataclasses.dataclass
class Plan:
    """Geometry of one evaluation: the cluster and the switching values."""

    centre: np.ndarray  #: [3] Å
    centre_atoms: np.ndarray  #: int64 [C] atoms defining the centre
    centre_coefficients: np.ndarray  #: [C] c = sum a_k r_k
    cluster: Cluster
    inner: np.ndarray  #: int64 [M] cluster indices with r < r_outer (the high level's centres)
    s: np.ndarray  #: [M] switch values of the inner cluster atoms
    ds: np.ndarray  #: [M] ds/dr, 1/Å
    s_atoms: np.ndarray  #: [N] switch value per original atom


@dataclasses.dataclass
class HybridResult:
    """One hybrid evaluation (N atoms). Energies eV, forces eV/Å, virial eV, stress eV/Å^3."""

    energy: float
    energies: np.ndarray  #: [N] s_i E_i^high + (1 - s_i) E_i^low
    forces: np.ndarray  #: [N, 3]
    virial: np.ndarray  #: [3, 3]
    stress: Optional[np.ndarray]  #: [3, 3] or None (not 3D periodic)
    switch: np.ndarray  #: [N] s_i
    energies_low: np.ndarray  #: [N] E_i^low
    energies_high: np.ndarray  #: [N] E_i^high + shift for atoms with s > 0, NaN elsewhere
    n_cluster: int  #: atoms (with images) the high level saw
    n_high_centres: int  #: atoms with s > 0


class HybridModel:
    """The hybrid energy and its exact gradient; shared by the ASE calculator, MPI and i-PI.

    Parameters
    ----------
    high, low: levels (see :func:`mlip_md.qmml.levels.as_level`: "emt", "mlip", a .pt path, an
        MLIPCalculator, an EMT calculator, or a Level).
    region: Region, atom index (int), point (3 floats) or dict (see :mod:`.region`).
    switch: a Switch, or (r_inner, r_outer) in Å with ``shape``.
    buffer: Å of cluster beyond r_outer; default and minimum: the high level's cutoff.
    energy_shift: {atomic number: eV} added to the high per-atom energies, or "auto".
    """

    def __init__(self, high, low, region, switch, *, shape: str = "smootherstep", buffer: Optional[float] = None,
                 energy_shift: Union[None, str, Dict[int, float]] = None, device: str = "cpu"):
        self.high: Level = as_level(high, device=device)
        self.low: Level = as_level(low, device=device)
        self.region: Region = region_from_spec(region)
        self.switch = switch if isinstance(switch, Switch) else Switch(*switch, shape=shape)
        self.buffer = self.high.cutoff if buffer is None else float(buffer)
        if self.buffer < self.high.cutoff:
            raise HybridSetupError(
                f"buffer {self.buffer} Å is smaller than the high level's cutoff {self.high.cutoff} Å: atoms near r_outer "
                "would miss neighbours in the cluster and their high-level energies would be wrong; use buffer >= cutoff")
        if energy_shift is not None and energy_shift != "auto" and not isinstance(energy_shift, dict):
            raise HybridSetupError(f"energy_shift must be None, 'auto' or {{Z: eV}}, got {energy_shift!r}")
        self.auto_shift = energy_shift == "auto"
        self.energy_shift: Dict[int, float] = {} if energy_shift in (None, "auto") else {
            int(k) if str(k).isdigit() else ase.data.atomic_numbers[str(k)]: float(v) for k, v in energy_shift.items()}

    @property
    def cluster_radius(self) -> float:
        return self.switch.r_outer + self.buffer

    # ------------------------------------------------------------------ pieces
    def plan(self, numbers, positions, cell, pbc) -> Plan:
        n = len(numbers)
        self.region.check(n)
        centre, atoms, coeff = self.region.centre(positions, cell, pbc)
        cluster = carve(positions, cell, pbc, centre, self.cluster_radius)
        inner = np.flatnonzero(cluster.distances < self.switch.r_outer)
        sources = cluster.source[inner]
        if len(np.unique(sources)) != len(sources):
            values, counts = np.unique(sources, return_counts=True)
            raise HybridSetupError(
                f"atom {int(values[counts > 1][0])} has two periodic images within r_outer = {self.switch.r_outer} Å of "
                "the region centre: r_outer must stay below half the smallest cell width; use a larger supercell "
                "or a smaller r_outer")
        s, ds, _ = self.switch(cluster.distances[inner])
        s_atoms = np.zeros(n)
        s_atoms[sources] = s
        return Plan(centre, atoms, coeff, cluster, inner, s, ds, s_atoms)

    def high_part(self, plan: Plan, numbers, block: Optional[slice] = None) -> LevelResult:
        """High level on the cluster, centres = the inner atoms (or a block of them): energies of
        those centres, forces mapped back onto the N original atoms."""
        centres, weights = plan.inner, plan.s
        if block is not None:
            centres, weights = centres[block], weights[block]
        c = plan.cluster
        res = self.high.evaluate(np.asarray(numbers)[c.source], c.positions, np.zeros((3, 3)), False, centres, weights)
        forces = np.zeros((len(numbers), 3))
        np.add.at(forces, c.source, res.forces)
        return LevelResult(res.energies, forces, res.virial)

    def low_part(self, plan: Plan, numbers, positions, cell, pbc, block: Optional[slice] = None) -> LevelResult:
        """Low level on the whole structure, every atom (or a block) a centre with weight 1 - s."""
        centres = np.arange(len(numbers))
        if block is not None:
            centres = centres[block]
        return self.low.evaluate(numbers, positions, cell, pbc, centres, 1.0 - plan.s_atoms[centres])

    def shift_per_atom(self, numbers: np.ndarray) -> np.ndarray:
        table = np.zeros(max(numbers.max(initial=0), max(self.energy_shift, default=0)) + 1)
        for z, v in self.energy_shift.items():
            table[z] = v
        return table[numbers]

    def combine(self, plan: Plan, numbers, cell, pbc, e_high: np.ndarray, e_low: np.ndarray, forces: np.ndarray,
                virial: np.ndarray) -> HybridResult:
        """Add the switching terms to the weighted level results. ``e_high`` [M] (inner cluster
        atoms), ``e_low`` [N]; ``forces`` and ``virial``: the sum of both weighted parts."""
        numbers = np.asarray(numbers, dtype=np.int64)
        src = plan.cluster.source[plan.inner]
        if self.auto_shift and not self.energy_shift:
            for z in np.unique(numbers[src]):
                mask = numbers[src] == z
                self.energy_shift[int(z)] = float(np.mean(e_low[src[mask]] - e_high[mask]))
        e_high = e_high + self.shift_per_atom(numbers[src])
        delta = e_high - e_low[src]
        s_atoms = plan.s_atoms
        energies = (1.0 - s_atoms) * e_low
        energies[src] += plan.s * e_high
        d = plan.cluster.vectors[plan.inner]
        r = plan.cluster.distances[plan.inner]
        unit = np.where(r[:, None] > 0, d / np.where(r > 0, r, 1.0)[:, None], 0.0)
        g = (delta * plan.ds)[:, None] * unit  # dE/dd_i
        forces = forces.copy()
        np.add.at(forces, src, -g)
        if plan.centre_atoms.size:
            np.add.at(forces, plan.centre_atoms, plan.centre_coefficients[:, None] * g.sum(axis=0))
        virial = virial - d.T @ g
        stress = None
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
        volume = abs(float(np.linalg.det(np.asarray(cell, dtype=np.float64).reshape(3, 3))))
        if pbc.all() and volume > 0:
            stress = -virial.T / volume
        high_full = np.full(len(numbers), np.nan)
        high_full[src] = e_high
        return HybridResult(float(energies.sum()), energies, forces, virial, stress, s_atoms.copy(), e_low.copy(),
                            high_full, len(plan.cluster.source), len(src))

    # ------------------------------------------------------------------ serial
    def evaluate(self, numbers, positions, cell, pbc) -> HybridResult:
        numbers = np.asarray(numbers, dtype=np.int64)
        positions = np.asarray(positions, dtype=np.float64)
        cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
        plan = self.plan(numbers, positions, cell, pbc)
        high = self.high_part(plan, numbers)
        low = self.low_part(plan, numbers, positions, cell, pbc)
        return self.combine(plan, numbers, cell, pbc, high.energies, low.energies, high.forces + low.forces,
                            high.virial + low.virial)

    def known_numbers(self) -> list:
        sets = [set(lv.known_numbers()) for lv in (self.high, self.low) if lv.known_numbers() is not None]
        return sorted(set.intersection(*sets)) if sets else []

    def describe(self) -> dict:
        return {"high": self.high.describe(), "low": self.low.describe(), "region": self.region.to_dict(),
                "r_inner": self.switch.r_inner, "r_outer": self.switch.r_outer, "shape": self.switch.shape,
                "buffer": self.buffer, "energy_shift": dict(self.energy_shift)}


def reference_shift(high, low, atoms: ase.Atoms) -> Dict[int, float]:
    """Per-element mean of E_i^low - E_i^high over ``atoms`` (a bulk reference): the energy_shift
    that puts both levels on the same energy zero."""
    high, low = as_level(high), as_level(low)
    n = len(atoms)
    args = (atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, np.arange(n), np.ones(n))
    diff = low.evaluate(*args).energies - high.evaluate(*args).energies
    return {int(z): float(diff[atoms.numbers == z].mean()) for z in np.unique(atoms.numbers)}
