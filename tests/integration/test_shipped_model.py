"""The shipped default Cu model: conformance, accuracy on the held-out test split (the
README's figures), energy conservation in NVE, and the main job (`mlip-md demo`)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
from ase import units
from ase.io import read
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.md.verlet import VelocityVerlet

from mlip_md import MLIPCalculator
from mlip_md.demo import vacancy_cell
from mlip_md.model.conformance import validate_model
from mlip_md.model.io import default_model_path, load_potential, read_metadata
from mlip_md.train.data import to_graph
from mlip_md.train.fit import evaluate_errors
from conftest import MLIP_MD  # noqa: E402

TEST_SPLIT = default_model_path().parent / "cu_test.extxyz.gz"


def test_shipped_model_passes_conformance():
    report = validate_model()
    assert report.passed, report.table()


def test_shipped_model_metadata():
    meta = read_metadata(default_model_path())
    assert meta["elements"] == ["Cu"] and meta["ensemble_size"] >= 4
    assert meta["provenance"]["reference"] == "lammps:eam/alloy:Cu_mishin1.eam.alloy"
    assert meta["dtype"] == "float64"


def test_shipped_model_accuracy_on_held_out_test_split():
    frames = read(TEST_SPLIT, ":")
    assert len(frames) >= 100
    module = load_potential(default_model_path())
    errors = evaluate_errors(module, [to_graph(a, module.cutoff) for a in frames])
    assert errors["mean"]["force_rmse"] <= 0.04, errors["mean"]
    assert errors["mean"]["energy_rmse_per_atom"] <= 0.002, errors["mean"]


def test_nve_energy_conservation():
    atoms = vacancy_cell(3)
    atoms.calc = MLIPCalculator()
    MaxwellBoltzmannDistribution(atoms, temperature_K=1200, rng=np.random.default_rng(1))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    totals = []
    for _ in range(500):
        dyn.run(1)
        totals.append(atoms.get_total_energy() / len(atoms))
    totals = np.asarray(totals)
    drift = np.polyfit(np.arange(len(totals)) * 1e-3, totals, 1)[0]  # eV/atom/ps
    assert abs(drift) < 1e-3, f"drift {drift * 1e3:.3f} meV/atom/ps"
    assert totals.std() < 1e-3


def test_main_job_demo_runs():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([MLIP_MD, "demo", "--steps", "60"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "summary" in out and "katom-steps/s" in out and "drift of the conserved quantity" in out
    assert "energy sigma per atom" in out and "max Mahalanobis" in out


def calibrated_intervals(frames):
    """Residuals, calibrated sigmas (as every engine reports them) and the stored predictive
    distributions: energies per structure; force components with sigma zero to rounding (fixed by
    symmetry) left out as the calibration does."""
    from mlip_md.runtime.predictor import Predictor
    from mlip_md.uq.calibration import EXACT_SIGMA, Distribution

    calibration = read_metadata(default_model_path())["calibration"]
    predictor = Predictor()
    e_res, e_sig, f_res, f_sig = [], [], [], []
    for atoms in frames:
        pred = predictor.predict_atoms(atoms, monitors=False, force_sigma=True)
        e_res.append(atoms.get_potential_energy() - pred.energy)
        e_sig.append(pred.energy_uncertainty)
        f_res.append((atoms.get_forces() - pred.forces).ravel())
        f_sig.append(pred.force_sigma.ravel())
    f_res, f_sig = np.concatenate(f_res), np.concatenate(f_sig)
    keep = f_sig > EXACT_SIGMA * np.median(f_sig)
    return {"energy": (np.array(e_res), np.array(e_sig), Distribution(**calibration["energy_distribution"])),
            "forces": (f_res[keep], f_sig[keep], Distribution(**calibration["force_distribution"]))}


def test_shipped_model_uncertainty_meets_the_calibration_goal_on_independent_held_out_data():
    """Issue 5's goal, checked through the engine outputs (Predictor.energy_uncertainty and
    force_sigma): on 305 held-out structures of the independent calibration data set (seed 1 of
    examples/cu_dataset.py, groups not used for the fit) the 95 % intervals cover 0.93-0.97 and
    ECE <= 0.03, for energies (alpha sigma^2 + floor N, Student t) and force components."""
    from mlip_md.uq.calibration import metrics

    held_out = read(Path(__file__).parents[1] / "data" / "cu_heldout_seed1.extxyz.gz", ":")
    assert len(held_out) == 305
    for quantity, (residual, sigma, distribution) in calibrated_intervals(held_out).items():
        m = metrics(residual, sigma, distribution)
        assert 0.93 <= m["coverage_95"] <= 0.97, (quantity, m)
        assert m["ece"] <= 0.03, (quantity, m)


def test_shipped_model_force_uncertainty_is_calibrated_on_held_out_split():
    """The shipped model was calibrated (`mlip-md calibrate`) on an independent data set (seed 1
    of examples/cu_dataset.py); on its own held-out test split the 95 % force intervals keep their
    promise (0.93-0.97; the README has 0.958) and the reliability curve stays close to the
    diagonal (ECE 0.040 there, against 0.135 before calibration)."""
    from mlip_md.runtime.predictor import Predictor
    from mlip_md.uq.calibration import Distribution, collect_residuals, metrics

    calibration = read_metadata(default_model_path())["calibration"]
    distribution = Distribution(**calibration["force_distribution"])
    residuals = collect_residuals(Predictor(), read(TEST_SPLIT, ":"))["forces"].informative()
    calibrated = metrics(residuals.residual, residuals.sigma * np.sqrt(calibration["force_variance_scale"]), distribution)
    assert 0.93 <= calibrated["coverage_95"] <= 0.97, calibrated
    assert calibrated["ece"] <= 0.05, calibrated
