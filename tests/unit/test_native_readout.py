"""C readout (mlip_mlp_readout_*, mlip_md.model.native_readout): energies, member energies
and feature gradients equal the model's TorchScript evaluate_features (autograd) for 1-2
species, 1-2 hidden layers of widths that are not multiples of the vector width, atoms in
several blocks, float64 and float32; the fused engines use it on calls without monitors;
bad input is refused with a message."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from mlip_md import _core
from mlip_md.model.io import save_model
from mlip_md.model.native_readout import NativeReadout, native_readout, native_readout_unsupported_reason
from mlip_md.model.potential import MLIPotential, ModelConfig
from mlip_md.neighbors import neighbor_list
from mlip_md.runtime.factory import load_model
from mlip_md.runtime.fused import FusedBackend
from mlip_md.runtime.predictor import Predictor


def random_model(hidden, uq="ensemble", species=(29, 28), channels=None) -> MLIPotential:
    """Random model; ``channels``: a compressed descriptor (version 2) with a dense random W."""
    cfg = ModelConfig(atomic_numbers=list(species), cutoff=4.0, switch_width=1.2, n_max=3, l_max=2,
                      hidden=tuple(hidden), ensemble_size=3 if uq == "ensemble" else 1, uq=uq, channels=channels)
    model = MLIPotential(cfg).double().eval()
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        if channels is not None:
            model.descriptor.radial_mixing.normal_(0.0, 0.6, generator=gen)
        model.feature_mean.normal_(0.0, 0.3, generator=gen)
        model.feature_scale.uniform_(0.5, 2.0, generator=gen)
        model.energy_scale.fill_(0.7)
        model.atomic_reference_energy.copy_(torch.linspace(-4.0, -3.0, len(species), dtype=torch.float64))
        for layer in model.readout.layers:
            layer.bias.normal_(0.0, 0.2, generator=gen)
    return model


def reference(model, species_index, raw):
    """evaluate_features of the TorchScript module (autograd) on raw features [n, D]."""
    numbers = torch.as_tensor(np.asarray(model.atomic_numbers)[species_index])
    n = len(species_index)
    with torch.enable_grad():
        out = model.module.evaluate_features(numbers, torch.from_numpy(raw), torch.zeros(2, 0, dtype=torch.long),
                                             torch.zeros(0, 3, dtype=model.dtype), n, False, False)
    return {k: v.detach().numpy() for k, v in out.items()}


@pytest.mark.parametrize("hidden", [(8,), (13, 5)])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
def test_equals_torchscript_evaluate_features(tmp_path, hidden, dtype, tol):
    model = load_model(save_model(random_model(hidden), tmp_path / "m.pt", dtype=dtype))
    readout = native_readout(model)
    assert isinstance(readout, NativeReadout)
    rng = np.random.default_rng(0)
    n = 150                                              # 3 blocks of 64 atoms, the last one partial
    species_index = rng.integers(0, 2, size=n)           # species interleaved
    scale = model.module.feature_scale.numpy()
    raw = (rng.normal(size=(n, model.metadata["n_features"])) * 2 * scale).astype(readout.np_dtype)
    ref = reference(model, species_index, raw)
    out = {k: v.numpy() for k, v in readout(species_index, raw).items()}
    assert set(out) == set(ref)
    for key in ref:
        assert out[key].dtype == ref[key].dtype, key
        size = max(np.abs(ref[key]).max(), 1e-12)
        assert np.abs(out[key] - ref[key]).max() <= tol * size, (key, np.abs(out[key] - ref[key]).max())
    assert np.abs(out["feature_grad"]).max() > 1e-3      # the gradients are not trivially zero


def test_feature_grad_equals_finite_differences(tmp_path):
    model = load_model(save_model(random_model((13, 5)), tmp_path / "m.pt"))
    readout = native_readout(model)
    rng = np.random.default_rng(1)
    species_index = np.array([1, 0, 1])
    raw = rng.normal(size=(3, model.metadata["n_features"])) * model.module.feature_scale.numpy()
    grad = readout(species_index, raw)["feature_grad"].numpy()
    h = 1e-6
    for atom, feature in [(0, 0), (1, 7), (2, model.metadata["n_features"] - 1)]:
        plus, minus = raw.copy(), raw.copy()
        plus[atom, feature] += h
        minus[atom, feature] -= h
        fd = (float(readout(species_index, plus)["energy"]) - float(readout(species_index, minus)["energy"])) / (2 * h)
        assert abs(fd - grad[atom, feature]) < 1e-7 * max(1.0, abs(fd))


def test_no_atoms_and_single_species():
    model = load_model(None)                             # the shipped model: one species
    readout = native_readout(model)
    empty = readout(np.zeros(0, np.int64), np.zeros((0, model.metadata["n_features"])))
    assert empty["atomic_energy"].shape == (0,) and float(empty["energy"]) == 0.0
    assert empty["energy_members"].shape == (model.ensemble_size, 0)


def test_fused_engines_use_it_without_monitors_and_agree():
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(3)
    atoms.rattle(0.1, seed=4)
    args = (atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    plain = Predictor(None, fused=False)
    fused = Predictor(None, fused=True)
    assert fused.model.native_readout is not None
    a, b = plain.predict(*args, monitors=False), fused.predict(*args, monitors=False)
    assert abs(a.energy - b.energy) < 1e-10 * abs(a.energy)
    assert np.abs(a.forces - b.forces).max() < 1e-10 and np.abs(b.forces).max() > 0.1
    assert np.abs(a.virial - b.virial).max() < 1e-9
    assert np.abs(a.energies - b.energies).max() < 1e-10
    # the TorchScript readout inside the fused path gives the same numbers
    torchscript = FusedBackend(plain.model, native_readout=False)
    assert torchscript.native_readout is None
    species = torch.as_tensor(atoms.numbers)
    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, fused.model.cutoff)
    edge_index = torch.as_tensor(np.stack([nl.i, nl.j]))
    vectors = torch.as_tensor(nl.vectors)
    x = fused.model(species, edge_index, vectors, len(atoms), monitors=False)
    y = torchscript(species, edge_index, vectors, len(atoms), monitors=False)
    assert np.abs(x["edge_grad"].numpy() - y["edge_grad"].numpy()).max() < 1e-10


def test_unsupported_heads_keep_the_torchscript_readout(tmp_path):
    model = load_model(save_model(random_model((8,), uq="bll"), tmp_path / "bll.pt"))
    assert "ensemble" in native_readout_unsupported_reason(model)
    assert native_readout(model) is None
    assert FusedBackend(model).native_readout is None


def test_bad_input_is_named():
    model = load_model(None)
    readout = native_readout(model)
    d = model.metadata["n_features"]
    with pytest.raises(ValueError, match=r"species_index\[1\] = 3 is outside 0..0"):
        readout(np.array([0, 3]), np.zeros((2, d)))
    with pytest.raises(ValueError, match=r"features \[n, 188\]"):
        readout(np.array([0]), np.zeros((1, d - 1)))
    weights = [np.zeros((1, 2, 4, 3)), np.zeros((1, 2, 3, 1))]
    biases = [np.zeros((1, 2, 3)), np.zeros((1, 2, 1))]
    with pytest.raises(ValueError, match=r"feature_scale\[2\] = 0 must be finite and non-zero"):
        _core.MLPReadout(weights, biases, np.zeros(4), np.array([1.0, 1.0, 0.0, 1.0]), np.zeros(1), 1.0)
    with pytest.raises(ValueError, match="do not chain"):
        _core.MLPReadout([weights[0], np.zeros((1, 2, 5, 1))], biases, np.zeros(4), np.ones(4), np.zeros(1), 1.0)
    with pytest.raises(ValueError, match="last layer must have one output"):
        _core.MLPReadout([weights[0], np.zeros((1, 2, 3, 2))], [biases[0], np.zeros((1, 2, 2))], np.zeros(4),
                         np.ones(4), np.zeros(1), 1.0)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-5)])
def test_energy_and_forces_equal_assembled_edge_gradients(tmp_path, dtype, tol):
    """FusedBackend.energy_and_forces (backward accumulating forces and virial in the kernel's
    edge loop) equals the model call's edge gradients assembled by mlip_assemble_forces."""
    from mlip_md.model.assemble import forces_and_virial

    model = load_model(save_model(random_model((13, 5)), tmp_path / "m.pt", dtype=dtype))
    fused = FusedBackend(model)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.1, seed=5)
    atoms.numbers = np.random.default_rng(5).choice([28, 29], size=len(atoms))
    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, fused.cutoff)
    species = torch.as_tensor(atoms.numbers)
    edge_index = torch.as_tensor(np.stack([nl.i, nl.j]))
    vectors = torch.as_tensor(nl.vectors).to(fused.dtype)
    out = fused.energy_and_forces(species, edge_index, vectors, len(atoms))
    ref = FusedBackend(model, native_readout=False)(species, edge_index, vectors, len(atoms), monitors=False)
    forces, virial = forces_and_virial(ref["edge_grad"].to(torch.float64), edge_index, vectors.to(torch.float64),
                                       len(atoms))
    assert out["forces"].dtype == torch.float64 and "edge_grad" not in out
    scale = float(forces.abs().max())
    assert scale > 1e-3
    assert float((out["forces"] - forces).abs().max()) <= tol * scale
    assert float((out["virial"] - virial).abs().max()) <= tol * float(virial.abs().max())
    assert float(out["energy"]) == pytest.approx(float(ref["energy"]), rel=tol)
    with pytest.raises(Exception, match="no C readout"):
        FusedBackend(model, native_readout=False).energy_and_forces(species, edge_index, vectors, len(atoms))


@pytest.mark.parametrize("species,channels", [((29, 28), None), ((46, 29, 28), 5)], ids=["v1", "compressed"])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-13), ("float32", 1e-5)])
def test_one_pass_equals_the_separate_kernel_calls(tmp_path, dtype, tol, species, channels):
    """mlip_power_spectrum_energy_forces (forward, readout and backward per block of 8 centres,
    visited grouped by species) equals forward -> readout -> backward_forces: 2 species (and 3
    with a compressed descriptor), 37 centres (not a multiple of the block) plus ghost atoms, an
    isolated centre without edges, edges in shuffled order."""
    model = load_model(save_model(random_model((13, 5), species=species, channels=channels), tmp_path / "m.pt",
                                  dtype=dtype))
    fused = FusedBackend(model)
    assert (len(fused.params) == 6) == (channels is not None)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((3, 3, 2))[:40]
    atoms.rattle(0.1, seed=7)
    atoms.numbers = np.random.default_rng(7).choice(species, size=len(atoms))
    atoms.positions[36] += 30.0  # far from everything: a centre with no edges
    atoms.pbc = False
    n_local = 37
    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, fused.cutoff)
    keep = nl.i < n_local  # ghosts (37..39) are neighbours only
    order = np.random.default_rng(1).permutation(int(keep.sum()))
    pairs = np.ascontiguousarray(np.stack([nl.i[keep], nl.j[keep]])[:, order])
    vectors = np.ascontiguousarray(nl.vectors[keep][order], dtype=np.float32 if dtype == "float32" else np.float64)
    index = fused.species_index(atoms.numbers)
    kernel = fused.native_readout.kernel
    energy, members, forces, virial = kernel.energy_forces(fused.params, index, pairs, vectors, n_local)
    features, density = _core.power_spectrum_forward(fused.params, index, pairs, vectors, n_local)
    ref_energy, ref_members, grad = kernel.evaluate(index[:n_local], features)
    ref_forces, ref_virial = _core.power_spectrum_backward_forces(fused.params, index, pairs, vectors, density, grad,
                                                                  n_local)
    assert forces.shape == (40, 3) and np.abs(ref_forces).max() > 1e-3
    np.testing.assert_allclose(energy, ref_energy, rtol=tol, atol=0)
    np.testing.assert_allclose(members, ref_members, rtol=tol, atol=0)
    np.testing.assert_allclose(forces, ref_forces, rtol=0, atol=tol * np.abs(ref_forces).max())
    np.testing.assert_allclose(virial, ref_virial, rtol=0, atol=tol * np.abs(ref_virial).max())
    assert np.all(forces[36] == 0.0)
    _, _, _, no_virial = kernel.energy_forces(fused.params, index, pairs, vectors, n_local, virial=False)
    assert no_virial is None


def test_one_pass_names_a_readout_of_another_model(tmp_path):
    fused = FusedBackend(load_model(save_model(random_model((13, 5)), tmp_path / "m.pt")))
    small = _core.MLPReadout([np.zeros((2, 2, 4, 3)), np.zeros((2, 2, 3, 1))], [np.zeros((2, 2, 3)), np.zeros((2, 2, 1))],
                             np.zeros(4), np.ones(4), np.zeros(2), 1.0)
    with pytest.raises(ValueError, match="the readout takes 4 features, the descriptor makes"):
        small.energy_forces(fused.params, np.zeros(2, np.int64), np.zeros((2, 0), np.int64), np.zeros((0, 3)), 2)
    with pytest.raises(ValueError, match="edge_vectors are float32"):
        fused.native_readout.kernel.energy_forces(fused.params, np.zeros(2, np.int64), np.zeros((2, 0), np.int64),
                                                  np.zeros((0, 3), np.float32), 2)
