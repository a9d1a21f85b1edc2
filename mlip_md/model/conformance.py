"""Conformance check of a model file against the model contract (docs/model-contract.md).

``validate_model(path)`` runs physics checks on a rattled test crystal made of the model's
elements and returns a report; ``mlip-md check m.pt`` prints it and exits non-zero on failure.

Checks: output keys/shapes, forces = -dE/dr (central differences), stress = (1/V) dE/dstrain,
rotation / translation / permutation invariance, independence of edge order, ghost atoms
(explicit periodic images as non-local atoms give the periodic result, as in LAMMPS),
supercell consistency (E(2x2x2) = 8 E), smoothness when a neighbour crosses the cutoff, and,
for models with a short-range repulsion (:mod:`mlip_md.model.repulsion`), forces = -dE/dr inside
its switch region and below it and a repulsive wall, for every element pair.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, List, Optional, Union

import ase
import ase.data
import numpy as np
import torch
from ase.build import bulk
from scipy.spatial.transform import Rotation

from ..neighbors import neighbor_list
from ..runtime.backend import ModelBackend
from ..runtime.factory import load_model
from ..runtime.predictor import Predictor

#: absolute tolerances per dtype: (energy eV, force eV/Å, stress eV/Å^3, invariance eV); for the
#: repulsion region relative ones (fd_relative) with their finite-difference step (fd_step, Å)
TOLERANCES = {
    torch.float64: {"fd_force": 1e-6, "fd_stress": 1e-7, "energy": 1e-9, "force": 1e-9, "smooth": 1e-6,
                    "fd_relative": 1e-7, "fd_step": 1e-5},
    torch.float32: {"fd_force": 5e-2, "fd_stress": 5e-3, "energy": 2e-3, "force": 2e-4, "smooth": 2e-3,
                    "fd_relative": 2e-2, "fd_step": 1e-2},
}


@dataclasses.dataclass
class Check:
    name: str
    passed: bool
    value: float
    tolerance: float
    detail: str = ""


@dataclasses.dataclass
class ValidationReport:
    model: str
    checks: List[Check]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failures(self) -> List[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        return {"model": self.model, "passed": self.passed, "checks": [dataclasses.asdict(c) for c in self.checks]}

    def table(self) -> str:
        width = max([34] + [len(c.name) for c in self.checks])
        lines = [f"conformance of {self.model}", f"{'check':<{width}} {'result':<6} {'value':>11} {'tolerance':>11}"]
        for c in self.checks:
            lines.append(
                f"{c.name:<{width}} {'PASS' if c.passed else 'FAIL':<6} {c.value:>11.3e} {c.tolerance:>11.1e}"
                + (f"  {c.detail}" if c.detail else "")
            )
        lines.append("all checks passed" if self.passed else f"{len(self.failures())} check(s) FAILED")
        return "\n".join(lines)


def test_structure(model: ModelBackend, seed: int = 0) -> ase.Atoms:
    """A rattled, slightly sheared fcc crystal of the model's elements (random occupation)."""
    numbers = model.atomic_numbers
    d_train = model.info.domain.closest_training_distance() or 0.0
    d_cov = max(2 * ase.data.covalent_radii[z] for z in numbers)
    nearest = max(1.12 * d_train, d_cov, 1.0)
    atoms = bulk("Cu", "fcc", a=nearest * np.sqrt(2), cubic=True).repeat((2, 2, 2))
    rng = np.random.default_rng(seed)
    atoms.numbers = rng.choice(numbers, size=len(atoms))
    cell = atoms.cell.array @ (np.eye(3) + 0.02 * rng.uniform(-1, 1, (3, 3)))
    atoms.set_cell(cell, scale_atoms=True)
    atoms.positions += rng.normal(scale=0.04 * nearest, size=atoms.positions.shape)
    return atoms


class _Checker:
    def __init__(self, model: ModelBackend, atoms: ase.Atoms):
        self.model = model
        self.predictor = Predictor(model)
        self.atoms = atoms
        self.tol = TOLERANCES[model.dtype]
        self.checks: List[Check] = []

    def add(self, name: str, value: float, tolerance: float, detail: str = "") -> None:
        self.checks.append(Check(name, bool(np.isfinite(value) and value <= tolerance), float(value), tolerance, detail))

    def run(self, name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # a crashing check is a failed check, with the reason
            self.checks.append(Check(name, False, float("nan"), 0.0, f"{type(exc).__name__}: {exc}"))

    def energy(self, atoms: ase.Atoms) -> float:
        return self.predictor.predict_atoms(atoms, monitors=False).energy

    # ------------------------------------------------------------------ checks
    def contract(self) -> None:
        atoms = self.atoms
        n = len(atoms)
        nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, self.model.cutoff)
        ei = torch.from_numpy(np.stack([nl.i, nl.j]))
        out = self.model(torch.from_numpy(atoms.numbers), ei, torch.from_numpy(nl.vectors), n, True, True)
        k, e = self.model.ensemble_size, ei.shape[1]
        expected = {
            "atomic_energy": (n,),
            "edge_grad": (e, 3),
            "energy_members": (k, n),
            "features": (n, self.model.info.n_features if self.model.info.n_features is not None
                         else out["features"].shape[1]),
            "energy_sigma": (n,),
            "mahalanobis": (n,),
            "min_distance": (n,),
            "min_distance_ratio": (n,),
        }
        if self.model.info.uq == "evidential":
            expected.update(energy_variance=(n,), force_sigma=(n, 3))
        else:
            expected["member_edge_grad"] = (k, e, 3)
        bad = [f"{key}: {tuple(out[key].shape) if key in out else 'missing'} != {shape}"
               for key, shape in expected.items() if key not in out or tuple(out[key].shape) != shape]
        mean_gap = float((out["energy_members"].mean(0) - out["atomic_energy"]).abs().max())
        self.add("contract: output keys and shapes", float(len(bad)), 0.0, "; ".join(bad))
        self.add("contract: atomic_energy = member mean", mean_gap, self.tol["energy"])

    def finite_difference_forces(self, h: float = 1e-4) -> None:
        atoms = self.atoms.copy()
        forces = self.predictor.predict_atoms(atoms, monitors=False).forces
        rng = np.random.default_rng(1)
        worst = 0.0
        for index in rng.choice(len(atoms), size=min(4, len(atoms)), replace=False):
            for axis in range(3):
                plus, minus = atoms.copy(), atoms.copy()
                plus.positions[index, axis] += h
                minus.positions[index, axis] -= h
                fd = -(self.energy(plus) - self.energy(minus)) / (2 * h)
                worst = max(worst, abs(fd - forces[index, axis]))
        self.add("forces = -dE/dr (central FD)", worst, self.tol["fd_force"], f"h={h} Å")

    def finite_difference_stress(self, h: float = 1e-5) -> None:
        atoms = self.atoms
        stress = self.predictor.predict_atoms(atoms, monitors=False).stress
        volume = atoms.get_volume()
        worst = 0.0
        for a in range(3):
            for b in range(3):
                energies = []
                for sign in (1, -1):
                    strain = np.eye(3)
                    strain[a, b] += sign * h / 2
                    strain[b, a] += sign * h / 2
                    if a == b:
                        strain[a, a] = 1 + sign * h
                    strained = atoms.copy()
                    strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
                    energies.append(self.energy(strained))
                fd = (energies[0] - energies[1]) / (2 * h) / volume
                worst = max(worst, abs(fd - stress[a, b]))
        self.add("stress = dE/dstrain / V (FD)", worst, self.tol["fd_stress"], f"h={h}")

    def rotation_translation(self) -> None:
        atoms = self.atoms
        base = self.predictor.predict_atoms(atoms, monitors=False)
        rot = Rotation.random(random_state=3).as_matrix()
        rotated = atoms.copy()
        rotated.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
        rotated.positions = atoms.positions @ rot.T
        pr = self.predictor.predict_atoms(rotated, monitors=False)
        self.add("rotation: energy invariant", abs(pr.energy - base.energy), self.tol["energy"] * len(atoms))
        self.add("rotation: forces covariant", float(np.abs(pr.forces - base.forces @ rot.T).max()), self.tol["force"] * 10)
        moved = atoms.copy()
        moved.positions += np.array([0.31, -1.7, 2.9])
        pt = self.predictor.predict_atoms(moved, monitors=False)
        self.add("translation: energy invariant", abs(pt.energy - base.energy), self.tol["energy"] * len(atoms))

    def permutation(self) -> None:
        atoms = self.atoms
        base = self.predictor.predict_atoms(atoms, monitors=False)
        order = np.random.default_rng(4).permutation(len(atoms))
        pp = self.predictor.predict_atoms(atoms[order], monitors=False)
        gap = max(float(np.abs(pp.energies - base.energies[order]).max()), float(np.abs(pp.forces - base.forces[order]).max()))
        self.add("permutation: atoms relabelled", gap, self.tol["force"] * 10)

    def edge_order_and_ghosts(self) -> None:
        atoms = self.atoms
        n = len(atoms)
        nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, self.model.cutoff)
        species = torch.from_numpy(atoms.numbers)
        ei = torch.from_numpy(np.stack([nl.i, nl.j]))
        vec = torch.from_numpy(nl.vectors)
        ref = self.model(species, ei, vec, n, False, False)
        order = torch.from_numpy(np.random.default_rng(5).permutation(ei.shape[1]))
        shuffled = self.model(species, ei[:, order], vec[order], n, False, False)
        gap = float((shuffled["atomic_energy"] - ref["atomic_energy"]).abs().max())
        gap = max(gap, float((shuffled["edge_grad"] - ref["edge_grad"][order]).abs().max()))
        self.add("edge order does not matter", gap, self.tol["force"] * 10)
        # ghosts: every periodic image neighbour becomes an explicit non-local atom
        image = np.any(nl.shifts != 0, axis=1)
        ghost_keys = {}
        j_new = nl.j.copy()
        ghost_numbers = []
        for e in np.flatnonzero(image):
            key = (int(nl.j[e]), *map(int, nl.shifts[e]))
            if key not in ghost_keys:
                ghost_keys[key] = n + len(ghost_keys)
                ghost_numbers.append(atoms.numbers[nl.j[e]])
            j_new[e] = ghost_keys[key]
        all_species = torch.from_numpy(np.concatenate([atoms.numbers, np.asarray(ghost_numbers, dtype=np.int64)]))
        ei_ghost = torch.from_numpy(np.stack([nl.i, j_new]))
        ghosted = self.model(all_species, ei_ghost, vec, n, False, False)
        gap = float((ghosted["atomic_energy"] - ref["atomic_energy"]).abs().max())
        self.add("ghost atoms give periodic result", gap, self.tol["energy"], f"{len(ghost_keys)} ghosts")

    def supercell(self) -> None:
        atoms = self.atoms
        base = self.predictor.predict_atoms(atoms, monitors=False)
        big = self.predictor.predict_atoms(atoms.repeat((2, 2, 2)), monitors=False)
        self.add("supercell: E(2x2x2) = 8 E", abs(big.energy - 8 * base.energy), self.tol["energy"] * 8 * len(atoms))

    def cutoff_smoothness(self) -> None:
        z = self.model.atomic_numbers[0]
        rc = self.model.cutoff
        def dimer(r: float) -> ase.Atoms:
            return ase.Atoms(numbers=[z, z], positions=[[0, 0, 0], [r, 0, 0]], pbc=False)
        far = self.energy(dimer(rc + 0.5))
        gaps = []
        for delta in (1e-2, 1e-3):
            gaps.append(abs(self.energy(dimer(rc - delta)) - far))
        # C^2: the energy change must vanish at least like delta^3
        ratio = gaps[1] / gaps[0] if gaps[0] > 0 else 0.0
        self.add("cutoff: E continuous at r_c", gaps[1], self.tol["smooth"], f"dE(1e-3)={gaps[1]:.1e} eV")
        self.add("cutoff: smooth (dE ~ delta^3)", ratio, 2e-2 if self.model.dtype == torch.float64 else 1.0,
                 "ratio dE(1e-3)/dE(1e-2), C^2 gives <= 1e-3")
        f = self.predictor.predict_atoms(dimer(rc - 1e-3), monitors=False).forces
        self.add("cutoff: force vanishes at r_c", float(np.abs(f).max()), self.tol["smooth"])

    def repulsion_region(self) -> None:
        """Dimers of every element pair inside the repulsion's switch (halfway between r_inner
        and r_outer) and below it (0.8 r_inner): the force equals -dE/dr (central differences,
        relative to the force: up to hundreds of eV/Å there), and the wall is repulsive
        (E(r_inner / 2) > E(r_outer))."""
        spec = self.model.info.repulsion
        numbers = spec.atomic_numbers or []
        direction = np.array([0.48, -0.64, 0.6])  # unit length, off the axes
        step = self.tol["fd_step"]
        worst, where, wall = 0.0, "", np.inf
        for a, za in enumerate(numbers):
            for b in range(a, len(numbers)):
                zb = numbers[b]
                r_in, r_out = float(spec.r_inner[a][b]), float(spec.r_outer[a][b])

                def dimer(r: float) -> ase.Atoms:
                    return ase.Atoms(numbers=[za, zb], positions=[[0, 0, 0], r * direction], pbc=False)

                for r in (0.5 * (r_in + r_out), 0.8 * r_in):
                    force = self.predictor.predict_atoms(dimer(r), monitors=False).forces[1] @ direction
                    fd = -(self.energy(dimer(r + step)) - self.energy(dimer(r - step))) / (2 * step)
                    error = abs(fd - force) / max(1.0, abs(force))
                    if error >= worst:
                        worst, where = error, f"{za}-{zb} at {r:.3f} Å: F = {force:.4g} eV/Å"
                wall = min(wall, self.energy(dimer(0.5 * r_in)) - self.energy(dimer(r_out)))
        self.add("repulsion: forces = -dE/dr (FD)", worst, self.tol["fd_relative"], f"relative; worst {where}")
        self.add("repulsion: wall E(r_in/2) > E(r_out)", 0.0 if wall > 0 else 1.0, 0.0,
                 f"smallest rise {wall:.4g} eV")


def validate_model(
    model: Union[str, Path, ModelBackend, None] = None,
    structure: Optional[ase.Atoms] = None,
) -> ValidationReport:
    """Run every conformance check on ``model`` (path, loaded backend, None = shipped model)."""
    if not isinstance(model, ModelBackend):
        model = load_model(model)
    atoms = structure if structure is not None else test_structure(model)
    checker = _Checker(model, atoms)
    checker.run("contract", checker.contract)
    checker.run("finite-difference forces", checker.finite_difference_forces)
    if atoms.pbc.all():
        checker.run("finite-difference stress", checker.finite_difference_stress)
        checker.run("supercell", checker.supercell)
        checker.run("ghost atoms", checker.edge_order_and_ghosts)
    checker.run("rotation/translation", checker.rotation_translation)
    checker.run("permutation", checker.permutation)
    checker.run("cutoff smoothness", checker.cutoff_smoothness)
    if model.info.repulsion is not None and model.info.repulsion.kind == "zbl":
        checker.run("repulsion region", checker.repulsion_region)
    return ValidationReport(str(model.path), checker.checks)
