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

Every call with monitors applies the default safety policy (:mod:`mlip_md.runtime.safety`): close
contacts (``close_contact``) and atoms outside the training domain (``ood_warnings``) are
warned about, rate-limited (one calculator call = one step).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from ..process import default_threads
from ..runtime.backend import ModelBackend
from ..runtime.predictor import Prediction, Predictor
from ..runtime.safety import CLOSE_CONTACT_ACTIONS as POLICY_ACTIONS
from ..runtime.safety import SafetyPolicy

CLOSE_CONTACT_ACTIONS = (*POLICY_ACTIONS, "raise")  # "raise": the earlier name of "halt"

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
    model: path, loaded model backend (mlip_md.load_model) or None (shipped default).
    device: "cpu" or "cuda".
    monitors: compute per-atom uncertainty and domain monitors every call.
    force_sigma: also compute per-member forces and their calibrated std (K backward passes).
    close_contact: what to do when two atoms are closer than any pair seen in training:
        "warn" (CloseContactWarning, rate-limited; flagged in results either way), "halt" (raise
        CloseContactHalt, an InvalidStructureError; "raise" is the same), "dump" (warn and append
        the frame to ``dump_path``) or "ignore".
    ood_warnings: warn (OutOfDomainWarning, rate-limited) when an atom's T² or d_min is above
        the largest value of the training data; False turns this off.
    dump_path: extxyz file of ``close_contact="dump"``.
    monitor: optional policy object with ``observe(atoms, prediction)`` (see
        mlip_md.runtime.monitors) called after every evaluation.
    skin: Å; > 0 reuses the neighbour list between steps until an atom moved more than
        skin / 2 or the cell changed (mlip_md.runtime.neighbor_reuse). 0.5 suits MD; 0 rebuilds every call.
    compiled: a ``.pt2`` package of ``model`` (``mlip-md compile``) evaluated instead of the
        TorchScript file (about 2x faster on the CPU; ``model`` serves what it does not cover).
        ``model="m.pt2"`` alone also works.
    fused: descriptor in the fused C++ kernel (mlip_md.runtime.fused): None = whenever the model
        and device support it (the default on the CPU), True = required, False = TorchScript only.
    dtype: "float32" or "float64" (default: the file's): the precision the model runs in;
        float32 is about 1.5x faster on the CPU, forces agree with float64 to ~1e-6 relative.
    threads: torch threads of this process (torch's setting is process-wide). None (default):
        ``OMP_NUM_THREADS`` when set, else 1, as in every mlip_md engine (mlip_md.process: the
        fused kernel is single-threaded, and on a busy machine torch's one-thread-per-core
        default made monitored calls up to 40x slower); N >= 1: N; 0: leave torch's setting as
        it is. The choice is in ``self.threads``.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress", *EXTRA_OUTPUTS]

    def __init__(
        self,
        model: Union[str, Path, ModelBackend, None] = None,
        device: str = "cpu",
        monitors: bool = True,
        force_sigma: bool = False,
        close_contact: str = "warn",
        ood_warnings: bool = True,
        dump_path: Union[str, Path] = "mlip_md_flagged.extxyz",
        monitor=None,
        skin: float = 0.0,
        compiled: Union[str, Path, None] = None,
        fused: Optional[bool] = None,
        dtype: Optional[str] = None,
        threads: Optional[int] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if threads != 0:
            torch.set_num_threads(default_threads(threads)[0])
        if close_contact not in CLOSE_CONTACT_ACTIONS:
            raise ValueError(f"close_contact must be one of {CLOSE_CONTACT_ACTIONS}, got {close_contact!r}")
        self.predictor = Predictor(model, device=device, skin=skin, compiled=compiled, fused=fused, dtype=dtype)
        self.monitors = monitors
        self.force_sigma = force_sigma
        self.close_contact = close_contact
        self.safety = SafetyPolicy.for_model(self.predictor.model, close_contact="halt" if close_contact == "raise"
                                             else close_contact, ood_warnings=ood_warnings, dump_path=dump_path)
        self.monitor = monitor
        self.last_prediction: Optional[Prediction] = None
        #: torch threads this process runs with (see ``threads``)
        self.threads = torch.get_num_threads()

    @property
    def model(self) -> ModelBackend:
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
            self.safety.observe(pred, lambda: self.atoms)
        self.results = results
        if self.monitor is not None:
            self.monitor.observe(self.atoms, pred)
