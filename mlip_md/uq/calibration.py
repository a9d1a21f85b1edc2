"""Variance calibration of a model's uncertainties on labelled data.

Model: y ~ N(mu, alpha sigma^2). The maximum-likelihood scale is alpha = mean(r^2 / sigma^2)
(r = y - mu), fitted separately for total energies (eV) and force components (eV/Å). The
calibrated model stores alpha in its buffers (``energy_variance_scale``, ``force_variance_scale``)
and metadata, so every engine reports calibrated sigmas.

Metrics (for a set of residuals r and predicted sigmas s, z = |r| / s):
  nll                   mean Gaussian negative log-likelihood, 0.5 log(2 pi s^2) + r^2 / (2 s^2)
  coverage_68/_95       fraction of |r| <= 0.9945 s / 1.96 s
  calibration curve     observed coverage of the central p-interval, obs(p), for p in (0, 1)
  miscalibration_area   integral of |obs(p) - p| over p (trapezoid, 99 points)
  ece                   mean |obs(p) - p| over 10 equal bins of p (bin centres)
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import ase
import numpy as np
from scipy import stats

from .._atomic import atomic_path, atomic_write_text
from ..model.io import ExportedModel, load_model
from ..predictor import Predictor

QUANTITIES = ("energy", "forces")


@dataclasses.dataclass
class Residuals:
    """Residuals and *uncalibrated* sigmas of one quantity (flat arrays)."""

    name: str
    residual: np.ndarray
    sigma: np.ndarray

    def __post_init__(self) -> None:
        if len(self.residual) == 0:
            raise ValueError(f"no {self.name} samples to calibrate on")
        if not (np.all(np.isfinite(self.residual)) and np.all(np.isfinite(self.sigma))):
            raise ValueError(f"NaN or infinite {self.name} predictions or uncertainties: the model or the data "
                             "are broken; check the structures (mlip-md check, NaN positions)")
        if np.any(self.sigma <= 0):
            bad = int(np.sum(self.sigma <= 0))
            raise ValueError(f"{bad} {self.name} uncertainties are zero: calibration needs a model with a "
                             "spread (an ensemble with K >= 2 members, or another UQ head)")


def fit_variance_scale(residual: np.ndarray, sigma: np.ndarray) -> float:
    """Maximum-likelihood alpha of y ~ N(mu, alpha sigma^2)."""
    return float(np.mean((residual / sigma) ** 2))


def calibration_curve(residual: np.ndarray, sigma: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Observed coverage of the central ``levels`` intervals of N(0, sigma^2)."""
    z = np.abs(residual) / sigma
    bounds = stats.norm.ppf(0.5 + levels / 2.0)
    return (z[None, :] <= bounds[:, None]).mean(axis=1)


def metrics(residual: np.ndarray, sigma: np.ndarray) -> Dict[str, float]:
    levels = np.linspace(0.01, 0.99, 99)
    observed = calibration_curve(residual, sigma, levels)
    bins = np.linspace(0.05, 0.95, 10)
    observed_bins = calibration_curve(residual, sigma, bins)
    z = np.abs(residual) / sigma
    return {
        "n": int(len(residual)),
        "rmse": float(np.sqrt(np.mean(residual**2))),
        "mean_sigma": float(np.mean(sigma)),
        "nll": float(np.mean(0.5 * np.log(2 * np.pi * sigma**2) + 0.5 * z**2)),
        "coverage_68": float(np.mean(z <= stats.norm.ppf(0.5 + 0.6827 / 2))),
        "coverage_95": float(np.mean(z <= stats.norm.ppf(0.975))),
        "miscalibration_area": float(np.trapezoid(np.abs(observed - levels), levels)),
        "ece": float(np.mean(np.abs(observed_bins - bins))),
    }


def collect_residuals(predictor: Predictor, frames: Sequence[ase.Atoms]) -> Dict[str, Residuals]:
    """Energy and force residuals and the model's raw (alpha = 1) sigmas on labelled frames."""
    evidential = predictor.model.metadata.get("uq") == "evidential"
    if predictor.model.ensemble_size < 2 and not evidential:
        raise ValueError("calibration needs per-structure uncertainties: this model has one member; "
                         "train with --ensemble K >= 2 or --uq bll / evidential")
    e_res, e_sig, f_res, f_sig = [], [], [], []
    for k, atoms in enumerate(frames):
        try:
            reference_e = atoms.get_potential_energy()
            reference_f = atoms.get_forces()
        except Exception as exc:
            raise ValueError(f"calibration frame {k} lacks energy or forces ({exc}); calibrate on labelled "
                             "data (extxyz with energy and forces)") from None
        predictor.model.check_elements(atoms.numbers)
        pred = predictor.predict_atoms(atoms, monitors=False, force_sigma=True)
        e_res.append(reference_e - pred.energy)
        f_res.append((reference_f - pred.forces).ravel())
        if evidential:  # the model applies its stored scales: divide them out
            e_sig.append(pred.energy_uncertainty / predictor.energy_scale)
            f_sig.append(pred.force_sigma.ravel() / predictor.force_scale)
        else:
            e_sig.append(pred.energy_members.sum(axis=1).std(ddof=1))
            f_sig.append(pred.force_members.std(axis=0, ddof=1).ravel())
    return {
        "energy": Residuals("energy", np.asarray(e_res), np.asarray(e_sig)),
        "forces": Residuals("forces", np.concatenate(f_res), np.concatenate(f_sig)),
    }


def calibrate(model: ExportedModel, frames: Sequence[ase.Atoms], test_frames: Optional[Sequence[ase.Atoms]] = None) -> dict:
    """Fit alpha for energies and forces on ``frames``; report metrics before/after on ``frames``
    and, when given, on held-out ``test_frames``. Updates ``model`` in memory (buffers and
    metadata); returns the report."""
    predictor = Predictor(model)
    fit = collect_residuals(predictor, frames)
    scales = {q: fit_variance_scale(fit[q].residual, fit[q].sigma) for q in QUANTITIES}
    report: dict = {"alpha": scales, "fit": {}, "units": {"energy": "eV", "forces": "eV/angstrom"}}
    sets = {"fit": fit}
    if test_frames is not None:
        sets["test"] = collect_residuals(predictor, test_frames)
    for name, data in sets.items():
        report[name] = {
            q: {
                "before": metrics(data[q].residual, data[q].sigma),
                "after": metrics(data[q].residual, data[q].sigma * np.sqrt(scales[q])),
            }
            for q in QUANTITIES
        }
    apply_scales(model, scales["energy"], scales["forces"])
    report["_curves"] = {name: {q: (data[q].residual, data[q].sigma) for q in QUANTITIES} for name, data in sets.items()}
    return report


def apply_scales(model: ExportedModel, energy_alpha: float, force_alpha: float) -> None:
    """Store the variance scales in the module buffers and the metadata."""
    for name, value in (("energy_variance_scale", energy_alpha), ("force_variance_scale", force_alpha)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value}")
        getattr(model.module, name).fill_(float(value))
    model.metadata.setdefault("calibration", {}).update(
        energy_variance_scale=float(energy_alpha), force_variance_scale=float(force_alpha))


def reliability_diagram(report: dict, path: Path) -> Path:
    """PNG: observed vs expected coverage, before and after calibration, per quantity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = report["_curves"]
    name = "test" if "test" in curves else "fit"
    levels = np.linspace(0.01, 0.99, 99)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, q in zip(axes, QUANTITIES):
        residual, sigma = curves[name][q]
        alpha = report["alpha"][q]
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="ideal")
        for label, s, style in (("before", sigma, "C3"), (f"after (alpha = {alpha:.3g})", sigma * np.sqrt(alpha), "C0")):
            ax.plot(levels, calibration_curve(residual, s, levels), color=style, lw=2, label=label)
        m = report[name][q]["after"]
        ax.set_title(f"{q} ({name} set): ECE {m['ece']:.3f}, 95% coverage {m['coverage_95']:.3f}")
        ax.set_xlabel("expected coverage of the central interval")
        ax.set_ylabel("observed coverage")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def markdown(report: dict) -> str:
    lines = [f"Variance scales: energy alpha = {report['alpha']['energy']:.4g}, "
             f"forces alpha = {report['alpha']['forces']:.4g}", ""]
    for name in ("fit", "test"):
        if name not in report:
            continue
        lines += [f"**{name} set**", "",
                  "| quantity | | NLL | coverage 68% | coverage 95% | ECE | miscal. area | RMSE | mean sigma |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for q in QUANTITIES:
            for when in ("before", "after"):
                m = report[name][q][when]
                lines.append(f"| {q} | {when} | {m['nll']:.3f} | {m['coverage_68']:.3f} | {m['coverage_95']:.3f} | "
                             f"{m['ece']:.3f} | {m['miscalibration_area']:.3f} | {m['rmse']:.4g} | {m['mean_sigma']:.4g} |")
        lines.append("")
    return "\n".join(lines)


def write_reports(report: dict, stem: Path) -> List[Path]:
    """``stem``.json, ``stem``.md and ``stem``.png."""
    stem = Path(stem)
    clean = {k: v for k, v in report.items() if not k.startswith("_")}
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    atomic_write_text(paths[0], json.dumps(clean, indent=1))
    atomic_write_text(paths[1], markdown(report) + "\n")
    reliability_diagram(report, paths[2])
    return paths


def calibrate_file(model_path, data, output, test=None, report_stem=None) -> dict:
    """CLI entry: load, calibrate, write the calibrated model and the reports."""
    from ..train.data import read_structures

    model = load_model(model_path)
    report = calibrate(model, read_structures(data), read_structures(test) if test else None)
    model.save(output)
    stem = Path(report_stem) if report_stem else Path(output).with_suffix("")
    report["reports"] = [str(p) for p in write_reports(report, Path(str(stem) + "_calibration"))]
    return report
