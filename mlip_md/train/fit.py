"""Statistics fitted on the training set before/after training: normalisation of features
and energies, domain statistics for the monitors, closest pair distances."""
from __future__ import annotations

from typing import Dict, Iterator, List, Sequence

import numpy as np
import torch
from scipy import stats

from ..model.assemble import member_forces_from_edge_grad
from ..domain.kernel import fit_reference_set
from ..domain.monitor_space import DEFAULT_COMPONENTS, fit_monitor_space
from ..model.descriptor import PowerSpectrum
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


@torch.no_grad()
def channel_second_moments(model: MLIPotential, graphs: Sequence[LabelledGraph], max_centres: int = 20000,
                           seed: int = 0) -> tuple[torch.Tensor, int]:
    """G [S n_max, S n_max] (float64) = sum over centres i and (l, m) of c_i c_i^T, with c_i the
    uncompressed (one-hot, version 1) density coefficients of the channels (s, n) at row
    s n_max + n; rotation invariant. Centres: every atom of a seeded random subset of
    ``graphs`` with at most about ``max_centres`` atoms. Returns (G, number of centres). Built
    one neighbour species at a time: nothing larger than [centres of 16 structures, n_max,
    (l_max+1)^2] besides the descriptor's own [E, n_max] basis."""
    descriptor = model.descriptor
    n_max, n_species = descriptor.n_max, descriptor.n_species
    single = PowerSpectrum(1, descriptor.radial.cutoff, n_max, descriptor.l_max, descriptor.radial.switch_width)
    order = np.random.default_rng(seed).permutation(len(graphs))
    chosen, total = [], 0
    for index in order:
        if total >= max_centres:
            break
        chosen.append(graphs[int(index)])
        total += graphs[int(index)].n_atoms
    gram = torch.zeros((n_species * n_max, n_species * n_max), dtype=torch.float64)
    for chunk in _chunks(chosen, 16):
        batch = collate(chunk).to(model.feature_mean.dtype)
        n = batch.numbers.shape[0]
        neighbour_species = model.species_index(batch.numbers)[batch.edge_index[1]]
        radial, angular = descriptor.basis(batch.edge_vectors)
        blocks = []
        for s in range(n_species):
            rows = torch.nonzero(neighbour_species == s).squeeze(1)
            centres = batch.edge_index[0].index_select(0, rows)
            zeros = torch.zeros((n,), dtype=torch.long)
            blocks.append(single.density(zeros, centres, centres, radial.index_select(0, rows),
                                         angular.index_select(0, rows), n))  # [n, n_max, (l_max+1)^2]
        c = torch.cat(blocks, dim=1).to(torch.float64)  # [n, S n_max, (l_max+1)^2]
        gram += torch.einsum("iql,irl->qr", c, c)
    return gram, total


@torch.no_grad()
def fit_radial_mixing(model: MLIPotential, graphs: Sequence[LabelledGraph], max_centres: int = 20000,
                      balance_species: bool = False) -> Dict[str, object]:
    """Fit the descriptor's ``radial_mixing`` W [S, n_max, Q] of a compressed model (Q < S n_max,
    :mod:`mlip_md.model.descriptor`) to the training graphs: the top-Q eigenvectors of the channel
    second-moment matrix G (:func:`channel_second_moments`), so the Q channels keep as much of
    the neighbour densities as any rank-Q linear mixing can. Each eigenvector's sign makes its
    largest entry positive (deterministic). ``balance_species``: first scale every neighbour
    species' block to unit mean square (rare species get the weight of common ones); W then
    undoes the scaling. Call before :func:`fit_normalisation` (the features change with W).
    Returns a summary: channels, retained fraction of trace(G), centres used."""
    descriptor = model.descriptor
    if not descriptor.compressed:
        raise ValueError("fit_radial_mixing needs a compressed descriptor (channels < n_species x n_max); this "
                         f"model has {descriptor.n_channels} one-hot channels")
    gram, centres = channel_second_moments(model, graphs, max_centres)
    n_max, n_species, q = descriptor.n_max, descriptor.n_species, descriptor.n_channels
    diagonal = torch.diagonal(gram).reshape(n_species, n_max)
    scale = torch.ones(n_species, dtype=torch.float64)
    if balance_species:
        block_ms = diagonal.mean(dim=1)
        scale = torch.where(block_ms > 0, block_ms.clamp_min(1e-300).rsqrt(), torch.ones_like(block_ms))
    row_scale = scale.repeat_interleave(n_max)
    scaled = gram * row_scale.unsqueeze(0) * row_scale.unsqueeze(1)
    values, vectors = torch.linalg.eigh(scaled)
    values, vectors = values.flip(0)[:q], vectors.flip(1)[:, :q]
    largest = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors[largest, torch.arange(q)])
    vectors = vectors * torch.where(signs == 0, torch.ones_like(signs), signs).unsqueeze(0)
    mixing = (vectors * row_scale.unsqueeze(1)).reshape(n_species, n_max, q)
    descriptor.radial_mixing.copy_(mixing.to(descriptor.radial_mixing.dtype))
    trace = float(torch.diagonal(scaled).sum())
    return {
        "channels": q,
        "uncompressed_channels": n_species * n_max,
        "retained_fraction": float(values.clamp_min(0).sum()) / trace if trace > 0 else 1.0,
        "balance_species": bool(balance_species),
        "centres": centres,
    }


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
    reference_size: int = 256, components: int = DEFAULT_COMPONENTS,
) -> Dict[str, object]:
    """The domain monitors' statistics (:func:`fit_domain_monitors`: T^2 and d_min in the bounded
    monitor space), the smallest distance seen for every element pair (and from it the
    short-range repulsion's radii, when ``model.config.repulsion``). Returns the metadata blocks
    ``monitors.mahalanobis`` and ``monitors.d_min``."""
    raw, species = raw_features(model, graphs)
    features = ((raw - model.feature_mean) / model.feature_scale).to(torch.float64)
    del raw
    blocks = fit_domain_monitors(model, features, species, shrinkage, quantile, reference_size, components)
    del features
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
    return blocks


@torch.no_grad()
def fit_domain_monitors(
    model: MLIPotential, features: torch.Tensor, species: torch.Tensor, shrinkage: float = 0.05,
    quantile: float = 0.999, reference_size: int = 256, components: int = DEFAULT_COMPONENTS,
) -> Dict[str, object]:
    """Fit and store ``model``'s T^2 and d_min statistics from standardised training features
    [N, D] of species indices [N] (0..S-1) in the monitor space of
    :mod:`mlip_md.domain.monitor_space` (``components`` principal components plus the distance
    from them; memory: [D, P] + [S, P, P] + the reference set [S, M, P + 1]).

    Thresholds per element: T^2 ``chi2``, the chi^2 ``quantile`` with the effective dof (the
    mean T^2 of the element's training environments for Gaussian descriptors), ``empirical``,
    that quantile of the training set, and ``training_max``, its largest value, both as the
    model computes them; ``residual_dof`` (Box's dof of the term outside the components) and
    ``explained`` (share of the element's variance in the components). d_min: quantiles over
    held-out training environments (:func:`mlip_md.domain.kernel.fit_reference_set`). Returns
    the metadata blocks ``monitors.mahalanobis`` and ``monitors.d_min``."""
    space = fit_monitor_space(features, species, model.n_species, components, shrinkage)
    dtype = model.feature_mean.dtype
    n_species = model.n_species
    model.domain_center.copy_(space.center)
    model.domain_projection = space.projection.to(dtype)
    model.domain_component_mean = space.mean.to(dtype)
    model.domain_component_precision = space.precision.to(dtype)
    model.domain_residual_weight.copy_(space.residual_weight)
    model.domain_mean = torch.zeros((n_species, 0), dtype=dtype)  # the dense statistics of older files
    model.domain_precision = torch.zeros((n_species, 0, 0), dtype=dtype)
    coordinates = model.domain_coordinates(features.to(dtype))  # [N, P + 1]
    t2 = model.t_squared(coordinates, species).to(torch.float64).numpy()
    numbers = model.atomic_numbers.tolist()
    index = species.numpy()
    thresholds = {}
    for s, dof in space.dof.items():
        values = t2[index == s]
        thresholds[str(numbers[s])] = {
            "dof": dof,
            "chi2": float(stats.chi2.ppf(quantile, dof)),
            "empirical": float(np.quantile(values, quantile)),
            "training_max": float(values.max()),
            "residual_dof": space.residual_dof[s],
            "explained": space.explained[s],
        }
    refs, counts, length, d_thresholds = fit_reference_set(
        coordinates.to(torch.float64).numpy(), index, n_species, size=reference_size, quantile=quantile)
    model.reference_features = torch.as_tensor(refs, dtype=dtype)
    model.reference_count.copy_(torch.as_tensor(counts))
    model.kernel_length.fill_(length)
    return {
        "mahalanobis": {"quantile": quantile, "shrinkage": shrinkage, "components": space.components,
                        "per_element": thresholds},
        "d_min": {"quantile": quantile, "kernel_length": length, "reference_size": int(counts.max(initial=0)),
                  "components": space.components,
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
