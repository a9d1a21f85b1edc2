#!/usr/bin/env python
"""Generate the shipped Cu data set, labelled with the Mishin et al. (2001) Cu EAM.

    python examples/cu_dataset.py --out DIR [--seed 0] [--scale 1.0]

writes ``DIR/cu_train.extxyz``, ``DIR/cu_val.extxyz`` and ``DIR/cu_test.extxyz`` (energy,
forces and stress in ASE metal units, via SinglePointCalculator, plus ``info`` keys
``config_type``, ``temperature`` (K, 0 for static frames), ``supercell``, ``n_vacancies``,
``strain`` (Voigt xx yy zz yz xz xy), ``group`` (see below) and, for hops, ``hop_fraction``).

Reference: ``lammps:eam/alloy:Cu_mishin1.eam.alloy`` (a0 = 3.615 Å, E_coh = -3.54 eV,
E_f(vac) = 1.27 eV, E_m(vac) = 0.69 eV in Mishin et al., PRB 63, 224106 (2001)).

Contents (bulk crystal and point defects only; deliberately no surfaces):

* ``bulk``, ``strained_bulk``, ``vacancy``, ``divacancy`` MD snapshots at 300, 600, 900, 1200
  and 1500 K in 3x3x3 (108 sites) and 4x4x4 (256 sites) fcc supercells. The MD runs inside
  LAMMPS (velocity create, fix nve + fix langevin, dt = 2 fs, damping 0.1 ps), fixed cell
  (NVT), 1000 equilibration steps, then one snapshot every 80 steps. Strained cells use an
  isotropic strain in [-3, +3] % plus random normal/shear components, every component
  |eps_ij| <= 3 %.
* 0 K relaxed perfect, vacancy and divacancy cells at isotropic strains -3..+3 %, and rattled
  copies of them (temperature 0).
* ``vacancy_hop``: the nudged-elastic-band path of a nearest-neighbour vacancy jump (climbing
  image, relaxed with the reference) in several (strained) cells, each image with rattled
  copies, plus the hopping atom displaced linearly along its path (others relaxed) with
  rattles; ``hop_fraction`` is the image's fraction of the jump.

Split: ~80/10/10 by frames, by whole groups: a group is one MD trajectory, or one static
structure (relaxed cell or NEB image) together with its rattled copies; groups are assigned
per config_type with a fixed seed, so no trajectory is shared between splits.

Deterministic for a given --seed (single-process LAMMPS, seeded Langevin). --scale 0.1 gives a
small version (fewer trajectories and hop paths) for tests.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter, defaultdict

if __name__ == "__main__":
    # small dense algebra only: threaded BLAS just fights LAMMPS (and other jobs) for the cores
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402
from ase.data import atomic_masses, atomic_numbers  # noqa: E402

from mlip_md.engines.lammps_module import find_potential, import_lammps  # noqa: E402
from mlip_md.reference import lammps_frame, make_reference  # noqa: E402

SPEC = "lammps:eam/alloy:Cu_mishin1.eam.alloy"
A0 = 3.615
TEMPERATURES = (300, 600, 900, 1200, 1500)
DT_PS = 0.002
SAMPLE_EVERY = 80
PUBLISHED_EF = 1.27  # eV, Mishin et al. 2001 (relaxed vacancy formation energy)
PUBLISHED_EM = 0.69  # eV, Mishin et al. 2001 (vacancy migration energy)
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


# ------------------------------------------------------------------------------------------
# structures
# ------------------------------------------------------------------------------------------


def fcc_cell(n: int) -> Atoms:
    return bulk("Cu", "fcc", a=A0, cubic=True) * (n, n, n)


def voigt(eps: np.ndarray) -> list[float]:
    return [float(eps[0, 0]), float(eps[1, 1]), float(eps[2, 2]),
            float(eps[1, 2]), float(eps[0, 2]), float(eps[0, 1])]


def random_strain(rng: np.random.Generator) -> np.ndarray:
    """Isotropic part in [-3, 3] %, plus symmetric normal/shear noise; every |eps_ij| <= 3 %."""
    iso = rng.uniform(-0.03, 0.03)
    dev = rng.uniform(-0.015, 0.015, (3, 3))
    eps = iso * np.eye(3) + 0.5 * (dev + dev.T)
    return np.clip(eps, -0.03, 0.03)


def strained(atoms: Atoms, eps: np.ndarray) -> Atoms:
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    return out


def with_vacancies(atoms: Atoms, nvac: int, rng: np.random.Generator) -> Atoms:
    """Remove one random atom, or a random nearest-neighbour pair (divacancy)."""
    out = atoms.copy()
    i = int(rng.integers(len(out)))
    remove = [i]
    if nvac == 2:
        d = out.get_distances(i, range(len(out)), mic=True)
        nn = np.flatnonzero(np.abs(d - A0 / np.sqrt(2)) < 0.1)
        remove.append(int(rng.choice(nn)))
    del out[sorted(remove, reverse=True)]
    return out


# ------------------------------------------------------------------------------------------
# MD inside LAMMPS
# ------------------------------------------------------------------------------------------


class LammpsMD:
    """Minimal NVT (Langevin) MD of a Cu cell in a raw LAMMPS instance, fixed cell."""

    def __init__(self):
        lammps = import_lammps()
        self.lmp = lammps.lammps(cmdargs=["-screen", "none", "-log", "none", "-nocite"])
        self.pot = find_potential("Cu_mishin1.eam.alloy")
        self.steps = 0

    def run(self, atoms: Atoms, temperature: float, n_equil: int, n_samples: int,
            every: int, seed: int) -> list[np.ndarray]:
        """Return ``n_samples`` position arrays (ASE frame, wrapped)."""
        R, T = lammps_frame(atoms.cell.array, atoms.pbc)
        xl = atoms.positions @ R
        frac = np.linalg.solve(T.T, xl.T).T % 1.0
        frac[frac >= 1.0] = 0.0
        xl = frac @ T
        lmp = self.lmp
        lmp.command("clear")
        tilts = " ".join(repr(float(T[i, j])) for i, j in ((1, 0), (2, 0), (2, 1)))
        for cmd in ("units metal", "atom_style atomic", "atom_modify map array",
                    "boundary p p p",
                    f"region box prism 0 {float(T[0, 0])!r} 0 {float(T[1, 1])!r} "
                    f"0 {float(T[2, 2])!r} {tilts} units box",
                    "create_box 1 box"):
            lmp.command(cmd)
        n = len(atoms)
        created = lmp.create_atoms(n, list(range(1, n + 1)), [1] * n, xl.ravel().tolist())
        if created != n:
            raise RuntimeError(f"LAMMPS created {created} of {n} atoms")
        s1, s2 = (int(v) for v in np.random.default_rng(seed).integers(1, 900_000_000, 2))
        for cmd in (f"mass 1 {float(atomic_masses[atomic_numbers['Cu']])!r}",
                    "pair_style eam/alloy", f"pair_coeff * * {self.pot} Cu",
                    "neighbor 1.0 bin", "neigh_modify every 1 delay 0 check yes",
                    f"velocity all create {temperature} {s1} mom yes rot no dist gaussian",
                    "fix nve all nve",
                    f"fix lang all langevin {temperature} {temperature} 0.1 {s2} zero yes",
                    f"timestep {DT_PS}",
                    "thermo_style custom step temp pe", "thermo 0",
                    "thermo_modify lost error"):
            lmp.command(cmd)
        lmp.command(f"run {n_equil} post no")
        self.steps += n_equil
        out = []
        for _ in range(n_samples):
            lmp.command(f"run {every} pre no post no")
            self.steps += every
            ids = np.asarray(lmp.numpy.extract_atom("id")[:n]) - 1
            x = np.empty((n, 3))
            x[ids] = lmp.numpy.extract_atom("x")[:n]
            out.append(x @ R.T)
        return out


# ------------------------------------------------------------------------------------------
# labelling, relaxation, NEB
# ------------------------------------------------------------------------------------------


def label(atoms: Atoms, calc, **info) -> Atoms:
    """Copy of ``atoms`` with the reference's energy/forces/stress and the given info."""
    a = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True)
    a.wrap()
    a.calc = calc
    e = a.get_potential_energy()
    f = a.get_forces()
    s = a.get_stress()
    out = a.copy()
    out.calc = SinglePointCalculator(out, energy=e, forces=f.copy(), stress=s.copy())
    out.info.update(info)
    return out


def relax(atoms: Atoms, calc, fmax: float = 1e-3) -> Atoms:
    from ase.optimize import LBFGS

    a = atoms.copy()
    a.calc = calc
    opt = LBFGS(a, logfile=None)
    opt.run(fmax=fmax, steps=1000)
    a.calc = None
    return a


def neb_path(initial: Atoms, final: Atoms, calc, n_images: int) -> tuple[list[Atoms], float]:
    """Climbing-image NEB with the reference; returns (images incl. end points, barrier)."""
    from ase.mep import NEB
    from ase.optimize import FIRE

    images = [initial.copy()] + [initial.copy() for _ in range(n_images)] + [final.copy()]
    neb = NEB(images, climb=True, allow_shared_calculator=True, k=0.5,
              method="improvedtangent")
    neb.interpolate(mic=True)
    for im in images:
        im.calc = calc
    opt = FIRE(neb, logfile=None)
    opt.run(fmax=0.01, steps=2000)
    energies = [im.get_potential_energy() for im in images]
    out = []
    for im in images:
        c = im.copy()
        c.calc = None
        out.append(c)
    return out, max(energies) - energies[0]


def hop_endpoints(vac_relaxed: Atoms, perfect: Atoms, calc, rng) -> tuple[Atoms, Atoms, int]:
    """Relaxed initial/final states of a nearest-neighbour jump into the vacancy.

    Returns (initial, final, index of the hopping atom). The vacant site is found as the
    perfect-lattice site with no atom nearby.
    """
    from ase.geometry import get_distances

    sites = perfect.positions
    # minimum-image distances from each lattice site to every atom
    _, dist = get_distances(sites, vac_relaxed.positions, cell=perfect.cell, pbc=True)
    vac_site = int(np.argmax(dist.min(axis=1)))
    _, dv = get_distances(sites[vac_site], vac_relaxed.positions, cell=perfect.cell, pbc=True)
    nn = np.flatnonzero(dv[0] < 0.5 * (A0 / np.sqrt(2) + A0))
    j = int(rng.choice(nn))
    final = vac_relaxed.copy()
    # move atom j onto the vacant site (minimum image next to its own position)
    vec, _ = get_distances(vac_relaxed.positions[j], sites[vac_site], cell=perfect.cell, pbc=True)
    final.positions[j] = vac_relaxed.positions[j] + vec[0, 0]
    final = relax(final, calc)
    return vac_relaxed, final, j


# ------------------------------------------------------------------------------------------
# plan
# ------------------------------------------------------------------------------------------


def md_plan(scale: float) -> list[dict]:
    """Trajectory specs; at scale < 1 a subset spread over types and temperatures."""
    # (config_type, supercell, n_vac, strained?, n trajectories per T, frames per trajectory)
    table = [
        ("bulk", 3, 0, False, 1, 20),
        ("bulk", 4, 0, False, 1, 12),
        ("strained_bulk", 3, 0, True, 3, 18),
        ("strained_bulk", 4, 0, True, 1, 8),
        ("vacancy", 3, 1, False, 1, 20),
        ("vacancy", 3, 1, True, 3, 20),
        ("vacancy", 4, 1, False, 1, 12),
        ("vacancy", 4, 1, True, 1, 12),
        ("divacancy", 3, 2, False, 1, 15),
        ("divacancy", 3, 2, True, 1, 15),
        ("divacancy", 4, 2, False, 1, 10),
    ]
    by_type: dict[str, list[dict]] = defaultdict(list)
    t_order = (300, 1500, 900, 600, 1200)  # interleave so a subset spans the range
    for ctype, n, nvac, strain, ntraj, nframes in table:
        for k in range(ntraj):
            for ti, temp in enumerate(t_order):
                by_type[ctype].append(dict(config_type=ctype, supercell=n, n_vac=nvac,
                                           strained=strain, temperature=float(temp),
                                           frames=nframes, order=(k * 5 + ti, n)))
    for specs in by_type.values():
        specs.sort(key=lambda s: s["order"])
    total = sum(len(v) for v in by_type.values())
    if scale >= 1.0:
        n_keep = total
    else:
        n_keep = max(len(by_type), int(round(total * scale)))
    # round robin over config types; within a type take the spec whose temperature has been
    # used least so far (over all kept specs), so small subsets still span 300..1500 K
    plan, queues = [], [list(v) for v in by_type.values()]
    used: Counter = Counter()
    while len(plan) < n_keep and any(queues):
        for q in queues:
            if q and len(plan) < n_keep:
                pick = min(range(len(q)), key=lambda i: (used[q[i]["temperature"]], i))
                spec = q.pop(pick)
                used[spec["temperature"]] += 1
                plan.append(spec)
    for s in plan:
        s["frames"] = max(2, int(round(s["frames"] * min(1.0, max(scale, 0.5)))))
    return plan


def assign_splits(frames: list[Atoms], seed: int) -> dict[str, list[Atoms]]:
    """Greedy, per config_type: whole groups to the split furthest below its target."""
    rng = np.random.default_rng(seed + 7919)
    groups: dict[str, dict[str, list[Atoms]]] = defaultdict(lambda: defaultdict(list))
    for a in frames:
        groups[a.info["config_type"]][a.info["group"]].append(a)
    out = {k: [] for k in SPLIT_FRACTIONS}
    for ctype in sorted(groups):
        names = sorted(groups[ctype])
        names = [names[i] for i in rng.permutation(len(names))]
        count = {k: 0 for k in SPLIT_FRACTIONS}
        for g in names:
            size = len(groups[ctype][g])
            total = sum(count.values()) + size
            best = max(SPLIT_FRACTIONS, key=lambda k: SPLIT_FRACTIONS[k] * total - count[k])
            count[best] += size
            out[best].extend(groups[ctype][g])
    return out


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------


def generate(out_dir: str, seed: int = 0, scale: float = 1.0, verbose: bool = True) -> dict:
    t0 = time.time()
    rng = np.random.default_rng(seed)
    calc = make_reference(SPEC)
    frames: list[Atoms] = []
    log = print if verbose else (lambda *a, **k: None)

    # ---- reference sanity: vacancy formation and migration energies (4x4x4, relaxed) -----
    perfect4 = fcc_cell(4)
    perfect4.calc = calc
    e_bulk4 = perfect4.get_potential_energy()
    n4 = len(perfect4)
    vac4 = relax(with_vacancies(fcc_cell(4), 1, np.random.default_rng(seed)), calc)
    vac4.calc = calc
    e_f = vac4.get_potential_energy() - (n4 - 1) / n4 * e_bulk4
    vac4.calc = None

    # ---- MD trajectories ----------------------------------------------------------------
    md = LammpsMD()
    plan = md_plan(scale)
    n_equil = 1000 if scale >= 0.5 else 400
    t_md = time.time()
    for it, spec in enumerate(plan):
        base = fcc_cell(spec["supercell"])
        if spec["n_vac"]:
            base = with_vacancies(base, spec["n_vac"], rng)
        eps = random_strain(rng) if spec["strained"] else np.zeros((3, 3))
        cell_atoms = strained(base, eps)
        traj_seed = int(rng.integers(2**31))
        positions = md.run(cell_atoms, spec["temperature"], n_equil, spec["frames"],
                           SAMPLE_EVERY, traj_seed)
        group = f"md{it:03d}"
        for x in positions:
            a = cell_atoms.copy()
            a.positions = x
            frames.append(label(a, calc, config_type=spec["config_type"],
                                temperature=spec["temperature"],
                                supercell=spec["supercell"], n_vacancies=spec["n_vac"],
                                strain=voigt(eps), group=group))
    t_md = time.time() - t_md

    # ---- 0 K relaxed cells at isotropic strains, with rattled copies --------------------
    iso_strains = (-0.03, -0.02, -0.01, 0.0, 0.01, 0.02, 0.03) if scale >= 0.5 else (
        -0.03, 0.0, 0.03)
    n_rattle = 2 if scale >= 0.5 else 1
    static_specs = [("bulk", 3, 0), ("bulk", 4, 0), ("vacancy", 3, 1), ("vacancy", 4, 1)]
    static_specs += [("divacancy", 3, 2)]
    for ctype, n, nvac in static_specs:
        for e_iso in iso_strains:
            if ctype == "divacancy" and e_iso not in (-0.03, 0.0, 0.03):
                continue
            eps = e_iso * np.eye(3)
            a = strained(fcc_cell(n), eps)
            if nvac:
                a = relax(with_vacancies(a, nvac, rng), calc)
            ct = ctype if (ctype != "bulk" or e_iso == 0.0) else "strained_bulk"
            group = f"static_{ctype}{n}_{e_iso:+.2f}"
            info = dict(config_type=ct, temperature=0.0, supercell=n, n_vacancies=nvac,
                        strain=voigt(eps), group=group)
            frames.append(label(a, calc, **info))
            for r in range(n_rattle):
                b = a.copy()
                b.positions += rng.normal(0.0, 0.03 * (r + 1), b.positions.shape)
                frames.append(label(b, calc, **info))

    # ---- vacancy hops: NEB paths (+ rattles) and linear single-atom displacements -------
    hop_cells = [(3, np.zeros((3, 3))), (4, np.zeros((3, 3))), (3, 0.02 * np.eye(3)),
                 (3, -0.02 * np.eye(3)), (3, random_strain(rng)), (4, random_strain(rng))]
    if scale < 0.5:
        hop_cells = hop_cells[:1]
    n_images = 7 if scale >= 0.5 else 5
    barrier = None
    t_neb = time.time()
    for ip, (n, eps) in enumerate(hop_cells):
        perfect = strained(fcc_cell(n), eps)
        vac = relax(with_vacancies(perfect, 1, rng), calc)
        initial, final, j = hop_endpoints(vac, perfect, calc, rng)
        images, eb = neb_path(initial, final, calc, n_images)
        if n == 4 and not eps.any():
            barrier = eb
        elif barrier is None and ip == len(hop_cells) - 1:
            barrier = eb
        common = dict(config_type="vacancy_hop", temperature=0.0, supercell=n, n_vacancies=1,
                      strain=voigt(eps))
        for k, im in enumerate(images[1:-1], start=1):
            frac = k / (len(images) - 1)
            group = f"hop{ip}_img{k}"
            frames.append(label(im, calc, hop_fraction=frac, group=group, **common))
            for r in range(3 if scale >= 0.5 else 1):
                b = im.copy()
                b.positions += rng.normal(0.0, 0.02 * (r + 1), b.positions.shape)
                frames.append(label(b, calc, hop_fraction=frac, group=group, **common))
        # linear displacement of the hopping atom only (unrelaxed surroundings)
        start, stop = initial.positions[j], final.positions[j]
        for frac in ((0.25, 0.5, 0.75) if scale >= 0.5 else (0.5,)):
            group = f"hop{ip}_lin{frac:.2f}"
            for r in range(2 if scale >= 0.5 else 1):
                b = initial.copy()
                b.positions[j] = start + frac * (stop - start)
                b.positions += rng.normal(0.0, 0.02, b.positions.shape)
                frames.append(label(b, calc, hop_fraction=frac, group=group, **common))
    t_neb = time.time() - t_neb

    # ---- split and write ---------------------------------------------------------------
    splits = assign_splits(frames, seed)
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, items in splits.items():
        path = os.path.join(out_dir, f"cu_{name}.extxyz")
        write_atomic(path, items)
        paths[name] = path
    elapsed = time.time() - t0

    # ---- summary -----------------------------------------------------------------------
    log(f"Cu data set ({SPEC}), seed={seed}, scale={scale}: {len(frames)} frames in "
        f"{elapsed:.1f} s (MD {t_md:.1f} s, {md.steps} MD steps; NEB/hops {t_neb:.1f} s)")
    ctypes_ = sorted({a.info["config_type"] for a in frames})
    log(f"{'config_type':<15}" + "".join(f"{k:>7}" for k in splits) + f"{'total':>7}"
        + "   E/atom range (eV)    max|F| (eV/A)  |stress| max (GPa)")
    for ct in ctypes_:
        counts = [sum(a.info["config_type"] == ct for a in splits[k]) for k in splits]
        sel = [a for a in frames if a.info["config_type"] == ct]
        epa = np.array([a.get_potential_energy() / len(a) for a in sel])
        fmax = max(np.abs(a.get_forces()).max() for a in sel)
        smax = max(np.abs(a.get_stress()).max() for a in sel) * 160.21766
        log(f"{ct:<15}" + "".join(f"{c:>7}" for c in counts) + f"{sum(counts):>7}"
            + f"   [{epa.min():8.4f}, {epa.max():8.4f}]   {fmax:9.3f}     {smax:8.2f}")
    log(f"{'total':<15}" + "".join(f"{len(v):>7}" for v in splits.values())
        + f"{len(frames):>7}")
    temps = Counter(a.info["temperature"] for a in frames)
    log("frames per temperature (K): "
        + ", ".join(f"{t:g}: {c}" for t, c in sorted(temps.items())))
    log(f"sanity: vacancy formation energy (4x4x4, relaxed, a0={A0}) = {e_f:.3f} eV "
        f"(Mishin 2001: {PUBLISHED_EF:.2f} eV, diff {e_f - PUBLISHED_EF:+.3f})")
    if barrier is not None:
        log(f"sanity: vacancy migration barrier (CI-NEB, {n_images} images) = {barrier:.3f} eV "
            f"(Mishin 2001: {PUBLISHED_EM:.2f} eV, diff {barrier - PUBLISHED_EM:+.3f})")
    for name, path in paths.items():
        log(f"wrote {path} ({len(splits[name])} frames)")
    return dict(frames=len(frames), splits={k: len(v) for k, v in splits.items()},
                vacancy_formation_energy=e_f, migration_barrier=barrier, paths=paths,
                seconds=elapsed)


def write_atomic(path: str, frames: list[Atoms]) -> None:
    """Write extxyz to a temporary file in the same directory, then os.replace it."""
    import ase.io

    try:
        from mlip_md.files import atomic_path
    except ImportError:  # pragma: no cover - fallback if the helper moves
        atomic_path = None
    if atomic_path is not None:
        with atomic_path(path) as tmp:
            ase.io.write(str(tmp), frames, format="extxyz")
        return
    import tempfile  # pragma: no cover

    fd, tmp = tempfile.mkstemp(prefix=".cu_", suffix=".extxyz", dir=os.path.dirname(path))
    os.close(fd)
    try:
        ase.io.write(tmp, frames, format="extxyz")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0,
                   help="size factor (1.0: ~1500 frames; 0.1: tiny set for tests)")
    args = p.parse_args(argv)
    if args.scale <= 0:
        p.error("--scale must be positive")
    generate(args.out, seed=args.seed, scale=args.scale)
    return 0


if __name__ == "__main__":
    sys.exit(main())
