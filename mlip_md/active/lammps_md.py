"""Exploration MD in LAMMPS: the exported model as ``pair_style mlip`` (the plugin, see
:mod:`mlip_md.engines.lammps_plugin`), run in-process through the ``lammps`` Python module in blocks
of ``sample_every`` steps, each block's frame handed back to Python for the trigger.

Langevin NVT (``fix nve`` + ``fix langevin``), or Nosé-Hoover NPT (``fix npt ... iso``) for
3D-periodic bulk stages with a pressure. Units: LAMMPS metal (ps, bar) inside, converted here;
frames come back in the LAMMPS orientation of the cell (a rotation of the input, which leaves
energies and the monitors unchanged).
"""
from __future__ import annotations

from pathlib import Path

import ase
import numpy as np

from ..reference.lammps_potentials import lammps_frame


class LammpsTrajectory:
    """One trajectory of one stage. ``seed``: 1..9e8 (the range of LAMMPS' Marsaglia generator)."""

    def __init__(self, atoms: ase.Atoms, model_path: Path, stage, timestep_fs: float, friction: float, seed: int):
        from ..engines.lammps_module import import_lammps
        from ..engines.lammps_plugin import plugin_path

        lammps = import_lammps()
        if not atoms.pbc.all():
            raise ValueError("the LAMMPS exploration engine needs 3D-periodic cells (slabs with vacuum are fine)")
        self.symbols = atoms.get_chemical_symbols()
        elements = sorted(set(self.symbols))
        rotation, cell = lammps_frame(atoms.cell.array, atoms.pbc)
        scaled = np.linalg.solve(cell.T, (atoms.positions @ rotation).T).T % 1.0
        positions = scaled @ cell
        self.lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
        c = cell.tolist()
        self.lmp.commands_list([
            "units metal", "atom_style atomic", "atom_modify map array sort 0 0.0", "boundary p p p",
            f"region box prism 0 {c[0][0]!r} 0 {c[1][1]!r} 0 {c[2][2]!r} {c[1][0]!r} {c[2][0]!r} {c[2][1]!r}",
            f"create_box {len(elements)} box",
        ])
        types = [elements.index(s) + 1 for s in self.symbols]
        n = len(atoms)
        self.lmp.create_atoms(n, list(range(1, n + 1)), types, positions.ravel().tolist())
        masses = {s: float(m) for s, m in zip(self.symbols, atoms.get_masses())}
        for t, s in enumerate(elements, start=1):
            self.lmp.command(f"mass {t} {masses[s]!r}")
        temperature = float(stage.temperature_K)
        damp_ps = 1e-3 / max(friction, 1e-12)  # friction in 1/fs -> damping time in ps
        self.lmp.commands_list([
            f"plugin load {plugin_path(build=True)}",
            f"pair_style mlip {model_path} ood_warnings no",  # exploration leaves the domain on purpose
            "pair_coeff * * " + " ".join(elements),
            f"timestep {timestep_fs * 1e-3!r}",
            f"velocity all create {temperature!r} {seed} dist gaussian mom yes rot no",
        ])
        bulk_like = atoms.info.get("structure") in ("bulk", "vacancy", "divacancy")
        if stage.pressure_GPa is not None and bulk_like:
            bar = float(stage.pressure_GPa) * 1e4
            self.lmp.command(f"fix md all npt temp {temperature!r} {temperature!r} {100 * timestep_fs * 1e-3!r} "
                             f"iso {bar!r} {bar!r} {1000 * timestep_fs * 1e-3!r}")
        else:
            self.lmp.commands_list(["fix md all nve",
                                    f"fix thermostat all langevin {temperature!r} {temperature!r} {damp_ps!r} {seed}"])
        self.lmp.command("thermo_style custom step temp pe")
        self.info = dict(atoms.info)

    def run(self, steps: int) -> None:
        self.lmp.command(f"run {int(steps)} pre no post no" if self._started else f"run {int(steps)}")
        self._started = True

    _started = False

    def potential_energy(self) -> float:
        """eV, of the current frame (LAMMPS' own thermo ``pe``)."""
        return float(self.lmp.get_thermo("pe"))

    def frame(self) -> ase.Atoms:
        """The current configuration as ASE Atoms (LAMMPS orientation, ids in input order)."""
        box = self.lmp.extract_box()
        lo, hi, xy, yz, xz = np.array(box[0]), np.array(box[1]), box[2], box[3], box[4]
        length = hi - lo
        cell = np.array([[length[0], 0.0, 0.0], [xy, length[1], 0.0], [xz, yz, length[2]]])
        n = self.lmp.get_natoms()
        ids = np.array(self.lmp.numpy.extract_atom("id"))[:n]
        x = np.array(self.lmp.numpy.extract_atom("x"))[:n] - lo
        positions = np.empty_like(x)
        positions[ids - 1] = x
        atoms = ase.Atoms(self.symbols, positions=positions, cell=cell, pbc=True)
        atoms.info.update(self.info)
        return atoms

    def close(self) -> None:
        self.lmp.close()
