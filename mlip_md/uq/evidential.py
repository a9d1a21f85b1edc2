"""Deep evidential regression (Amini et al., NeurIPS 2020) for total energies.

Each atom's head predicts (gamma_i, nu_i, alpha_i, beta_i) of a Normal-Inverse-Gamma
distribution; gamma_i is the atom's energy (forces are -grad sum gamma_i) and
beta_i / (nu_i (alpha_i - 1)) its epistemic variance. A structure's energy is the sum over
atoms; its NIG parameters are aggregated so that its predictive (Student-t) variance is the sum
of the atoms' ones: nu = mean nu_i, alpha = mean alpha_i and
beta = (sum_i v_i) nu (alpha - 1) / (1 + nu), v_i = beta_i (1 + nu_i) / (nu_i (alpha_i - 1)).
The loss is the NIG negative log-likelihood of the per-atom energy plus the evidence
regulariser |y - gamma| (2 nu + alpha).
"""
from __future__ import annotations

import math
from typing import Dict

import torch


def aggregate(atom_structure: torch.Tensor, n_structures: int, nu: torch.Tensor, alpha: torch.Tensor,
              beta: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Structure-level (nu, alpha, beta) from per-atom parameters [N] (beta in eV^2)."""
    counts = torch.zeros(n_structures, dtype=nu.dtype, device=nu.device).index_add(
        0, atom_structure, torch.ones_like(nu))
    mean_nu = torch.zeros_like(counts).index_add(0, atom_structure, nu) / counts
    mean_alpha = torch.zeros_like(counts).index_add(0, atom_structure, alpha) / counts
    variance = torch.zeros_like(counts).index_add(0, atom_structure, beta * (1 + nu) / (nu * (alpha - 1)))
    beta_total = variance * mean_nu * (mean_alpha - 1) / (1 + mean_nu)
    return {"nu": mean_nu, "alpha": mean_alpha, "beta": beta_total}


def nig_nll(y: torch.Tensor, gamma: torch.Tensor, nu: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of y under the NIG marginal (a Student-t), per sample."""
    omega = 2.0 * beta * (1.0 + nu)
    return (0.5 * torch.log(math.pi / nu) - alpha * torch.log(omega)
            + (alpha + 0.5) * torch.log(nu * (y - gamma) ** 2 + omega)
            + torch.lgamma(alpha) - torch.lgamma(alpha + 0.5))


def evidential_loss(y: torch.Tensor, gamma: torch.Tensor, nu: torch.Tensor, alpha: torch.Tensor,
                    beta: torch.Tensor, regulariser: float = 0.01) -> torch.Tensor:
    """Mean NIG NLL plus ``regulariser`` x |y - gamma| (2 nu + alpha)."""
    nll = nig_nll(y, gamma, nu, alpha, beta)
    evidence = (y - gamma).abs() * (2.0 * nu + alpha)
    return (nll + regulariser * evidence).mean()
