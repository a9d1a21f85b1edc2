"""The built-in potential: basis functions, descriptor invariances, batched ensemble,
TorchScript export, dtype support, contract outputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from scipy.spatial.transform import Rotation
from scipy.special import sph_harm_y

from mlip_md.model.assemble import forces_from_edge_grad
from mlip_md.model.potential import MLIPotential, ModelConfig
from mlip_md.model.radial import RadialBasis, smooth_cutoff
from mlip_md.model.spherical import SphericalHarmonics, spherical_harmonic_table
from mlip_md.neighbors import neighbor_list

from conftest import fitted_potential


def graph(atoms, cutoff):
    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    return (torch.from_numpy(atoms.numbers), torch.from_numpy(np.stack([nl.i, nl.j])),
            torch.from_numpy(nl.vectors))


def unit_vectors(n, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# ----------------------------------------------------------------------------- basis
@pytest.mark.parametrize("l_max", [0, 1, 3, 6])
def test_spherical_harmonics_match_monomial_table_and_scipy(l_max):
    u = unit_vectors(500)
    y = SphericalHarmonics(l_max)(torch.from_numpy(u)).numpy()
    monomials, table = spherical_harmonic_table(l_max)
    mono = np.stack([u[:, 0] ** a * u[:, 1] ** b * u[:, 2] ** c for a, b, c in monomials], axis=1)
    np.testing.assert_allclose(y, mono @ table, atol=1e-12)
    theta, phi = np.arccos(u[:, 2]), np.arctan2(u[:, 1], u[:, 0])
    for l in range(l_max + 1):
        # real SH from scipy's complex ones; signs of m != 0 are convention (no Condon-Shortley)
        np.testing.assert_allclose(y[:, l * l + l], sph_harm_y(l, 0, theta, phi).real, atol=1e-12)
        for m in range(1, l + 1):
            ref_cos = np.sqrt(2) * (-1) ** m * sph_harm_y(l, m, theta, phi).real
            ref_sin = np.sqrt(2) * (-1) ** m * sph_harm_y(l, m, theta, phi).imag
            np.testing.assert_allclose(y[:, l * l + l + m], ref_cos, atol=1e-12)
            np.testing.assert_allclose(y[:, l * l + l - m], ref_sin, atol=1e-12)


def test_spherical_harmonics_addition_theorem():
    # sum_m Y_lm(a) Y_lm(b) = (2l+1)/(4 pi) P_l(a.b): the rotation invariance the power spectrum needs
    from scipy.special import eval_legendre

    a, b = unit_vectors(200, 1), unit_vectors(200, 2)
    sh = SphericalHarmonics(5)
    ya, yb = sh(torch.from_numpy(a)).numpy(), sh(torch.from_numpy(b)).numpy()
    cos = (a * b).sum(axis=1)
    for l in range(6):
        lhs = (ya[:, l * l:(l + 1) ** 2] * yb[:, l * l:(l + 1) ** 2]).sum(axis=1)
        np.testing.assert_allclose(lhs, (2 * l + 1) / (4 * np.pi) * eval_legendre(l, cos), atol=1e-12)


def test_cutoff_switch_is_c2_and_bounded():
    rc, width = 5.0, 1.0
    r = torch.linspace(3.5, 5.5, 20001, dtype=torch.float64)
    f = smooth_cutoff(r, rc, width)
    assert torch.all(f[r <= rc - width] == 1.0) and torch.all(f[r >= rc] == 0.0)
    assert torch.all((f >= 0) & (f <= 1))
    h = float(r[1] - r[0])
    d1 = torch.diff(f) / h
    d2 = torch.diff(f, 2) / h**2
    # first and second derivative continuous: no jumps larger than the discretisation error
    assert float(torch.diff(d1).abs().max()) < 1e-3
    assert float(torch.diff(d2).abs().max()) < 0.1
    # and they vanish at both ends of the switch
    at_rc = torch.tensor([rc - 1e-4, rc], dtype=torch.float64, requires_grad=True)
    g = torch.autograd.grad(smooth_cutoff(at_rc, rc, width).sum(), at_rc, create_graph=True)[0]
    g2 = torch.autograd.grad(g.sum(), at_rc)[0]
    assert abs(float(g[1].detach())) < 1e-12 and abs(float(g2[1])) < 1e-12


def test_radial_basis_vanishes_beyond_cutoff():
    basis = RadialBasis(4.0, 6, 1.0)
    r = torch.tensor([1.0, 3.9999, 4.0, 4.5], dtype=torch.float64)
    values = basis.double()(r)
    assert values.shape == (4, 6)
    assert float(values[0].abs().max()) > 0.1
    assert float(values[1:].abs().max()) < 1e-10


# ----------------------------------------------------------------------------- descriptor
@pytest.fixture(scope="module")
def binary_potential():
    from conftest import emt_cu_frames, labelled

    frames = []
    for atoms in emt_cu_frames(6, seed=3):
        alloy = atoms.copy()
        alloy.numbers[::3] = 79  # Cu/Au: exercises species channels and per-element MLPs
        frames.append(labelled(alloy))
    return fitted_potential(frames, ensemble_size=3)


def test_feature_dimension(binary_potential):
    desc = binary_potential.descriptor
    q = 2 * 4
    assert desc.n_features == q + q * (q + 1) // 2 * 3


def test_features_invariant_to_rotation_and_neighbour_order(binary_potential):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.numbers[::3] = 79
    atoms.rattle(0.1, seed=1)
    species, ei, vec = graph(atoms, binary_potential.cutoff)
    index = binary_potential.species_index(species)
    base = binary_potential.descriptor(index, ei[0], ei[1], vec, len(atoms))
    rot = torch.from_numpy(Rotation.random(random_state=7).as_matrix())
    rotated = binary_potential.descriptor(index, ei[0], ei[1], vec @ rot.T, len(atoms))
    torch.testing.assert_close(rotated, base, atol=1e-10, rtol=1e-10)
    order = torch.randperm(ei.shape[1], generator=torch.Generator().manual_seed(0))
    shuffled = binary_potential.descriptor(index, ei[0, order], ei[1, order], vec[order], len(atoms))
    torch.testing.assert_close(shuffled, base, atol=1e-12, rtol=1e-12)


def test_features_distinguish_species(binary_potential):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    species, ei, vec = graph(atoms, binary_potential.cutoff)
    index = binary_potential.species_index(species)
    pure = binary_potential.descriptor(index, ei[0], ei[1], vec, len(atoms))
    atoms.numbers[5] = 79
    species2 = torch.from_numpy(atoms.numbers)
    mixed = binary_potential.descriptor(binary_potential.species_index(species2), ei[0], ei[1], vec, len(atoms))
    assert float((mixed - pure).abs().max()) > 1e-3


# ----------------------------------------------------------------------------- ensemble
def test_batched_ensemble_equals_members_evaluated_one_by_one(binary_potential):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.numbers[::3] = 79
    atoms.rattle(0.05, seed=2)
    species, ei, vec = graph(atoms, binary_potential.cutoff)
    out = binary_potential.evaluate(species, ei, vec, len(atoms), True, True)
    cfg = binary_potential.config
    for k in range(cfg.ensemble_size):
        single = MLIPotential(ModelConfig(**{**cfg.to_dict(), "ensemble_size": 1})).double().eval()
        state = binary_potential.state_dict()
        for name, tensor in state.items():
            if name.startswith("readout."):
                state[name] = tensor[:, k:k + 1]
        single.load_state_dict(state)
        one = single.evaluate(species, ei, vec, len(atoms), False, False)
        torch.testing.assert_close(one["atomic_energy"], out["energy_members"][k], atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(one["edge_grad"], out["member_edge_grad"][k], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(out["atomic_energy"], out["energy_members"].mean(0), atol=1e-13, rtol=0)
    torch.testing.assert_close(out["edge_grad"], out["member_edge_grad"].mean(0), atol=1e-12, rtol=1e-12)
    assert torch.all(out["energy_sigma"] > 0)


def test_members_differ(random_potential):
    w = random_potential.readout.layers[0].weight
    assert float((w[:, 0] - w[:, 1]).abs().max()) > 1e-3


# ----------------------------------------------------------------------------- export, dtypes
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-4)])
def test_torchscript_matches_eager(random_potential, dtype, tol):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=4)
    species, ei, vec = graph(atoms, random_potential.cutoff)
    eager = random_potential.to(dtype)
    try:
        scripted = torch.jit.script(eager)
        a = eager.evaluate(species, ei, vec.to(dtype), len(atoms), True, False)
        b = scripted.evaluate(species, ei, vec.to(dtype), len(atoms), True, False)
    finally:
        random_potential.to(torch.float64)
    for key in ("atomic_energy", "edge_grad", "energy_sigma", "mahalanobis"):
        assert a[key].dtype == dtype
        torch.testing.assert_close(a[key], b[key], atol=tol, rtol=tol)


def test_float32_close_to_float64(random_potential):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=5)
    species, ei, vec = graph(atoms, random_potential.cutoff)
    ref = random_potential.evaluate(species, ei, vec, len(atoms), False, False)
    low = random_potential.float()
    try:
        out = low.evaluate(species, ei, vec.float(), len(atoms), False, False)
    finally:
        random_potential.double()
    f64 = forces_from_edge_grad(ref["edge_grad"], ei, len(atoms))
    f32 = forces_from_edge_grad(out["edge_grad"].double(), ei, len(atoms))
    assert abs(float(out["atomic_energy"].double().sum() - ref["atomic_energy"].sum())) < 1e-3 * len(atoms)
    assert float((f32 - f64).abs().max()) < 1e-3


def test_strict_locality_with_ghost_atoms(random_potential):
    # a local atom's energy depends only on the edges given for it: adding far ghost atoms
    # (beyond the cutoff, so no edges) changes nothing, and n_local < N_all is honoured
    atoms = molecule("CH4")
    atoms.numbers[:] = 29
    atoms.positions *= 2.2
    species, ei, vec = graph(atoms, random_potential.cutoff)
    ref = random_potential.evaluate(species, ei, vec, len(atoms), True, False)
    extra = torch.cat([species, torch.tensor([29, 29])])
    out = random_potential.evaluate(extra, ei, vec, len(atoms), True, False)
    torch.testing.assert_close(out["atomic_energy"], ref["atomic_energy"])
    assert out["atomic_energy"].shape == (len(atoms),)


def test_isolated_atom_has_no_edges_and_zero_force(random_potential):
    species = torch.tensor([29])
    out = random_potential.evaluate(species, torch.zeros((2, 0), dtype=torch.long),
                                    torch.zeros((0, 3), dtype=torch.float64), 1, True, True)
    assert out["edge_grad"].shape == (0, 3)
    assert torch.isinf(out["min_distance"]).all()
    assert torch.isfinite(out["atomic_energy"]).all()


# ----------------------------------------------------------------------------- errors
def test_unknown_atomic_number_is_named(random_potential):
    with pytest.raises(ValueError, match="atomic number 79 is unknown to this model; it knows 29"):
        random_potential.evaluate(torch.tensor([29, 79]), torch.zeros((2, 0), dtype=torch.long),
                                  torch.zeros((0, 3), dtype=torch.float64), 2, False, False)


def test_grad_mode_off_is_a_clear_error(random_potential):
    scripted = torch.jit.script(random_potential)
    with torch.no_grad(), pytest.raises(Exception, match="grad mode enabled"):
        scripted(torch.tensor([29]), torch.zeros((2, 0), dtype=torch.long), torch.zeros((0, 3), dtype=torch.float64), 1)


def test_dtype_mismatch_is_a_clear_error(random_potential):
    with pytest.raises(ValueError, match="dtype does not match"):
        random_potential.evaluate(torch.tensor([29]), torch.zeros((2, 0), dtype=torch.long),
                                  torch.zeros((0, 3), dtype=torch.float32), 1, False, False)
