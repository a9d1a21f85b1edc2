"""Domain monitors: kernel distance d_min, farthest-point sampling, exact hull membership,
and the values the exported model computes from its stored statistics."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from mlip_md.domain.hull import hull_distance, in_hull
from mlip_md.domain.kernel import farthest_point_sampling, fit_reference_set, kernel_distance
from mlip_md.train.data import to_graph
from mlip_md.train.fit import raw_features
from conftest import fitted_potential  # noqa: E402


def test_fps_picks_extremes_first():
    x = np.array([[0.0, 0], [0.1, 0], [10, 0], [0, 5], [0.05, 0.05]])
    order = farthest_point_sampling(x, 3)
    assert set(order[1:].tolist()) == {2, 3}


def test_kernel_distance_zero_on_references_and_bounded():
    rng = np.random.default_rng(0)
    refs = rng.normal(size=(30, 5))
    d = kernel_distance(refs, refs, length=1.0)
    assert np.all(d < 1e-6)
    far = kernel_distance(refs + 100.0, refs, length=1.0)
    assert np.all(far <= np.sqrt(2)) and np.all(far > 1.41)
    near = kernel_distance(refs + 0.1, refs, length=1.0)
    assert np.all((near > 0) & (near < 0.5))


def test_fit_reference_set_threshold_from_holdout():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(2000, 4))
    species = np.zeros(2000, dtype=int)
    refs, counts, length, thresholds = fit_reference_set(features, species, 1, size=200, quantile=0.99)
    assert counts.tolist() == [200] and refs.shape == (1, 200, 4) and length > 0
    assert 0 < thresholds[0]["empirical"] < np.sqrt(2)


@pytest.mark.parametrize("dim", [1, 2, 3, 6])
def test_hull_membership_exact(dim):
    cube = np.array(np.meshgrid(*[[0.0, 1.0]] * dim)).reshape(dim, -1).T  # unit hypercube corners
    inside = np.full((1, dim), 0.5)
    on_face = np.concatenate([[1.0], np.full(dim - 1, 0.3)])[None]
    outside = np.concatenate([[1.25], np.full(dim - 1, 0.5)])[None]
    assert in_hull(inside, cube)[0] and in_hull(on_face, cube)[0]
    assert not in_hull(outside, cube)[0]
    assert hull_distance(outside, cube)[0] == pytest.approx(0.25, abs=1e-9)
    # a simplex: the centroid is inside, the point beyond a vertex is not
    simplex = np.vstack([np.zeros(dim), np.eye(dim)])
    assert in_hull(simplex.mean(axis=0, keepdims=True), simplex)[0]
    assert not in_hull(np.full((1, dim), 1.0), simplex)[0] or dim == 1


def test_model_d_min_zero_on_reference_environments(emt_frames):
    model = fitted_potential(emt_frames)  # fresh: other tests round the shared one through float32
    assert model.reference_features.shape[1] > 0
    graphs = [to_graph(a, model.cutoff) for a in emt_frames]
    raw, species = raw_features(model, graphs)
    features = (raw - model.feature_mean) / model.feature_scale
    refs = model.reference_features[0, : int(model.reference_count[0])]
    # every reference row is the monitor coordinates (z, r) of some training environment: d_min 0
    d = model.reference_distance(refs, torch.zeros(len(refs), dtype=torch.long))
    assert float(d.max()) < 1e-6
    d_all = model.kernel_distance(features, species).numpy()
    assert np.sort(d_all)[: len(refs)].max() < 1e-6
    coordinates = model.domain_coordinates(features).numpy()
    np.testing.assert_allclose(d_all, kernel_distance(coordinates, refs.numpy(), float(model.kernel_length)), atol=5e-7)


def test_t_squared_of_gaussian_training_data_follows_chi2():
    from mlip_md.domain.mahalanobis import fit_mahalanobis, t_squared

    rng = np.random.default_rng(3)
    d = 12
    mixing = rng.normal(size=(d, d))
    x = torch.as_tensor(rng.normal(size=(20000, d)) @ mixing + 3.0)
    mu, precision, dof = fit_mahalanobis(x, shrinkage=1e-6)
    t2 = t_squared(x, mu, precision).numpy()
    assert dof == pytest.approx(d, rel=1e-3)
    assert stats.kstest(t2, stats.chi2(dof).cdf).pvalue > 1e-3
    assert np.mean(t2 > stats.chi2.ppf(0.999, dof)) == pytest.approx(0.001, abs=0.001)


def test_degenerate_covariance_is_a_clear_error():
    from mlip_md.domain.mahalanobis import fit_mahalanobis

    with pytest.raises(ValueError, match="at least 2 environments"):
        fit_mahalanobis(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="identical"):
        fit_mahalanobis(torch.ones(10, 3))


def test_model_t_squared_uses_stored_statistics(random_potential, emt_frames):
    """The exported model's T^2 equals the fitted statistics; its mean is the effective dof."""
    from mlip_md.train.fit import fit_domain_statistics

    graphs = [to_graph(a, random_potential.cutoff) for a in emt_frames]
    raw, species = raw_features(random_potential, graphs)
    features = (raw - random_potential.feature_mean) / random_potential.feature_scale
    summary = fit_domain_statistics(random_potential, graphs)["mahalanobis"]["per_element"]["29"]
    t2 = random_potential.mahalanobis(features, species).numpy()
    assert 1 < summary["dof"] < features.shape[1]  # correlated descriptors: fewer effective dof
    assert t2.mean() == pytest.approx(summary["dof"], rel=2e-3)  # (n - 1) / n: unbiased covariance
    assert summary["empirical"] == pytest.approx(np.quantile(t2, 0.999))


# ------------------------------------------------------------------ model-agnostic SOAP domain
def _soap_training_set():
    from ase.build import bulk

    frames = []
    for k in range(12):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
        atoms.rattle(0.05, seed=k)
        frames.append(atoms)
    return frames


def test_soap_domain_zero_on_training_points_and_flags_a_surface():
    pytest.importorskip("featomic")
    from ase.build import bulk, fcc111

    from mlip_md.domain.soap import SoapDescriptor, SoapDomain

    train = _soap_training_set()
    domain = SoapDomain.fit(SoapDescriptor([29]), train)
    on_training = domain.evaluate(train[:2])
    assert on_training["d_min"].min() == 0.0  # reference environments are training atoms
    held_out = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    held_out.rattle(0.05, seed=99)
    slab = fcc111("Cu", (3, 3, 4), a=3.6, vacuum=6.0, periodic=True)
    bulk_signals, slab_signals = domain.evaluate([held_out]), domain.evaluate([slab])
    assert bulk_signals["outside"].mean() < 0.05
    z = slab.positions[:, 2]
    surface = (z < z.min() + 0.1) | (z > z.max() - 0.1)
    assert slab_signals["outside"][surface].all()
    assert slab_signals["t2"][surface].min() > 10 * bulk_signals["t2"].max()


def test_soap_descriptor_rows_follow_atom_order_and_bad_input():
    pytest.importorskip("featomic")
    from mlip_md.domain.soap import SoapDescriptor

    atoms = _soap_training_set()[0]
    descriptor = SoapDescriptor([29])
    order = np.random.default_rng(0).permutation(len(atoms))
    x, x_permuted = descriptor.compute([atoms]), descriptor.compute([atoms[order]])
    np.testing.assert_allclose(x_permuted, x[order], atol=1e-12)
    gold = atoms.copy()
    gold.numbers[0] = 79
    with pytest.raises(ValueError, match=r"\[79\] are not in the SOAP species"):
        descriptor.compute([gold])
    with pytest.raises(ValueError, match="cutoff > smoothing"):
        SoapDescriptor([29], cutoff=0.3)
