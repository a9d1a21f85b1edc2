"""The bounded monitor space (mlip_md.domain.monitor_space): T^2 against a direct numpy
computation, far environments (also outside the components), the per-element loop against a
dense reference, shapes and memory at 5 elements, and files written before it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111

from mlip_md.domain.mahalanobis import fit_mahalanobis, t_squared
from mlip_md.domain.monitor_space import fit_monitor_space
from mlip_md.model.io import default_model_path, load_module, load_potential, reexport
from mlip_md.model.potential import MONITOR_BUFFERS, MLIPotential, ModelConfig
from mlip_md.neighbors import neighbor_list
from mlip_md.train.fit import fit_domain_monitors
from mlip_md.train.trainer import _member_config, shared_member_state

DATA = Path(__file__).resolve().parent.parent / "data"
SHRINKAGE = 0.05


def element_features(n_species: int, d: int, n: int = 600, seed: int = 0):
    """Correlated Gaussian features [n S, D] with per-element means and covariances (rank
    below D for one element, so shrinkage matters), and their species [n S]."""
    rng = np.random.default_rng(seed)
    blocks, species = [], []
    for s in range(n_species):
        rank = d if s else d // 2
        mixing = rng.normal(size=(rank, d)) * np.exp(-np.arange(d) / 12.0)
        blocks.append(rng.normal(size=(n, rank)) @ mixing + rng.normal(scale=2.0, size=d))
        species.append(np.full(n, s))
    return torch.as_tensor(np.concatenate(blocks)), torch.as_tensor(np.concatenate(species))


def model_with_space(n_species: int, components: int, seed: int = 0):
    """A random MLIPotential (D = 69 at two elements) with monitors fitted to element_features."""
    cfg = ModelConfig(atomic_numbers=[28, 29, 13, 46, 79][:n_species], cutoff=4.0, n_max=3, l_max=2, hidden=(8,),
                      ensemble_size=2, channels=3 * n_species)
    model = MLIPotential(cfg).double().eval()
    features, species = element_features(n_species, model.n_features, seed=seed)
    blocks = fit_domain_monitors(model, features, species, SHRINKAGE, components=components, reference_size=64)
    return model, features, species, blocks


def numpy_t_squared(x, features, species, s, projection, center):
    """T^2 of rows x [m, D] against element s straight from the definition: the Mahalanobis
    distance under the covariance V A V^T + (1/w) (I - V V^T) with A and w recomputed from the
    element's data with numpy (only V and c are taken from the fit)."""
    rows = features[species == s]
    d, p = projection.shape
    cov = np.cov(rows.T)
    tau = np.trace(cov) / d
    outside = np.eye(d) - projection @ projection.T
    inside = (1 - SHRINKAGE) * projection.T @ cov @ projection + SHRINKAGE * tau * np.eye(p)
    residual = (1 - SHRINKAGE) * outside @ cov @ outside + SHRINKAGE * tau * outside
    w = np.trace(residual) / np.trace(residual @ residual)
    model_cov = projection @ inside @ projection.T + outside / w
    mean = rows.mean(axis=0)
    assert np.allclose(outside @ (mean - center), 0.0, atol=1e-8)  # element means lie in the subspace
    delta = x - mean
    return np.einsum("ni,ni->n", delta, np.linalg.solve(model_cov, delta.T).T)


def test_t_squared_equals_direct_numpy_computation():
    model, features, species, blocks = model_with_space(2, components=8)
    projection, center = model.domain_projection.numpy(), model.domain_center.numpy()
    assert projection.shape == (model.n_features, 8)
    np.testing.assert_allclose(projection.T @ projection, np.eye(8), atol=1e-12)
    probe, probe_species = element_features(2, model.n_features, n=50, seed=9)
    probe = probe + 0.5  # shifted: not the training distribution
    t2 = model.mahalanobis(probe, probe_species).numpy()
    x, f, sp = probe.numpy(), features.numpy(), species.numpy()
    for s in (0, 1):
        rows = probe_species.numpy() == s
        np.testing.assert_allclose(t2[rows], numpy_t_squared(x[rows], f, sp, s, projection, center), rtol=1e-8)
    # thresholds: the mean training T^2 is the effective dof; empirical and training_max as the model computes
    train_t2 = model.mahalanobis(features, species).numpy()
    for s, z in enumerate((28, 29)):
        stats = blocks["mahalanobis"]["per_element"][str(z)]
        values = train_t2[sp == s]
        assert values.mean() == pytest.approx(stats["dof"] * (len(values) - 1) / len(values), rel=1e-8)
        assert stats["training_max"] == pytest.approx(values.max(), rel=1e-12)
        assert stats["empirical"] == pytest.approx(np.quantile(values, 0.999), rel=1e-12)
        assert stats["chi2"] > stats["dof"] and 0 < stats["explained"] < 1 and stats["residual_dof"] > 1
    assert blocks["mahalanobis"]["components"] == 8 == blocks["d_min"]["components"]


def test_per_element_loop_equals_dense_reference_and_full_rank_equals_dense_t_squared():
    model, features, species, _ = model_with_space(3, components=8)
    order = torch.randperm(len(species), generator=torch.Generator().manual_seed(1))[:500]
    x, sp = features[order], species[order]
    # dense reference: every atom's own statistics gathered, [n, P, P]
    y = model.domain_coordinates(x)
    delta = y[:, :8] - model.domain_component_mean[sp]
    dense = torch.einsum("ni,nij,nj->n", delta, model.domain_component_precision[sp], delta)
    dense = dense + model.domain_residual_weight[sp] * y[:, 8] ** 2
    torch.testing.assert_close(model.mahalanobis(x, sp), dense, rtol=1e-12, atol=1e-9)
    # P = D: the old dense per-element T^2 (shrunk full covariance), whatever the rotation
    d = features.shape[1]
    space = fit_monitor_space(features, species, 3, components=d, shrinkage=SHRINKAGE)
    assert space.components == d and float(space.residual_weight.abs().max()) == 0.0
    full = space.t_squared(x, sp)
    for s in range(3):
        mu, precision, dof = fit_mahalanobis(features[species == s], SHRINKAGE)
        torch.testing.assert_close(full[sp == s], t_squared(x[sp == s], mu, precision), rtol=1e-8, atol=1e-8)
        assert space.dof[s] == pytest.approx(dof, rel=1e-8)


def test_far_environment_scores_high_also_outside_the_components():
    model, features, species, blocks = model_with_space(2, components=8)
    stats = blocks["mahalanobis"]["per_element"]["29"]
    holdout_max = blocks["d_min"]["per_element"]["29"]["holdout_max"]
    v = model.domain_projection
    mean = features[species == 1].mean(dim=0)
    # along the leading component of element 29
    along = mean + 10.0 * features[species == 1].std(dim=0).max() * v[:, -1]
    # outside the components: a direction orthogonal to V, as far as the training residuals reach
    rng = torch.Generator().manual_seed(3)
    u = torch.randn(v.shape[0], generator=rng, dtype=torch.float64)
    u = u - v @ (v.T @ u)
    u = u / u.norm()
    r_train = model.domain_coordinates(features[species == 1])[:, -1]
    outside = mean + 4.0 * float(r_train.max()) * u
    probes = torch.stack([along, outside])
    one = torch.ones(2, dtype=torch.long)
    t2 = model.mahalanobis(probes, one)
    assert float(t2.min()) > stats["training_max"]
    # the second is invisible to the components: its whole T^2 is the residual term w r^2
    y = model.domain_coordinates(probes)
    torch.testing.assert_close(y[1, :8], model.domain_component_mean[1], atol=1e-8, rtol=0)
    assert float(t2[1]) == pytest.approx(float(model.domain_residual_weight[1] * y[1, 8] ** 2), rel=1e-8)
    assert float(model.kernel_distance(probes, one).min()) > holdout_max


def test_surface_far_from_bulk_training_scores_high(random_potential):
    """Real descriptors: a model fitted on bulk Cu (conftest's EMT frames) flags a (111) surface."""
    slab = fcc111("Cu", (3, 3, 4), a=3.6, vacuum=6.0)
    nl = neighbor_list(slab.positions, slab.cell.array, slab.pbc, random_potential.cutoff, vectors=True)
    out = random_potential.evaluate(torch.from_numpy(slab.numbers), torch.from_numpy(np.stack([nl.i, nl.j])),
                                    torch.from_numpy(nl.vectors), len(slab), True, False)
    bulk_t2 = random_potential.evaluate(*_bulk_inputs(), True, False)["mahalanobis"]
    top = slab.positions[:, 2] > slab.positions[:, 2].max() - 0.1
    assert float(out["mahalanobis"][torch.from_numpy(top)].min()) > 10 * float(bulk_t2.max())


def _bulk_inputs():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.03, seed=1)
    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.5, vectors=True)
    return (torch.from_numpy(atoms.numbers), torch.from_numpy(np.stack([nl.i, nl.j])), torch.from_numpy(nl.vectors),
            len(atoms))


def monitor_numel(state: dict) -> int:
    return sum(state[name].numel() for name in MONITOR_BUFFERS if name in state)


def test_five_elements_shapes_memory_and_no_per_atom_matrices():
    model, features, species, _ = model_with_space(5, components=32)
    d, s, p = model.n_features, 5, 32
    assert 500 * p * p > 500 * d  # an [n, P, P] gather would be the largest allocation
    m = model.reference_features.shape[1]
    assert model.domain_projection.shape == (d, p) and model.domain_component_precision.shape == (s, p, p)
    assert model.reference_features.shape == (s, m, p + 1) and model.domain_precision.shape == (s, 0, 0)
    # stored: c [D], V [D, P], and per element P + P^2 + 1 numbers and the reference set; nothing [S, D, ...]
    assert monitor_numel(model.state_dict()) == d + d * p + s * (p + p * p + 1) + s * m * (p + 1) + s + 1
    x = features[:500]
    sp = torch.arange(500) % 5
    # files with dense statistics are evaluated per element too ([n_s, D], no [n, D, D] gather)
    legacy = MLIPotential(model.config).double().eval()
    legacy.domain_mean = torch.zeros(5, d, dtype=torch.float64)
    legacy.domain_precision = torch.eye(d, dtype=torch.float64).repeat(5, 1, 1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        t2 = model.mahalanobis(x, sp)
        d_min = model.kernel_distance(x, sp)
        dense = legacy.mahalanobis(x, sp)
    assert t2.shape == d_min.shape == (500,) and bool(torch.isfinite(t2).all())
    torch.testing.assert_close(dense, (x * x).sum(dim=1))
    largest = max(event.cpu_memory_usage for event in prof.events())  # the largest single allocation
    assert largest <= 500 * max(d, m) * 8  # [n, D] (x - c) or [n, M] (distances to the references)


def test_training_keeps_one_copy_of_the_monitor_statistics():
    """Members never read the monitors' statistics: the state they start from does not carry
    them, and an untrained model holds none (the dense [S, D, D] precision was allocated for the
    ensemble, the shared state and every member)."""
    cfg = ModelConfig(atomic_numbers=[28, 29, 79], cutoff=4.0, n_max=4, l_max=2, hidden=(8,), ensemble_size=2,
                      channels=12)
    ensemble = MLIPotential(cfg).double()
    d = ensemble.n_features
    assert monitor_numel(ensemble.state_dict()) <= d + 2 * 3 + 1  # centre, weights, counts, kernel length
    shared = shared_member_state(ensemble)
    assert not set(shared) & set(MONITOR_BUFFERS) and "feature_mean" in shared
    member = MLIPotential(_member_config(cfg)).double()
    member.load_state_dict(shared, strict=False)
    assert monitor_numel(member.state_dict()) <= d + 2 * 3 + 1


def _probe_inputs(record):
    probe = record["probe"]
    atoms = Atoms(numbers=probe["numbers"], positions=probe["positions"], cell=probe["cell"], pbc=True)
    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.0, vectors=True)
    return (torch.tensor(probe["numbers"]), torch.from_numpy(np.stack([nl.i, nl.j])), torch.from_numpy(nl.vectors),
            len(atoms), True, False)


@pytest.mark.parametrize("how", ["file", "load_potential", "reexport"])
def test_files_with_dense_statistics_keep_their_values(how, tmp_path):
    """tests/data/dense_monitors_cuni.pt was written before the monitor space (dense per-element
    T^2 [S, D, D], reference set in feature space; recipe in the .json): its own TorchScript,
    this version's module rebuilt from it, and a re-export give the values it gave then."""
    path = DATA / "dense_monitors_cuni.pt"
    record = json.loads((DATA / "dense_monitors_cuni.json").read_text())
    if how == "file":
        module, _ = load_module(path)
    elif how == "load_potential":
        module = load_potential(path).eval()
        assert module.domain_precision.shape == (2, 69, 69) and module.domain_projection.shape == (69, 0)
    else:
        module, _ = load_module(reexport(path, tmp_path / "new.pt"))
    out = module.evaluate(*_probe_inputs(record))
    for key, expected in record["outputs"].items():
        np.testing.assert_allclose(out[key].numpy(), expected, rtol=1e-12, atol=1e-12, err_msg=key)


def test_shipped_model_rebuilt_gives_its_own_values():
    module, _ = load_module(default_model_path())
    rebuilt = load_potential(default_model_path()).eval()
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(3)
    atoms.rattle(0.1, seed=4)
    del atoms[5]
    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 5.5, vectors=True)
    args = (torch.from_numpy(atoms.numbers), torch.from_numpy(np.stack([nl.i, nl.j])), torch.from_numpy(nl.vectors),
            len(atoms), True, False)
    a, b = module.evaluate(*args), rebuilt.evaluate(*args)
    torch.testing.assert_close(a["mahalanobis"], b["mahalanobis"], rtol=0, atol=0)
    torch.testing.assert_close(a["d_min"], b["d_min"], rtol=1e-12, atol=0)  # distances summed in another order


def test_evaluate_monitors_equals_the_monitors_of_evaluate_features(tmp_path):
    """A host that has energies, forces and energy_members from elsewhere (the fused one-pass C
    kernel) gets the same monitors from the raw features alone."""
    from mlip_md.model.io import save_model

    model, *_ = model_with_space(2, components=8)
    with torch.no_grad():
        model.pair_min_distance.fill_(2.2)
        model.energy_variance_floor.fill_(1e-5)
    module, _ = load_module(save_model(model, tmp_path / "m.pt"))
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.numbers[::3] = 28
    atoms.rattle(0.1, seed=2)
    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, model.cutoff, vectors=True)
    species, edges = torch.from_numpy(atoms.numbers), torch.from_numpy(np.stack([nl.i, nl.j]))
    vectors, n = torch.from_numpy(nl.vectors), len(atoms)
    raw = model.descriptor(model.species_index(species), edges[0], edges[1], vectors, n).detach()
    full = module.evaluate_features(species, raw, edges, vectors, n, True, False)
    alone = module.evaluate_monitors(species, raw, full["energy_members"], edges, vectors, n)
    assert sorted(alone) == ["d_min", "energy_sigma", "features", "mahalanobis", "min_distance", "min_distance_ratio"]
    for key, value in alone.items():
        torch.testing.assert_close(value, full[key], rtol=1e-12, atol=1e-12, msg=key)
    with pytest.raises(Exception, match=r"energy_members must have shape \[2, n_local\]"):
        module.evaluate_monitors(species, raw, full["energy_members"][:1], edges, vectors, n)
