"""The fused C++ power-spectrum kernel (csrc/src/power_spectrum.cpp) against the TorchScript
descriptor it replaces (mlip_md.model.descriptor.PowerSpectrum) and its autograd gradients:
version 1 (one-hot species) and version 2 (species-compressed, radial mixing W [S, n_max, Q])."""
import numpy as np
import pytest
import torch
from ase.build import bulk

from mlip_md._native import core
from mlip_md.model.descriptor import PowerSpectrum
from mlip_md.neighbors import neighbor_list

CASES = [  # (n_species, n_max, l_max, cutoff, switch_width)
    (1, 8, 4, 5.5, 1.0),   # the shipped model's descriptor
    (2, 5, 3, 5.0, 1.2),
    (3, 3, 6, 4.5, 4.5),   # switch over the whole range
    (1, 1, 0, 4.0, 0.5),
    (2, 4, 8, 4.8, 0.7),   # the largest l_max
]


def structure(n_species, cutoff, seed, shuffle=True, ghosts=0):
    """Rattled fcc cell with random species; edges shuffled; ``ghosts`` trailing atoms that are
    neighbours only (as LAMMPS ghost atoms)."""
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.25, seed=seed)
    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff, vectors=True)
    i, j, vectors = nl.i, nl.j, nl.vectors
    n = len(atoms)
    n_all = n + ghosts
    if ghosts:  # re-point some neighbours at ghost copies (same vectors: periodic images)
        moved = rng.random(len(j)) < 0.3
        j = np.where(moved, n + rng.integers(0, ghosts, len(j)), j)
    order = rng.permutation(len(i)) if shuffle else np.arange(len(i))
    edge_index = np.ascontiguousarray(np.stack([i, j])[:, order])
    species = rng.integers(0, n_species, n_all)
    return species, edge_index, np.ascontiguousarray(vectors[order]), n


def torch_reference(params, species, edge_index, vectors):
    s, n_max, l_max, cutoff, width = params
    module = PowerSpectrum(s, cutoff, n_max, l_max, width).double()
    v = torch.from_numpy(vectors).requires_grad_(True)
    ei = torch.from_numpy(edge_index)
    return module, v, module(torch.from_numpy(species), ei[0], ei[1], v, int(ei[0].max()) + 1)


@pytest.mark.parametrize("params", CASES)
def test_forward_and_backward_match_torch_autograd(params):
    species, edge_index, vectors, n = structure(params[0], params[3], seed=sum(params[:3]), ghosts=5)
    features, density = core.power_spectrum_forward(params, species, edge_index, vectors, n)
    _, v, reference = torch_reference(params, species, edge_index, vectors)
    assert features.shape == tuple(reference.shape)
    scale = float(reference.detach().abs().max())
    np.testing.assert_allclose(features, reference.detach().numpy(), rtol=0, atol=1e-13 * scale)
    weights = np.random.default_rng(1).normal(size=(3,) + features.shape)
    edge_grad = core.power_spectrum_backward(params, species, edge_index, vectors, density, weights, n)
    assert edge_grad.shape == (3, edge_index.shape[1], 3)
    for k in range(3):
        expected = torch.autograd.grad([(reference * torch.from_numpy(weights[k])).sum()], [v],
                                       retain_graph=True)[0].numpy()
        np.testing.assert_allclose(edge_grad[k], expected, rtol=0, atol=1e-12 * np.abs(expected).max())
    # one row at a time gives the same as the batch
    single = core.power_spectrum_backward(params, species, edge_index, vectors, density, weights[1], n)
    np.testing.assert_allclose(single, edge_grad[1], rtol=0, atol=1e-14 * np.abs(single).max())


def test_gradient_matches_finite_differences_of_a_feature_function():
    params = CASES[1]
    species, edge_index, vectors, n = structure(2, params[3], seed=3)
    weights = np.random.default_rng(4).normal(size=(n, core.power_spectrum_forward(params, species, edge_index[:, :1],
                                                                                     vectors[:1], n)[0].shape[1]))

    def value(v):
        return float((core.power_spectrum_forward(params, species, edge_index, v, n)[0] * weights).sum())

    _, density = core.power_spectrum_forward(params, species, edge_index, vectors, n)
    grad = core.power_spectrum_backward(params, species, edge_index, vectors, density, weights, n)
    h = 1e-6
    for e in (0, 7, len(vectors) // 2):
        for a in range(3):
            plus, minus = vectors.copy(), vectors.copy()
            plus[e, a] += h
            minus[e, a] -= h
            assert (value(plus) - value(minus)) / (2 * h) == pytest.approx(grad[e, a], rel=1e-6, abs=1e-7)


def test_float32_agrees_with_float64():
    params = CASES[0]
    species, edge_index, vectors, n = structure(1, params[3], seed=5)
    f64, d64 = core.power_spectrum_forward(params, species, edge_index, vectors, n)
    f32, d32 = core.power_spectrum_forward(params, species, edge_index, vectors.astype(np.float32), n)
    assert f32.dtype == np.float32 and d32.dtype == np.float32
    np.testing.assert_allclose(f32, f64, rtol=0, atol=1e-5 * np.abs(f64).max())
    g = np.random.default_rng(6).normal(size=f64.shape)
    e64 = core.power_spectrum_backward(params, species, edge_index, vectors, d64, g, n)
    e32 = core.power_spectrum_backward(params, species, edge_index, vectors.astype(np.float32), d32,
                                       g.astype(np.float32), n)
    assert e32.dtype == np.float32
    np.testing.assert_allclose(e32, e64, rtol=0, atol=1e-5 * np.abs(e64).max())


def test_edges_beyond_the_cutoff_and_isolated_centres_contribute_nothing():
    params = (1, 4, 2, 3.0, 1.0)
    species = np.zeros(4, dtype=np.int64)
    edge_index = np.array([[0, 0, 1, 0], [1, 2, 0, 3]])
    vectors = np.array([[2.0, 0.1, 0.0], [0.0, 3.0, 0.0], [-2.0, -0.1, 0.0], [0.0, 0.0, 7.5]])
    features, density = core.power_spectrum_forward(params, species, edge_index, vectors, 3)
    alone, _ = core.power_spectrum_forward(params, species, edge_index[:, [0, 2]], vectors[[0, 2]], 3)
    np.testing.assert_array_equal(features, alone)
    assert not features[2].any()  # centre 2 has no edges
    grad = core.power_spectrum_backward(params, species, edge_index, vectors, density, np.ones_like(features), 3)
    assert not grad[[1, 3]].any() and grad[[0, 2]].any()


def test_empty_inputs():
    params = CASES[0]
    features, density = core.power_spectrum_forward(params, np.zeros(2, np.int64), np.zeros((2, 0), np.int64),
                                                    np.zeros((0, 3)), 2)
    assert features.shape == (2, 188) and not features.any()
    grad = core.power_spectrum_backward(params, np.zeros(2, np.int64), np.zeros((2, 0), np.int64), np.zeros((0, 3)),
                                        density, features, 2)
    assert grad.shape == (0, 3)


@pytest.mark.parametrize("change, message", [
    (lambda s, ei, v: (s + 5, ei, v), "species index"),
    (lambda s, ei, v: (s, ei + np.array([[40], [0]]), v), "not a local atom"),
    (lambda s, ei, v: (s, ei + np.array([[0], [400]]), v), "neighbour"),
    (lambda s, ei, v: (s, ei, np.where(np.arange(len(v))[:, None] == 3, np.nan, v)), "not finite"),
    (lambda s, ei, v: (s, ei, np.where(np.arange(len(v))[:, None] == 3, 0.0, v)), "on top of each other"),
])
def test_bad_inputs_name_the_problem(change, message):
    params = CASES[1]
    species, edge_index, vectors, n = structure(2, params[3], seed=7)
    s, ei, v = change(species, edge_index, vectors)
    with pytest.raises(ValueError, match=message):
        core.power_spectrum_forward(params, s, ei, np.ascontiguousarray(v), n)


@pytest.mark.parametrize("params", [(0, 8, 4, 5.0, 1.0), (1, 8, 9, 5.0, 1.0), (1, 8, 4, -1.0, 1.0),
                                    (1, 8, 4, 5.0, 6.0), (1, 0, 4, 5.0, 1.0)])
def test_bad_parameters(params):
    with pytest.raises(ValueError, match="invalid power-spectrum parameters"):
        core.power_spectrum_forward(params, np.zeros(1, np.int64), np.zeros((2, 0), np.int64), np.zeros((0, 3)), 1)


# ----------------------------------------------------------------------------- version 2
COMPRESSED = [  # (n_species, n_max, l_max, cutoff, switch_width, Q)
    (3, 4, 3, 4.5, 1.0, 5),    # 3 elements, Q between n_max and S n_max
    (5, 8, 4, 5.0, 1.0, 8),    # 5 elements, the training defaults: Q = n_max
    (5, 3, 2, 4.5, 4.5, 7),    # Q not a multiple of the kernel's row block
    (3, 2, 0, 4.0, 0.5, 1),    # a single channel, l_max 0
]


def mixing(n_species, n_max, channels, seed):
    """A dense random W [S, n_max, Q] (no zero entries: every species feeds every channel)."""
    return np.random.default_rng(seed).normal(size=(n_species, n_max, channels))


def compressed_reference(case, w, species, edge_index, vectors, n):
    s, n_max, l_max, cutoff, width, q = case
    module = PowerSpectrum(s, cutoff, n_max, l_max, width, channels=q).double()
    with torch.no_grad():
        module.radial_mixing.copy_(torch.from_numpy(w))
    v = torch.from_numpy(vectors).requires_grad_(True)
    ei = torch.from_numpy(edge_index)
    return v, module(torch.from_numpy(species), ei[0], ei[1], v, n)


@pytest.mark.parametrize("case", COMPRESSED)
def test_compressed_forward_backward_and_forces_match_torch_autograd(case):
    """Features to 1e-13 of the TorchScript PowerSpectrum(channels=Q); edge gradients of three
    feature functions at once, and straight to forces and virial, to autograd's at 1e-12."""
    species, edge_index, vectors, n = structure(case[0], case[3], seed=sum(case[:3]) + case[5], ghosts=5)
    w = mixing(case[0], case[1], case[5], seed=case[5])
    params = case[:5] + (w,)
    features, density = core.power_spectrum_forward(params, species, edge_index, vectors, n)
    v, reference = compressed_reference(case, w, species, edge_index, vectors, n)
    q, l_max = case[5], case[2]
    assert features.shape == tuple(reference.shape) == (n, q + q * (q + 1) // 2 * (l_max + 1))
    assert density.shape == (n, q * (l_max + 1) ** 2)
    scale = float(reference.detach().abs().max())
    np.testing.assert_allclose(features, reference.detach().numpy(), rtol=0, atol=1e-13 * scale)
    weights = np.random.default_rng(2).normal(size=(3,) + features.shape)
    edge_grad = core.power_spectrum_backward(params, species, edge_index, vectors, density, weights, n)
    for k in range(3):
        expected = torch.autograd.grad([(reference * torch.from_numpy(weights[k])).sum()], [v],
                                       retain_graph=True)[0].numpy()
        np.testing.assert_allclose(edge_grad[k], expected, rtol=0, atol=1e-12 * np.abs(expected).max())
    forces, virial = core.power_spectrum_backward_forces(params, species, edge_index, vectors, density, weights[0], n)
    expected = np.zeros_like(forces)  # F_i += g, F_j -= g, W = -sum r (x) g
    np.add.at(expected, edge_index[0], edge_grad[0])
    np.add.at(expected, edge_index[1], -edge_grad[0])
    np.testing.assert_allclose(forces, expected, rtol=0, atol=1e-12 * np.abs(expected).max())
    np.testing.assert_allclose(virial, -vectors.T @ edge_grad[0], rtol=0, atol=1e-12 * np.abs(virial).max())


@pytest.mark.parametrize("case", COMPRESSED[:2])
def test_compressed_float32_agrees_with_float64(case):
    species, edge_index, vectors, n = structure(case[0], case[3], seed=11)
    params = case[:5] + (mixing(case[0], case[1], case[5], seed=3),)
    f64, d64 = core.power_spectrum_forward(params, species, edge_index, vectors, n)
    f32, d32 = core.power_spectrum_forward(params, species, edge_index, vectors.astype(np.float32), n)
    assert f32.dtype == np.float32
    np.testing.assert_allclose(f32, f64, rtol=0, atol=1e-5 * np.abs(f64).max())
    g = np.random.default_rng(6).normal(size=f64.shape)
    e64 = core.power_spectrum_backward(params, species, edge_index, vectors, d64, g, n)
    e32 = core.power_spectrum_backward(params, species, edge_index, vectors.astype(np.float32), d32,
                                       g.astype(np.float32), n)
    np.testing.assert_allclose(e32, e64, rtol=0, atol=1e-5 * np.abs(e64).max())


def test_compressed_gradient_matches_finite_differences():
    case = COMPRESSED[0]
    species, edge_index, vectors, n = structure(case[0], case[3], seed=4)
    params = case[:5] + (mixing(case[0], case[1], case[5], seed=5),)
    features, density = core.power_spectrum_forward(params, species, edge_index, vectors, n)
    weights = np.random.default_rng(4).normal(size=features.shape)

    def value(v):
        return float((core.power_spectrum_forward(params, species, edge_index, v, n)[0] * weights).sum())

    grad = core.power_spectrum_backward(params, species, edge_index, vectors, density, weights, n)
    h = 1e-6
    for e in (0, 7, len(vectors) // 2):
        for a in range(3):
            plus, minus = vectors.copy(), vectors.copy()
            plus[e, a] += h
            minus[e, a] -= h
            assert (value(plus) - value(minus)) / (2 * h) == pytest.approx(grad[e, a], rel=1e-6, abs=1e-7)


def test_one_hot_mixing_equals_version_1():
    """W[s, n, s n_max + n] = 1 through the mixing path gives version 1's features and gradients
    (to rounding: the mixing path sums a centre's edges grouped by species)."""
    params = CASES[1]
    s, n_max = params[0], params[1]
    species, edge_index, vectors, n = structure(s, params[3], seed=8)
    one_hot = np.eye(s * n_max).reshape(s, n_max, s * n_max)
    f1, d1 = core.power_spectrum_forward(params, species, edge_index, vectors, n)
    f2, d2 = core.power_spectrum_forward(params + (one_hot,), species, edge_index, vectors, n)
    np.testing.assert_allclose(f2, f1, rtol=0, atol=1e-14 * np.abs(f1).max())
    g = np.random.default_rng(9).normal(size=f1.shape)
    e1 = core.power_spectrum_backward(params, species, edge_index, vectors, d1, g, n)
    e2 = core.power_spectrum_backward(params + (one_hot,), species, edge_index, vectors, d2, g, n)
    np.testing.assert_allclose(e2, e1, rtol=0, atol=1e-13 * np.abs(e1).max())
    assert core.power_spectrum_forward(params + (None,), species, edge_index, vectors, n)[0].tobytes() == f1.tobytes()


def test_compressed_edges_beyond_the_cutoff_and_isolated_centres_contribute_nothing():
    params = (2, 4, 2, 3.0, 1.0, mixing(2, 4, 3, seed=1))
    species = np.array([0, 1, 1, 0])
    edge_index = np.array([[0, 0, 1, 0], [1, 2, 0, 3]])
    vectors = np.array([[2.0, 0.1, 0.0], [0.0, 3.0, 0.0], [-2.0, -0.1, 0.0], [0.0, 0.0, 7.5]])
    features, density = core.power_spectrum_forward(params, species, edge_index, vectors, 3)
    alone, _ = core.power_spectrum_forward(params, species, edge_index[:, [0, 2]], vectors[[0, 2]], 3)
    np.testing.assert_array_equal(features, alone)
    assert not features[2].any() and features[0].any()
    grad = core.power_spectrum_backward(params, species, edge_index, vectors, density, np.ones_like(features), 3)
    assert not grad[[1, 3]].any() and grad[[0, 2]].any()


@pytest.mark.parametrize("w, message", [
    (np.full((2, 5, 3), np.nan), r"radial_mixing\[0\]\[0\]\[0\] is not finite"),
    (np.where(np.arange(30).reshape(2, 5, 3) == 17, np.inf, 1.0), r"radial_mixing\[1\]\[0\]\[2\] is not finite"),
    (np.ones((2, 4, 3)), r"radial_mixing must be \[n_species=2, n_max=5, Q >= 1\]"),
    (np.ones((2, 5, 0)), r"radial_mixing must be"),
    (np.ones((2, 5, 1025)), r"n_channels=1025: .* needs 1 <= n_channels <= 1024"),
])
def test_bad_mixing_names_the_problem(w, message):
    params = CASES[1] + (w,)
    species, edge_index, vectors, n = structure(2, params[3], seed=7)
    with pytest.raises(ValueError, match=message):
        core.power_spectrum_forward(params, species, edge_index, vectors, n)
