"""Data generation and orchestration of the ``mlip-md domain`` analyses (see analysis.py)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional

import ase
import numpy as np
from ase.build import bulk, fcc100, fcc111

from ..model.potential import ModelConfig
from ..runtime.predictor import Predictor
from ..reference import labelled, make_reference
from ..train.trainer import TrainConfig, split_train_val, train_ensemble
from . import analysis

#: small models: these analyses are about the domain, not about accuracy records
ANALYSIS_MODEL = dict(cutoff=5.0, switch_width=1.0, n_max=6, l_max=3, hidden=(32, 32))


@dataclasses.dataclass
class Settings:
    reference: str = "emt"
    element: str = "Cu"
    lattice_constant: Optional[float] = None  # Å, default: relaxed with the reference
    ensemble: int = 4
    epochs: int = 60
    seed: int = 0
    workers: int = 1


def label(frames: List[ase.Atoms], calc) -> List[ase.Atoms]:
    return [labelled(atoms, calc) for atoms in frames]


def equilibrium_lattice_constant(symbol: str, calc) -> float:
    """fcc lattice constant minimising the reference energy (golden-section on a)."""
    from scipy.optimize import minimize_scalar

    def energy(a: float) -> float:
        atoms = bulk(symbol, "fcc", a=a)
        atoms.calc = calc
        return atoms.get_potential_energy()

    guess = bulk(symbol, "fcc").cell.cellpar()[0] * np.sqrt(2)
    return float(minimize_scalar(energy, bounds=(0.85 * guess, 1.15 * guess), method="bounded").x)


def thermal_crystals(symbol: str, a: float, n: int, rng, amplitude=(0.02, 0.15), strain=0.02, vacancy=False,
                     repeat=3) -> List[ase.Atoms]:
    """Rattled (Gaussian, amplitude in Å), randomly strained fcc cells: a cheap stand-in for MD
    snapshots between ~100 K and the melting point."""
    frames = []
    for _ in range(n):
        atoms = bulk(symbol, "fcc", a=a, cubic=True).repeat(repeat)
        if vacancy:
            del atoms[int(rng.integers(len(atoms)))]
        eps = rng.uniform(-strain, strain, (3, 3))
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True)
        atoms.positions += rng.normal(scale=rng.uniform(*amplitude), size=atoms.positions.shape)
        frames.append(atoms)
    return frames


def surfaces(symbol: str, a: float, n: int, rng) -> List[ase.Atoms]:
    frames = []
    for k in range(n):
        build = fcc100 if k % 2 == 0 else fcc111
        slab = build(symbol, size=(3, 3, 5), a=a, vacuum=6.0, periodic=True)
        slab.positions += rng.normal(scale=0.08, size=slab.positions.shape)
        frames.append(slab)
    return frames


def train_model(frames: List[ase.Atoms], settings: Settings, output: Path, progress=None) -> Path:
    train, val = split_train_val(frames, 0.15, settings.seed)
    numbers = sorted({int(z) for f in frames for z in f.numbers})
    config = ModelConfig(numbers, ensemble_size=settings.ensemble, **ANALYSIS_MODEL)
    train_ensemble(train, val, config, TrainConfig(epochs=settings.epochs, batch_size=8, seed=settings.seed),
                   output, reference=settings.reference, workers=settings.workers, progress_factory=progress)
    return output


def crystal_only(settings: Settings, outdir: Path, model: Optional[Path] = None, n_train: int = 120,
                 error_threshold: Optional[float] = None, progress=None, soap: bool = False) -> dict:
    """Train (unless ``model`` is given) on perfect crystals, evaluate on defects/surfaces/
    distorted cells, write crystal_only.{json,md,png} to ``outdir``. ``soap``: also score every
    atom with model-agnostic T^2 and d_min on SOAP descriptors of the training structures
    (featomic, :mod:`mlip_md.domain.soap`)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(settings.seed)
    calc = make_reference(settings.reference)
    a = settings.lattice_constant or equilibrium_lattice_constant(settings.element, calc)
    training = thermal_crystals(settings.element, a, n_train, rng)  # always drawn: same test sets with --model
    if model is None:
        model = train_model(label(training, calc), settings, outdir / "crystal_only_model.pt", progress)
    test = {
        "bulk (as trained)": label(thermal_crystals(settings.element, a, 6, rng), calc),
        "vacancy": label(thermal_crystals(settings.element, a, 6, rng, vacancy=True), calc),
        "surface": label(surfaces(settings.element, a, 4, rng), calc),
        "distorted (rattle 0.25 Å, strain 6%)": label(
            thermal_crystals(settings.element, a, 6, rng, amplitude=(0.2, 0.25), strain=0.06), calc),
    }
    nearest = a / np.sqrt(2)
    records = analysis.evaluate_atoms(Predictor(model), test, shell=0.5 * (nearest + a), ideal=nearest)
    if soap:
        from .soap import soap_domain_signals

        signals = soap_domain_signals(training, [atoms for frames in test.values() for atoms in frames],
                                      cutoff=Predictor(model).cutoff)
        records.soap_t2, records.soap_d_min = signals["t2"], signals["d_min"]
    if error_threshold is None:  # 3x the force RMSE on held-out bulk: "clearly worse than in-domain"
        bulk_rows = records.category == "bulk (as trained)"
        error_threshold = float(3 * np.sqrt((records.force_error[bulk_rows] ** 2).mean()))
    report = analysis.crystal_only_report(records, error_threshold)
    report.update(reference=settings.reference, lattice_constant=a, model=str(model))
    markdown = analysis.crystal_only_markdown(report)
    report["files"] = [str(p) for p in analysis.write(
        report, markdown, outdir / "crystal_only", lambda path: analysis.crystal_only_plot(records, report, path))]
    return report


def bond_breaking(settings: Settings, outdir: Path, s_train_max: float = 0.2, model: Optional[Path] = None,
                  progress=None) -> dict:
    """Train on dimers with stretch -0.15 <= s <= s_train_max, scan to s = 1.5, find s_exit."""
    from scipy.optimize import minimize_scalar

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    calc = make_reference(settings.reference)

    def dimer_energy(r: float) -> float:
        atoms = analysis.dimer(settings.element, r)
        atoms.calc = calc
        return atoms.get_potential_energy()

    r_eq = float(minimize_scalar(dimer_energy, bounds=(1.5, 3.5), method="bounded").x)
    train_s = np.linspace(-0.15, s_train_max, 36)
    if model is None:
        frames = label([analysis.dimer(settings.element, r_eq * (1 + s)) for s in train_s], calc)
        model = train_model(frames, settings, outdir / "dimer_model.pt", progress)
    scan = np.round(np.concatenate([np.linspace(-0.15, s_train_max, 8), np.linspace(s_train_max + 0.025, 1.5, 24)]), 4)
    report = analysis.bond_breaking_scan(Predictor(model), calc, settings.element, r_eq, scan, train_s)
    report.update(reference=settings.reference, model=str(model))
    markdown = analysis.bond_breaking_markdown(report)
    report["files"] = [str(p) for p in analysis.write(
        report, markdown, outdir / "bond_breaking", lambda path: analysis.bond_breaking_plot(report, path))]
    return report
