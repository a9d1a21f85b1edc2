"""Energy + force (+ stress) loss and error metrics for batches of structures."""
from __future__ import annotations

import dataclasses
from typing import Dict

import torch

from ..model.assemble import forces_from_edge_grad
from ..model.potential import MLIPotential
from .data import Batch


@dataclasses.dataclass
class LossWeights:
    """Weights of the squared errors: energy per atom (eV/atom)^2, forces (eV/Å)^2,
    stress (eV/Å^3)^2. The defaults balance typical errors of ~1 meV/atom, ~0.03 eV/Å and
    ~1e-4 eV/Å^3 (16 MPa)."""

    energy: float = 100.0
    forces: float = 1.0
    stress: float = 1000.0


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
    return {"energy": energy, "forces": forces, "stress": stress}


def loss_terms(pred: Dict[str, torch.Tensor], batch: Batch) -> Dict[str, torch.Tensor]:
    """Mean squared errors: energy per atom, force components, stress components."""
    n = batch.n_atoms.to(pred["energy"].dtype)
    terms = {
        "energy": (((pred["energy"] - batch.energy) / n) ** 2).mean(),
        "forces": ((pred["forces"] - batch.forces) ** 2).mean(),
    }
    if bool(batch.has_stress.any()):
        diff = (pred["stress"] - batch.stress)[batch.has_stress]
        terms["stress"] = (diff**2).mean()
    else:
        terms["stress"] = torch.zeros((), dtype=n.dtype, device=n.device)
    return terms


def weighted_loss(terms: Dict[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    return (
        weights.energy * terms["energy"]
        + weights.forces * terms["forces"]
        + weights.stress * terms["stress"]
    )
