"""Energy + force (+ stress) loss and error metrics for batches of structures."""
from __future__ import annotations

import dataclasses
from typing import Dict

import torch

from ..model.assemble import forces_from_edge_grad
from ..model.potential import MLIPotential
from ..uq.evidential import aggregate, evidential_loss
from .data import Batch


@dataclasses.dataclass
class LossWeights:
    """Weights of the squared errors: energy per atom (eV/atom)^2, forces (eV/Å)^2,
    stress (eV/Å^3)^2. The defaults balance typical errors of ~1 meV/atom, ~0.03 eV/Å and
    ~1e-4 eV/Å^3 (16 MPa)."""

    energy: float = 100.0
    forces: float = 1.0
    stress: float = 1000.0
    evidential: float = 0.01  # NIG likelihood of per-atom energies (uq="evidential" only)


def predict_batch(model: MLIPotential, batch: Batch) -> Dict[str, torch.Tensor]:
    """Predictions for a batch: energy [B] eV, forces [N, 3] eV/Å, stress [B, 3, 3] eV/Å^3.

    In training mode the outputs carry a graph back to the weights (double backward).
    """
    n_total = batch.numbers.shape[0]
    out = model.evaluate(batch.numbers, batch.edge_index, batch.edge_vectors, n_total, False, False)
    atomic = out["atomic_energy"]
    energy = torch.zeros(batch.n_structures, dtype=atomic.dtype, device=atomic.device)
    energy = energy.index_add(0, batch.atom_structure, atomic)
    grad = out["edge_grad"]
    forces = forces_from_edge_grad(grad, batch.edge_index, n_total)
    # sigma = (1/V) sum_e g_e (x) r_e per structure
    outer = grad.unsqueeze(2) * batch.edge_vectors.unsqueeze(1)  # [E, 3, 3]: g_a r_b
    summed = torch.zeros((batch.n_structures, 3, 3), dtype=grad.dtype, device=grad.device)
    summed = summed.index_add(0, batch.edge_structure, outer)
    volume = torch.where(batch.volume > 0, batch.volume, torch.ones_like(batch.volume))
    stress = summed / volume.view(-1, 1, 1)
    pred = {"energy": energy, "forces": forces, "stress": stress}
    if "evidential_nu" in out:
        scale2 = model.energy_scale * model.energy_scale
        pred["nig"] = aggregate(batch.atom_structure, batch.n_structures, out["evidential_nu"],
                                out["evidential_alpha"], out["evidential_beta"] * scale2)
    return pred


def loss_terms(pred: Dict[str, torch.Tensor], batch: Batch) -> Dict[str, torch.Tensor]:
    """Mean squared errors: energy per atom, force components, stress components."""
    n = batch.n_atoms.to(pred["energy"].dtype)
    terms = {
        "energy": (((pred["energy"] - batch.energy) / n) ** 2).mean(),
        "forces": ((pred["forces"] - batch.forces) ** 2).mean(),
    }
    if "nig" in pred:
        # per-atom energies: the variance (beta) scales with 1 / N^2
        nig = pred["nig"]
        terms["evidential"] = evidential_loss(batch.energy / n, pred["energy"] / n, nig["nu"], nig["alpha"],
                                              nig["beta"] / n**2)
    if bool(batch.has_stress.any()):
        diff = (pred["stress"] - batch.stress)[batch.has_stress]
        terms["stress"] = (diff**2).mean()
    else:
        terms["stress"] = torch.zeros((), dtype=n.dtype, device=n.device)
    return terms


def weighted_loss(terms: Dict[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    total = weights.energy * terms["energy"] + weights.forces * terms["forces"] + weights.stress * terms["stress"]
    if "evidential" in terms:
        total = total + weights.evidential * terms["evidential"]
    return total
