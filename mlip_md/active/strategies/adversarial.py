"""Adversarial sampling: from the most uncertain candidates, gradient ascent on the positions
of the adversarial objective

    A(x) = log sigma^2(x) - (E(x) - E(x_0)) / (k_B T_adv)

(sigma^2: ensemble variance of the atomic energies summed over atoms, eV^2; E: predicted
energy, eV), i.e. the uncertainty weighted by a Boltzmann factor at T_adv, so the attack moves
toward rare but thermally reachable configurations the model does not know (atoms pressed
together, broken symmetry) instead of arbitrarily high-energy ones. Each step moves the atom
with the largest gradient by ``step_size`` Å (the others proportionally); the configuration
with the best objective along the path is returned.
"""
from __future__ import annotations

import math
from typing import Callable, List, Sequence, Tuple

import ase
import numpy as np
import torch
from ase import units

from ...neighbors import neighbor_list
from ..explore import Candidate
from .base import SelectionContext, Strategy, fingerprint, near_duplicate
from .max_variance import MaxVarianceStrategy

#: objective(positions [N, 3] tensor (requires grad), atoms) -> (energy [] eV, variance [] eV^2)
Objective = Callable[[torch.Tensor, ase.Atoms], Tuple[torch.Tensor, torch.Tensor]]


class EnsembleObjective:
    """Differentiable ensemble energy and variance of an :class:`MLIPotential` (K >= 2)."""

    def __init__(self, potential):
        self.potential = potential.double()
        if self.potential.n_members < 2:
            raise ValueError("the adversarial strategy needs an ensemble (K >= 2) for its variance")

    def __call__(self, positions: torch.Tensor, atoms: ase.Atoms):
        pos = positions.detach().numpy()
        nl = neighbor_list(pos, atoms.cell.array, atoms.pbc, self.potential.cutoff, vectors=True)
        i = torch.as_tensor(nl.i, dtype=torch.long)
        j = torch.as_tensor(nl.j, dtype=torch.long)
        shift = torch.as_tensor(nl.vectors - (pos[nl.j] - pos[nl.i]))
        vectors = positions[j] - positions[i] + shift
        species = torch.as_tensor(atoms.numbers, dtype=torch.long)
        self.potential.train()  # keeps the graph from positions to outputs
        try:
            out = self.potential.evaluate(species, torch.stack([i, j]), vectors, len(atoms), False, False)
        finally:
            self.potential.eval()
        members = out["energy_members"]  # [K, n]
        return members.mean(dim=0).sum(), members.var(dim=0).sum()


def attack(atoms: ase.Atoms, objective: Objective, temperature_K: float, steps: int,
           step_size: float) -> Tuple[ase.Atoms, dict]:
    """Gradient ascent on A(x); returns the best configuration and {objective_start, objective,
    energy_change (eV), variance_start, variance (eV^2), steps}."""
    kt = units.kB * temperature_K
    pos = torch.tensor(atoms.positions, dtype=torch.float64, requires_grad=True)
    e0 = None
    best = (-math.inf, atoms.positions.copy(), 0.0, 0.0)
    start = None
    for step in range(steps + 1):
        energy, variance = objective(pos, atoms)
        if e0 is None:
            e0 = float(energy.detach())
        value = torch.log(variance.clamp_min(1e-300)) - (energy - e0) / kt
        if start is None:
            start = (float(value.detach()), float(variance.detach()))
        if float(value.detach()) > best[0]:
            best = (float(value.detach()), pos.detach().numpy().copy(), float(energy.detach()) - e0,
                    float(variance.detach()))
        if step == steps:
            break
        (grad,) = torch.autograd.grad(value, pos)
        largest = float(grad.norm(dim=1).max())
        if not math.isfinite(largest) or largest == 0.0:
            break
        pos = (pos.detach() + step_size * grad / largest).requires_grad_(True)
    out = atoms.copy()
    out.positions = best[1]
    return out, {"objective_start": start[0], "objective": best[0], "energy_change": best[2],
                 "variance_start": start[1], "variance": best[3]}


class AdversarialStrategy(Strategy):
    name = "adversarial"

    def select(self, pool: Sequence[Candidate], n: int, ctx: SelectionContext) -> List[Candidate]:
        if ctx.objective is None or ctx.scorer is None:
            raise ValueError("the adversarial strategy needs the model's objective and scorer")
        seeds = MaxVarianceStrategy().select(pool, n, ctx)
        out: List[Candidate] = []
        fps: List[np.ndarray] = []
        for seed in seeds:
            atoms, info = attack(seed.atoms, ctx.objective, ctx.adversarial_temperature_K,
                                 ctx.adversarial_steps, ctx.adversarial_step_size)
            cand = ctx.scorer.candidate(atoms, origin=f"{seed.origin} +adversarial")
            cand.score = info["objective"]
            fp = fingerprint(cand.features)
            if near_duplicate(fp, fps, ctx.dedupe_distance):
                cand = seed  # the attack converged onto a kept configuration: label the seed
                fp = fingerprint(cand.features)
            out.append(cand)
            fps.append(fp)
        return out
