"""Applicability-domain analyses (``mlip-md domain ...``), reproducing two arguments of the MLIP
applicability literature with real models:

``bond_breaking``: a model trained on a diatomic molecule with bond stretch s <= s_train_max
(s = r / r_eq - 1) is evaluated up to dissociation. The descriptors of the stretched dimers are
projected on the principal components of the training descriptors; s_exit is the first stretch
whose projection leaves the convex hull of the training projections (exact LP test). The
model's energy and force errors are small inside and grow past s_exit.

``crystal_only``: a model trained on perfect-crystal data only is applied to vacancies, free
surfaces and strongly distorted cells. Per atom: coordination z, distortion D (RMS relative
deviation of first-shell distances from the ideal one), T^2, d_min, ensemble sigma and force
error. Reported: the slope and R^2 of force error vs d_min, and the AUROC of every signal for
detecting atoms whose force error exceeds a threshold.

Both write JSON + Markdown + PNG.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import ase
import numpy as np

from ..files import atomic_path, atomic_write_text
from ..neighbors import neighbor_list
from .hull import hull_distance


# ----------------------------------------------------------------------------- statistics
def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean labels ``positive`` (ties count
    one half): the probability that a random positive scores above a random negative."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=float)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def linear_fit(x: np.ndarray, y: np.ndarray) -> Dict[str, float]:
    """Least-squares line y = a x + b and its R^2."""
    a, b = np.polyfit(x, y, 1)
    residual = y - (a * x + b)
    r2 = 1.0 - residual.var() / y.var() if y.var() > 0 else float("nan")
    return {"slope": float(a), "intercept": float(b), "r2": float(r2)}


def coordination_and_distortion(atoms: ase.Atoms, shell: float, ideal: float) -> tuple:
    """Per atom: number of neighbours closer than ``shell`` (Å) and the RMS of
    (r_ij - ideal) / ideal over them (0 for an ideal lattice; 1 when an atom has none)."""
    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, shell, distances=True)
    z = np.bincount(nl.i, minlength=len(atoms))
    squared = np.bincount(nl.i, weights=((nl.distances - ideal) / ideal) ** 2, minlength=len(atoms))
    distortion = np.where(z > 0, np.sqrt(squared / np.maximum(z, 1)), 1.0)
    return z, distortion


# ----------------------------------------------------------------------------- crystal-only
@dataclasses.dataclass
class AtomRecord:
    """Per-atom rows of the crystal-only analysis."""

    category: np.ndarray
    z: np.ndarray
    distortion: np.ndarray
    t2: np.ndarray
    d_min: np.ndarray
    energy_sigma: np.ndarray
    force_sigma: np.ndarray
    force_error: np.ndarray  # |F_model - F_ref| per atom, eV/Å
    soap_t2: Optional[np.ndarray] = None  # model-agnostic signals (mlip_md.domain.soap), when asked for
    soap_d_min: Optional[np.ndarray] = None


MODEL_FIELDS = ("category", "z", "distortion", "t2", "d_min", "energy_sigma", "force_sigma", "force_error")


def evaluate_atoms(predictor, frames: Dict[str, Sequence[ase.Atoms]], shell: float, ideal: float) -> AtomRecord:
    rows: Dict[str, List[np.ndarray]] = {k: [] for k in MODEL_FIELDS}
    for category, structures in frames.items():
        for atoms in structures:
            pred = predictor.predict_atoms(atoms, monitors=True, force_sigma=True)
            z, distortion = coordination_and_distortion(atoms, shell, ideal)
            rows["category"].append(np.full(len(atoms), category, dtype=object))
            rows["z"].append(z)
            rows["distortion"].append(distortion)
            rows["t2"].append(pred.mahalanobis)
            rows["d_min"].append(pred.d_min if pred.d_min is not None else np.full(len(atoms), np.nan))
            rows["energy_sigma"].append(pred.energy_sigma)
            rows["force_sigma"].append(np.linalg.norm(pred.force_sigma, axis=1))
            rows["force_error"].append(np.linalg.norm(pred.forces - atoms.get_forces(), axis=1))
    return AtomRecord(**{k: np.concatenate(v) for k, v in rows.items()})


SIGNALS = {"T^2": "t2", "d_min": "d_min", "ensemble energy sigma": "energy_sigma",
           "ensemble force sigma": "force_sigma", "distortion D": "distortion",
           "SOAP T^2 (model-agnostic)": "soap_t2", "SOAP d_min (model-agnostic)": "soap_d_min"}


def crystal_only_report(records: AtomRecord, error_threshold: float) -> dict:
    bad = records.force_error > error_threshold
    per_category = {}
    for category in sorted(set(records.category)):
        m = records.category == category
        per_category[category] = {
            "atoms": int(m.sum()),
            "mean_z": float(records.z[m].mean()),
            "mean_distortion": float(records.distortion[m].mean()),
            "mean_t2": float(records.t2[m].mean()),
            "mean_d_min": float(np.nanmean(records.d_min[m])),
            "force_rmse": float(np.sqrt((records.force_error[m] ** 2).mean())),
            "fraction_above_threshold": float(bad[m].mean()),
        }
    aurocs = {name: auroc(getattr(records, attr), bad) for name, attr in SIGNALS.items()
              if getattr(records, attr) is not None}
    valid = np.isfinite(records.d_min)
    best = max((k for k in aurocs if np.isfinite(aurocs[k])), key=lambda k: aurocs[k], default=None)
    return {
        "error_threshold": error_threshold,
        "atoms": int(len(bad)),
        "atoms_above_threshold": int(bad.sum()),
        "per_category": per_category,
        "auroc": aurocs,
        "best_signal": best,
        "force_error_vs_d_min": linear_fit(records.d_min[valid], records.force_error[valid]) if valid.any() else None,
    }


def crystal_only_markdown(report: dict) -> str:
    lines = [f"Force-error threshold {report['error_threshold']} eV/Å; {report['atoms_above_threshold']} of "
             f"{report['atoms']} atoms above it.", "",
             "| structures | atoms | mean z | mean D | mean T^2 | mean d_min | force RMSE (eV/Å) | above threshold |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for category, row in report["per_category"].items():
        lines.append(f"| {category} | {row['atoms']} | {row['mean_z']:.2f} | {row['mean_distortion']:.3f} | "
                     f"{row['mean_t2']:.1f} | {row['mean_d_min']:.3f} | {row['force_rmse']:.3f} | "
                     f"{100 * row['fraction_above_threshold']:.0f}% |")
    lines += ["", "| signal | AUROC (force error above threshold) |", "|---|---:|"]
    for name, value in sorted(report["auroc"].items(), key=lambda kv: -np.nan_to_num(kv[1])):
        lines.append(f"| {name} | {value:.3f} |")
    fit = report["force_error_vs_d_min"]
    if fit:
        lines += ["", f"Force error vs d_min: slope {fit['slope']:.3f} eV/Å per unit d_min, R^2 {fit['r2']:.3f}."]
    return "\n".join(lines)


def crystal_only_plot(records: AtomRecord, report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for category in sorted(set(records.category)):
        m = records.category == category
        axes[0].scatter(records.d_min[m], records.force_error[m], s=6, alpha=0.6, label=category)
        axes[1].scatter(records.t2[m], records.force_error[m], s=6, alpha=0.6, label=category)
    fit = report["force_error_vs_d_min"]
    if fit:
        x = np.linspace(np.nanmin(records.d_min), np.nanmax(records.d_min), 50)
        axes[0].plot(x, fit["slope"] * x + fit["intercept"], color="k", lw=1,
                     label=f"fit, R$^2$ = {fit['r2']:.2f}")
    axes[0].set_xlabel("d_min (kernel distance to training set)")
    axes[1].set_xlabel("Mahalanobis T$^2$")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.set_ylabel("|force error| (eV/Å)")
        ax.axhline(report["error_threshold"], color="0.5", ls="--", lw=1)
        ax.legend(fontsize=7, markerscale=2)
    scores = [f"{k} {v:.2f}" for k, v in report["auroc"].items()]
    fig.suptitle("bulk-only model; AUROC: " + "\n".join(", ".join(scores[i:i + 4]) for i in range(0, len(scores), 4)),
                 fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


# ----------------------------------------------------------------------------- bond breaking
def dimer(symbol: str, r: float, box: float = 0.0) -> ase.Atoms:
    return ase.Atoms(symbol * 2, positions=[[0, 0, 0], [r, 0, 0]], pbc=False)


def bond_breaking_scan(predictor, reference, symbol: str, r_eq: float, stretches: np.ndarray,
                       train_stretches: np.ndarray, n_components: int = 3) -> dict:
    """Energies, forces and hull distance of dimers at bond stretches s (r = r_eq (1 + s))."""
    import torch

    def descriptors(stretch_values):
        out = []
        for s in stretch_values:
            pred = predictor.predict_atoms(dimer(symbol, r_eq * (1 + s)), monitors=True)
            out.append(pred.features[0])
        return np.array(out)

    train_x = descriptors(train_stretches)
    mean = train_x.mean(axis=0)
    _, _, vt = np.linalg.svd(train_x - mean, full_matrices=False)
    basis = vt[:n_components].T
    hull_points = (train_x - mean) @ basis
    rows = []
    for s in stretches:
        atoms = dimer(symbol, r_eq * (1 + s))
        pred = predictor.predict_atoms(atoms, monitors=True, force_sigma=True)
        ref = atoms.copy()
        ref.calc = reference
        projection = (pred.features[0] - mean) @ basis
        rows.append({
            "stretch": float(s),
            "r": float(r_eq * (1 + s)),
            "energy_model": pred.energy,
            "energy_reference": float(ref.get_potential_energy()),
            "force_error": float(np.abs(pred.forces - ref.get_forces()).max()),
            "hull_distance": float(hull_distance(projection[None], hull_points)[0]),
            "energy_sigma": float(pred.energy_sigma.max()),
            "mahalanobis": float(pred.mahalanobis.max()),
            "d_min": float(pred.d_min.max()) if pred.d_min is not None else float("nan"),
        })
    del torch
    train_max = float(np.max(train_stretches))
    outside = [row["stretch"] for row in rows if row["stretch"] > train_max and row["hull_distance"] > 1e-7]
    s_exit = min(outside) if outside else float("nan")
    inside = [r for r in rows if r["stretch"] <= train_max]
    beyond = [r for r in rows if r["stretch"] > s_exit] if outside else []
    return {
        "symbol": symbol, "r_eq": r_eq, "s_train_max": train_max, "s_exit": s_exit,
        "n_components": n_components,
        "energy_error_inside": float(np.max([abs(r["energy_model"] - r["energy_reference"]) for r in inside])),
        "energy_error_beyond": float(np.max([abs(r["energy_model"] - r["energy_reference"]) for r in beyond])) if beyond else float("nan"),
        "scan": rows,
    }


def bond_breaking_markdown(report: dict) -> str:
    lines = [f"Dimer {report['symbol']}2, r_eq = {report['r_eq']:.3f} Å, trained on s <= {report['s_train_max']:.2f}; "
             f"descriptor leaves the convex hull of the training descriptors ({report['n_components']} principal "
             f"components) at s_exit = {report['s_exit']:.3f}.",
             f"Max energy error inside the training range {1e3 * report['energy_error_inside']:.1f} meV, beyond s_exit "
             f"{1e3 * report['energy_error_beyond']:.1f} meV.", "",
             "| s | r (Å) | E model (eV) | E ref (eV) | max force error (eV/Å) | hull distance | T^2 | d_min |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["scan"]:
        lines.append(f"| {row['stretch']:.3f} | {row['r']:.3f} | {row['energy_model']:.4f} | {row['energy_reference']:.4f} | "
                     f"{row['force_error']:.4f} | {row['hull_distance']:.3g} | {row['mahalanobis']:.1f} | {row['d_min']:.3f} |")
    return "\n".join(lines)


def bond_breaking_plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scan = report["scan"]
    s = np.array([r["stretch"] for r in scan])
    fig, axes = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
    axes[0].plot(s, [r["energy_reference"] for r in scan], "k-", label="reference")
    axes[0].plot(s, [r["energy_model"] for r in scan], "C0o-", ms=3, label="model")
    axes[0].set_ylabel("energy (eV)")
    axes[1].semilogy(s, np.maximum([abs(r["energy_model"] - r["energy_reference"]) for r in scan], 1e-6), "C3o-", ms=3,
                     label="|energy error| (eV)")
    axes[1].semilogy(s, np.maximum([r["hull_distance"] for r in scan], 1e-6), "C2s-", ms=3, label="hull distance")
    for ax in axes:
        ax.axvspan(s.min(), report["s_train_max"], color="0.9", label="training range")
        if np.isfinite(report["s_exit"]):
            ax.axvline(report["s_exit"], color="C2", ls="--", lw=1, label="s_exit")
        ax.legend(fontsize=8)
    axes[1].set_xlabel("bond stretch s = r / r_eq - 1")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def write(report: dict, markdown: str, stem: Path, plot: Callable[[Path], Path]) -> List[Path]:
    stem = Path(stem)
    atomic_write_text(stem.with_suffix(".json"), json.dumps(report, indent=1, default=float))
    atomic_write_text(stem.with_suffix(".md"), markdown + "\n")
    return [stem.with_suffix(".json"), stem.with_suffix(".md"), plot(stem.with_suffix(".png"))]
