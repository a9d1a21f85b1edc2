"""Migration barrier and minimum-energy-path quality (``mlip-md validate neb``).

Path: by default the nearest-neighbour vacancy hop in a ``supercell``^3 crystal (vacancy on
site 0, its lowest-index nearest neighbour jumps), built for each calculator at its own
lattice constant (``a="auto"``) or a fixed one; or user end points (``initial``/``final``, any
ase-readable files with the same atoms in the same order; used as given, ``a`` ignored).

For the model and for the reference separately: end points relaxed with the calculator's own
forces (BFGS, fmax = 1e-3 eV/Å), ``images`` intermediate images by linear (or IDPP)
interpolation with minimum-image displacements, climbing-image NEB with the improved tangent
(``ase.mep.NEB(method="improvedtangent", climb=True)``, spring k = 0.1 eV/Å^2) optimised with
FIRE to fmax = 0.01 eV/Å (NEB forces: perpendicular true force + parallel spring force; the
climbing image feels the full force with its parallel part inverted).

Reported (eV, Å): barrier E_b = max_i E_i - E_0, saddle image, reverse barrier, reaction
energy; energy profile vs reaction coordinate s (cumulative minimum-image distance between
images in 3N-dimensional configuration space); perpendicular force |F_perp| per image (max
atomic norm of F - (F.t)t with the improved tangent t) and its largest jump between
neighbouring images; smoothness = max_i |E_{i+1} - 2 E_i + E_{i-1}| / mean(h)^2 (eV/Å^2,
h = image spacings); the reference evaluated on the model's images (energy profile, barrier
along that path, perpendicular force); per-image ensemble sigma of the total energy
(``energy_uncertainty``) and of E_i - E_0 (std over members), and the members' barrier std.

Checks (defaults, all CLI options):

* barrier: |E_b(model) - E_b(ref)| / E_b(ref) <= 5 % when E_b(ref) >= 0.05 eV, else
  |E_b(model) - E_b(ref)| <= 2.5 meV;
* model MEP converged: max_i |F_perp| <= 2 x NEB fmax;
* model MEP smoothness <= 2 x the reference path's + 4 x (2.5 meV) / mean(h)^2 (noise floor);
* both NEB optimisations converged.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from .common import NEB_DEFAULTS as DEFAULTS
from .common import NEB_FMAX, RELAX_FMAX, SPRING, evaluate, resolve_model, resolve_reference
from .structures import hop_endpoints, path_displacements, perfect_cell, relax
from .vacancy import resolve_a

INTERPOLATIONS = ("linear", "idpp")


# ------------------------------------------------------------------------------------------
# path geometry and quality
# ------------------------------------------------------------------------------------------


def improved_tangents(disp: np.ndarray, energies: np.ndarray) -> np.ndarray:
    """Unit tangents [M, 3N] (Henkelman & Jónsson 2000) from the displacements [M-1, N, 3]
    between images and the image energies [M]; end points use their only neighbour."""
    m = len(energies)
    d = disp.reshape(m - 1, -1)
    tangents = np.zeros((m, d.shape[1]))
    tangents[0], tangents[-1] = d[0], d[-1]
    for i in range(1, m - 1):
        tp, tm = d[i], d[i - 1]
        ep, e0, em = energies[i + 1], energies[i], energies[i - 1]
        if ep > e0 > em:
            t = tp
        elif ep < e0 < em:
            t = tm
        else:
            vmax = max(abs(ep - e0), abs(em - e0))
            vmin = min(abs(ep - e0), abs(em - e0))
            t = tp * vmax + tm * vmin if ep > em else tp * vmin + tm * vmax
        tangents[i] = t
    norms = np.linalg.norm(tangents, axis=1, keepdims=True)
    return tangents / np.where(norms > 0, norms, 1.0)


def path_quality(images: List[Atoms], energies, forces) -> dict:
    """Reaction coordinate, perpendicular forces, smoothness and continuity of a path."""
    energies = np.asarray(energies, dtype=float)
    disp = path_displacements(images)
    h = np.linalg.norm(disp.reshape(len(disp), -1), axis=1)
    s = np.concatenate([[0.0], np.cumsum(h)])
    tangents = improved_tangents(disp, energies)
    fperp, fpar = [], []
    for f, t in zip(forces, tangents):
        f = np.asarray(f, dtype=float).ravel()
        par = f @ t
        fpar.append(float(par))
        fperp.append(float(np.linalg.norm((f - par * t).reshape(-1, 3), axis=1).max()))
    fperp = np.array(fperp)
    d2 = energies[2:] - 2 * energies[1:-1] + energies[:-2]
    spacing = float(h.mean())
    return {
        "reaction_coordinate": s.tolist(),
        "spacing_mean": spacing,
        "spacing_max_ratio": float(h.max() / h.min()) if h.min() > 0 else float("inf"),
        "f_perp": fperp.tolist(),
        "f_parallel": fpar,
        "f_perp_max": float(fperp.max()),
        "f_perp_max_jump": float(np.abs(np.diff(fperp)).max()) if len(fperp) > 1 else 0.0,
        "second_differences": d2.tolist(),
        "smoothness": float(np.abs(d2).max() / spacing ** 2) if d2.size and spacing > 0 else 0.0,
    }


def _profile(energies) -> dict:
    e = np.asarray(energies, dtype=float)
    i = int(np.argmax(e))
    return {"energies": e.tolist(), "relative_energies": (e - e[0]).tolist(), "barrier": float(e[i] - e[0]),
            "saddle_image": i, "reverse_barrier": float(e[i] - e[-1]), "reaction_energy": float(e[-1] - e[0])}


def evaluate_path(images: List[Atoms], calc) -> dict:
    """Energies, forces and ensemble data of every image with ``calc``, plus path quality."""
    evals = [evaluate(im, calc) for im in images]
    energies = [ev["energy"] for ev in evals]
    out = _profile(energies)
    out.update(path_quality(images, energies, [ev["forces"] for ev in evals]))
    if all(ev["uncertainty"] is not None for ev in evals):
        out["energy_uncertainty"] = [ev["uncertainty"] for ev in evals]
    if all(ev["members"] is not None for ev in evals):
        members = np.array([ev["members"] for ev in evals])  # [M, K]
        rel = members - members[0]
        saddle = out["saddle_image"]
        out["ensemble"] = {
            "members": int(members.shape[1]),
            "relative_energy_std": rel.std(axis=1, ddof=1).tolist(),
            "barrier_members": rel[saddle].tolist(),
            "barrier_std": float(rel[saddle].std(ddof=1)),
            "member_barriers_own_max": (rel.max(axis=0)).tolist(),
        }
    return out


# ------------------------------------------------------------------------------------------
# NEB
# ------------------------------------------------------------------------------------------


class ImageCalculator(Calculator):
    """Per-image proxy of one shared calculator. ASE's result cache then works image by
    image: the optimiser asks for the band's forces several times per step, and a shared
    calculator would recompute every image each time."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, base):
        super().__init__()
        self.base = base

    def calculate(self, atoms=None, properties=("energy",), system_changes=tuple(all_changes)):
        super().calculate(atoms, properties, system_changes)
        work = self.atoms.copy()
        work.calc = self.base
        energy = float(work.get_potential_energy())
        forces = np.array(work.get_forces())
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}


def neb_path(calc, initial: Atoms, final: Atoms, images: int = 7, climb: bool = True, interpolation: str = "linear",
             fmax: float = NEB_FMAX, spring: float = SPRING, max_steps: int = 1000,
             endpoint_fmax: float = RELAX_FMAX, relax_endpoints: bool = True) -> dict:
    """CI-NEB (improved tangent, FIRE) between ``initial`` and ``final`` with ``calc``.

    Returns ``images`` (Atoms without calculator, end points included), the optimiser's
    ``converged``/``steps``, the end-point relaxations and :func:`evaluate_path`'s results.
    """
    from ase.mep import NEB
    from ase.optimize import FIRE

    if images < 1:
        raise ValueError(f"--images must be >= 1, got {images}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"--interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    if len(initial) != len(final) or (initial.numbers != final.numbers).any():
        raise ValueError("initial and final structures must hold the same atoms in the same order")
    t0 = time.perf_counter()
    endpoints = {}
    if relax_endpoints:
        initial, info_i = relax(initial, calc, fmax=endpoint_fmax)
        final, info_f = relax(final, calc, fmax=endpoint_fmax)
        endpoints = {"initial": info_i.to_dict(), "final": info_f.to_dict()}
    band = [initial.copy()] + [initial.copy() for _ in range(images)] + [final.copy()]
    neb = NEB(band, k=spring, climb=climb, method="improvedtangent")
    neb.interpolate(method=interpolation, mic=True)
    for im in band:
        im.calc = ImageCalculator(calc)
    opt = FIRE(neb, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=max_steps))
    clean = []
    for im in band:
        c = im.copy()
        c.calc = None
        clean.append(c)
    out = {"images": clean, "converged": converged, "steps": int(opt.nsteps), "endpoint_relaxation": endpoints}
    out.update(evaluate_path(clean, calc))
    out["seconds"] = time.perf_counter() - t0
    return out


def default_hop(calc, element: str, lattice: str, a, supercell: int):
    """(initial, final, lattice constant) of the default vacancy hop for ``calc``."""
    a_value = resolve_a(a, calc, element, lattice, supercell)
    initial, final, _ = hop_endpoints(perfect_cell(element, lattice, a_value, supercell))
    return initial, final, a_value


def _read(path) -> Atoms:
    from ase.io import read

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"structure file {path} not found")
    return read(str(path))


def run_neb(model=None, reference=None, element: str = "Cu", lattice: str = "fcc",
            a: Union[str, float, None] = "auto", supercell: int = 4, images: int = 7, climb: bool = True,
            initial=None, final=None, interpolation: str = "linear", fmax: float = NEB_FMAX,
            endpoint_fmax: float = RELAX_FMAX, spring: float = SPRING, max_steps: int = 1000,
            barrier_rtol: float = DEFAULTS["barrier_rtol"], barrier_atol: float = DEFAULTS["barrier_atol"],
            barrier_switch: float = DEFAULTS["barrier_switch"], fperp_factor: float = DEFAULTS["fperp_factor"],
            smoothness_ratio: float = DEFAULTS["smoothness_ratio"], outdir: Union[str, Path, None] = None,
            device: str = "cpu", plot: bool = True) -> dict:
    """Model vs reference CI-NEB; writes neb.{json,md,png} (and the two paths as extxyz) to
    ``outdir``. Returns the report dict (``passed``, ``checks``, ``model_path``,
    ``reference_path``, ``reference_on_model_path``, ``comparison``, ``settings``, ``files``)."""
    from .report import Check, finish_report, neb_markdown, neb_plot

    if (initial is None) != (final is None):
        raise ValueError("give both --initial and --final, or neither (default: vacancy hop)")
    ref_calc, ref_label = resolve_reference(reference)
    user = None
    if initial is not None:
        user = (_read(initial), _read(final))
    model_calc, model_label = resolve_model(model, device=device)
    t0 = time.perf_counter()
    kwargs = dict(images=images, climb=climb, interpolation=interpolation, fmax=fmax, spring=spring,
                  max_steps=max_steps, endpoint_fmax=endpoint_fmax)
    paths, a_values = {}, {}
    for name, calc in (("reference", ref_calc), ("model", model_calc)):
        if user is None:
            ini, fin, a_values[name] = default_hop(calc, element, lattice, a, supercell)
        else:
            ini, fin = user
            a_values[name] = None
        paths[name] = neb_path(calc, ini, fin, **kwargs)
    mod, ref = paths["model"], paths["reference"]
    on_model = evaluate_path(mod["images"], ref_calc)
    e_mod = np.array(mod["relative_energies"])
    e_on = np.array(on_model["relative_energies"])
    eb_m, eb_r = mod["barrier"], ref["barrier"]
    diff = eb_m - eb_r
    relative = eb_r >= barrier_switch
    rel_err = abs(diff) / eb_r if eb_r > 0 else float("inf")
    checks = []
    if relative:
        checks.append(Check(f"barrier: |model - reference| / reference (E_b(ref) >= {barrier_switch:g} eV)",
                            rel_err, barrier_rtol, "", fmt="pct"))
    else:
        checks.append(Check(f"barrier: |model - reference| (E_b(ref) < {barrier_switch:g} eV)",
                            abs(diff), barrier_atol, "eV"))
    fperp_limit = fperp_factor * fmax
    checks.append(Check("model MEP converged: max |F_perp| over images", mod["f_perp_max"], fperp_limit, "eV/Å"))
    smooth_limit = None
    if smoothness_ratio > 0:
        smooth_limit = smoothness_ratio * ref["smoothness"] + 4 * barrier_atol / mod["spacing_mean"] ** 2
    checks.append(Check("model MEP smoothness: max |d2E| / mean(h)^2", mod["smoothness"], smooth_limit, "eV/Å²"))
    checks.append(Check("model MEP continuity: max jump of |F_perp| between neighbours", mod["f_perp_max_jump"],
                        None, "eV/Å"))
    checks.append(Check("reference on model path: max |dE_model - dE_ref| over images",
                        float(np.abs(e_mod - e_on).max()), None, "eV"))
    checks.append(Check("reference on model path: max |F_perp(reference)|", on_model["f_perp_max"], None, "eV/Å"))
    checks.append(Check("model NEB optimisation converged", float(mod["steps"]), None, "steps",
                        passed=mod["converged"]))
    checks.append(Check("reference NEB optimisation converged", float(ref["steps"]), None, "steps",
                        passed=ref["converged"]))
    report = {
        "workflow": "neb",
        "model": model_label,
        "reference": ref_label,
        "settings": {"element": element, "lattice": lattice,
                     "a": a if isinstance(a, str) or a is None else float(a), "supercell": int(supercell),
                     "path": "user" if user else "nearest-neighbour vacancy hop",
                     "initial": None if initial is None else str(initial),
                     "final": None if final is None else str(final),
                     "images": int(images), "climb": bool(climb), "method": "improvedtangent",
                     "interpolation": interpolation, "optimizer": "FIRE", "fmax": float(fmax),
                     "endpoint_fmax": float(endpoint_fmax), "spring": float(spring), "max_steps": int(max_steps),
                     "barrier_rtol": float(barrier_rtol), "barrier_atol": float(barrier_atol),
                     "barrier_switch": float(barrier_switch), "fperp_factor": float(fperp_factor),
                     "smoothness_ratio": float(smoothness_ratio)},
        "model_path": _strip(mod, a_values["model"]),
        "reference_path": _strip(ref, a_values["reference"]),
        "reference_on_model_path": {k: on_model[k] for k in ("energies", "relative_energies", "barrier",
                                                             "saddle_image", "f_perp", "f_perp_max")},
        "comparison": {"barrier_diff": diff, "barrier_relative_error": rel_err if eb_r > 0 else None,
                       "barrier_error_mode": "relative" if relative else "absolute",
                       "reference_barrier_on_model_path": on_model["barrier"],
                       "path_energy_max_error": float(np.abs(e_mod - e_on).max())},
        "seconds": time.perf_counter() - t0,
    }
    extra = {"neb_model.extxyz": mod["images"], "neb_reference.extxyz": ref["images"]}
    return finish_report(report, checks, outdir, "neb", neb_markdown, plot=neb_plot if plot else None,
                         structures=extra)


def _strip(path: dict, a_value: Optional[float]) -> dict:
    out = {k: v for k, v in path.items() if k != "images"}
    out["lattice_constant"] = a_value
    out["n_atoms"] = len(path["images"][0])
    return out
