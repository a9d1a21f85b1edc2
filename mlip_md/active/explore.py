"""Exploration: MD with the current model along a temperature (/pressure) schedule, and the
domain-shift trigger that turns MD frames into labelling candidates.

Every ``sample_every`` steps a frame is scored with the model's own monitor outputs: the
per-atom Mahalanobis T^2 of the descriptors against the training distribution (threshold:
the chi^2 quantile with the effective degrees of freedom stored in the model, or the
training-set quantile), and optionally the calibrated ensemble sigma of energies (eV/atom)
and forces (eV/Å). A frame beyond any threshold is a candidate. A trajectory that runs far out
of the domain (T^2 beyond ``abort_ratio`` x threshold, atoms much closer than in training, or
an invalid structure) is cut there and restarts from its ideal start at the next stage.

Engines (``[explore] engine``): ``ase`` (default): ASE Langevin (NVT) with
:class:`mlip_md.MLIPCalculator`, Berendsen NPT for bulk stages with a pressure; ``lammps``: the
model as ``pair_style mlip`` in LAMMPS (:mod:`mlip_md.active.lammps_md`), Langevin NVT or
Nosé-Hoover NPT; ``ipi``: a real i-PI server (Langevin NVT) driven by mlip_md's socket driver
(:mod:`mlip_md.active.ipi_md`). Slabs with vacuum stay NVT.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional

import ase
import numpy as np
from ase import units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from scipy import stats

from ..engines.ase import MLIPCalculator
from ..errors import CloseContactWarning, InvalidStructureError
from ..runtime.backend import ModelBackend
from ..runtime.predictor import Predictor
from .config import ActiveConfig


@dataclasses.dataclass(eq=False)  # compared by identity
class Candidate:
    """A configuration offered to the query strategies, with the model's view of it.

    features [n, D] standardised descriptors; t2 [n] Mahalanobis T^2; energy_sigma [n] eV;
    force_sigma [n] eV/Å (largest component per atom); t2_threshold per atom [n].
    """

    atoms: ase.Atoms
    features: np.ndarray
    t2: np.ndarray
    t2_threshold: np.ndarray
    energy_sigma: np.ndarray
    force_sigma: Optional[np.ndarray]
    origin: str = ""
    score: float = 0.0
    min_distance_ratio: float = np.inf  # closest pair / closest seen in training

    @property
    def t2_ratio(self) -> float:
        return float(np.max(self.t2 / self.t2_threshold))

    def trigger_values(self) -> Dict[str, float]:
        worst = int(np.argmax(self.t2 / self.t2_threshold))
        return {
            "t2_max": float(self.t2[worst]),
            "t2_threshold": float(self.t2_threshold[worst]),
            "energy_sigma_max": float(np.max(self.energy_sigma)),
            "force_sigma_max": float(np.max(self.force_sigma)) if self.force_sigma is not None else 0.0,
            "score": float(self.score),
        }


def t2_thresholds(model: ModelBackend, quantile: float, mode: str) -> Dict[int, float]:
    """Per-element T^2 threshold: chi^2 quantile with the model's effective dof, or the
    training-set quantile stored in the model ("empirical")."""
    per_element = model.info.domain.mahalanobis
    out = {}
    for z in model.atomic_numbers:
        entry = per_element.get(int(z))
        if entry is None:
            raise ValueError(f"model {model.path} has no Mahalanobis statistics for Z={z}; retrain it with mlip_md")
        out[int(z)] = float(stats.chi2.ppf(quantile, entry.dof)) if mode == "chi2" else float(entry.empirical)
    return out


class Scorer:
    """Evaluates frames with the model and its monitors (one Predictor, reused)."""

    def __init__(self, model: ModelBackend, quantile: float, mode: str, device: str = "cpu"):
        self.predictor = Predictor(model, device=device)
        self.thresholds = t2_thresholds(self.predictor.model, quantile, mode)

    def candidate(self, atoms: ase.Atoms, origin: str = "") -> Candidate:
        pred = self.predictor.predict_atoms(atoms, monitors=True, force_sigma=True)
        threshold = np.array([self.thresholds[int(z)] for z in atoms.numbers])
        fs = pred.force_sigma.max(axis=1) if pred.force_sigma is not None else None
        frame = atoms.copy()
        frame.calc = None
        cand = Candidate(frame, pred.features, pred.mahalanobis, threshold, pred.energy_sigma, fs, origin)
        ratio = pred.min_distance_ratio
        cand.min_distance_ratio = float(np.min(ratio)) if ratio is not None and len(ratio) else np.inf
        return cand


@dataclasses.dataclass
class ExploreResult:
    pool: List[Candidate]  # triggered frames
    n_frames: int  # frames scored
    n_triggered: int
    n_restarts: int  # trajectories cut because they left the domain far
    md_steps: int


def triggered(c: Candidate, energy_sigma: float, force_sigma: float) -> bool:
    if c.t2_ratio > 1.0:
        return True
    if energy_sigma > 0 and float(np.max(c.energy_sigma)) > energy_sigma:
        return True
    return force_sigma > 0 and c.force_sigma is not None and float(np.max(c.force_sigma)) > force_sigma


def explore(
    model: ModelBackend,
    starts: Dict[str, ase.Atoms],
    config: ActiveConfig,
    iteration: int,
    progress: Optional[Callable[[int], None]] = None,
) -> ExploreResult:
    """Run the schedule from every start structure; return the triggered frames.

    Deterministic for a given model, config and iteration (seeded thermostat and velocities).
    ``progress(steps)`` is called after every block of MD steps.
    """
    ex, trig = config.explore, config.trigger
    scorer = Scorer(model, trig.mahalanobis_quantile, trig.threshold, config.run.device)
    calc_model = scorer.predictor.model
    states = {name: None for name in starts}
    pool: List[Candidate] = []
    n_frames = n_restarts = md_steps = 0
    for s, stage in enumerate(ex.schedule):
        for k, (name, start) in enumerate(starts.items()):
            rng = np.random.default_rng([config.run.seed, iteration, s, k])
            run, frame, close = _trajectory(states[name], start, stage, ex, rng, calc_model)
            blocks = max(1, stage.steps // ex.sample_every)
            atoms = None
            for b in range(blocks):
                cut = False
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", CloseContactWarning)
                        run(ex.sample_every)
                    md_steps += ex.sample_every
                    atoms = frame()
                    if not np.isfinite(atoms.positions).all():
                        raise InvalidStructureError("non-finite positions")
                    origin = f"{name} {stage.temperature_K:g}K stage {s} step {(b + 1) * ex.sample_every}"
                    cand = scorer.candidate(atoms, origin)
                    n_frames += 1
                    if triggered(cand, trig.energy_sigma, trig.force_sigma):
                        pool.append(cand)
                    cut = cand.t2_ratio > ex.abort_ratio or cand.min_distance_ratio < ex.min_distance_ratio
                except (InvalidStructureError, ValueError, FloatingPointError):
                    cut = True
                if progress is not None:
                    progress(ex.sample_every)
                if cut:
                    n_restarts += 1
                    atoms = None
                    if progress is not None:
                        progress(ex.sample_every * (blocks - b - 1))
                    break
            close()
            states[name] = atoms
    return ExploreResult(pool, n_frames, len(pool), n_restarts, md_steps)


def _trajectory(state: Optional[ase.Atoms], start: ase.Atoms, stage, ex, rng, model: ModelBackend):
    """(run(steps), frame() -> Atoms, close()) of one stage's trajectory, continuing from
    ``state`` (the previous stage's last frame) or from ``start`` with fresh velocities."""
    if ex.engine == "lammps":
        from .lammps_md import LammpsTrajectory

        if model.path is None:
            raise ValueError("the LAMMPS exploration engine needs the model as a file")
        traj = LammpsTrajectory(state if state is not None else start, Path(model.path), stage, ex.timestep_fs,
                                ex.friction, seed=int(rng.integers(1, 900_000_000)))
        return traj.run, traj.frame, traj.close
    if ex.engine == "ipi":
        from .ipi_md import IPITrajectory

        traj = IPITrajectory(state if state is not None else start, Predictor(model), stage, ex.timestep_fs,
                             ex.sample_every, seed=int(rng.integers(1, 900_000_000)))
        return traj.run, traj.frame, lambda: None
    atoms = state
    if atoms is None:
        atoms = start.copy()
        MaxwellBoltzmannDistribution(atoms, temperature_K=stage.temperature_K, rng=rng)
    atoms.calc = MLIPCalculator(model, monitors=False, close_contact="ignore")
    dyn = _dynamics(atoms, stage, ex, rng)
    return dyn.run, lambda: atoms, lambda: None


def _dynamics(atoms: ase.Atoms, stage, ex, rng):
    dt = ex.timestep_fs * units.fs
    if stage.pressure_GPa is not None and atoms.pbc.all() and atoms.info.get("structure") in ("bulk", "vacancy", "divacancy"):
        from ase.md.nptberendsen import NPTBerendsen

        return NPTBerendsen(atoms, dt, temperature_K=stage.temperature_K, pressure_au=stage.pressure_GPa * units.GPa,
                            taut=100 * units.fs, taup=1000 * units.fs, compressibility_au=7e-3 / units.GPa)
    return Langevin(atoms, dt, temperature_K=stage.temperature_K, friction=ex.friction / units.fs,
                    fixcm=False, rng=rng)
