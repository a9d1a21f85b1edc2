"""Uncertainty: the three UQ heads (ensemble, Bayesian last layer, evidential) and calibration."""
from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk

from mlip_md.model.conformance import validate_model
from mlip_md.model.io import load_potential, read_metadata
from mlip_md.model.potential import MLIPotential, ModelConfig
from mlip_md.runtime.factory import load_model
from mlip_md.runtime.predictor import Predictor
from mlip_md.train.data import to_graph
from mlip_md.train.trainer import TrainConfig, split_train_val, train_ensemble
from mlip_md.uq.bll import last_layer_design
from mlip_md.uq.calibration import (FREE_DOF, GAUSSIAN, MIN_DOF_STRUCTURES, MIN_FLOOR_STRUCTURES, MIN_SCALE_SAMPLES,
                                    Distribution, Residuals, calibrate, fit_quantity, fit_variance_scale, metrics,
                                    write_reports)

from conftest import TINY, emt_cu_frames


@pytest.fixture(scope="module")
def split(emt_frames):
    return split_train_val(emt_frames, 0.2, seed=0)


def train_tiny(tmp_path_factory, split, uq, epochs=8):
    train, val = split
    out = tmp_path_factory.mktemp(uq) / f"{uq}.pt"
    config = ModelConfig([29], ensemble_size=1 if uq != "ensemble" else 3, uq=uq, **TINY)
    report = train_ensemble(train, val, config, TrainConfig(epochs=epochs, batch_size=4), out, reference="emt")
    return out, report


@pytest.fixture(scope="module")
def calibration_frames():
    """Held-out labelled structures, enough to fit the variance scales (and the energy floor)."""
    return emt_cu_frames(MIN_FLOOR_STRUCTURES, seed=11)


@pytest.fixture(scope="module")
def bll_model(tmp_path_factory, split):
    return train_tiny(tmp_path_factory, split, "bll")


@pytest.fixture(scope="module")
def evidential_model(tmp_path_factory, split):
    return train_tiny(tmp_path_factory, split, "evidential")


def test_variance_scale_recovers_known_alpha():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.01, 0.5, 200_000)
    residual = rng.normal(scale=np.sqrt(3.7) * sigma)
    assert fit_variance_scale(residual, sigma) == pytest.approx(3.7, rel=0.02)
    calibrated = metrics(residual, sigma * np.sqrt(3.7))
    assert calibrated["coverage_95"] == pytest.approx(0.95, abs=0.005)
    assert calibrated["ece"] < 0.01 and calibrated["miscalibration_area"] < 0.01
    raw = metrics(residual, sigma)
    assert raw["coverage_95"] < 0.8 and raw["ece"] > 0.1


def test_small_ensembles_calibrate_as_student_t():
    """sigma from K = 4 members is a sample std: residual / sigma is t-distributed with 3 dof.
    The maximum-likelihood choice picks the t, recovers the scale and calibrates all levels;
    samples with sigma zero to rounding (fixed by symmetry) are left out."""
    rng = np.random.default_rng(1)
    truth = rng.uniform(0.01, 0.5, 100_000)
    members = rng.normal(size=(4, truth.size)) * truth
    sigma = members.std(axis=0, ddof=1)
    residual = rng.normal(size=truth.size) * truth * np.sqrt(2.5 * (1 + 1 / 4))  # y - mean of members
    data = Residuals("forces", np.r_[residual, 1e-17 * rng.normal(size=500)], np.r_[sigma, np.full(500, 1e-16)])
    informative = data.informative()
    assert informative.n_exact == 500 and len(informative.residual) == truth.size
    fit = fit_quantity(informative, [GAUSSIAN, Distribution("student-t", 3.0)])
    assert fit["distribution"].family == "student-t"
    assert fit["alpha"] == pytest.approx(2.5 * 1.25, rel=0.03)
    student = metrics(residual, sigma * np.sqrt(fit["alpha"]), fit["distribution"])
    gaussian = metrics(residual, sigma * np.sqrt(fit_variance_scale(residual, sigma)))
    assert student["ece"] < 0.01 and student["coverage_95"] == pytest.approx(0.95, abs=0.005)
    assert gaussian["ece"] > 0.05  # the heavy tails a Gaussian cannot follow


def test_energy_floor_recovers_alpha_and_floor_and_is_kept_only_when_present():
    """Energies: y = mu + e, var(e) = alpha sigma^2 + floor N. The joint fit recovers both; the
    AIC keeps the floor when it is there and drops it when it is not."""
    rng = np.random.default_rng(2)
    n = 20_000
    sigma = np.exp(rng.uniform(np.log(1e-4), np.log(0.1), n))  # both regimes well sampled
    atoms = rng.choice([107.0, 255.0], n)
    floored = np.sqrt(0.8 * sigma**2 + 2e-6 * atoms)
    data = Residuals("energy", rng.normal(size=n) * floored, sigma, atoms=atoms)
    fit = fit_quantity(data, [GAUSSIAN], floor=True)
    assert fit["floor"] == pytest.approx(2e-6, rel=0.05) and fit["alpha"] == pytest.approx(0.8, rel=0.08)
    assert metrics(data.residual, fit["model"].scale(sigma, atoms))["ece"] < 0.01
    alpha_only = metrics(data.residual, sigma * np.sqrt(fit_variance_scale(data.residual, sigma)))
    assert alpha_only["ece"] > 0.05  # one alpha cannot follow both regimes
    plain = Residuals("energy", rng.normal(size=n) * sigma * np.sqrt(0.8), sigma, atoms=atoms)
    fit = fit_quantity(plain, [GAUSSIAN], floor=True)
    assert fit["floor"] == 0.0 and fit["alpha"] == pytest.approx(0.8, rel=0.03)


def test_free_dof_student_t_is_fitted():
    rng = np.random.default_rng(3)
    sigma = rng.uniform(0.01, 0.1, 20_000)
    data = Residuals("energy", sigma * 1.5 * rng.standard_t(6.0, sigma.size), sigma, atoms=np.full(sigma.size, 100.0))
    fit = fit_quantity(data, [GAUSSIAN, FREE_DOF], floor=False)
    assert fit["distribution"].family == "student-t" and fit["distribution"].dof == pytest.approx(6.0, rel=0.25)
    assert fit["alpha"] == pytest.approx(2.25, rel=0.05)


def test_calibrated_floor_reaches_every_engine_output(trained_model_path, split, tmp_path):
    """The floor lives in the model: per-atom energy_sigma^2 = alpha sigma_i^2 + floor, and the
    total energy uncertainty^2 = alpha var_K(E) + floor N, also after a save/load round trip."""
    from mlip_md.uq.calibration import apply_scales

    model = load_model(trained_model_path)
    atoms = split[1][0]
    raw = Predictor(model).predict_atoms(atoms)
    apply_scales(model, 0.5, 1.0, energy_floor=4e-6)
    model.save(tmp_path / "floor.pt")
    pred = Predictor(load_model(tmp_path / "floor.pt")).predict_atoms(atoms)
    np.testing.assert_allclose(pred.energy_sigma**2, 0.5 * raw.energy_sigma**2 + 4e-6, rtol=1e-10)
    total_var = raw.energy_members.sum(axis=1).var(ddof=1)
    assert pred.energy_uncertainty**2 == pytest.approx(0.5 * total_var + 4e-6 * len(atoms), rel=1e-10)


def test_bll_sigma_points_reproduce_the_posterior(bll_model, split):
    path, report = bll_model
    meta = read_metadata(path)
    module = load_potential(path)
    d = module.bll_dim
    assert meta["uq"] == "bll" and meta["ensemble_size"] == 2 * d == module.n_members
    assert report["uq"]["method"] == "bll" and report["uq"]["noise_variance"] > 0
    # per-structure variance from the sigma points equals s^2 phi^T Sigma phi from the factor
    graphs = [to_graph(a, module.cutoff) for a in split[1]]
    phi, _, _ = last_layer_design(module, graphs)
    factor = module.bll_factor[0].double() / np.sqrt(d)  # rows of L
    analytic = float(module.energy_scale) ** 2 * ((phi @ factor) ** 2).sum(dim=1)
    predictor = Predictor(path)
    for k, atoms in enumerate(split[1][:3]):
        pred = predictor.predict_atoms(atoms, monitors=True)
        totals = pred.energy_members.sum(axis=1)
        assert totals.mean() == pytest.approx(pred.energy, abs=1e-9)
        assert totals.var(ddof=0) == pytest.approx(float(analytic[k]), rel=1e-5)
        assert np.all(pred.energy_sigma > 0)


def test_bll_and_evidential_models_pass_conformance(bll_model, evidential_model):
    for path, _ in (bll_model, evidential_model):
        report = validate_model(path)
        assert report.passed, report.table()


def test_uncertainty_grows_out_of_domain(bll_model, evidential_model, tmp_path_factory, split):
    """Compressed by 8% and heavily rattled: further from the EMT training data, more sigma."""
    ensemble_path, _ = train_tiny(tmp_path_factory, split, "ensemble", epochs=4)
    inside = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    inside.rattle(0.05, seed=1)
    outside = inside.copy()
    outside.set_cell(outside.cell.array * 0.92, scale_atoms=True)
    outside.rattle(0.25, seed=2)
    for path in (bll_model[0], evidential_model[0], ensemble_path):
        predictor = Predictor(path)
        a = predictor.predict_atoms(inside).energy_sigma.mean()
        b = predictor.predict_atoms(outside).energy_sigma.mean()
        assert b > a, (path.name, a, b)


def test_evidential_outputs(evidential_model, split):
    path, report = evidential_model
    assert read_metadata(path)["uq"] == "evidential"
    pred = Predictor(path).predict_atoms(split[1][0], monitors=True, force_sigma=True)
    n = len(split[1][0])
    assert pred.energy_variance.shape == (n,) and np.all(pred.energy_variance > 0)
    assert pred.energy_uncertainty == pytest.approx(np.sqrt(pred.energy_variance.sum()))
    assert pred.force_sigma.shape == (n, 3) and np.all(pred.force_sigma > 0)
    np.testing.assert_allclose(pred.energy_sigma, np.sqrt(pred.energy_variance), rtol=1e-10)


@pytest.mark.parametrize("which", ["bll", "evidential", "ensemble"])
def test_calibration_writes_reports_and_scales(which, bll_model, evidential_model, trained_model_path, split,
                                              calibration_frames, tmp_path):
    path = {"bll": bll_model[0], "evidential": evidential_model[0], "ensemble": trained_model_path}[which]
    model = load_model(path)
    report = calibrate(model, calibration_frames, test_frames=split[1])
    for q in ("energy", "forces"):
        assert report["alpha"][q] > 0
        before, after = report["fit"][q]["before"], report["fit"][q]["after"]
        assert after["nll"] <= before["nll"] + 1e-9  # alpha is the maximum-likelihood scale
    out = tmp_path / "cal.pt"
    model.save(out)
    calibrated = load_model(out)
    assert calibrated.metadata["calibration"]["energy_variance_scale"] == pytest.approx(report["alpha"]["energy"])
    assert float(calibrated.module.force_variance_scale) == pytest.approx(report["alpha"]["forces"])
    assert calibrated.metadata["calibration"]["force_distribution"] == report["distribution"]["forces"]
    # K = 2 (t with 1 dof has no variance) and the other heads: Gaussian only
    assert [c["family"] for c in report["candidates"]["forces"]] == ["gaussian"]
    paths = write_reports(report, tmp_path / "report")
    assert [p.suffix for p in paths] == [".json", ".md", ".png"] and all(p.stat().st_size > 0 for p in paths)
    assert "coverage_95" in json.loads(paths[0].read_text())["fit"]["energy"]["after"]


def test_calibration_bad_input(trained_model_path, split):
    from ase.calculators.singlepoint import SinglePointCalculator

    model = load_model(trained_model_path)
    unlabelled = split[1][0].copy()
    unlabelled.calc = SinglePointCalculator(unlabelled, energy=0.0)
    with pytest.raises(ValueError, match="lacks energy or forces"):
        calibrate(model, [unlabelled])
    gold = split[1][0].copy()
    gold.numbers[0] = 79
    gold.calc = SinglePointCalculator(gold, energy=0.0, forces=np.zeros((len(gold), 3)))
    with pytest.raises(Exception, match="Au unknown"):
        calibrate(model, [gold])


def test_uq_config_errors():
    with pytest.raises(ValueError, match="uq must be one of"):
        MLIPotential(ModelConfig([29], uq="dropout", **TINY))
    with pytest.raises(ValueError, match="ensemble_size=1"):
        MLIPotential(ModelConfig([29], uq="bll", ensemble_size=4, **TINY))


def test_calibration_refuses_too_few_structures(trained_model_path, calibration_frames):
    from mlip_md.errors import LabelledDataError

    model = load_model(trained_model_path)
    for n, error in ((1, "141%"), (2, "100%")):
        with pytest.raises(LabelledDataError, match=rf"too few samples to fit the energy variance scale alpha: {n} "
                           rf"structures?, at least 8 needed.*sqrt\(2/n\) \({error} here, 50% at 8\)"):
            calibrate(model, calibration_frames[:n])
    assert model.metadata["calibration"]["energy_variance_scale"] == 1.0  # nothing applied
    enough = MIN_SCALE_SAMPLES["energy"]
    report = calibrate(model, calibration_frames[:enough])
    assert report["alpha"]["energy"] > 0 and report["fit"]["energy"]["after"]["n"] == enough
    assert report["skipped"]["energy"] == [f"variance floor not tried: {enough} structures, at least 20 needed",
                                           f"Student t with fitted dof not tried: {enough} structures, at least 50 "
                                           "needed"]
    assert all(c["floor"] == 0.0 for c in report["candidates"]["energy"])


def test_floor_dof_and_force_scale_need_their_minimum_samples():
    from mlip_md.errors import LabelledDataError

    rng = np.random.default_rng(3)

    def energies(n):
        sigma = rng.uniform(0.01, 0.1, n)
        return Residuals("energy", rng.normal(scale=sigma), sigma, atoms=np.full(n, 32.0))

    few = fit_quantity(energies(MIN_FLOOR_STRUCTURES - 1), [GAUSSIAN, FREE_DOF], floor=True)
    assert [(c["family"], c["floor"]) for c in few["candidates"]] == [("gaussian", 0.0)]
    assert len(few["skipped"]) == 2
    floor_only = fit_quantity(energies(MIN_FLOOR_STRUCTURES), [GAUSSIAN, FREE_DOF], floor=True)
    assert len(floor_only["candidates"]) == 2 and floor_only["skipped"][0].startswith("Student t with fitted dof")
    everything = fit_quantity(energies(MIN_DOF_STRUCTURES), [GAUSSIAN, FREE_DOF], floor=True)
    assert len(everything["candidates"]) == 4 and everything["skipped"] == []
    n_forces = MIN_SCALE_SAMPLES["forces"]
    sigma = rng.uniform(0.01, 0.1, n_forces)
    with pytest.raises(LabelledDataError, match=f"force variance scale alpha: {n_forces - 1} force components, "
                       f"at least {n_forces} needed"):
        fit_quantity(Residuals("forces", sigma[1:], sigma[1:]), [GAUSSIAN])
    assert fit_quantity(Residuals("forces", sigma, sigma), [GAUSSIAN])["alpha"] == pytest.approx(1.0)
