"""Statistics fitted on the training set before/after training: normalisation of features
and energies, domain statistics for the monitors, closest pair distances."""
from __future__ import annotations

from typing import Dict, Iterator, List, Sequence

import numpy as np
import torch
from scipy import stats

from ..model.assemble import member_forces_from_edge_grad
from ..domain.kernel import fit_reference_set
from ..domain.mahalanobis import fit_mahalanobis, t_squared
from ..model.potential import MLIPotential
from ..model.repulsion import clear_repulsion, fit_repulsion
from .data import LabelledGraph, collate


def _chunks(graphs: Sequence[LabelledGraph], size: int) -> Iterator[List[LabelledGraph]]:
    for start in range(0, len(graphs), size):
        yield list(graphs[start : start + size])


@torch.no_grad()
def raw_features(model: MLIPotential, graphs: Sequence[LabelledGraph]) -> tuple[torch.Tensor, torch.Tensor]:
    """Un-normalised descriptors [N_total, D] and species index [N_total] of all atoms."""
    feats, species = [], []
    dtype = model.feature_mean.dtype
    for chunk in _chunks(graphs, 16):
        batch = collate(chunk).to(dtype)
        index = model.species_index(batch.numbers)
        feats.append(
            model.descriptor(index, batch.edge_index[0], batch.edge_index[1], batch.edge_vectors, index.shape[0])
        )
        species.append(index)
    return torch.cat(feats), torch.cat(species)


def fit_normalisation(model: MLIPotential, graphs: Sequence[LabelledGraph]) -> Dict[str, object]:
    """Set feature mean/scale, per-element reference energies (least squares) and the
    energy scale (RMS force component) from the training graphs. Returns a summary."""
    features, _ = raw_features(model, graphs)
    mean = features.mean(dim=0)
    scale = features.std(dim=0)
    scale = torch.where(scale > 1e-8 * scale.max().clamp_min(1e-300), scale, torch.ones_like(scale))
    model.feature_mean.copy_(mean)
    model.feature_scale.copy_(scale)

    numbers = model.atomic_numbers.tolist()
    counts = np.array([[int((g.numbers == z).sum()) for z in numbers] for g in graphs], dtype=float)
    energies = np.array([g.energy for g in graphs])
    # small ridge keeps the fit defined when compositions are collinear (one element: exact)
    ridge = 1e-8 * np.eye(len(numbers))
    e0 = np.linalg.solve(counts.T @ counts + ridge, counts.T @ energies)
    model.atomic_reference_energy.copy_(torch.as_tensor(e0))
    forces = torch.cat([g.forces for g in graphs])
    force_rms = float(forces.pow(2).mean().sqrt()) if forces.numel() else 1.0
    model.energy_scale.fill_(max(force_rms, 1e-3))
    residual = energies - counts @ e0
    per_atom = residual / counts.sum(axis=1)
    return {
        "atomic_reference_energy": dict(zip(map(int, numbers), map(float, e0))),
        "energy_scale": float(model.energy_scale),
        "residual_energy_std_per_atom": float(per_atom.std()),
    }


def fit_domain_statistics(
    model: MLIPotential, graphs: Sequence[LabelledGraph], shrinkage: float = 0.05, quantile: float = 0.999,
    reference_size: int = 256,
) -> Dict[str, object]:
    """Per-element mean and regularised precision of the standardised features, the smallest
    distance seen for every element pair (and from it the short-range repulsion's radii, when
    ``model.config.repulsion``), and the kernel-distance reference set. Thresholds for
    T^2: the chi^2 quantile with the effective degrees of freedom tr(Sigma_reg^-1 Sigma) (= D for
    an unshrunk, full-rank covariance) and the empirical quantile of the training set; for
    d_min: the quantile over held-out training environments."""
    raw, species = raw_features(model, graphs)
    features = ((raw - model.feature_mean) / model.feature_scale).to(torch.float64)
    thresholds = {}
    for s, z in enumerate(model.atomic_numbers.tolist()):
        x = features[species == s]
        if x.shape[0] < 2:
            continue
        mu, precision, dof = fit_mahalanobis(x, shrinkage)
        model.domain_mean[s].copy_(mu)
        model.domain_precision[s].copy_(precision)
        t2 = t_squared(x, mu, precision)
        thresholds[str(z)] = {
            "dof": dof,
            "chi2": float(stats.chi2.ppf(quantile, dof)),
            "empirical": float(torch.quantile(t2, quantile)),
            "training_max": float(t2.max()),
        }
    n_species = model.n_species
    closest = torch.full((n_species, n_species), float("inf"), dtype=torch.float64)
    for g in graphs:
        index = model.species_index(g.numbers)
        r = torch.linalg.vector_norm(g.edge_vectors, dim=1)
        si, sj = index[g.edge_index[0]], index[g.edge_index[1]]
        for a in range(n_species):
            for b in range(n_species):
                mask = (si == a) & (sj == b)
                if bool(mask.any()):
                    closest[a, b] = min(float(closest[a, b]), float(r[mask].min()))
    unseen = ~torch.isfinite(closest)
    closest[unseen] = 0.0  # unseen pairs: no reference, ratio stays large
    model.pair_min_distance.copy_(closest)
    # the short-range repulsion ends at these distances: zero on the training data
    if model.config.repulsion:
        fit_repulsion(model)
    else:
        clear_repulsion(model)
    refs, counts, length, d_thresholds = fit_reference_set(
        features.numpy(), species.numpy(), model.n_species, size=reference_size, quantile=quantile)
    model.reference_features = torch.as_tensor(refs, dtype=model.feature_mean.dtype)
    model.reference_count.copy_(torch.as_tensor(counts))
    model.kernel_length.fill_(length)
    numbers = model.atomic_numbers.tolist()
    return {
        "mahalanobis": {"quantile": quantile, "shrinkage": shrinkage, "per_element": thresholds},
        "d_min": {"quantile": quantile, "kernel_length": length, "reference_size": int(counts.max(initial=0)),
                  "per_element": {str(numbers[s]): v for s, v in d_thresholds.items()}},
    }


def evaluate_errors(model: MLIPotential, graphs: Sequence[LabelledGraph], batch_size: int = 16) -> Dict[str, object]:
    """Energy (eV/atom) and force (eV/Å) RMSE/MAE of the ensemble mean and of every member."""
    model = model.eval()
    dtype = model.feature_mean.dtype
    ensemble = model.uq == "ensemble"
    e_err, f_err, s_err = [], [], []
    e_member, f_member = [], []
    for chunk in _chunks(graphs, batch_size):
        batch = collate(chunk).to(dtype)
        n = batch.numbers.shape[0]
        with torch.enable_grad():
            out = model.evaluate(batch.numbers, batch.edge_index, batch.edge_vectors, n, False, ensemble)
        # per-member errors for ensembles; BLL sigma points and evidential heads are one network
        members = out["energy_members"] if ensemble else out["atomic_energy"].unsqueeze(0)  # [K, N]
        k = members.shape[0]
        e_members = torch.zeros((k, batch.n_structures), dtype=dtype).index_add(1, batch.atom_structure, members)
        per_atom = batch.n_atoms.to(dtype)
        e_member.append(((e_members - batch.energy) / per_atom).detach())
        member_grad = out["member_edge_grad"] if ensemble else out["edge_grad"].unsqueeze(0)
        f_k = member_forces_from_edge_grad(member_grad, batch.edge_index, n).detach()
        f_member.append((f_k - batch.forces).reshape(k, -1))
        e_err.append(e_members.mean(0).detach() / per_atom - batch.energy / per_atom)
        f_err.append((f_k.mean(0) - batch.forces).reshape(-1))
        if bool(batch.has_stress.any()):
            outer = out["edge_grad"].unsqueeze(2) * batch.edge_vectors.unsqueeze(1)
            summed = torch.zeros((batch.n_structures, 3, 3), dtype=dtype).index_add(0, batch.edge_structure, outer)
            vol = torch.where(batch.volume > 0, batch.volume, torch.ones_like(batch.volume))
            stress = summed.detach() / vol.view(-1, 1, 1)
            s_err.append((stress - batch.stress)[batch.has_stress].reshape(-1))

    def rmse(x: torch.Tensor) -> float:
        return float(x.pow(2).mean().sqrt())

    def mae(x: torch.Tensor) -> float:
        return float(x.abs().mean())

    e = torch.cat(e_err)
    f = torch.cat(f_err)
    em = torch.cat(e_member, dim=1)
    fm = torch.cat(f_member, dim=1)
    report: Dict[str, object] = {
        "n_structures": len(graphs),
        "n_atoms": int(sum(g.n_atoms for g in graphs)),
        "mean": {
            "energy_rmse_per_atom": rmse(e),
            "energy_mae_per_atom": mae(e),
            "force_rmse": rmse(f),
            "force_mae": mae(f),
        },
        "members": [
            {
                "energy_rmse_per_atom": rmse(em[k]),
                "energy_mae_per_atom": mae(em[k]),
                "force_rmse": rmse(fm[k]),
                "force_mae": mae(fm[k]),
            }
            for k in range(em.shape[0])
        ],
        "units": {"energy": "eV/atom", "force": "eV/angstrom", "stress": "eV/angstrom^3"},
    }
    if s_err:
        s = torch.cat(s_err)
        report["mean"]["stress_rmse"] = rmse(s)
    return report
