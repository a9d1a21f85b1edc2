"""The model's readout (ensemble of SiLU MLPs) in C++ (``mlip_mlp_readout_*``, section 7 of
csrc/include/mlip_md.h), for steps that need neither monitors nor per-member gradients.

>>> readout = native_readout(model)            # None when the model's readout is not supported
>>> out = readout(species_index, raw_features)  # the keys of evaluate_features(..., False, False)

It packs the weights once (feature standardisation folded into the first layer) and runs
register-blocked products in blocks of 64 atoms: 1.4x (float32) to 1.9x (float64) faster than
the frozen TorchScript readout at 4000 atoms, equal to it to rounding.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch

ARCHITECTURE = "power_spectrum_ensemble_mlp"


def native_readout_unsupported_reason(model) -> Optional[str]:
    """None when ``model`` (a TorchScript backend) can use the C readout, else why not."""
    if model.info.architecture != ARCHITECTURE:
        return f"architecture {model.info.architecture!r} is not {ARCHITECTURE!r}"
    if model.info.uq != "ensemble":
        return f"the C readout serves uq 'ensemble' only (model: {model.info.uq!r})"
    if model.module is None:
        return "the model has no TorchScript module"
    return None


class NativeReadout:
    """Callable C readout of one model: ``(species_index [n] int64, raw_features [n, D]) ->
    {"atomic_energy" [n], "energy" [], "energy_members" [K, n] (eV), "feature_grad" [n, D]}``
    as torch tensors in the model dtype."""

    def __init__(self, module, dtype: torch.dtype):
        from .._native import core

        params = dict(module.named_parameters())
        buffers = dict(module.named_buffers())
        n_layers = sum(1 for name in params if name.startswith("readout.layers.") and name.endswith(".weight"))

        def array(t):
            return t.detach().cpu().to(torch.float64).numpy()

        self.np_dtype = np.float32 if dtype == torch.float32 else np.float64
        self.kernel = core.MLPReadout(
            [array(params[f"readout.layers.{i}.weight"]) for i in range(n_layers)],
            [array(params[f"readout.layers.{i}.bias"]) for i in range(n_layers)],
            array(buffers["feature_mean"]), array(buffers["feature_scale"]),
            array(buffers["atomic_reference_energy"]), float(buffers["energy_scale"]), self.np_dtype,
        )

    def __call__(self, species_index: np.ndarray, raw_features: np.ndarray) -> Dict[str, torch.Tensor]:
        energy, members, grad = self.kernel.evaluate(species_index, raw_features)
        atomic = torch.from_numpy(energy)
        return {"atomic_energy": atomic, "energy": atomic.sum(), "energy_members": torch.from_numpy(members),
                "feature_grad": torch.from_numpy(grad)}

    def energy_and_forces(self, params: dict, species_index: np.ndarray, edge_index: np.ndarray,
                          edge_vectors: np.ndarray, n_local: int) -> Dict[str, torch.Tensor]:
        """The fused descriptor (``params``) and this readout in one C pass over blocks of centres
        (``mlip_power_spectrum_energy_forces_*``): species_index [n_all], edge_index [2, E],
        edge_vectors [E, 3] (Å, model dtype). Returns ``atomic_energy`` [n_local], ``energy``,
        ``energy_members`` [K, n_local] (eV, model dtype), ``forces`` [n_all, 3] (eV/Å) and
        ``virial`` [3, 3] (eV), float64."""
        energy, members, forces, virial = self.kernel.energy_forces(params, species_index, edge_index, edge_vectors,
                                                                    n_local)
        atomic = torch.from_numpy(energy)
        return {"atomic_energy": atomic, "energy": atomic.sum(), "energy_members": torch.from_numpy(members),
                "forces": torch.from_numpy(forces), "virial": torch.from_numpy(virial)}


def native_readout(model) -> Optional[NativeReadout]:
    """The C readout of ``model`` (a TorchScript backend), or None when it is not supported."""
    if native_readout_unsupported_reason(model) is not None:
        return None
    return NativeReadout(model.module, model.dtype)
