"""Interface-quality report of a QM/ML hybrid (``mlip-md qmml check``).

What the literature on adaptive / switched QM/MM and QM/ML asks of an interface:

* ``switch``: the switching function is as smooth as claimed -- one-sided limits of s, s', s''
  at r_inner and r_outer (jumps should vanish up to O(h)) and analytic derivatives against
  finite differences inside the shell;
* ``force_mismatch``: epsilon_F, the RMS and largest |F^high - F^low| (each level on the whole
  structure) over the atoms in the switching shell -- the smaller, the less the blend distorts;
* ``drag``: an atom dragged radially across r_inner, r_outer and the cluster edge
  (r_outer + buffer); Delta E_max is the energy jump at each crossing, estimated as
  |E(r+d) - E(r-d) - d (E'(r+d) + E'(r-d))| with d = 1e-6 Å (E' = -F.u from the forces), which
  should sit at round-off (< 1e-10 eV); the energy along the path goes to the PNG;
* ``nve``: total-energy drift (linear fit, meV/atom/ps) and fluctuation of velocity-Verlet runs
  with the hybrid and with each pure level, and how often atoms crossed r_inner / r_outer.

Units: Å, eV, fs; drift in meV/atom/ps.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional

import ase
import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from ..files import atomic_path, atomic_write_text
from .calculator import HybridCalculator
from .hybrid import HybridModel
from .levels import Level

DRAG_DELTA = 1e-6  # Å
ENERGY_JUMP_TOLERANCE = 1e-10  # eV


def default_structure(supercell: int = 3, vacancy: bool = False, rattle: float = 0.05, seed: int = 0) -> ase.Atoms:
    """The default structure of ``mlip-md qmml check``: fcc Cu (a = 3.615 Å) cubic cell repeated
    ``supercell`` times, its last atom removed when ``vacancy``, every atom displaced randomly
    by ``rattle`` Å (standard deviation, seeded)."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(supercell)
    if vacancy:
        del atoms[-1]
    atoms.rattle(rattle, seed=seed)
    return atoms


class LevelCalculator(Calculator):
    """A Level as a plain ASE calculator (every atom a centre with weight 1)."""

    implemented_properties = ["energy", "free_energy", "energies", "forces"]

    def __init__(self, level: Level, **kwargs):
        super().__init__(**kwargs)
        self.level = level

    def calculate(self, atoms=None, properties=("energy",), system_changes=tuple(all_changes)):
        super().calculate(atoms, properties, system_changes)
        a = self.atoms
        n = len(a)
        res = self.level.evaluate(a.numbers, a.positions, a.cell.array, a.pbc, np.arange(n), np.ones(n))
        self.results = {"energy": float(res.energies.sum()), "free_energy": float(res.energies.sum()),
                        "energies": res.energies, "forces": res.forces}


# ---------------------------------------------------------------------------------------- switch
def check_switch(switch, h_fraction: float = 1e-7) -> dict:
    """One-sided jumps of s, s', s'' at both radii and derivative consistency (see module doc)."""
    w = switch.r_outer - switch.r_inner
    h = h_fraction * w
    jumps = {}
    for name, rb in (("r_inner", switch.r_inner), ("r_outer", switch.r_outer)):
        vals = switch(np.array([rb - h, rb + h]))
        jumps[name] = {f"d{k}s": float(abs(vals[k][1] - vals[k][0]) * w ** k) for k in range(3)}
    grid = np.linspace(switch.r_inner + 0.01 * w, switch.r_outer - 0.01 * w, 201)
    e = 1e-5 * w
    s_p, ds_p, _ = switch(grid + e)
    s_m, ds_m, _ = switch(grid - e)
    _, ds, d2s = switch(grid)
    fd1 = float(np.max(np.abs((s_p - s_m) / (2 * e) - ds)) * w)
    fd2 = float(np.max(np.abs((ds_p - ds_m) / (2 * e) - d2s)) * w * w)
    tol = 1e-4
    order = 0
    for k in range(3):
        if all(j[f"d{k}s"] < tol for j in jumps.values()):
            order = k
        else:
            order = k - 1
            break
    return {"shape": switch.shape, "r_inner": switch.r_inner, "r_outer": switch.r_outer,
            "claimed_continuity": switch.continuity, "jumps_scaled": jumps, "tolerance_scaled": tol,
            "fd_error_ds_scaled": fd1, "fd_error_d2s_scaled": fd2, "numerical_continuity_up_to_2": order,
            "is_c2": order >= 2 and fd1 < 1e-6 and fd2 < 1e-5}


# ---------------------------------------------------------------------------------------- forces
def force_mismatch(model: HybridModel, atoms: ase.Atoms) -> dict:
    """epsilon_F over the switching shell: each level evaluated on the whole structure."""
    n = len(atoms)
    args = (atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, np.arange(n), np.ones(n))
    f_high = model.high.evaluate(*args).forces
    f_low = model.low.evaluate(*args).forces
    plan = model.plan(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    s = plan.s_atoms
    shell = np.flatnonzero((s > 0) & (s < 1))
    region = np.flatnonzero(s > 0)
    diff = f_high - f_low

    def stats(idx):
        if idx.size == 0:
            return {"atoms": 0, "rms": None, "max": None}
        norms = np.linalg.norm(diff[idx], axis=1)
        return {"atoms": int(idx.size), "rms": float(np.sqrt(np.mean(diff[idx] ** 2))), "max": float(norms.max())}

    return {"shell": stats(shell), "region": stats(region), "all": stats(np.arange(n)),
            "force_rms_high": float(np.sqrt(np.mean(f_high ** 2)))}


# ---------------------------------------------------------------------------------------- drag
def _radial(model: HybridModel, atoms: ase.Atoms, target: float):
    """The atom (not defining the centre) whose distance to the centre is closest to ``target``,
    and its unit radial direction."""
    plan = model.plan(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    c = plan.cluster
    ok = np.ones(len(c.source), dtype=bool)
    ok &= ~np.isin(c.source, plan.centre_atoms)
    ok &= c.distances > 0.5
    k = np.flatnonzero(ok)[np.argmin(np.abs(c.distances[ok] - target))]
    return int(c.source[k]), c.vectors[k] / c.distances[k], float(c.distances[k])


def drag(model: HybridModel, atoms: ase.Atoms, boundary: float, half_width: float = 0.3, points: int = 41) -> dict:
    """Drag one atom radially through ``boundary`` (Å from the centre): energy along the path and
    the jump estimate at the crossing."""
    calc = HybridCalculator(model=model)
    atom, u, r0 = _radial(model, atoms, boundary)
    work = atoms.copy()
    work.calc = calc
    base = work.positions[atom].copy()

    def at(r):
        work.positions[atom] = base + (r - r0) * u
        e = work.get_potential_energy()
        return e, float(-work.get_forces()[atom] @ u)

    rs = np.linspace(boundary - half_width, boundary + half_width, points)
    energies = [at(r)[0] for r in rs]
    e_m, de_m = at(boundary - DRAG_DELTA)
    e_p, de_p = at(boundary + DRAG_DELTA)
    jump = abs(e_p - e_m - DRAG_DELTA * (de_p + de_m))
    n = len(atoms)
    pure = {}
    for name, level in (("high", model.high), ("low", model.low)):
        path = []
        for r in rs:
            work.positions[atom] = base + (r - r0) * u
            path.append(float(level.evaluate(work.numbers, work.positions, work.cell.array, work.pbc, np.arange(n),
                                             np.ones(n)).energies.sum()))
        pure[name] = path
    return {"atom": atom, "boundary": boundary, "r": rs.tolist(), "energy_hybrid": energies,
            "energy_high": pure["high"], "energy_low": pure["low"], "energy_jump": float(jump),
            "force_jump": float(abs(de_p - de_m))}


# ---------------------------------------------------------------------------------------- NVE
def nve_run(atoms: ase.Atoms, calc: Calculator, steps: int, timestep: float, temperature: float, seed: int,
            crossing: Optional[Callable] = None) -> dict:
    """Velocity Verlet from Maxwell-Boltzmann velocities: drift (linear fit) and fluctuation."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    work = atoms.copy()
    work.calc = calc
    MaxwellBoltzmannDistribution(work, temperature_K=temperature, rng=np.random.default_rng(seed))
    Stationary(work)
    dyn = VelocityVerlet(work, timestep=timestep * units.fs)
    etot, crossings = [], {"r_inner": 0, "r_outer": 0}
    prev = None
    start = time.perf_counter()
    for _ in range(steps + 1):
        etot.append(work.get_potential_energy() + work.get_kinetic_energy())
        if crossing is not None:
            now = crossing(work)
            if prev is not None:
                for key in crossings:
                    crossings[key] += int(np.sum(now[key] != prev[key]))
            prev = now
        if len(etot) <= steps:
            dyn.run(1)
    seconds = time.perf_counter() - start
    etot = np.array(etot)
    t_ps = np.arange(len(etot)) * timestep * 1e-3
    slope = np.polyfit(t_ps, etot, 1)[0]
    n = len(atoms)
    out = {"steps": steps, "timestep_fs": timestep, "temperature_K": temperature,
           "drift_meV_per_atom_ps": float(1e3 * slope / n),
           "fluctuation_meV_per_atom": float(1e3 * etot.std() / n),
           "max_deviation_meV_per_atom": float(1e3 * np.abs(etot - etot[0]).max() / n),
           "seconds": seconds}
    if crossing is not None:
        out["crossings"] = crossings
    return out


def nve_comparison(model: HybridModel, atoms: ase.Atoms, steps: int = 100, timestep: float = 1.0,
                   temperature: float = 600.0, seed: int = 0) -> dict:
    """NVE drift of the hybrid and of each pure level from the same initial state."""
    def crossing(a):
        plan = model.plan(a.numbers, a.positions, a.cell.array, a.pbc)
        s = plan.s_atoms
        return {"r_inner": s >= 1.0, "r_outer": s > 0.0}

    return {"hybrid": nve_run(atoms, HybridCalculator(model=model), steps, timestep, temperature, seed, crossing),
            "high": nve_run(atoms, LevelCalculator(model.high), steps, timestep, temperature, seed),
            "low": nve_run(atoms, LevelCalculator(model.low), steps, timestep, temperature, seed)}


# ---------------------------------------------------------------------------------------- report
def run_check(model: HybridModel, atoms: ase.Atoms, output: Path, steps: int = 100, timestep: float = 1.0,
              temperature: float = 600.0, seed: int = 0, progress: Optional[Callable[[str], None]] = None,
              drag_points: int = 41) -> dict:
    """Every check; writes report.json, report.md and drag.png into ``output``."""
    say = progress or (lambda text: None)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    # first evaluation fixes an "auto" energy shift
    model.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    report: dict = {"setup": model.describe(), "structure": {"atoms": len(atoms), "formula": atoms.get_chemical_formula(),
                                                            "cell": atoms.cell.array.tolist()}}
    say("switching function")
    report["switch"] = check_switch(model.switch)
    say("force mismatch")
    report["force_mismatch"] = force_mismatch(model, atoms)
    say("drag across r_inner, r_outer and the cluster edge")
    drags = {name: drag(model, atoms, rb, points=drag_points) for name, rb in (("r_inner", model.switch.r_inner),
                                                          ("r_outer", model.switch.r_outer),
                                                          ("cluster_edge", model.cluster_radius))}
    report["drag"] = drags
    report["energy_jump_max"] = max(d["energy_jump"] for d in drags.values())
    report["energy_continuous"] = report["energy_jump_max"] < ENERGY_JUMP_TOLERANCE
    say(f"NVE: {steps} steps each for hybrid, high, low")
    report["nve"] = nve_comparison(model, atoms, steps, timestep, temperature, seed)
    report["passed"] = bool(report["energy_continuous"] and report["switch"]["is_c2"])
    with atomic_path(output / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    atomic_write_text(output / "report.md", markdown(report))
    plot_drag(report, output / "drag.png")
    return report


def markdown(report: dict) -> str:
    setup, sw, fm, nve = report["setup"], report["switch"], report["force_mismatch"], report["nve"]
    lines = [
        "# QM/ML hybrid interface check", "",
        f"high `{setup['high']}`, low `{setup['low']}`, region {setup['region']}, "
        f"r_inner {setup['r_inner']} Å, r_outer {setup['r_outer']} Å, shape `{setup['shape']}`, "
        f"buffer {setup['buffer']} Å, energy shift {setup['energy_shift']} eV; "
        f"{report['structure']['atoms']} atoms ({report['structure']['formula']})", "",
        "## Switching function", "",
        f"claimed C^{sw['claimed_continuity']}; numerically C^{sw['numerical_continuity_up_to_2']} (checked up to 2); "
        f"C^2: {'yes' if sw['is_c2'] else 'NO'}", "",
        "| boundary | jump s | jump s' w | jump s'' w^2 |", "|---|---|---|---|",
    ]
    for name, j in sw["jumps_scaled"].items():
        lines.append(f"| {name} | {j['d0s']:.1e} | {j['d1s']:.1e} | {j['d2s']:.1e} |")
    lines += ["", f"finite-difference error of s' (x w): {sw['fd_error_ds_scaled']:.1e}, of s'' (x w^2): "
              f"{sw['fd_error_d2s_scaled']:.1e}", "", "## Force mismatch epsilon_F (high - low, eV/Å)", "",
              "| atoms | count | RMS | max |", "|---|---|---|---|"]
    for name in ("shell", "region", "all"):
        st = fm[name]
        if st["atoms"]:
            lines.append(f"| {name} | {st['atoms']} | {st['rms']:.4f} | {st['max']:.4f} |")
    lines += ["", "## Energy continuity (atom dragged radially)", "",
              "| crossing | atom | Delta E (eV) | Delta F (eV/Å) |", "|---|---|---|---|"]
    for name, d in report["drag"].items():
        lines.append(f"| {name} ({d['boundary']:.3f} Å) | {d['atom']} | {d['energy_jump']:.1e} | {d['force_jump']:.1e} |")
    lines += ["", f"Delta E_max = {report['energy_jump_max']:.1e} eV "
              f"({'below' if report['energy_continuous'] else 'ABOVE'} {ENERGY_JUMP_TOLERANCE:.0e} eV)", "",
              "## NVE energy conservation", "",
              "| run | drift (meV/atom/ps) | fluctuation (meV/atom) | max |E - E0| (meV/atom) | s/step |",
              "|---|---|---|---|---|"]
    for name in ("hybrid", "high", "low"):
        r = nve[name]
        lines.append(f"| {name} | {r['drift_meV_per_atom_ps']:+.3f} | {r['fluctuation_meV_per_atom']:.3f} | "
                     f"{r['max_deviation_meV_per_atom']:.3f} | {r['seconds'] / max(r['steps'], 1):.3f} |")
    h = nve["hybrid"]
    lines += ["", f"{h['steps']} steps of {h['timestep_fs']} fs from {h['temperature_K']} K; atoms crossed r_inner "
              f"{h['crossings']['r_inner']} times and r_outer {h['crossings']['r_outer']} times in the hybrid run.",
              "", "![energy along the drag paths](drag.png)", ""]
    return "\n".join(lines)


def plot_drag(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drags = report["drag"]
    fig, axes = plt.subplots(1, len(drags), figsize=(4.2 * len(drags), 3.6))
    for ax, (name, d) in zip(np.atleast_1d(axes), drags.items()):
        r = np.array(d["r"])
        for key, label, style in (("energy_hybrid", "hybrid", "-"), ("energy_high", "high", "--"),
                                  ("energy_low", "low", ":")):
            e = np.array(d[key])
            ax.plot(r, 1e3 * (e - e[len(e) // 2]), style, label=label)
        ax.axvline(d["boundary"], color="grey", lw=0.8)
        ax.set_title(f"{name}: Delta E = {d['energy_jump']:.0e} eV")
        ax.set_xlabel("distance of dragged atom from centre (Å)")
        ax.set_ylabel("E - E(boundary) (meV)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
