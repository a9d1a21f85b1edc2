"""Applicability-domain analyses and monitors with real (small) models trained on EMT copper."""
from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from ase.build import fcc100
from ase.calculators.emt import EMT

from mlip_md.domain import workflows
from mlip_md.domain.analysis import auroc
from mlip_md.runtime.monitors import default_policy
from mlip_md.runtime.predictor import Predictor
from conftest import MLIP_MD  # noqa: E402

A = 3.59  # EMT copper, close to its equilibrium


@pytest.fixture(scope="module")
def bulk_only_model(tmp_path_factory):
    rng = np.random.default_rng(5)
    frames = workflows.label(workflows.thermal_crystals("Cu", A, 60, rng, amplitude=(0.03, 0.12), repeat=2), EMT())
    settings = workflows.Settings(ensemble=3, epochs=12)
    return workflows.train_model(frames, settings, tmp_path_factory.mktemp("bulk") / "bulk.pt")


def test_auroc_definition():
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == pytest.approx(0.75)
    assert auroc(np.arange(10.0), np.arange(10) >= 5) == 1.0


def test_monitors_fire_on_a_surface_but_not_on_bulk_at_training_temperatures(bulk_only_model):
    predictor = Predictor(bulk_only_model)
    policy = default_policy(predictor.model, actions=())
    rng = np.random.default_rng(11)
    fired_bulk = 0
    for atoms in workflows.thermal_crystals("Cu", A, 8, rng, amplitude=(0.04, 0.08), repeat=2):
        fired_bulk += len(policy.observe(atoms, predictor.predict_atoms(atoms)))
        policy = default_policy(predictor.model, actions=())  # fresh: no hysteresis carry-over
    slab = fcc100("Cu", size=(2, 2, 4), a=A, vacuum=6.0, periodic=True)
    events = policy.observe(slab, predictor.predict_atoms(slab))
    assert fired_bulk == 0
    signals = {e.signal for e in events}
    assert {"mahalanobis", "d_min"} & signals, signals
    flagged = set(np.concatenate([e.atoms for e in events]).tolist())
    z = slab.positions[:, 2]
    surface_atoms = set(np.flatnonzero((z < z.min() + 0.1) | (z > z.max() - 0.1)).tolist())
    assert surface_atoms <= flagged


def test_domain_cli_reports(tmp_path, bulk_only_model):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([MLIP_MD, "domain", "crystal-only", "--model", bulk_only_model,
                           "--a", str(A), "-o", tmp_path / "co"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "co" / "crystal_only.json").read_text())
    assert set(report["per_category"]) >= {"vacancy", "surface", "bulk (as trained)"}
    assert report["per_category"]["surface"]["mean_z"] < report["per_category"]["bulk (as trained)"]["mean_z"]
    assert report["per_category"]["surface"]["mean_t2"] > 10 * report["per_category"]["bulk (as trained)"]["mean_t2"]
    assert max(report["auroc"].values()) >= 0.8
    assert (tmp_path / "co" / "crystal_only.png").stat().st_size > 10_000
    assert "AUROC" in (tmp_path / "co" / "crystal_only.md").read_text()


def test_bond_breaking_exit_and_error_growth(tmp_path):
    report = workflows.bond_breaking(workflows.Settings(ensemble=2, epochs=25), tmp_path / "bb")
    assert report["s_train_max"] == pytest.approx(0.2)
    assert report["s_train_max"] < report["s_exit"] <= report["s_train_max"] + 0.05
    inside = [r for r in report["scan"] if r["stretch"] <= report["s_train_max"]]
    assert all(r["hull_distance"] < 1e-7 for r in inside)
    assert report["energy_error_beyond"] > 10 * report["energy_error_inside"]
    assert all((tmp_path / "bb" / f"bond_breaking.{ext}").exists() for ext in ("json", "md", "png"))


def test_crystal_only_with_model_agnostic_soap_signals(tmp_path, bulk_only_model):
    pytest.importorskip("featomic")
    report = workflows.crystal_only(workflows.Settings(lattice_constant=A), tmp_path / "soap", model=bulk_only_model,
                                    n_train=30, soap=True)
    aurocs = report["auroc"]
    assert {"SOAP T^2 (model-agnostic)", "SOAP d_min (model-agnostic)"} <= set(aurocs)
    assert max(aurocs["SOAP T^2 (model-agnostic)"], aurocs["SOAP d_min (model-agnostic)"]) >= 0.8
