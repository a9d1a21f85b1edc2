"""The species-compressed descriptor (version 2, mlip_md.model.descriptor): Q radial-chemical
channels mixed per edge by W [S, n_max, Q]. Checked against the one-hot descriptor (version 1,
unchanged bit for bit), against the mixing applied by hand to uncompressed densities, for
invariances, forces against finite differences, the file round trip and the training rules."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase.build import bulk
from scipy.spatial.transform import Rotation

from mlip_md.model.assemble import forces_from_edge_grad
from mlip_md.model.aot_compile import _Traceable
from mlip_md.model.compiled_format import graph_inputs
from mlip_md.model.descriptor import PowerSpectrum, default_channels
from mlip_md.model.io import default_model_path, load_module, load_potential, read_metadata, save_model
from mlip_md.model.potential import MLIPotential, ModelConfig
from mlip_md.neighbors import neighbor_list
from mlip_md.runtime.model_info import ModelInfo
from mlip_md.train.data import to_graph
from mlip_md.train.fit import channel_second_moments, fit_normalisation, fit_radial_mixing

from conftest import TINY, labelled

#: EMT knows these fcc metals: random solid solutions of 3 and 5 of them
TERNARY = [28, 29, 46]
QUINARY = [28, 29, 46, 47, 79]


def alloy(numbers, seed, repeat=2, rattle=0.08):
    """A rattled, strained fcc cell with random species from ``numbers``."""
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.75, cubic=True).repeat(repeat)
    atoms.numbers = rng.choice(numbers, size=len(atoms))
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.uniform(-0.02, 0.02, (3, 3))), scale_atoms=True)
    atoms.rattle(rattle, seed=seed)
    return atoms


def edges(atoms, cutoff):
    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff, vectors=True)
    return (torch.from_numpy(atoms.numbers).long(), torch.from_numpy(np.stack([nl.i, nl.j])),
            torch.from_numpy(nl.vectors))


def compressed_potential(numbers, channels, seed=0):
    """Random-weight ensemble (K = 2) with the mixing and normalisation fitted to EMT-labelled
    alloys of ``numbers``."""
    frames = [labelled(alloy(numbers, seed + k)) for k in range(5)]
    model = MLIPotential(ModelConfig(atomic_numbers=sorted(numbers), ensemble_size=2, channels=channels,
                                     **TINY)).double()
    graphs = [to_graph(a, model.cutoff) for a in frames]
    fit_radial_mixing(model, graphs)
    fit_normalisation(model, graphs)
    model.readout.reset(seed=seed + 1)
    return model.eval()


@pytest.fixture(scope="module")
def ternary():
    return compressed_potential(TERNARY, channels=4)


@pytest.fixture(scope="module")
def quinary():
    return compressed_potential(QUINARY, channels=5, seed=10)


# ----------------------------------------------------------------------------- version 1
def test_one_hot_channels_are_version_1_bit_for_bit():
    """channels None or S n_max: the one-hot descriptor, computed by the version-1 code; the
    mixing path with the one-hot W gives the same features."""
    atoms = alloy(TERNARY, seed=1)
    species, ei, vec = edges(atoms, 4.5)
    index = torch.searchsorted(torch.tensor(TERNARY), species)
    default = PowerSpectrum(3, 4.5, 4, 3, 1.0)
    explicit = PowerSpectrum(3, 4.5, 4, 3, 1.0, channels=12)
    assert not default.compressed and not explicit.compressed and default.n_channels == 12
    base = default(index, ei[0], ei[1], vec, len(atoms))
    assert torch.equal(explicit(index, ei[0], ei[1], vec, len(atoms)), base)
    forced = PowerSpectrum(3, 4.5, 4, 3, 1.0)
    forced.compressed = True  # the version-2 code path with W = one-hot
    torch.testing.assert_close(forced(index, ei[0], ei[1], vec, len(atoms)), base, rtol=0, atol=1e-14)


def test_shipped_model_rebuilt_by_this_code_is_unchanged():
    """The shipped file (written before version 2) keeps its version-1 block, and the module
    rebuilt from its weights gives the file's own TorchScript features bit for bit."""
    meta = read_metadata(default_model_path())
    scripted, _ = load_module(default_model_path())
    rebuilt = load_potential(default_model_path())
    assert meta["descriptor"]["version"] == 1 and "channels" not in meta["descriptor"]
    assert rebuilt.descriptor.n_channels == 8 and not rebuilt.descriptor.compressed
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=2)
    species, ei, vec = edges(atoms, rebuilt.cutoff)
    expected = scripted.evaluate(species, ei, vec, len(atoms), True, False)
    found = rebuilt.evaluate(species, ei, vec, len(atoms), True, False)
    assert torch.equal(found["features"], expected["features"])
    assert torch.equal(found["energy"], expected["energy"])


def test_old_config_without_channels_keeps_one_hot_channels(tmp_path):
    """A two-element model_config written before the key existed rebuilds with Q = S n_max and
    is exported as version 1."""
    old = ModelConfig(atomic_numbers=[28, 29], **TINY).to_dict()
    del old["channels"]
    config = ModelConfig.from_dict(old)
    model = MLIPotential(config).double()
    assert config.channels is None and model.descriptor.n_channels == 2 * TINY["n_max"]
    meta = read_metadata(save_model(model, tmp_path / "old.pt"))
    assert meta["descriptor"]["version"] == 1 and "radial_mixing" not in meta["descriptor"]
    assert ModelInfo.from_metadata(meta).descriptor.radial_mixing is None


# ----------------------------------------------------------------------------- version 2
def test_compressed_features_are_the_mixing_of_uncompressed_densities(ternary):
    """c'[q] = sum_{s n} W[s, n, q] c[s n] and the power spectrum of c', by hand in float64."""
    atoms = alloy(TERNARY, seed=3)
    species, ei, vec = edges(atoms, ternary.cutoff)
    index = ternary.species_index(species)
    d = ternary.descriptor
    one_hot = PowerSpectrum(3, d.radial.cutoff, d.n_max, d.l_max, d.radial.switch_width).double()
    radial, angular = one_hot.basis(vec)
    c = one_hot.density(index, ei[0], ei[1], radial, angular, len(atoms)).numpy()  # [n, S n_max, lm]
    w = d.radial_mixing.numpy().reshape(3 * d.n_max, d.n_channels)
    mixed = np.einsum("ipk,pq->iqk", c, w)
    q = d.n_channels
    rows, cols = np.triu_indices(q)
    parts = [mixed[:, :, 0]]
    for l in range(d.l_max + 1):
        block = mixed[:, :, l * l:(l + 1) * (l + 1)]
        parts.append(np.einsum("iqm,irm->iqr", block, block)[:, rows, cols] / np.sqrt(2 * l + 1))
    expected = np.concatenate(parts, axis=1)
    found = d(index, ei[0], ei[1], vec, len(atoms)).numpy()
    assert found.shape == (len(atoms), q + q * (q + 1) // 2 * (d.l_max + 1)) == expected.shape
    np.testing.assert_allclose(found, expected, rtol=0, atol=1e-12 * np.abs(expected).max())


def test_feature_size_does_not_depend_on_the_number_of_elements():
    sizes = {s: PowerSpectrum(s, 5.0, 8, 4, 1.0, channels=8).n_features for s in (1, 2, 3, 5, 8)}
    assert set(sizes.values()) == {8 + 8 * 9 // 2 * 5}
    assert PowerSpectrum(8, 5.0, 8, 4, 1.0).n_features == 64 + 64 * 65 // 2 * 5  # one-hot: grows as S^2


def test_compressed_features_are_invariant_and_distinguish_species(ternary):
    atoms = alloy(TERNARY, seed=4)
    species, ei, vec = edges(atoms, ternary.cutoff)
    index = ternary.species_index(species)
    d = ternary.descriptor
    n = len(atoms)
    base = d(index, ei[0], ei[1], vec, n)
    rotation = torch.from_numpy(Rotation.random(random_state=3).as_matrix())
    torch.testing.assert_close(d(index, ei[0], ei[1], vec @ rotation.T, n), base, rtol=1e-10, atol=1e-10)
    order = torch.randperm(ei.shape[1], generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(d(index, ei[0, order], ei[1, order], vec[order], n), base, rtol=1e-12, atol=1e-12)
    relabel = torch.randperm(n, generator=torch.Generator().manual_seed(2))  # atom i becomes relabel[i]
    moved = torch.empty_like(index)
    moved[relabel] = index
    permuted = d(moved, relabel[ei[0]], relabel[ei[1]], vec, n)
    torch.testing.assert_close(permuted[relabel], base, rtol=1e-12, atol=1e-12)
    swapped = index.clone()
    swapped[5] = (swapped[5] + 1) % 3  # one neighbour changes element
    assert float((d(swapped, ei[0], ei[1], vec, n) - base).abs().max()) > 1e-4


@pytest.mark.parametrize("which", ["ternary", "quinary"])
def test_forces_equal_finite_differences(which, request):
    model = request.getfixturevalue(which)
    atoms = alloy(TERNARY if which == "ternary" else QUINARY, seed=5, rattle=0.12)

    def energy(positions):
        trial = atoms.copy()
        trial.positions = positions
        species, ei, vec = edges(trial, model.cutoff)
        return float(model.evaluate(species, ei, vec, len(trial), False, False)["energy"])

    species, ei, vec = edges(atoms, model.cutoff)
    out = model.evaluate(species, ei, vec, len(atoms), False, False)
    forces = forces_from_edge_grad(out["edge_grad"], ei, len(atoms)).numpy()
    h = 1e-5
    for atom, axis in [(0, 0), (7, 1), (19, 2), (31, 0)]:
        shifted = [atoms.positions.copy(), atoms.positions.copy()]
        shifted[0][atom, axis] += h
        shifted[1][atom, axis] -= h
        numeric = -(energy(shifted[0]) - energy(shifted[1])) / (2 * h)
        assert abs(forces[atom, axis] - numeric) < 1e-7 * max(1.0, abs(numeric)), (atom, axis, forces[atom, axis], numeric)
    assert np.abs(forces).max() > 1e-3  # not trivially zero


def test_traced_descriptor_path_equals_the_model(quinary):
    """The compiled packages' traceable computation (masks instead of row selection) gives the
    model's energies and edge gradients."""
    atoms = alloy(QUINARY, seed=6)
    species, ei, vec = edges(atoms, quinary.cutoff)
    expected = quinary.evaluate(species, ei, vec, len(atoms), False, False)
    traceable = _Traceable(quinary, monitors=False)
    found = dict(zip(["atomic_energy", "edge_grad"], traceable(*graph_inputs(species, ei, vec, len(atoms)))[:2]))
    torch.testing.assert_close(found["atomic_energy"], expected["atomic_energy"], rtol=0, atol=1e-12)
    torch.testing.assert_close(found["edge_grad"], expected["edge_grad"], rtol=0, atol=1e-12)


def test_export_and_load_keep_the_features(quinary, tmp_path):
    """Version-2 metadata (channels, W) and the TorchScript file and the rebuilt module give the
    same features; float32 files carry the W their module uses."""
    path = save_model(quinary, tmp_path / "q.pt")
    meta = read_metadata(path)
    block = meta["descriptor"]
    assert block["version"] == 2 and block["channels"] == 5 and meta["n_features"] == quinary.n_features
    info = ModelInfo.from_metadata(meta, path)
    assert info.descriptor.n_channels == 5 and info.descriptor.radial_mixing.shape == (5, TINY["n_max"], 5)
    np.testing.assert_array_equal(info.descriptor.radial_mixing, quinary.descriptor.radial_mixing.numpy())
    atoms = alloy(QUINARY, seed=7)
    species, ei, vec = edges(atoms, quinary.cutoff)
    expected = quinary.evaluate(species, ei, vec, len(atoms), True, False)
    scripted, _ = load_module(path)
    rebuilt = load_potential(path)
    assert rebuilt.config.channels == 5
    for module in (scripted, rebuilt):
        out = module.evaluate(species, ei, vec, len(atoms), True, False)
        assert torch.equal(out["features"], expected["features"])
        assert torch.equal(out["energy"], expected["energy"])
    single = read_metadata(save_model(quinary, tmp_path / "q32.pt", dtype="float32"))["descriptor"]["radial_mixing"]
    np.testing.assert_array_equal(np.array(single), quinary.descriptor.radial_mixing.float().double().numpy())
    # a damaged block is refused with the reason
    meta["descriptor"]["radial_mixing"] = meta["descriptor"]["radial_mixing"][:2]
    with pytest.raises(Exception, match="radial_mixing has shape"):
        ModelInfo.from_metadata(json.loads(json.dumps(meta)), path)


# ----------------------------------------------------------------------------- fitting, config
def test_fitted_mixing_is_deterministic_and_keeps_the_most_density():
    """Top-Q eigenvectors of G (sign-fixed): the same twice, orthonormal, and they keep more of
    trace(G) than the unfitted (random orthonormal) W, as any rank-Q projection must (Ky Fan)."""
    frames = [labelled(alloy(QUINARY, seed=20 + k)) for k in range(4)]
    config = ModelConfig(atomic_numbers=QUINARY, ensemble_size=1, channels=6, **TINY)
    graphs = [to_graph(a, config.cutoff) for a in frames]
    first, second = MLIPotential(config).double(), MLIPotential(config).double()
    gram, centres = channel_second_moments(first, graphs)
    w0 = first.descriptor.radial_mixing.reshape(-1, 6).clone()
    summary = fit_radial_mixing(first, graphs)
    fit_radial_mixing(second, graphs)
    w = first.descriptor.radial_mixing.reshape(-1, 6)
    assert torch.equal(w, second.descriptor.radial_mixing.reshape(-1, 6))
    torch.testing.assert_close(w.T @ w, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-12)
    retained = float(torch.trace(w.T @ gram @ w) / torch.trace(gram))
    assert summary["centres"] == centres == 4 * 32
    assert summary["retained_fraction"] == pytest.approx(retained, rel=1e-12)
    assert float(torch.trace(w0.T @ gram @ w0) / torch.trace(gram)) < retained <= 1.0
    balanced = MLIPotential(config).double()
    assert fit_radial_mixing(balanced, graphs, balance_species=True)["balance_species"]
    assert not torch.equal(balanced.descriptor.radial_mixing, first.descriptor.radial_mixing)


def test_channels_out_of_range_are_refused_with_the_range():
    with pytest.raises(ValueError, match=r"1\.\.n_species x n_max = 8 \(2 x 4\)"):
        MLIPotential(ModelConfig(atomic_numbers=[28, 29], channels=9, **TINY))
    with pytest.raises(ValueError, match="channels must be an integer"):
        PowerSpectrum(2, 4.5, 4, 2, 1.0, channels=0)
    with pytest.raises(ValueError, match="needs a compressed descriptor"):
        fit_radial_mixing(MLIPotential(ModelConfig(atomic_numbers=[29], **TINY)), [])


def test_training_resolves_the_default_channels_and_fits_the_mixing(tmp_path):
    """train_ensemble stores an explicit Q (the default rule for a new config) and fits W; a
    warm start keeps its model's W."""
    from mlip_md.train.trainer import TrainConfig, train_ensemble

    frames = [labelled(alloy([28, 29], seed=30 + k)) for k in range(6)]
    config = ModelConfig(atomic_numbers=[28, 29], ensemble_size=1, **TINY)
    report = train_ensemble(frames[:4], frames[4:], config, TrainConfig(epochs=1, batch_size=4), tmp_path / "a.pt")
    assert default_channels(1, 8) == 8 and default_channels(2, 8) == default_channels(8, 8) == 12
    assert default_channels(2, 1) == 2  # never more than the one-hot count
    expected = default_channels(2, TINY["n_max"])
    assert expected == 6 and report["model_config"]["channels"] == expected == report["descriptor"]["channels"]
    assert report["descriptor"]["compressed"] and 0.5 < report["descriptor"]["retained_fraction"] <= 1.0
    first = load_potential(tmp_path / "a.pt")
    assert first.config.channels == expected
    more = [labelled(alloy([28, 29], seed=40 + k, rattle=0.2)) for k in range(4)]
    report = train_ensemble(more[:3], more[3:], config, TrainConfig(epochs=1, batch_size=4), tmp_path / "b.pt",
                            init_from=first)
    assert report["descriptor"]["radial_mixing"] == "warm start"
    assert torch.equal(load_potential(tmp_path / "b.pt").descriptor.radial_mixing, first.descriptor.radial_mixing)


def test_training_step_saves_nothing_per_edge_that_grows_with_the_elements():
    """Every tensor autograd keeps in a training step (forward, force loss, double backward) of a
    compressed five-element model is smaller than one padded edge row per uncompressed channel
    ([centres, max neighbours, S n_max]); the one-hot model keeps exactly that one."""
    from mlip_md.model.descriptor import neighbour_slots
    from mlip_md.train.data import collate
    from mlip_md.train.loss import LossWeights, loss_terms, predict_batch, weighted_loss

    batch = collate([to_graph(labelled(alloy(QUINARY, seed=50 + k)), TINY["cutoff"]) for k in range(2)])
    n = batch.numbers.shape[0]
    per_channel_rows = n * neighbour_slots(batch.edge_index[0], n)[1]
    largest = {}
    for channels in (None, 4):
        model = MLIPotential(ModelConfig(atomic_numbers=QUINARY, ensemble_size=1, channels=channels, **TINY)).double()
        sizes = []

        def keep(tensor):
            sizes.append(tensor.numel())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            loss = weighted_loss(loss_terms(predict_batch(model.train(), batch), batch), LossWeights())
            loss.backward(inputs=list(model.readout.parameters()))
        largest[channels] = max(sizes)
    assert largest[4] < per_channel_rows * len(QUINARY) * TINY["n_max"] <= largest[None]
