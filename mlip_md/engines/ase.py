"""ASE calculator for mlip_md models.

>>> from mlip_md import MLIPCalculator
>>> atoms.calc = MLIPCalculator()            # the shipped Cu model
>>> atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
>>> atoms.calc.results["energy_sigma"]       # per-atom calibrated ensemble std, eV

Results: energy, free_energy (= energy), energies [N], forces [N, 3], stress (Voigt, only for
3D-periodic cells), energy_uncertainty (eV), energy_members [K] (eV), energy_sigma [N],
mahalanobis [N], min_distance [N] (Å), min_distance_ratio [N], close_contact [N] (1 where an
atom is closer to a neighbour than any pair in training), force_sigma [N, 3] when
``force_sigma=True``. Units are ASE's: eV, Å, eV/Å^3. The extra result names are registered
with ``ase.outputs`` so ASE's ``calculate_properties`` / ``Properties`` accept them.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from ..errors import CloseContactWarning
from ..model.io import ExportedModel
from ..predictor import Prediction, Predictor

CLOSE_CONTACT_ACTIONS = ("warn", "raise", "ignore")

#: result name -> (dtype, shape spec) for ase.outputs
EXTRA_OUTPUTS = {
    "energy_uncertainty": (float, ()),
    "ensemble_size": (int, ()),  # set by ase.outputs from the shape of energy_members
    "energy_members": (float, ("ensemble_size",)),
    "energy_sigma": (float, ("natoms",)),
    "mahalanobis": (float, ("natoms",)),
    "d_min": (float, ("natoms",)),
    "min_distance": (float, ("natoms",)),
    "min_distance_ratio": (float, ("natoms",)),
    "close_contact": (int, ("natoms",)),
    "force_sigma": (float, ("natoms", 3)),
}


def _register_outputs() -> None:
    from ase import outputs

    for name, (dtype, shape) in EXTRA_OUTPUTS.items():
        if name not in outputs.all_outputs:
            outputs._defineprop(name, dtype, shape)


_register_outputs()


class MLIPCalculator(Calculator):
    """ASE Calculator evaluating an mlip_md model file (default: the shipped Cu model).

    Parameters
    ----------
    model: path, ExportedModel or None (shipped default).
    device: "cpu" or "cuda".
    monitors: compute per-atom uncertainty and domain monitors every call.
    force_sigma: also compute per-member forces and their calibrated std (K backward passes).
    close_contact: what to do when two atoms are closer than any pair seen in training:
        "warn" (CloseContactWarning, and flagged in results), "raise" or "ignore".
    monitor: optional policy object with ``observe(atoms, prediction)`` (see
        mlip_md.monitor) called after every evaluation.
    skin: Å; > 0 reuses the neighbour list between steps until an atom moved more than
        skin / 2 or the cell changed (mlip_md.verlet). 0.5 suits MD; 0 rebuilds every call.
    compiled: a ``.pt2`` package of ``model`` (``mlip-md compile``) evaluated instead of the
        TorchScript file (about 2x faster on the CPU; ``model`` serves what it does not cover).
        ``model="m.pt2"`` alone also works.
    fused: descriptor in the fused C++ kernel (mlip_md.model.fused): None = whenever the model
        and device support it (the default on the CPU), True = required, False = TorchScript only.
    dtype: "float32" or "float64" (default: the file's): the precision the model runs in;
        float32 is about 1.5x faster on the CPU, forces agree with float64 to ~1e-6 relative.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress", *EXTRA_OUTPUTS]

    def __init__(
        self,
        model: Union[str, Path, ExportedModel, None] = None,
        device: str = "cpu",
        monitors: bool = True,
        force_sigma: bool = False,
        close_contact: str = "warn",
        monitor=None,
        skin: float = 0.0,
        compiled: Union[str, Path, None] = None,
        fused: Optional[bool] = None,
        dtype: Optional[str] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if close_contact not in CLOSE_CONTACT_ACTIONS:
            raise ValueError(f"close_contact must be one of {CLOSE_CONTACT_ACTIONS}, got {close_contact!r}")
        self.predictor = Predictor(model, device=device, skin=skin, compiled=compiled, fused=fused, dtype=dtype)
        self.monitors = monitors
        self.force_sigma = force_sigma
        self.close_contact = close_contact
        self.monitor = monitor
        self.last_prediction: Optional[Prediction] = None

    @property
    def model(self) -> ExportedModel:
        return self.predictor.model

    def calculate(
        self,
        atoms=None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = tuple(all_changes),
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        pred = self.predictor.predict_atoms(self.atoms, monitors=self.monitors, force_sigma=self.force_sigma)
        self.last_prediction = pred
        results = {
            "energy": pred.energy,
            "free_energy": pred.energy,
            "energies": pred.energies,
            "forces": pred.forces,
            "energy_uncertainty": pred.energy_uncertainty,
            "energy_members": pred.energy_members.sum(axis=1),
        }
        if pred.stress is not None:
            results["stress"] = full_3x3_to_voigt_6_stress(pred.stress)
        for key in ("energy_sigma", "mahalanobis", "d_min", "min_distance", "min_distance_ratio", "force_sigma"):
            value = getattr(pred, key)
            if value is not None:
                results[key] = value
        if self.monitors:
            close = pred.close_contacts
            mask = np.zeros(len(pred.energies), dtype=int)
            mask[close] = 1
            results["close_contact"] = mask
            if close.size:
                self._handle_close_contacts(pred, close)
        self.results = results
        if self.monitor is not None:
            self.monitor.observe(self.atoms, pred)

    def _handle_close_contacts(self, pred: Prediction, close: np.ndarray) -> None:
        if self.close_contact == "ignore":
            return
        worst = int(close[np.argmin(pred.min_distance_ratio[close])])
        message = (
            f"{close.size} atom(s) closer to a neighbour than any pair in the training data "
            f"(atom {worst}: {pred.min_distance[worst]:.3f} Å, {pred.min_distance_ratio[worst]:.2f} "
            "of the closest training distance); the model is extrapolating there"
        )
        if self.close_contact == "raise":
            from ..errors import InvalidStructureError

            raise InvalidStructureError(message + "; use close_contact='warn' to continue anyway")
        warnings.warn(message, CloseContactWarning, stacklevel=3)
