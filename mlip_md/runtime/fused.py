"""The fused backend: the power spectrum and its backward pass run in C++
(``mlip_power_spectrum_*`` in csrc/, reached through ``mlip_md._core``), the rest of the model
(readout, ensemble, monitors) in its TorchScript ``evaluate_features`` method.

>>> model = FusedBackend(load_model("cu.pt"))          # or open_model("cu.pt") (auto)
>>> out = model(species, edge_index, edge_vectors, n_local, monitors=False)
>>> out["edge_grad"]                                   # [E, 3], as from the .pt

A call with edge gradients is: C forward (raw features [n_local, D] and the density workspace)
-> ``module.evaluate_features`` (energies, dE/d features, monitors; on calls without monitors
and force sigma the C readout of :mod:`mlip_md.model.native_readout` instead) -> one C backward
over the mean row and, with ``force_sigma``, the K member rows -> ``edge_grad`` [E, 3] and
``member_edge_grad`` [K, E, 3] -> the model's short-range repulsion (metadata block
``repulsion``, :mod:`mlip_md.model.repulsion`) added by the C core to the energies and every
gradient row. Same keys, units (eV, Å) and shapes as the TorchScript backend. Calls without edge
gradients get ``forces`` [N_all, 3] and ``virial`` [3, 3]: with every atom a centre and neither
monitors nor force sigma, from one C pass that never stores edge gradients
(:meth:`FusedBackend.energy_and_forces`); otherwise assembled from the edge gradients.

The kernel is CPU-only and needs a model file with a ``descriptor`` block in its metadata and
the ``evaluate_features`` method (files written by mlip_md >= the version that added them;
:func:`mlip_md.model.io.reexport` upgrades older ones). It computes descriptor version 1 (one-hot
species channels) and version 2 (species-compressed: the module's ``descriptor.radial_mixing``
W [S, n_max, Q], checked against the metadata's, mixes each edge's radial functions; see
:mod:`mlip_md.model.descriptor`). :func:`fused_unsupported_reason` says
why a model cannot use it; :func:`check_fused` raises that as a :class:`FusedModelError`.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch

from ..errors import ModelFileError, UnknownElementError
from ..model.assemble import forces_and_virial
from ..model.descriptor import COMPRESSED_DESCRIPTOR_VERSION, DESCRIPTOR_KIND, DESCRIPTOR_VERSIONS
from ..model.io import DTYPES
from ..model.native_readout import native_readout as make_native_readout
from ..model.repulsion import NativeRepulsion, check_module_matches, read_repulsion, repulsion_unsupported_reason
from .request import Capabilities, EvaluationRequest
from .torchscript import TorchScriptBackend

NUMPY_DTYPES = {torch.float64: np.float64, torch.float32: np.float32}


class FusedModelError(ModelFileError, ValueError):
    """The fused descriptor kernel was requested for a model or device it cannot serve."""


def _kernel():
    """The compiled core if it carries the power-spectrum kernel (and the repulsion), else None."""
    from .._native import core

    if all(hasattr(core, name) for name in ("power_spectrum_forward", "power_spectrum_backward", "Repulsion")):
        return core
    return None


def fused_unsupported_reason(model, device: Optional[str] = None) -> Optional[str]:
    """None when ``model`` (a backend) can run with the fused kernel on ``device`` (default:
    the model's device); otherwise why not, and what to do instead."""
    kind = model.capabilities.kind
    if kind == "fused":
        return None
    if kind == "compiled":
        return (f"{model.path} is a compiled package (.pt2), which evaluates its own descriptor; "
                "use the .pt model for the fused kernel, or the package with fused=False (--no-fused)")
    device = torch.device(device if device is not None else model.device)
    if device.type != "cpu":
        return (f"the fused descriptor kernel runs on the CPU only, the model is on {device}; "
                "use fused=False (--no-fused) on this device")
    descriptor = model.info.descriptor
    if descriptor is None:
        return (f"model file {model.path} has no descriptor block in its metadata (written by an older "
                "mlip_md); re-export it with `mlip-md upgrade old.pt -o new.pt` (mlip_md.model.io.reexport), "
                "or use fused=False (--no-fused)")
    if descriptor.kind != DESCRIPTOR_KIND or descriptor.version not in DESCRIPTOR_VERSIONS:
        return (f"model file {model.path} uses descriptor {descriptor.kind!r} version "
                f"{descriptor.version!r}; the fused kernel implements {DESCRIPTOR_KIND!r} versions "
                f"{', '.join(map(str, DESCRIPTOR_VERSIONS))}: use fused=False (--no-fused)")
    if descriptor.version == COMPRESSED_DESCRIPTOR_VERSION and descriptor.radial_mixing is None:
        return (f"model file {model.path} has a compressed (version {COMPRESSED_DESCRIPTOR_VERSION}) descriptor "
                "block without its 'radial_mixing' matrix; re-export it with `mlip-md upgrade old.pt -o new.pt`, "
                "or use fused=False (--no-fused)")
    if model.module is None or not hasattr(model.module, "evaluate_features"):
        return (f"model file {model.path} has no evaluate_features method (written by an older mlip_md); "
                "re-export it with `mlip-md upgrade old.pt -o new.pt` (mlip_md.model.io.reexport), or use fused=False (--no-fused)")
    reason = repulsion_unsupported_reason(model.info.repulsion)
    if reason is not None:
        return f"model file {model.path}: {reason}; use fused=False (--no-fused)"
    if _kernel() is None:
        return ("mlip_md's compiled core was built without the power-spectrum kernel; rebuild it "
                "(pip install -e . or python setup.py build_ext --inplace), or use fused=False (--no-fused)")
    return None


def check_fused(model, device: Optional[str] = None) -> None:
    """Raise :class:`FusedModelError` when ``model`` cannot use the fused kernel."""
    reason = fused_unsupported_reason(model, device)
    if reason is not None:
        raise FusedModelError(f"fused descriptor kernel not available: {reason}")


def kernel_params(info, module, path=None) -> tuple:
    """The kernel's parameter tuple for the model's descriptor: (n_species, n_max, l_max,
    cutoff Å, switch_width Å) for version 1 (one-hot species), plus W [S, n_max, Q] (float64,
    the module's ``descriptor.radial_mixing``, so the kernel computes what the TorchScript
    descriptor does) for version 2. Raises :class:`ModelFileError` when the module's mixing and
    the metadata's disagree (a hand-edited file: its hosts would disagree)."""
    descriptor = info.descriptor
    params = descriptor.kernel_params()
    if descriptor.version != COMPRESSED_DESCRIPTOR_VERSION:
        return params
    fix = "; re-export the model (mlip-md upgrade old.pt -o new.pt)"
    try:
        mixing = module.descriptor.radial_mixing.detach().cpu().to(torch.float64).numpy()
    except AttributeError as exc:
        raise ModelFileError(f"model file {path}: its metadata has a compressed descriptor but its TorchScript "
                             f"module has no descriptor.radial_mixing buffer{fix}") from exc
    expected = descriptor.radial_mixing
    if mixing.shape != expected.shape or not np.allclose(mixing, expected, rtol=1e-6, atol=1e-7):
        raise ModelFileError(f"model file {path}: the radial mixing W {list(mixing.shape)} of its TorchScript module "
                             f"differs from the metadata's {list(expected.shape)}{fix}")
    return params + (np.ascontiguousarray(mixing),)


def frozen_readout(module):
    """``module`` frozen for inference (weights become constants, so the weight reshapes of
    every readout call fold away: 10-30 % faster, identical results), keeping
    ``evaluate_features``; ``module`` itself when it cannot be frozen."""
    try:
        return torch.jit.freeze(module.eval(), preserved_attrs=["evaluate_features"], optimize_numerics=False)
    except Exception:  # noqa: BLE001 - any module freezing rejects runs unfrozen
        return module


class FusedBackend(TorchScriptBackend):
    """A :class:`TorchScriptBackend` whose descriptor runs in the fused C++ kernel (same
    properties, same outputs). ``self.module`` is the TorchScript module it shares with the
    wrapped model; ``native_readout=False`` keeps the readout in TorchScript."""

    def __init__(self, model: TorchScriptBackend, native_readout: bool = True):
        check_fused(model)
        super().__init__(model.module, model.metadata, model.path)
        self.kernel = _kernel()
        #: (n_species, n_max, l_max, cutoff Å, switch_width Å[, radial_mixing W [S, n_max, Q]]),
        #: the kernel's parameter tuple (:func:`kernel_params`)
        self.params = kernel_params(self.info, self.module, self.path)
        table = np.full(max(self.atomic_numbers) + 1, -1, dtype=np.int64)
        table[self.atomic_numbers] = np.arange(len(self.atomic_numbers))
        self._species_table = table
        self._readout = frozen_readout(self.module)
        #: the C readout (section 7 of mlip_md.h) used on calls without monitors and force sigma;
        #: None when disabled or the model's readout is not an ensemble of MLPs
        self.native_readout = make_native_readout(model) if native_readout else None
        params = read_repulsion(self.info.repulsion, self.info.atomic_numbers, self.path)
        check_module_matches(self.module, params, self.path)
        #: the model's short-range repulsion in the C core, None when the file has none
        self.repulsion = NativeRepulsion(params) if params is not None else None
        self.capabilities = Capabilities(
            kind="fused", assembles_forces=True, force_sigma="native", devices=("cpu",), dtypes=tuple(DTYPES),
            description="fused descriptor kernel" + (" and C readout" if self.native_readout is not None else ""))

    @classmethod
    def load(cls, path=None, device: str = "cpu") -> "FusedBackend":
        return cls(TorchScriptBackend.load(path, device=device))

    def to(self, device: str) -> "FusedBackend":
        if torch.device(device).type != "cpu":
            raise FusedModelError(f"the fused descriptor kernel runs on the CPU only; load {self.path} "
                                  f"without it (fused=False) to use {device}")
        return self

    def species_index(self, species: np.ndarray) -> np.ndarray:
        """Atomic numbers [N] -> model species indices 0..S-1 [N] (int64)."""
        numbers = np.asarray(species, dtype=np.int64)
        if numbers.size and (numbers.min() < 0 or numbers.max() >= len(self._species_table)
                             or (self._species_table[numbers] < 0).any()):
            self.check_elements(numbers)  # names the unknown elements
            raise UnknownElementError(f"atomic numbers {np.unique(numbers).tolist()} unknown to model {self.path}")
        return self._species_table[numbers]

    def _kernel_inputs(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor):
        """The kernel's numpy inputs: species indices [N], edge_index [2, E] int64, edge vectors
        [E, 3] in the model dtype (views where the tensors already are so)."""
        index = self.species_index(species.cpu().numpy())
        pairs = np.ascontiguousarray(edge_index.cpu().numpy(), dtype=np.int64)
        vectors = np.ascontiguousarray(edge_vectors.detach().cpu().numpy(), dtype=NUMPY_DTYPES[self.dtype])
        return index, pairs, vectors

    def evaluate(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_local: int,
                 request: EvaluationRequest) -> Dict[str, torch.Tensor]:
        n_local = int(n_local)
        monitors, force_sigma = request.monitors, request.force_sigma
        one_pass = not (request.edge_gradients or monitors or force_sigma) and n_local == species.shape[0]
        if one_pass and self.native_readout is not None:
            return self.energy_and_forces(species, edge_index, edge_vectors, n_local)
        if self._monitors_beside_one_pass(request, n_local, species.shape[0]):
            return self._one_pass_with_monitors(species, edge_index, edge_vectors, n_local)
        out = self._edge_gradients(species.cpu(), edge_index, edge_vectors, n_local, monitors, force_sigma)
        if not request.edge_gradients:
            out["forces"], out["virial"] = forces_and_virial(out["edge_grad"], edge_index, edge_vectors,
                                                             species.shape[0])
        return out

    def _edge_gradients(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                        n_local: int, monitors: bool, force_sigma: bool) -> Dict[str, torch.Tensor]:
        """The contract's outputs with ``edge_grad`` (see the module docstring)."""
        index, pairs, vectors = self._kernel_inputs(species, edge_index, edge_vectors)
        features, density = self.kernel.power_spectrum_forward(self.params, index, pairs, vectors, n_local)
        if self.native_readout is not None and not monitors and not force_sigma:
            out = self.native_readout(index[:n_local], features)
        else:
            with torch.enable_grad():
                out = self._readout.evaluate_features(species, torch.from_numpy(features), torch.from_numpy(pairs),
                                                      torch.from_numpy(vectors), n_local, monitors, force_sigma)
        feature_grad = out.pop("feature_grad").detach()
        member_grad = out.pop("member_feature_grad", None)
        if member_grad is not None:  # mean row + K member rows in one backward pass
            rows = torch.cat([feature_grad.unsqueeze(0), member_grad.detach()], dim=0)
        else:
            rows = feature_grad
        grads = self.kernel.power_spectrum_backward(self.params, index, pairs, vectors, density,
                                                    np.ascontiguousarray(rows.numpy()), n_local)
        if self.repulsion is not None:  # its energies and gradients (every row), from the C core
            self.repulsion.add_energies(out, self.repulsion.accumulate(index, pairs, vectors, n_local, grads))
        grads = torch.from_numpy(grads)
        if member_grad is not None:
            out["edge_grad"] = grads[0]
            out["member_edge_grad"] = grads[1:]
        else:
            out["edge_grad"] = grads
        return out

    def _monitors_beside_one_pass(self, request: EvaluationRequest, n_local: int, n_atoms: int) -> bool:
        """Whether a monitored call can take the one-pass C step plus the model's
        ``evaluate_monitors`` (files that export it, ensembles with the C readout, no edge
        gradients or force sigma asked, every atom a centre) instead of the edge-gradient path."""
        return (request.monitors and not (request.edge_gradients or request.force_sigma) and n_local == n_atoms
                and self.native_readout is not None and self.info.uq == "ensemble"
                and hasattr(self.module, "evaluate_monitors"))

    def _one_pass_with_monitors(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                                n_atoms: int) -> Dict[str, torch.Tensor]:
        """Energies, forces and virial from the one-pass C step (:meth:`energy_and_forces`), the
        monitors from one more descriptor forward and the model's ``evaluate_monitors``."""
        out = self.energy_and_forces(species, edge_index, edge_vectors, n_atoms)
        index, pairs, vectors = self._kernel_inputs(species, edge_index, edge_vectors)
        features, _ = self.kernel.power_spectrum_forward(self.params, index, pairs, vectors, n_atoms)
        # the members' spread is all the monitors read (the repulsion shifts every member alike)
        out.update(self.module.evaluate_monitors(species.cpu(), torch.from_numpy(features), out["energy_members"],
                                                 torch.from_numpy(pairs), torch.from_numpy(vectors), n_atoms))
        return out

    def energy_and_forces(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                          n_atoms: int) -> Dict[str, torch.Tensor]:
        """Energies, forces and virial of a structure whose atoms are all centres, without
        monitors: one C pass over blocks of centres (forward, C readout, and a backward that
        accumulates F_i += g_ij, F_j -= g_ij and W = -sum r_ij (x) g_ij in its edge loop, reusing
        each centre's basis; no edge gradients are stored), plus the short-range repulsion. Returns
        ``atomic_energy`` [n], ``energy``, ``energy_members`` [K, n] (eV, model dtype),
        ``forces`` [n, 3] (eV/Å) and ``virial`` [3, 3] (eV), float64. Needs the C readout
        (:attr:`native_readout` not None)."""
        if self.native_readout is None:
            raise FusedModelError(f"model {self.path} has no C readout (uq {self.info.uq!r}); "
                                  "call the model and assemble its edge gradients instead")
        index, pairs, vectors = self._kernel_inputs(species, edge_index, edge_vectors)
        out = self.native_readout.energy_and_forces(self.params, index, pairs, vectors, n_atoms)
        if self.repulsion is not None:
            energy = self.repulsion.accumulate(index, pairs, vectors, n_atoms, forces=out["forces"].numpy(),
                                               virial=out["virial"].numpy())
            self.repulsion.add_energies(out, energy)
        return out
