"""Vacancy formation energy of a model against a reference (``mlip-md validate vacancy``).

For each calculator separately (each with its own lattice constant when ``a="auto"``)::

    mu  = E_pristine / N                    (perfect N-atom supercell)
    E_f = E_defect - (N - 1) mu             (one atom removed)

unrelaxed (ideal lattice sites) and relaxed with the calculator's own forces: ``positions``
(fixed cell) or ``positions+volume`` (also the defect cell's volume, isotropically, at zero
pressure). Relaxations: BFGS to fmax = 1e-3 eV/Å by default (energies converged to << 0.1 meV).

Check: |E_f(model) - E_f(reference)| of the relaxed formation energy <= threshold (default
0.05 eV) -> PASS/FAIL; the unrelaxed difference is reported alongside. Ensemble error bar: the
std (ddof=1) over members of E_f computed with each member's total energies at the model's own
(relaxed or unrelaxed) structures; only for models with K > 1 members.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .common import RELAX_FMAX, RELAX_MODES, evaluate, resolve_model, resolve_reference
from .common import VACANCY_THRESHOLD as DEFAULT_THRESHOLD
from .structures import equilibrium_lattice_constant, perfect_cell, relax, vacancy_cell


def resolve_a(a, calc, element: str, lattice: str, supercell: int) -> float:
    if a is None or (isinstance(a, str) and a.strip().lower() == "auto"):
        return equilibrium_lattice_constant(calc, element, lattice, supercell)
    try:
        value = float(a)
    except (TypeError, ValueError):
        raise ValueError(f"--a must be 'auto' or a number in Å, got {a!r}") from None
    if not value > 0:
        raise ValueError(f"lattice constant must be positive, got {value}")
    return value


def _std(x) -> Optional[float]:
    x = np.asarray(x, dtype=float)
    return float(x.std(ddof=1)) if x.size > 1 else None


def formation_energy(calc, element: str = "Cu", lattice: str = "fcc", a: Union[str, float, None] = "auto",
                     supercell: int = 4, relax_mode: str = "positions", fmax: float = RELAX_FMAX,
                     max_steps: int = 2000, site: int = 0) -> dict:
    """Vacancy formation energy with one calculator (see the module docstring). eV, Å."""
    if relax_mode not in RELAX_MODES:
        raise ValueError(f"--relax must be one of {', '.join(RELAX_MODES)}, got {relax_mode!r}")
    t0 = time.perf_counter()
    a_value = resolve_a(a, calc, element, lattice, supercell)
    perfect = perfect_cell(element, lattice, a_value, supercell)
    n = len(perfect)
    if n < 2:
        raise ValueError("the supercell needs at least two atoms")
    pristine = evaluate(perfect, calc)
    mu = pristine["energy"] / n
    defect = vacancy_cell(perfect, site)
    unrelaxed = evaluate(defect, calc)
    relaxed_atoms, info = relax(defect, calc, fmax=fmax, steps=max_steps, volume=relax_mode == "positions+volume")
    relaxed = evaluate(relaxed_atoms, calc)
    out = {
        "lattice_constant": a_value,
        "n_atoms": n,
        "e_pristine": pristine["energy"],
        "mu": mu,
        "e_defect_unrelaxed": unrelaxed["energy"],
        "e_defect_relaxed": relaxed["energy"],
        "e_f_unrelaxed": unrelaxed["energy"] - (n - 1) * mu,
        "e_f_relaxed": relaxed["energy"] - (n - 1) * mu,
        "relaxation_energy": relaxed["energy"] - unrelaxed["energy"],
        "max_displacement": float(np.linalg.norm(relaxed_atoms.positions - defect.positions, axis=1).max()),
        "residual_fmax": float(np.linalg.norm(relaxed["forces"], axis=1).max()),
        "relaxation": info.to_dict(),
    }
    if relax_mode == "positions+volume":
        v0 = perfect.get_volume() / n
        out["formation_volume"] = float((relaxed_atoms.get_volume() - (n - 1) * v0) / v0)  # atomic volumes
    if pristine["members"] is not None and unrelaxed["members"] is not None and relaxed["members"] is not None:
        mu_k = pristine["members"] / n
        ef_unrel = unrelaxed["members"] - (n - 1) * mu_k
        ef_rel = relaxed["members"] - (n - 1) * mu_k
        out["ensemble"] = {
            "members": int(mu_k.size),
            "e_f_unrelaxed_members": ef_unrel.tolist(),
            "e_f_relaxed_members": ef_rel.tolist(),
            "e_f_unrelaxed_std": _std(ef_unrel),
            "e_f_relaxed_std": _std(ef_rel),
        }
    out["seconds"] = time.perf_counter() - t0
    return out


def run_vacancy(model=None, reference=None, element: str = "Cu", lattice: str = "fcc",
                a: Union[str, float, None] = "auto", supercell: int = 4, relax_mode: str = "positions",
                fmax: float = RELAX_FMAX, threshold: float = DEFAULT_THRESHOLD, max_steps: int = 2000,
                outdir: Union[str, Path, None] = None, device: str = "cpu") -> dict:
    """Model vs reference vacancy formation energy; writes vacancy.{json,md} to ``outdir``.

    Returns the report dict (``passed``, ``checks``, ``model_results``, ``reference_results``,
    ``comparison``, ``settings``, ``files``).
    """
    from .report import Check, finish_report, vacancy_markdown

    if relax_mode not in RELAX_MODES:
        raise ValueError(f"--relax must be one of {', '.join(RELAX_MODES)}, got {relax_mode!r}")
    if not threshold > 0:
        raise ValueError(f"--threshold must be positive, got {threshold}")
    ref_calc, ref_label = resolve_reference(reference)  # bad specs fail before any work
    model_calc, model_label = resolve_model(model, device=device)
    t0 = time.perf_counter()
    common = dict(element=element, lattice=lattice, a=a, supercell=supercell, relax_mode=relax_mode, fmax=fmax,
                  max_steps=max_steps)
    ref = formation_energy(ref_calc, **common)
    mod = formation_energy(model_calc, **common)
    diff_rel = mod["e_f_relaxed"] - ref["e_f_relaxed"]
    diff_unrel = mod["e_f_unrelaxed"] - ref["e_f_unrelaxed"]
    checks = [
        Check("vacancy E_f (relaxed): |model - reference|", abs(diff_rel), threshold, "eV"),
        Check("vacancy E_f (unrelaxed): |model - reference|", abs(diff_unrel), None, "eV"),
        Check("model relaxation converged (residual max |F|)", float(mod["residual_fmax"]), None, "eV/Å",
              passed=bool(mod["relaxation"]["converged"])),
        Check("reference relaxation converged (residual max |F|)", float(ref["residual_fmax"]), None, "eV/Å",
              passed=bool(ref["relaxation"]["converged"])),
    ]
    report = {
        "workflow": "vacancy",
        "model": model_label,
        "reference": ref_label,
        "settings": {"element": element, "lattice": lattice, "a": a if isinstance(a, str) or a is None else float(a),
                     "supercell": int(supercell), "relax": relax_mode, "fmax": float(fmax),
                     "threshold": float(threshold), "optimizer": "BFGS", "max_steps": int(max_steps)},
        "model_results": mod,
        "reference_results": ref,
        "comparison": {"e_f_relaxed_diff": diff_rel, "e_f_unrelaxed_diff": diff_unrel,
                       "lattice_constant_diff": mod["lattice_constant"] - ref["lattice_constant"]},
        "seconds": time.perf_counter() - t0,
    }
    return finish_report(report, checks, outdir, "vacancy", vacancy_markdown)
