"""The main job: NVE molecular dynamics with the shipped Cu model on a cell with a vacancy,
with per-step progress and a final summary (speed, energy drift, uncertainty range)."""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np
from ase import units
from ase.build import bulk
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.md.verlet import VelocityVerlet


@dataclasses.dataclass
class DemoResult:
    n_atoms: int
    steps: int
    timestep_fs: float
    seconds: float
    energy_drift: float  # eV/atom/ps (linear fit of the total energy)
    energy_fluctuation: float  # eV/atom, std of the total energy
    sigma_min: float  # eV, smallest per-atom energy sigma seen
    sigma_max: float  # eV, largest per-atom energy sigma seen
    mahalanobis_max: float
    mahalanobis_threshold: float
    close_contacts: int
    temperature_mean: float

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds

    def table(self) -> str:
        rows = [
            ("atoms", f"{self.n_atoms}"),
            ("steps x timestep", f"{self.steps} x {self.timestep_fs:g} fs"),
            ("speed", f"{self.steps_per_second:.1f} steps/s ({self.steps_per_second * self.n_atoms / 1e3:.1f} katom-steps/s)"),
            ("mean temperature", f"{self.temperature_mean:.0f} K"),
            ("energy drift (NVE)", f"{self.energy_drift * 1e3:+.3f} meV/atom/ps"),
            ("total-energy fluctuation", f"{self.energy_fluctuation * 1e3:.3f} meV/atom"),
            ("energy sigma per atom", f"{self.sigma_min * 1e3:.2f} .. {self.sigma_max * 1e3:.2f} meV"),
            ("max Mahalanobis T^2", f"{self.mahalanobis_max:.1f} (threshold {self.mahalanobis_threshold:.1f})"),
            ("close contacts", f"{self.close_contacts}"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def vacancy_cell(supercell: int = 3, a: float = 3.615) -> "ase.Atoms":  # noqa: F821
    """fcc Cu supercell with one vacancy (atom 0 removed)."""
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(supercell)
    del atoms[0]
    return atoms


def run_demo(
    model=None,
    steps: int = 200,
    temperature: float = 600.0,
    timestep: float = 1.0,
    supercell: int = 3,
    seed: int = 0,
    report_every: int = 20,
    device: str = "cpu",
    echo: Callable[[str], None] = print,
) -> DemoResult:
    """NVE MD (velocities drawn at 2 T so the crystal equilibrates near T) with the model."""
    from .engines.ase import MLIPCalculator

    atoms = vacancy_cell(supercell)
    calc = MLIPCalculator(model, device=device)
    atoms.calc = calc
    thresholds = calc.model.monitor_thresholds.get("mahalanobis", {}).get("per_element", {})
    t2_threshold = max((v.get("empirical", np.inf) for v in thresholds.values()), default=np.inf)
    MaxwellBoltzmannDistribution(atoms, temperature_K=2 * temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep=timestep * units.fs)
    n = len(atoms)
    totals, temps = [], []
    sigma_lo, sigma_hi, t2_max, contacts = np.inf, 0.0, 0.0, 0

    echo(f"mlip_md demo: NVE MD of fcc Cu with a vacancy ({n} atoms), model {calc.model.path}")
    echo(f"{'step':>6} {'time/fs':>8} {'Epot/eV':>12} {'Etot/eV':>12} {'T/K':>7} {'max sigma/meV':>14} {'max T^2':>9}")

    def record() -> None:
        nonlocal sigma_lo, sigma_hi, t2_max, contacts
        epot = atoms.get_potential_energy()
        ekin = atoms.get_kinetic_energy()
        totals.append(epot + ekin)
        temps.append(ekin / (1.5 * units.kB * n))
        res = calc.results
        sigma = res["energy_sigma"]
        sigma_lo, sigma_hi = min(sigma_lo, sigma.min()), max(sigma_hi, sigma.max())
        t2_max = max(t2_max, float(res["mahalanobis"].max()))
        contacts += int(len(res["close_contacts"]))
        step = len(totals) - 1
        if step % report_every == 0 or step == steps:
            echo(
                f"{step:>6} {step * timestep:>8.1f} {epot:>12.4f} {epot + ekin:>12.4f} "
                f"{temps[-1]:>7.0f} {sigma.max() * 1e3:>14.2f} {res['mahalanobis'].max():>9.1f}"
            )

    record()
    start = time.perf_counter()
    for _ in range(steps):
        dyn.run(1)
        record()
    seconds = time.perf_counter() - start
    t_ps = np.arange(len(totals)) * timestep / 1000.0
    drift = float(np.polyfit(t_ps, np.asarray(totals) / n, 1)[0]) if len(totals) > 2 else 0.0
    return DemoResult(
        n_atoms=n,
        steps=steps,
        timestep_fs=timestep,
        seconds=seconds,
        energy_drift=drift,
        energy_fluctuation=float(np.std(totals) / n),
        sigma_min=float(sigma_lo),
        sigma_max=float(sigma_hi),
        mahalanobis_max=t2_max,
        mahalanobis_threshold=float(t2_threshold),
        close_contacts=contacts,
        temperature_mean=float(np.mean(temps[len(temps) // 2 :])),
    )
