"""Variance calibration of a model's uncertainties on labelled data.

Model: y ~ N(mu, alpha sigma^2). The maximum-likelihood scale is alpha = mean(r^2 / sigma^2)
(r = y - mu), fitted separately for total energies (eV) and force components (eV/Å). The
calibrated model stores alpha in its buffers (``energy_variance_scale``, ``force_variance_scale``)
and metadata, so every engine reports calibrated sigmas.

Ensembles: sigma is a *sample* standard deviation of K members, so r / sigma follows a Student t
with K - 1 degrees of freedom rather than a Gaussian (the heavy tails of a K = 4 ensemble make
a Gaussian over-cover its 68 % interval by 10-15 %). ``family="auto"`` fits both
y ~ N(mu, alpha sigma^2) and y ~ mu + sqrt(alpha) sigma t_{K-1} by maximum likelihood and keeps
the one with the higher likelihood on the fit set; the choice and the degrees of freedom are
stored in the metadata (``calibration.<quantity>_distribution``): an interval of probability p
is then sqrt(alpha) sigma times the p-quantile of that distribution. Samples whose sigma is
zero to rounding (force components fixed by symmetry, where every member and the reference
agree exactly) carry no information and are left out (counted in the report as ``n_exact``).

Energies: a variance floor. A total energy is one sample per structure, and in the training
domain its error is dominated by model bias the ensemble spread does not see (on the shipped Cu
model the Spearman correlation of |error| with sigma over 1487 held-out structures is 0.13, and
the spread over-covers some structure classes 3x while under-covering others 2x). One alpha
then cannot fit every level. The energy variance model is therefore

    sigma_cal^2 = alpha sigma^2 + floor * N      (floor: eV^2 per atom, N: atoms)

with alpha and the floor fitted jointly by maximum likelihood (per atom: sigma_i,cal^2 =
alpha sigma_i^2 + floor, so the in-domain floor dominates where members agree and the ensemble
term takes over out of domain, where sigma grows). For energies ``auto`` also tries a Student
t with a fitted number of degrees of freedom. Every candidate (family x floor or not) is ranked
by AIC (2 n NLL + 2 parameters), so a floor or a free dof is kept only when the data ask for it;
``floor=False`` turns the floor off. Forces keep alpha alone: many components per structure,
and their spread tracks their error (the force goal is met without a floor).

Minimum sample sizes. A variance scale fitted to n independent samples has a relative standard
error of sqrt(2 / n) (Gaussian residuals; heavier tails make it larger), and the calibrated sigma,
sqrt(alpha), about half that, 1 / sqrt(2 n). From 1 structure alpha is uncertain by 141 %, from 2
by 100 %: a fit from so few numbers is noise, so calibration refuses it
(:class:`~mlip_md.errors.LabelledDataError`, naming how many samples each quantity needs):
  energy alpha        >= 8 structures: alpha to +-50 %, sigma to +-25 % (one standard error),
                      far better than the raw ensemble spread (off by 1.6x for forces, 6x for
                      energies on the shipped model)
  force alpha         >= 50 informative components: +-20 % on alpha were they independent; the
                      components of one structure share its error, so we ask for more than the
                      energy's 8 (8 structures of 3 atoms already have 72 components)
  energy floor        >= 20 structures: a second variance parameter, told apart from alpha only by
                      how sigma^2 / N varies between structures (10 samples per fitted parameter,
                      the usual rule for maximum likelihood / AIC to be trusted)
  fitted Student dof  >= 50 structures: the tail weight is set by the few largest |r| / sigma; at
                      n = 50 only 2.5 samples are expected beyond the 95 % quantile
The floor and a fitted dof are optional candidates (AIC decides whether to keep them): with fewer
structures they are not tried, and the report says so (``skipped``); too few samples for alpha is
an error.

Metrics (for a set of residuals r and predicted scales s, z = |r| / s, quantiles q of the
predictive distribution: Gaussian, or Student t):
  nll                   mean negative log-likelihood of r under the predictive distribution
  coverage_68/_95       fraction of |r| <= q(0.84) s / q(0.975) s
  calibration curve     observed coverage of the central p-interval, obs(p), for p in (0, 1)
  miscalibration_area   integral of |obs(p) - p| over p (trapezoid, 99 points)
  ece                   mean |obs(p) - p| over 10 equal bins of p (bin centres)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import ase
import numpy as np
from scipy import optimize, stats

from ..files import atomic_path, atomic_write_text
from ..errors import LabelledDataError
from ..runtime.backend import ModelBackend
from ..runtime.factory import load_model
from ..runtime.predictor import Predictor

QUANTITIES = ("energy", "forces")
FAMILIES = ("auto", "gaussian", "student-t")
EXACT_SIGMA = 1e-4  # sigma below this fraction of the median sigma is zero to rounding
#: fewest samples (energies: structures; forces: informative components) to fit alpha (module docstring)
MIN_SCALE_SAMPLES = {"energy": 8, "forces": 50}
MIN_FLOOR_STRUCTURES = 20  # energy variance floor: 10 structures per fitted parameter (alpha, floor)
MIN_DOF_STRUCTURES = 50  # a fitted Student-t dof: its tails need samples beyond the 95 % quantile


@dataclasses.dataclass(frozen=True)
class Distribution:
    """Predictive distribution of a residual in units of its calibrated sigma."""

    family: str = "gaussian"
    dof: Optional[float] = None  # Student t only

    def ppf(self, q):
        return stats.t.ppf(q, self.dof) if self.family == "student-t" else stats.norm.ppf(q)

    def logpdf(self, z):
        return stats.t.logpdf(z, self.dof) if self.family == "student-t" else stats.norm.logpdf(z)

    def as_dict(self) -> dict:
        return {"family": self.family} if self.family == "gaussian" else {"family": self.family, "dof": self.dof}

    def describe(self) -> str:
        return "Gaussian" if self.family == "gaussian" else f"Student t ({self.dof:.3g} dof)"


GAUSSIAN = Distribution()


FREE_DOF = Distribution("student-t", None)  # a Student t whose dof are fitted with the scale


@dataclasses.dataclass
class Residuals:
    """Residuals and *uncalibrated* sigmas of one quantity (flat arrays); ``atoms`` holds the
    number of atoms behind each sample (energies: the structure's N; None for forces)."""

    name: str
    residual: np.ndarray
    sigma: np.ndarray
    n_exact: int = 0  # samples left out because their sigma was zero to rounding
    atoms: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        if len(self.residual) == 0:
            raise ValueError(f"no {self.name} samples to calibrate on")
        if not (np.all(np.isfinite(self.residual)) and np.all(np.isfinite(self.sigma))):
            raise ValueError(f"NaN or infinite {self.name} predictions or uncertainties: the model or the data "
                             "are broken; check the structures (mlip-md check, NaN positions)")
        if np.any(self.sigma < 0) or not np.any(self.sigma > 0):
            raise ValueError(f"the {self.name} uncertainties are all zero (or negative): calibration needs a model "
                             "with a spread (an ensemble with K >= 2 members, or another UQ head)")

    def informative(self) -> "Residuals":
        """Without the samples whose sigma is zero to rounding (see the module docstring)."""
        keep = self.sigma > EXACT_SIGMA * np.median(self.sigma)
        atoms = None if self.atoms is None else self.atoms[keep]
        return Residuals(self.name, self.residual[keep], self.sigma[keep], self.n_exact + int(np.sum(~keep)), atoms)


@dataclasses.dataclass(frozen=True)
class VarianceModel:
    """sigma_cal^2 = alpha sigma^2 + floor * atoms (floor in units^2 per atom; 0 for forces)."""

    alpha: float
    floor: float = 0.0

    def scale(self, sigma: np.ndarray, atoms: Optional[np.ndarray] = None) -> np.ndarray:
        if self.floor == 0.0 or atoms is None:
            return sigma * np.sqrt(self.alpha)
        return np.sqrt(self.alpha * sigma**2 + self.floor * atoms)


def fit_variance_scale(residual: np.ndarray, sigma: np.ndarray, distribution: Distribution = GAUSSIAN) -> float:
    """Maximum-likelihood alpha of y = mu + sqrt(alpha) sigma e, e ~ ``distribution``
    (closed form mean(r^2 / sigma^2) for a Gaussian)."""
    if distribution.family == "gaussian":
        return float(np.mean((residual / sigma) ** 2))
    z = residual / sigma

    def negative_log_likelihood(log_alpha: float) -> float:
        return float(-np.mean(distribution.logpdf(z * np.exp(-0.5 * log_alpha))) + 0.5 * log_alpha)

    start = np.log(np.mean(z**2))
    result = optimize.minimize_scalar(negative_log_likelihood, bounds=(start - 12.0, start + 2.0), method="bounded")
    return float(np.exp(result.x))


def fit_variance_model(data: Residuals, distribution: Distribution, floor: bool) -> tuple:
    """Maximum-likelihood (VarianceModel, Distribution, mean NLL) for ``data``. With ``floor``
    (needs ``data.atoms``) the per-atom floor is fitted with alpha; a ``FREE_DOF`` Student t has
    its dof (> 2, so the variance exists) fitted too."""
    free_dof = distribution.family == "student-t" and distribution.dof is None
    if not floor and not free_dof:
        alpha = fit_variance_scale(data.residual, data.sigma, distribution)
        return VarianceModel(alpha), distribution, metrics(data.residual, data.sigma * np.sqrt(alpha), distribution)["nll"]
    if floor and data.atoms is None:
        raise ValueError(f"a variance floor needs the number of atoms of each {data.name} sample")
    r, sigma, atoms = data.residual, data.sigma, data.atoms if floor else None

    def unpack(p):
        model = VarianceModel(float(np.exp(p[0])), float(np.exp(p[1])) if floor else 0.0)
        dist = Distribution("student-t", 2.0 + float(np.exp(p[-1]))) if free_dof else distribution
        return model, dist

    def negative_log_likelihood(p) -> float:
        model, dist = unpack(p)
        scale = model.scale(sigma, atoms)
        return float(np.mean(np.log(scale) - dist.logpdf(r / scale)))

    alpha0 = float(np.mean((r / sigma) ** 2))
    start = [np.log(alpha0)]
    if floor:
        start.append(np.log(0.1 * np.mean(r**2 / atoms)))
    if free_dof:
        start.append(np.log(3.0))
    best = None
    for shrink in (1.0, 0.1, 0.01):  # the floor can take over most of the variance: try small alphas too
        start[0] = np.log(alpha0 * shrink)
        result = optimize.minimize(negative_log_likelihood, start, method="Nelder-Mead",
                                   options={"xatol": 1e-7, "fatol": 1e-10, "maxiter": 4000})
        if best is None or result.fun < best.fun:
            best = result
    model, dist = unpack(best.x)
    return model, dist, float(best.fun)


def calibration_curve(residual: np.ndarray, sigma: np.ndarray, levels: np.ndarray,
                      distribution: Distribution = GAUSSIAN) -> np.ndarray:
    """Observed coverage of the central ``levels`` intervals of the predictive distribution."""
    z = np.abs(residual) / sigma
    bounds = distribution.ppf(0.5 + levels / 2.0)
    return (z[None, :] <= bounds[:, None]).mean(axis=1)


def metrics(residual: np.ndarray, sigma: np.ndarray, distribution: Distribution = GAUSSIAN) -> Dict[str, float]:
    levels = np.linspace(0.01, 0.99, 99)
    observed = calibration_curve(residual, sigma, levels, distribution)
    bins = np.linspace(0.05, 0.95, 10)
    observed_bins = calibration_curve(residual, sigma, bins, distribution)
    z = np.abs(residual) / sigma
    return {
        "n": int(len(residual)),
        "rmse": float(np.sqrt(np.mean(residual**2))),
        "mean_sigma": float(np.mean(sigma)),
        "nll": float(np.mean(np.log(sigma) - distribution.logpdf(z))),
        "coverage_68": float(np.mean(z <= distribution.ppf(0.5 + 0.6827 / 2))),
        "coverage_95": float(np.mean(z <= distribution.ppf(0.975))),
        "miscalibration_area": float(np.trapezoid(np.abs(observed - levels), levels)),
        "ece": float(np.mean(np.abs(observed_bins - bins))),
    }


def collect_residuals(predictor: Predictor, frames: Sequence[ase.Atoms]) -> Dict[str, Residuals]:
    """Energy and force residuals and the model's raw (alpha = 1) sigmas on labelled frames."""
    evidential = predictor.info.uq == "evidential"
    if predictor.model.ensemble_size < 2 and not evidential:
        raise ValueError("calibration needs per-structure uncertainties: this model has one member; "
                         "train with --ensemble K >= 2 or --uq bll / evidential")
    e_res, e_sig, f_res, f_sig, n_atoms = [], [], [], [], []
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
        n_atoms.append(len(atoms))
        f_res.append((reference_f - pred.forces).ravel())
        if evidential:  # the model applies its stored calibration: undo it
            raw_variance = pred.energy_uncertainty**2 - predictor.energy_floor * len(atoms)
            e_sig.append(np.sqrt(max(raw_variance, 0.0)) / predictor.energy_scale)
            f_sig.append(pred.force_sigma.ravel() / predictor.force_scale)
        else:
            e_sig.append(pred.energy_members.sum(axis=1).std(ddof=1))
            f_sig.append(pred.force_members.std(axis=0, ddof=1).ravel())
    return {
        "energy": Residuals("energy", np.asarray(e_res), np.asarray(e_sig), atoms=np.asarray(n_atoms, dtype=float)),
        "forces": Residuals("forces", np.concatenate(f_res), np.concatenate(f_sig)),
    }


def candidate_distributions(model: ModelBackend, family: str) -> List[Distribution]:
    """Predictive families to try: Student t with K - 1 dof exists for ensembles of K >= 3."""
    if family not in FAMILIES:
        raise ValueError(f"unknown distribution family {family!r}: choose one of {', '.join(FAMILIES)}")
    k = model.ensemble_size
    student = Distribution("student-t", float(k - 1)) if model.info.uq in (None, "ensemble") and k >= 3 else None
    if family == "student-t":
        if student is None:
            raise ValueError("a Student t calibration needs an ensemble of K >= 3 members (its dof are K - 1); "
                             "use --distribution gaussian")
        return [student]
    if family == "gaussian" or student is None:
        return [GAUSSIAN]
    return [GAUSSIAN, student]


def require_scale_samples(data: Residuals) -> None:
    """Raise LabelledDataError when ``data`` has too few samples to fit its variance scale alpha
    (:data:`MIN_SCALE_SAMPLES`, see the module docstring)."""
    n, needed = len(data.residual), MIN_SCALE_SAMPLES.get(data.name, MIN_SCALE_SAMPLES["energy"])
    if n >= needed:
        return
    quantity, unit = ("energy", "structure") if data.name == "energy" else ("force", "force component")
    exact = f" ({data.n_exact} more left out: sigma zero to rounding)" if data.n_exact else ""
    raise LabelledDataError(
        f"too few samples to fit the {quantity} variance scale alpha: {n} {unit}{'' if n == 1 else 's'}{exact}, "
        f"at least {needed} needed. A variance scale fitted to n samples has a relative standard error of sqrt(2/n) "
        f"({np.sqrt(2.0 / max(n, 1)):.0%} here, {np.sqrt(2.0 / needed):.0%} at {needed}); calibrate on more "
        "labelled structures (a few dozen held-out structures is typical)")


def fit_quantity(data: Residuals, candidates: Sequence[Distribution], floor: bool = False) -> dict:
    """Fit every candidate family (with and without a variance floor when ``floor``); the lowest
    AIC = 2 n NLL + 2 k wins (k: alpha, + floor, + free dof).

    Needs enough samples (module docstring): too few for alpha raises LabelledDataError; the floor
    and a fitted dof are not tried below :data:`MIN_FLOOR_STRUCTURES` / :data:`MIN_DOF_STRUCTURES`
    samples, which the returned ``skipped`` list explains."""
    require_scale_samples(data)
    n = len(data.residual)
    skipped = []
    if floor and n < MIN_FLOOR_STRUCTURES:
        floor = False
        skipped.append(f"variance floor not tried: {n} structures, at least {MIN_FLOOR_STRUCTURES} needed")
    if any(d.family == "student-t" and d.dof is None for d in candidates) and n < MIN_DOF_STRUCTURES:
        candidates = [d for d in candidates if not (d.family == "student-t" and d.dof is None)]
        skipped.append(f"Student t with fitted dof not tried: {n} structures, at least {MIN_DOF_STRUCTURES} needed")
    fits = []
    for distribution in candidates:
        for with_floor in ((False, True) if floor else (False,)):
            model, fitted, nll = fit_variance_model(data, distribution, with_floor)
            k = 1 + int(with_floor) + int(distribution.family == "student-t" and distribution.dof is None)
            fits.append({"distribution": fitted, "model": model, "alpha": model.alpha, "floor": model.floor,
                         "nll": nll, "aic": 2.0 * len(data.residual) * nll + 2.0 * k})
    best = min(fits, key=lambda fit: fit["aic"])
    return {**best, "skipped": skipped,
            "candidates": [{**f["distribution"].as_dict(), "alpha": f["alpha"], "floor": f["floor"],
                            "nll": f["nll"], "aic": f["aic"]} for f in fits]}


def calibrate(model: ModelBackend, frames: Sequence[ase.Atoms], test_frames: Optional[Sequence[ase.Atoms]] = None,
              family: str = "auto", floor: bool = True) -> dict:
    """Fit alpha (and the predictive family and, for energies, the per-atom variance floor: see
    the module docstring) for energies and forces on ``frames``; report metrics before/after on
    ``frames`` and, when given, on held-out ``test_frames``. Updates ``model`` in memory
    (buffers and metadata); returns the report."""
    candidates = candidate_distributions(model, family)
    energy_candidates = candidates + [FREE_DOF] if family == "auto" else candidates
    predictor = Predictor(model)
    fit = {q: r.informative() for q, r in collect_residuals(predictor, frames).items()}
    for q in QUANTITIES:  # both checked before either is fitted
        require_scale_samples(fit[q])
    fitted = {"energy": fit_quantity(fit["energy"], energy_candidates, floor=floor),
              "forces": fit_quantity(fit["forces"], candidates)}
    scales = {q: fitted[q]["alpha"] for q in QUANTITIES}
    variance_models = {q: fitted[q]["model"] for q in QUANTITIES}
    distributions = {q: fitted[q]["distribution"] for q in QUANTITIES}
    report: dict = {
        "alpha": scales,
        "energy_variance_floor": variance_models["energy"].floor,
        "distribution": {q: distributions[q].as_dict() for q in QUANTITIES},
        "candidates": {q: fitted[q]["candidates"] for q in QUANTITIES},
        "skipped": {q: fitted[q]["skipped"] for q in QUANTITIES if fitted[q]["skipped"]},
        "units": {"energy": "eV", "forces": "eV/angstrom"},
    }
    sets = {"fit": fit}
    if test_frames is not None:
        sets["test"] = {q: r.informative() for q, r in collect_residuals(predictor, test_frames).items()}
    for name, data in sets.items():
        report[name] = {
            q: {
                "n_exact": data[q].n_exact,
                "before": metrics(data[q].residual, data[q].sigma),
                "after": metrics(data[q].residual, variance_models[q].scale(data[q].sigma, data[q].atoms),
                                 distributions[q]),
            }
            for q in QUANTITIES
        }
    apply_scales(model, scales["energy"], scales["forces"], distributions, energy_floor=variance_models["energy"].floor)
    report["_curves"] = {name: {q: (data[q].residual, data[q].sigma, variance_models[q].scale(data[q].sigma, data[q].atoms))
                                for q in QUANTITIES} for name, data in sets.items()}
    report["_distributions"] = distributions
    return report


def apply_scales(model: ModelBackend, energy_alpha: float, force_alpha: float,
                 distributions: Optional[Dict[str, Distribution]] = None, energy_floor: float = 0.0) -> None:
    """Store the variance scales (and the energy floor, eV^2 per atom) in the module buffers and
    the metadata (with the predictive distribution of each quantity, Gaussian unless given)."""
    for name, value in (("energy_variance_scale", energy_alpha), ("force_variance_scale", force_alpha)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value}")
        getattr(model.module, name).fill_(float(value))
    if not (np.isfinite(energy_floor) and energy_floor >= 0):
        raise ValueError(f"energy_variance_floor must be a non-negative number, got {energy_floor}")
    if hasattr(model.module, "energy_variance_floor"):
        model.module.energy_variance_floor.fill_(float(energy_floor))
    elif energy_floor > 0:
        raise ValueError(f"{model.path} predates the energy variance floor: re-export it first (python -c "
                         "\"from mlip_md.model.io import reexport; reexport('old.pt', 'new.pt')\") "
                         "or calibrate with --no-floor")
    distributions = distributions or {}
    model.update_metadata(
        "calibration", energy_variance_scale=float(energy_alpha), force_variance_scale=float(force_alpha),
        energy_variance_floor=float(energy_floor),
        energy_distribution=distributions.get("energy", GAUSSIAN).as_dict(),
        force_distribution=distributions.get("forces", GAUSSIAN).as_dict())


def reliability_diagram(report: dict, path: Path) -> Path:
    """PNG: observed vs expected coverage, before and after calibration, per quantity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = report["_curves"]
    name = "test" if "test" in curves else "fit"
    levels = np.linspace(0.01, 0.99, 99)
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.4))
    for ax, q in zip(axes, QUANTITIES):
        residual, sigma, calibrated = curves[name][q]
        alpha = report["alpha"][q]
        distribution = report["_distributions"][q]
        floor = f", floor {report['energy_variance_floor']:.2g} eV²/atom" if q == "energy" and report["energy_variance_floor"] else ""
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="ideal")
        for label, s, dist, style in (("before (Gaussian)", sigma, GAUSSIAN, "C3"),
                                      (f"after (alpha = {alpha:.3g}{floor}, {distribution.describe()})", calibrated, distribution, "C0")):
            ax.plot(levels, calibration_curve(residual, s, levels, dist), color=style, lw=2, label=label)
        m = report[name][q]["after"]
        ax.set_title(f"{q} ({name} set): ECE {m['ece']:.3f}, 95% coverage {m['coverage_95']:.3f}", fontsize=10)
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
    lines = [f"Variance scales: energy alpha = {report['alpha']['energy']:.4g}, floor = "
             f"{report['energy_variance_floor']:.4g} eV²/atom ({report['_distributions']['energy'].describe()}), "
             f"forces alpha = {report['alpha']['forces']:.4g} "
             f"({report['_distributions']['forces'].describe()}); 'before' is the raw sigma read as a Gaussian", ""]
    for q, notes in report.get("skipped", {}).items():
        lines += [f"{q}: {note}" for note in notes] + [""]
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
        exact = {q: report[name][q]["n_exact"] for q in QUANTITIES if report[name][q]["n_exact"]}
        if exact:
            lines.append("left out (sigma zero to rounding, fixed by symmetry): "
                         + ", ".join(f"{n} {q} samples" for q, n in exact.items()))
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


def calibrate_file(model_path, data, output, test=None, report_stem=None, family: str = "auto",
                   floor: bool = True, drop_nonfinite: bool = False) -> dict:
    """CLI entry: load, calibrate, write the calibrated model and the reports. ``drop_nonfinite``
    leaves out structures with non-finite labels (see mlip_md.train.data.check_frames)."""
    from ..train.data import read_structures

    model = load_model(model_path)
    frames = read_structures(data, drop_nonfinite=drop_nonfinite)
    test_frames = read_structures(test, drop_nonfinite=drop_nonfinite) if test else None
    report = calibrate(model, frames, test_frames, family=family, floor=floor)
    digest = hashlib.sha256(Path(data).read_bytes()).hexdigest()
    model.update_metadata("calibration", data={"file": Path(data).name, "sha256": digest, "structures": len(frames)})
    model.save(output)
    stem = Path(report_stem) if report_stem else Path(output).with_suffix("")
    report["reports"] = [str(p) for p in write_reports(report, Path(str(stem) + "_calibration"))]
    return report
