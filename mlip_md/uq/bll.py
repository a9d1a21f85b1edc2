"""Bayesian last layer (last-layer Laplace approximation / last-layer prediction rigidity).

The energy of a structure is linear in the last-layer parameters w (per element: weights and
bias) given the features of the last hidden layer: E/s = Phi w + const, with Phi the
structure's sum of per-atom (f_i, 1) placed in its element's block (D = S (H + 1) columns) and
s the model's energy scale. With a Gaussian likelihood (noise variance sigma^2 = mean squared
training residual) and a weak isotropic prior the posterior covariance is

    Sigma = sigma^2 (Phi^T Phi + lambda I)^-1,   lambda = ridge x tr(Phi^T Phi) / D

and the predictive variance of any energy is s^2 phi^T Sigma phi (per atom with its own phi,
per structure with the summed one). The model stores sqrt(D) L (Sigma = L L^T) and outputs
the 2D symmetric sigma points mu +- sqrt(D) L^T phi as its "members": their mean is the network's
prediction and their variance is exactly phi^T Sigma phi, so every ensemble-based consumer (total
energy uncertainty, force sigma, i-PI committees, calibration) works unchanged.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch

from ..model.potential import MLIPotential
from ..train.data import LabelledGraph, collate


@torch.no_grad()
def last_layer_design(model: MLIPotential, graphs: Sequence[LabelledGraph], batch_size: int = 16):
    """Phi [n_structures, D] (normalised units), targets y [n] = (E - sum e0) / s and the
    network's predictions of y."""
    s, h = model.n_species, model.readout.n_hidden
    rows, targets, predictions = [], [], []
    dtype = model.feature_mean.dtype
    for start in range(0, len(graphs), batch_size):
        batch = collate(list(graphs[start : start + batch_size])).to(dtype)
        index = model.species_index(batch.numbers)
        features = model.standardised_features(index, batch.edge_index, batch.edge_vectors, len(index))
        hidden, raw = model.readout(features, index)
        phi = torch.zeros((len(index), s * (h + 1)), dtype=dtype)
        for e in range(s):
            mask = index == e
            phi[mask, e * (h + 1) : e * (h + 1) + h] = hidden[0][mask]
            phi[mask, e * (h + 1) + h] = 1.0
        design = torch.zeros((batch.n_structures, phi.shape[1]), dtype=dtype).index_add(0, batch.atom_structure, phi)
        reference = torch.zeros(batch.n_structures, dtype=dtype).index_add(
            0, batch.atom_structure, model.atomic_reference_energy[index])
        rows.append(design)
        targets.append((batch.energy - reference) / model.energy_scale)
        predictions.append(torch.zeros(batch.n_structures, dtype=dtype).index_add(0, batch.atom_structure, raw[0, :, 0]))
    return torch.cat(rows).double(), torch.cat(targets).double(), torch.cat(predictions).double()


def fit_last_layer_posterior(model: MLIPotential, graphs: Sequence[LabelledGraph], ridge: float = 1e-4) -> Dict[str, float]:
    """Fit the posterior of the last layer on training ``graphs`` and store it in ``model``."""
    if model.uq != "bll":
        raise ValueError(f"the model's uq is {model.uq!r}, not 'bll'")
    phi, y, prediction = last_layer_design(model, graphs)
    d = phi.shape[1]
    if phi.shape[0] < 2:
        raise ValueError("the Bayesian last layer needs at least 2 training structures")
    gram = phi.T @ phi
    lam = ridge * float(torch.trace(gram)) / d
    noise = float(((y - prediction) ** 2).mean())
    covariance = noise * torch.linalg.inv(gram + lam * torch.eye(d, dtype=gram.dtype))
    covariance = 0.5 * (covariance + covariance.T)
    factor = torch.linalg.cholesky(covariance) * np.sqrt(d)
    h1 = model.readout.n_hidden + 1
    with torch.no_grad():
        for e in range(model.n_species):
            model.bll_factor[e].copy_(factor[e * h1 : (e + 1) * h1].to(model.bll_factor.dtype))
    return {"noise_variance": noise * float(model.energy_scale) ** 2, "ridge": lam, "dimension": d}
