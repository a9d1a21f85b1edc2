"""What the validation workflows share: defaults (kept here so building the CLI parser stays
cheap), resolving the model and the reference, and evaluating a structure."""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

# defaults shared by the workflows and the CLI
LATTICE_NAMES = ("fcc", "bcc", "sc", "diamond", "hcp")
RELAX_MODES = ("positions", "positions+volume")
RELAX_FMAX = 1e-3  # eV/Å, every relaxation (vacancy cells, NEB end points)
VACANCY_THRESHOLD = 0.05  # eV, |E_f(model) - E_f(reference)|
NEB_FMAX = 0.01  # eV/Å, NEB convergence
SPRING = 0.1  # eV/Å^2
NEB_DEFAULTS = dict(barrier_rtol=0.05, barrier_atol=0.0025, barrier_switch=0.05, fperp_factor=2.0,
                    smoothness_ratio=2.0)


def resolve_reference(reference) -> Tuple[object, str]:
    """(calculator, label) from a spec string or a calculator object."""
    if isinstance(reference, str):
        from ..reference import make_reference

        return make_reference(reference), reference.strip()
    if reference is None:
        raise ValueError("a reference is required, e.g. --reference lammps:eam/alloy:Cu_mishin1.eam.alloy")
    return reference, _label(reference)


def resolve_model(model, device: str = "cpu") -> Tuple[object, str]:
    """(calculator, label) from a model path, None (shipped model), ``ref:SPEC`` or a calculator."""
    if model is None or isinstance(model, (str, Path)):
        text = None if model is None else str(model)
        if text is not None and text.startswith("ref:"):
            calc, label = resolve_reference(text[4:])
            return calc, "ref:" + label
        from ..engines.ase import MLIPCalculator

        calc = MLIPCalculator(text, device=device, close_contact="ignore")
        return calc, text or "shipped model (mlip_md/data/cu_default.pt)"
    return model, _label(model)


def _label(calc) -> str:
    return getattr(calc, "validate_label", None) or getattr(calc, "reference_spec", None) or type(calc).__name__


def member_energies(atoms):
    """Per-member total energies [K] of the calculator's last result for ``atoms`` (which must
    just have been evaluated), or None when the calculator has no ensemble (K < 2)."""
    import numpy as np

    results = getattr(atoms.calc, "results", {}) or {}
    members = results.get("energy_members")
    if members is None:
        return None
    members = np.asarray(members, dtype=float).ravel()
    return members if members.size > 1 else None


def evaluate(atoms, calc) -> dict:
    """Energy, forces and (if any) ensemble data of ``atoms`` with ``calc``."""
    import numpy as np

    atoms = atoms.copy()
    atoms.calc = calc
    energy = float(atoms.get_potential_energy())
    forces = np.array(atoms.get_forces())
    results = getattr(calc, "results", {}) or {}
    unc = results.get("energy_uncertainty")
    return {"energy": energy, "forces": forces, "members": member_energies(atoms),
            "uncertainty": None if unc is None else float(unc)}
