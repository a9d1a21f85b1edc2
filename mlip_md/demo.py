"""The main job: molecular dynamics of Cu with a vacancy using the shipped model.

The default engine is a real ``i-pi`` server (NVT, Langevin) driven by mlip_md's i-PI client;
``engine="ase"`` runs NVE with ASE's Velocity Verlet instead. Both print per-step progress and
a final summary (speed, energy drift, uncertainty range).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from ase import units
from ase.build import bulk


@dataclasses.dataclass
class DemoResult:
    engine: str
    n_atoms: int
    steps: int
    timestep_fs: float
    seconds: float
    energy_drift: float  # eV/atom/ps: linear fit of the conserved quantity
    energy_fluctuation: float  # eV/atom, std of the conserved quantity
    sigma_min: float  # eV, smallest per-atom energy sigma seen
    sigma_max: float  # eV, largest per-atom energy sigma seen
    mahalanobis_max: float
    mahalanobis_threshold: float
    close_contacts: int
    temperature_mean: float
    model_fraction: float = float("nan")  # share of the driver's wall time spent in the model

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds

    def table(self) -> str:
        conserved = "conserved quantity" if self.engine == "i-pi" else "total energy (NVE)"
        rows = [
            ("engine", self.engine),
            ("atoms", f"{self.n_atoms}"),
            ("steps x timestep", f"{self.steps} x {self.timestep_fs:g} fs"),
            ("speed", f"{self.steps_per_second:.1f} steps/s ({self.steps_per_second * self.n_atoms / 1e3:.1f} katom-steps/s)"),
            ("mean temperature", f"{self.temperature_mean:.0f} K"),
            (f"drift of the {conserved}", f"{self.energy_drift * 1e3:+.3f} meV/atom/ps"),
            ("fluctuation of it", f"{self.energy_fluctuation * 1e3:.3f} meV/atom"),
            ("energy sigma per atom", f"{self.sigma_min * 1e3:.2f} .. {self.sigma_max * 1e3:.2f} meV"),
            ("max Mahalanobis T^2", f"{self.mahalanobis_max:.1f} (warnings above {self.mahalanobis_threshold:.1f})"),
            ("close contacts", f"{self.close_contacts}"),
        ]
        if np.isfinite(self.model_fraction):
            rows.append(("time in the model", f"{100 * self.model_fraction:.0f}% of the driver's wall time"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def vacancy_cell(supercell: int = 3, a: float = 3.615):
    """fcc Cu supercell with one vacancy (atom 0 removed)."""
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(supercell)
    del atoms[0]
    return atoms


class _Tracker:
    """Collects uncertainty ranges and prints progress lines."""

    def __init__(self, n_atoms: int, t2_threshold: float, report_every: int, echo):
        self.n = n_atoms
        self.report_every = report_every
        self.echo = echo
        self.t2_threshold = t2_threshold
        self.sigma_lo, self.sigma_hi, self.t2_max, self.contacts = np.inf, 0.0, 0.0, 0

    def header(self) -> None:
        self.echo(f"{'step':>6} {'Epot/eV':>12} {'max sigma/meV':>14} {'max T^2':>9} {'contacts':>9}")

    def __call__(self, step: int, pred) -> None:
        sigma = pred.energy_sigma
        self.sigma_lo = min(self.sigma_lo, float(sigma.min()))
        self.sigma_hi = max(self.sigma_hi, float(sigma.max()))
        self.t2_max = max(self.t2_max, float(pred.mahalanobis.max()))
        self.contacts += int(pred.close_contacts.size)
        if step % self.report_every == 0:
            self.echo(f"{step:>6} {pred.energy:>12.4f} {sigma.max() * 1e3:>14.2f} {pred.mahalanobis.max():>9.1f} "
                      f"{pred.close_contacts.size:>9d}")


def _t2_threshold(model) -> float:
    """T^2 above which every engine warns (the largest value of the training data)."""
    return model.info.domain.mahalanobis_threshold()


def _drift(conserved_per_atom: np.ndarray, times_ps: np.ndarray) -> float:
    return float(np.polyfit(times_ps, conserved_per_atom, 1)[0]) if len(times_ps) > 2 else 0.0


def run_ipi_demo(model=None, steps: int = 200, temperature: float = 600.0, timestep: float = 1.0,
                 supercell: int = 3, seed: int = 0, report_every: int = 20, device: str = "cpu",
                 keep: Optional[Path] = None, echo: Callable[[str], None] = print, process: str = "") -> DemoResult:
    """Start ``i-pi`` on the shipped NVT input, serve it with the model, summarise, clean up.
    ``process``: the process settings (threads, malloc) to name in the first line."""
    from .engines.ipi.client import Driver, serve
    from .engines.ipi.connection import SocketClient
    from .engines.ipi.server import IPIServer, read_properties, render, write_ipi_xyz
    from .runtime.predictor import Predictor

    predictor = Predictor(model, device=device)
    atoms = vacancy_cell(supercell)
    workdir = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="mlip_md_demo_"))
    workdir.mkdir(parents=True, exist_ok=True)
    address = f"mlip_md_demo_{os.getpid()}"
    write_ipi_xyz(workdir / "init.xyz", atoms)
    (workdir / "input.xml").write_text(render(
        "demo_nvt.xml", steps=steps, seed=seed + 12345, address=address, temperature=temperature,
        timestep=timestep, stride=1, traj_stride=max(1, steps // 10)))
    tracker = _Tracker(len(atoms), _t2_threshold(predictor.model), report_every, echo)
    echo(f"mlip_md demo: i-PI NVT ({temperature:g} K, Langevin) of fcc Cu with a vacancy ({len(atoms)} atoms), "
         f"model {predictor.model.path}, work directory {workdir}" + (f", {process}" if process else ""))
    tracker.header()
    client = SocketClient(address, unix=True, connect_timeout=60.0)
    server = IPIServer(workdir, socket_path=client.target)
    driver = Driver(predictor, client, numbers=atoms.numbers, on_step=tracker)
    try:
        with server:
            server.wait_for_socket()
            start = time.perf_counter()
            code = serve(driver)
            seconds = time.perf_counter() - start
            if code != 0:
                raise RuntimeError(f"the i-PI driver stopped with exit code {code}; i-PI log:\n{server.log_tail()}")
            server.wait(timeout=60)
        props = read_properties(workdir / "demo.out")
    finally:
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    n = len(atoms)
    conserved = props["conserved{electronvolt}"] / n
    times = props["time{picosecond}"]
    temps = props["temperature{kelvin}"]
    return DemoResult(
        engine="i-pi", n_atoms=n, steps=steps, timestep_fs=timestep, seconds=seconds,
        energy_drift=_drift(conserved, times), energy_fluctuation=float(np.std(conserved)),
        sigma_min=tracker.sigma_lo, sigma_max=tracker.sigma_hi, mahalanobis_max=tracker.t2_max,
        mahalanobis_threshold=tracker.t2_threshold, close_contacts=tracker.contacts,
        temperature_mean=float(np.mean(temps[len(temps) // 2:])), model_fraction=driver.model_seconds / seconds,
    )


def run_ase_demo(model=None, steps: int = 200, temperature: float = 600.0, timestep: float = 1.0,
                 supercell: int = 3, seed: int = 0, report_every: int = 20, device: str = "cpu",
                 echo: Callable[[str], None] = print, process: str = "") -> DemoResult:
    """NVE MD with ASE's Velocity Verlet (velocities drawn at 2 T so the crystal settles near T)."""
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    from .engines.ase import MLIPCalculator

    atoms = vacancy_cell(supercell)
    calc = MLIPCalculator(model, device=device)
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=2 * temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep=timestep * units.fs)
    n = len(atoms)
    tracker = _Tracker(n, _t2_threshold(calc.model), report_every, echo)
    echo(f"mlip_md demo: ASE NVE MD of fcc Cu with a vacancy ({n} atoms), model {calc.model.path}"
         + (f", {process}" if process else ""))
    tracker.header()
    totals, temps = [], []

    def record() -> None:
        totals.append(atoms.get_total_energy() / n)
        temps.append(atoms.get_kinetic_energy() / (1.5 * units.kB * n))
        tracker(len(totals) - 1, calc.last_prediction)

    record()
    start = time.perf_counter()
    for _ in range(steps):
        dyn.run(1)
        record()
    seconds = time.perf_counter() - start
    times = np.arange(len(totals)) * timestep / 1000.0
    return DemoResult(
        engine="ase", n_atoms=n, steps=steps, timestep_fs=timestep, seconds=seconds,
        energy_drift=_drift(np.asarray(totals), times), energy_fluctuation=float(np.std(totals)),
        sigma_min=tracker.sigma_lo, sigma_max=tracker.sigma_hi, mahalanobis_max=tracker.t2_max,
        mahalanobis_threshold=tracker.t2_threshold, close_contacts=tracker.contacts,
        temperature_mean=float(np.mean(temps[len(temps) // 2:])),
    )
