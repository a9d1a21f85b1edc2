"""Fused descriptor kernel in the Python engines (mlip_md.runtime.fused): every output of the
fused path (C++ power spectrum + TorchScript evaluate_features + C++ backward) equals the
TorchScript path, forces equal finite differences, and the auto / required / off selection."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from mlip_md import MLIPCalculator
from mlip_md.cli import build_parser
from mlip_md.errors import UnknownElementError
from mlip_md.model.io import default_model_path, reexport, save_model
from mlip_md.model.potential import MLIPotential, ModelConfig
from mlip_md.runtime.factory import load_model
from mlip_md.runtime.fused import FusedBackend, FusedModelError, check_fused, fused_unsupported_reason
from mlip_md.runtime.predictor import Predictor
from mlip_md.runtime.request import EvaluationRequest
from mlip_md.runtime.torchscript import TorchScriptBackend
from mlip_md.train.fit import fit_domain_monitors

KEYS = ("energy", "energies", "forces", "virial", "stress", "energy_members", "energy_uncertainty", "energy_sigma",
        "mahalanobis", "d_min", "energy_variance", "min_distance", "min_distance_ratio", "features",
        "force_members", "force_sigma", "member_virials")


def assert_same(a, b, rtol):
    """Every prediction field equal to rtol relative to the field's largest magnitude."""
    for key in KEYS:
        x, y = getattr(a, key), getattr(b, key)
        assert (x is None) == (y is None), key
        if x is None:
            continue
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        assert x.shape == y.shape, key
        finite = np.isfinite(x)
        assert np.array_equal(finite, np.isfinite(y)), key
        scale = max(np.abs(x[finite]).max(initial=0.0), 1e-12)
        assert np.abs(x[finite] - y[finite]).max(initial=0.0) <= rtol * scale, (key, np.abs(x - y).max(), scale)


def pair(model, **kw):
    """(TorchScript predictor, fused predictor) of one model."""
    plain = Predictor(model, fused=False, **kw)
    fused = Predictor(model, fused=True, **kw)
    assert not isinstance(plain.model, FusedBackend) and isinstance(fused.model, FusedBackend)
    return plain, fused


def alloy(seed=0, numbers=(28, 29)):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.08, seed=seed)
    atoms.numbers = np.random.default_rng(seed).choice(numbers, size=len(atoms))
    return atoms


def cluster():
    """Non-periodic: a 13-atom Cu/Ni cluster plus one isolated atom (a centre without neighbours)."""
    atoms = Atoms("Cu13", positions=np.random.default_rng(3).normal(scale=2.0, size=(13, 3)))
    atoms.positions[:, 0] += np.arange(13) * 0.9  # no overlaps
    atoms.numbers[::3] = 28
    atoms += Atoms("Ni", positions=[[40.0, 0.0, 0.0]])
    return atoms


def tiny_model(uq="ensemble", atomic_numbers=(29, 28), channels=None) -> MLIPotential:
    """Random (Cu, Ni) model, species in non-sorted order, every monitor buffer filled; other
    elements and, with ``channels``, a compressed descriptor with a dense random radial mixing."""
    cfg = ModelConfig(atomic_numbers=list(atomic_numbers), cutoff=4.0, switch_width=1.2,
                      n_max=3 if channels is None else 4, l_max=3, hidden=(8,),
                      ensemble_size=3 if uq == "ensemble" else 1, uq=uq, channels=channels)
    model = MLIPotential(cfg).double().eval()
    gen = torch.Generator().manual_seed(7)
    d = model.n_features
    s = len(atomic_numbers)
    with torch.no_grad():
        if channels is not None:
            mixing = model.descriptor.radial_mixing
            mixing.copy_(torch.randn(mixing.shape, generator=gen, dtype=torch.float64) / mixing.shape[1] ** 0.5)
        model.feature_mean.normal_(0.0, 0.1, generator=gen)
        model.feature_scale.uniform_(0.5, 2.0, generator=gen)
        model.energy_scale.fill_(0.8)
        model.atomic_reference_energy.copy_(torch.linspace(-3.5, -4.4, s, dtype=torch.float64))
        model.energy_variance_scale.fill_(1.7)
        fit_domain_monitors(model, torch.randn(64, d, generator=gen, dtype=torch.float64), torch.arange(64) % s)
        model.pair_min_distance.fill_(2.0)
        p = model.domain_projection.shape[1]  # monitor coordinates: P components and the residual
        model.reference_features = torch.randn(s, 4, p + 1, generator=gen, dtype=torch.float64)
        model.reference_count.copy_(torch.tensor([4, 2, 3, 1, 4][:s]))
        model.bll_factor.normal_(0.0, 0.01, generator=gen)
    return model


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fused")
    model = tiny_model()
    return {d: save_model(model, root / f"tiny_{d}.pt", dtype=d) for d in ("float64", "float32")}


# ----------------------------------------------------------------------------------- equality
def test_shipped_model_fused_equals_torchscript_incl_centre_slice():
    plain, fused = pair(None)
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(3)
    atoms.rattle(0.1, seed=2)
    assert_same(plain.predict_atoms(atoms, force_sigma=True), fused.predict_atoms(atoms, force_sigma=True), 1e-10)
    centres = slice(17, 70)  # one MPI rank's block
    args = (atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    part = fused.predict(*args, force_sigma=True, centres=centres)
    assert_same(plain.predict(*args, force_sigma=True, centres=centres), part, 1e-10)
    rest = [fused.predict(*args, monitors=False, centres=s) for s in (slice(0, 17), slice(70, None))]
    total = fused.predict(*args, monitors=False)
    assert abs(part.energy + sum(p.energy for p in rest) - total.energy) < 1e-9
    assert np.abs(part.forces + sum(p.forces for p in rest) - total.forces).max() < 1e-10


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_two_species_model_fused_equals_torchscript(tiny_files, dtype, rtol):
    model = load_model(tiny_files[dtype])
    plain, fused = pair(model)
    assert fused.model.dtype == (torch.float64 if dtype == "float64" else torch.float32)
    for atoms in (alloy(), cluster()):
        a, b = plain.predict_atoms(atoms, force_sigma=True), fused.predict_atoms(atoms, force_sigma=True)
        assert_same(a, b, rtol)
        assert np.abs(b.forces).max() > 1e-3 and b.force_members.shape == (3, len(atoms), 3)
    atoms = alloy(seed=1)
    centres = slice(5, 23)
    args = (atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    assert_same(plain.predict(*args, force_sigma=True, centres=centres),
                fused.predict(*args, force_sigma=True, centres=centres), rtol)


@pytest.mark.filterwarnings("ignore:std\\(\\).*degrees of freedom")  # the model's sigma over 0 centres
def test_no_edges_and_empty_centre_slice():
    plain, fused = pair(None)
    atoms = Atoms("Cu2", positions=[[0.0, 0.0, 0.0], [20.0, 0.0, 0.0]])  # no neighbours at all
    assert_same(plain.predict_atoms(atoms, force_sigma=True), fused.predict_atoms(atoms, force_sigma=True), 1e-10)
    args = (atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    empty = fused.predict(*args, centres=slice(1, 1))  # an MPI rank without centres
    assert empty.energy == 0.0 and not empty.forces.any()


@pytest.mark.parametrize("uq", ["bll", "evidential"])
def test_other_uq_heads_fused_equals_torchscript(tmp_path, uq):
    plain, fused = pair(load_model(save_model(tiny_model(uq), tmp_path / "m.pt")))
    atoms = alloy(seed=4)
    assert_same(plain.predict_atoms(atoms, force_sigma=True), fused.predict_atoms(atoms, force_sigma=True), 1e-10)


# ------------------------------------------------------- species-compressed descriptor (version 2)
#: 3 and 5 elements in an order that is not sorted (species index != sorted position)
COMPRESSED = {3: ((46, 29, 28), 5), 5: ((79, 28, 46, 29, 47), 4)}


@pytest.fixture(scope="module")
def compressed_files(tmp_path_factory):
    """{(n_elements, dtype): path} of random compressed models (Q < S n_max, dense W)."""
    root = tmp_path_factory.mktemp("compressed")
    files = {}
    for size, (numbers, channels) in COMPRESSED.items():
        model = tiny_model(atomic_numbers=numbers, channels=channels)
        assert model.descriptor.compressed
        for dtype in ("float64", "float32"):
            files[size, dtype] = save_model(model, root / f"c{size}_{dtype}.pt", dtype=dtype)
    return files


@pytest.mark.parametrize("size", sorted(COMPRESSED))
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_compressed_models_fused_equal_torchscript(compressed_files, size, dtype, rtol):
    """Every output (monitors and force sigma through evaluate_features and the K + 1-row
    backward; the one-pass C readout without monitors; a slice of centres) equals TorchScript."""
    model = load_model(compressed_files[size, dtype])
    assert model.info.descriptor.version == 2 and model.info.descriptor.channels == COMPRESSED[size][1]
    plain, fused = pair(model)
    w = fused.model.params[5]
    assert w.shape == (size, 4, COMPRESSED[size][1]) and w.dtype == np.float64
    atoms = alloy(seed=size, numbers=COMPRESSED[size][0])
    a, b = plain.predict_atoms(atoms, force_sigma=True), fused.predict_atoms(atoms, force_sigma=True)
    assert_same(a, b, rtol)
    assert np.abs(b.forces).max() > 1e-3 and b.force_members.shape == (3, len(atoms), 3)
    assert_same(plain.predict_atoms(atoms, monitors=False), fused.predict_atoms(atoms, monitors=False), rtol)
    args = (atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    assert_same(plain.predict(*args, force_sigma=True, centres=slice(5, 23)),
                fused.predict(*args, force_sigma=True, centres=slice(5, 23)), rtol)


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_monitored_calls_take_the_one_pass_step_with_the_same_outputs(compressed_files, tiny_files, dtype, rtol):
    """Monitors without force sigma: the one-pass C step plus the model's evaluate_monitors
    gives every output of the TorchScript path (and never calls the edge-gradient path)."""
    for path, numbers in ((compressed_files[5, dtype], COMPRESSED[5][0]), (tiny_files[dtype], (28, 29))):
        plain, fused = pair(load_model(path))
        assert fused.model._monitors_beside_one_pass(EvaluationRequest(monitors=True), 32, 32)

        def refuse(*args, **kwargs):
            raise AssertionError("the monitored call took the edge-gradient path")

        fused.model._edge_gradients = refuse
        atoms = alloy(seed=4, numbers=numbers)
        a, b = plain.predict_atoms(atoms), fused.predict_atoms(atoms)
        assert b.mahalanobis is not None and b.d_min is not None
        assert_same(a, b, rtol)


def test_compressed_one_pass_forces_and_stress_equal_finite_differences(compressed_files):
    """The one-pass kernel (descriptor, C readout and backward to forces in blocks of centres)
    on a 5-element compressed model: forces and stress are the energy's derivatives."""
    predictor = Predictor(compressed_files[5, "float64"], fused=True)
    assert predictor.model.native_readout is not None
    crystal = alloy(seed=3, numbers=COMPRESSED[5][0])
    result = predictor.predict_atoms(crystal, monitors=False)
    h = 1e-5
    for i, c in ((0, 0), (9, 1), (30, 2)):
        energies = []
        for sign in (1, -1):
            moved = crystal.copy()
            moved.positions[i, c] += sign * h
            energies.append(predictor.predict_atoms(moved, monitors=False).energy)
        assert abs(-(energies[0] - energies[1]) / (2 * h) - result.forces[i, c]) < 1e-6
    for a, b in ((0, 0), (1, 2)):
        energies = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[a, b] += sign * h
            strained = crystal.copy()
            strained.set_cell(crystal.cell.array @ strain, scale_atoms=True)
            energies.append(predictor.predict_atoms(strained, monitors=False).energy)
        derivative = (energies[0] - energies[1]) / (2 * h) / crystal.get_volume()
        assert abs(derivative - 0.5 * (result.stress[a, b] + result.stress[b, a])) < 1e-7
    assert np.abs(result.forces).max() > 1e-3


def test_compressed_block_without_mixing_or_unknown_version_falls_back(compressed_files, tmp_path):
    """A version-2 block without its radial_mixing, or a version the kernel does not know: auto
    falls back to TorchScript, fused=True names the reason; module and metadata disagreeing on W
    is a ModelFileError (its hosts would disagree)."""
    from mlip_md.errors import ModelFileError

    model = load_model(compressed_files[3, "float64"])
    block = model.metadata["descriptor"]
    cases = {"no_mixing": ({k: v for k, v in block.items() if k != "radial_mixing"},
                           r"version 2\) descriptor block without its 'radial_mixing'"),
             "version_3": ({**block, "version": 3}, r"version 3; the fused kernel implements 'power_spectrum' versions 1, 2")}
    for name, (changed, message) in cases.items():
        model.metadata["descriptor"] = changed
        path = model.save(tmp_path / f"{name}.pt")
        assert not isinstance(Predictor(path).model, FusedBackend), name
        with pytest.raises(FusedModelError, match=message):
            Predictor(path, fused=True)
    w = np.array(block["radial_mixing"])
    w[1, 2, 0] += 1e-3
    model.metadata["descriptor"] = {**block, "radial_mixing": w.tolist()}
    with pytest.raises(ModelFileError, match="radial mixing W .* differs from the metadata's"):
        Predictor(model.save(tmp_path / "edited.pt"), fused=True)


def test_fused_forces_and_stress_equal_finite_differences(tiny_files):
    predictor = Predictor(tiny_files["float64"], fused=True)
    atoms = cluster()
    forces = predictor.predict_atoms(atoms, monitors=False).forces
    h = 1e-5
    for i in (0, 4, 12):
        for c in range(3):
            energies = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[i, c] += sign * h
                energies.append(predictor.predict_atoms(moved, monitors=False).energy)
            assert abs(-(energies[0] - energies[1]) / (2 * h) - forces[i, c]) < 1e-6
    crystal = alloy(seed=3)
    stress = predictor.predict_atoms(crystal, monitors=False).stress
    for a, b in ((0, 0), (1, 2), (2, 1)):
        energies = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[a, b] += sign * h
            strained = crystal.copy()
            strained.set_cell(crystal.cell.array @ strain, scale_atoms=True)
            energies.append(predictor.predict_atoms(strained, monitors=False).energy)
        derivative = (energies[0] - energies[1]) / (2 * h) / crystal.get_volume()
        assert abs(derivative - 0.5 * (stress[a, b] + stress[b, a])) < 1e-7


# ---------------------------------------------------------------------------------- selection
def test_auto_selection_and_engines():
    assert isinstance(Predictor().model, FusedBackend)  # auto: the shipped model on the CPU
    assert not isinstance(Predictor(fused=False).model, FusedBackend)
    assert isinstance(MLIPCalculator(fused=None).model, FusedBackend)
    assert not isinstance(MLIPCalculator(fused=False).model, FusedBackend)
    args = build_parser().parse_args(["ipi", "--no-fused"])
    assert args.fused is False
    assert build_parser().parse_args(["ipi"]).fused is None and build_parser().parse_args(["ipi", "--fused"]).fused


def test_old_model_file_falls_back_or_names_reexport(tmp_path):
    model = load_model(default_model_path())
    del model.metadata["descriptor"]
    old = model.save(tmp_path / "old.pt")
    assert not isinstance(Predictor(old).model, FusedBackend)  # auto falls back quietly
    with pytest.raises(FusedModelError, match=r"no descriptor block.*mlip_md\.model\.io\.reexport"):
        Predictor(old, fused=True)
    assert isinstance(Predictor(reexport(old, tmp_path / "new.pt"), fused=True).model, FusedBackend)


def test_unsupported_device_compiled_and_elements():
    model = load_model(None)
    assert fused_unsupported_reason(model) is None
    with pytest.raises(FusedModelError, match="CPU only.*fused=False"):
        check_fused(model, device="cuda")
    fused = FusedBackend(model)
    with pytest.raises(FusedModelError, match="CPU only.*fused=False"):
        fused.to("cuda")
    from ase.calculators.calculator import CalculatorSetupError

    assert issubclass(FusedModelError, CalculatorSetupError)
    with pytest.raises(FusedModelError, match="alternatives"):
        Predictor(None, compiled="unused.pt2", fused=True)
    with pytest.raises(UnknownElementError, match="Fe"):
        fused(torch.tensor([29, 26]), torch.tensor([[0], [1]]), torch.tensor([[2.5, 0.0, 0.0]]), 2)


def test_fused_model_call_matches_exported_keys():
    model = load_model(None)
    fused = FusedBackend(model)
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True)
    from mlip_md.neighbors import neighbor_list

    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, model.cutoff)
    args = (torch.from_numpy(atoms.numbers), torch.from_numpy(np.stack([nl.i, nl.j])), torch.from_numpy(nl.vectors),
            len(atoms))
    for monitors, sigma in ((False, False), (True, True)):
        a, b = model(*args, monitors, sigma), fused(*args, monitors, sigma)
        assert sorted(a) == sorted(b)
        for key in a:
            assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, key
        assert torch.allclose(a["edge_grad"], b["edge_grad"], rtol=0, atol=1e-12)
    assert isinstance(fused, TorchScriptBackend) and fused.cutoff == model.cutoff and fused.metadata is model.metadata


def test_dtype_option_runs_a_float64_file_in_float32(tmp_path):
    """Predictor(dtype="float32") on the float64 shipped model equals the model saved in float32,
    fused or not, and the float64 result to float32 precision; the file is not touched."""
    from mlip_md.model.io import load_potential, read_metadata

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=3)
    f32_file = save_model(load_potential(load_model(None).path), tmp_path / "cu32.pt", dtype="float32")
    reference = Predictor(f32_file, fused=False).predict_atoms(atoms, monitors=False)
    exact = Predictor(None).predict_atoms(atoms, monitors=False)
    for fused in (True, False):
        predictor = Predictor(None, fused=fused, dtype="float32")
        assert predictor.model.dtype == torch.float32
        assert predictor.model.metadata["stored_dtype"] == "float64"
        got = predictor.predict_atoms(atoms, monitors=False)
        np.testing.assert_allclose(got.forces, reference.forces, rtol=0, atol=1e-5)
        assert abs(got.energy - reference.energy) < 1e-3
        np.testing.assert_allclose(got.forces, exact.forces, rtol=0, atol=1e-4)
    assert read_metadata(load_model(None).path)["dtype"] == "float64"


def test_dtype_option_errors():
    with pytest.raises(ValueError, match="dtype must be one of"):
        Predictor(None, dtype="float16")
    with pytest.raises(ValueError, match="alternatives"):
        Predictor(None, dtype="float32", compiled="cu.pt2")
