"""Compiled packages (.pt2, AOTInductor) against the TorchScript model they come from.

One small two-element model is compiled once (float64, the ``monitors`` graph only, which the
wrapper also serves ``monitors=False`` calls from); `mlip-md compile` builds both graphs of
the shipped model in the benchmarks.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from mlip_md.errors import ModelFileError
from mlip_md.model.aot_compile import TOLERANCE, compare, sample_structure
from mlip_md.model.io import load_potential, save_model
from mlip_md.runtime.compiled import CompiledBackend, load_compiled
from mlip_md.runtime.factory import load_model
from mlip_md.runtime.predictor import Predictor


@pytest.fixture(scope="module")
def package(compiled_package):
    return compiled_package


@pytest.fixture(scope="module")
def models(package):
    pt, pt2 = package
    return load_model(pt), load_model(pt2)


def alloy(repeat: int, seed: int):
    atoms = sample_structure([28, 29], 2.0, repeat=repeat, seed=seed)
    rng = np.random.default_rng(seed)
    atoms.numbers = rng.choice([28, 29], size=len(atoms))
    return atoms


def test_package_metadata_records_its_source(package, models):
    pt = package[0]
    ts, compiled = models
    assert isinstance(compiled, CompiledBackend) and set(compiled.graphs) == {"monitors"}
    info = compiled.metadata["compiled"]
    import hashlib

    assert info["source_sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest()
    assert compiled.cutoff == ts.cutoff and compiled.atomic_numbers == [28, 29]
    assert compiled.dtype == torch.float64 and compiled.ensemble_size == 3
    assert info["outputs"]["monitors"][:5] == ["atomic_energy", "edge_grad", "energy_members", "forces", "virial"]
    assert {"features", "energy_sigma", "mahalanobis", "min_distance", "min_distance_ratio",
            "d_min"} <= set(info["outputs"]["monitors"])


@pytest.mark.parametrize("repeat,n_local", [(2, None), (3, None), (3, 41)])
def test_outputs_equal_torchscript(models, repeat, n_local):
    """Sizes unlike the traced ones (32 and 108 atoms), and 41 centres with 67 ghost atoms."""
    ts, compiled = models
    atoms = alloy(repeat, seed=repeat)
    for monitors in (False, True):
        diffs = compare(compiled, ts, atoms, n_local=n_local, monitors=monitors)
        expected = {"atomic_energy", "edge_grad", "energy_members"}
        if monitors:
            expected |= {"features", "energy_sigma", "mahalanobis", "min_distance", "min_distance_ratio", "d_min"}
        assert set(diffs) == expected
        assert max(diffs.values()) < TOLERANCE["float64"], diffs
    assert compiled.fallback_calls == 0


def test_predictor_forces_and_stress_equal(models):
    ts, compiled = models
    atoms = alloy(2, seed=7)
    a = Predictor(ts).predict_atoms(atoms)
    b = Predictor(compiled).predict_atoms(atoms)
    np.testing.assert_allclose(b.forces, a.forces, rtol=0, atol=1e-10)
    np.testing.assert_allclose(b.stress, a.stress, rtol=0, atol=1e-12)
    assert abs(a.energy - b.energy) < 1e-10
    np.testing.assert_allclose(b.d_min, a.d_min, rtol=0, atol=1e-10)
    # centres 10..24 only (an MPI rank's share): forces and virial assembled in the graph
    a = Predictor(ts).predict(atoms.numbers, atoms.positions, atoms.cell, True, centres=slice(10, 25))
    b = Predictor(compiled).predict(atoms.numbers, atoms.positions, atoms.cell, True, centres=slice(10, 25))
    np.testing.assert_allclose(b.forces, a.forces, rtol=0, atol=1e-10)
    np.testing.assert_allclose(b.virial, a.virial, rtol=0, atol=1e-10)


def test_force_sigma_and_tiny_inputs_fall_back_to_torchscript(models):
    ts, compiled = models
    atoms = alloy(2, seed=3)
    before = compiled.fallback_calls
    b = Predictor(compiled).predict_atoms(atoms, force_sigma=True)
    a = Predictor(ts).predict_atoms(atoms, force_sigma=True)
    np.testing.assert_allclose(b.force_sigma, a.force_sigma, rtol=0, atol=1e-10)
    dimer = atoms[:2]
    dimer.pbc = False
    dimer.positions = [[0, 0, 0], [0, 0, 2.3]]
    p = Predictor(compiled).predict_atoms(dimer)
    q = Predictor(ts).predict_atoms(dimer)
    np.testing.assert_allclose(p.forces, q.forces, atol=1e-12)
    assert compiled.fallback_calls == before + 2


def test_stale_and_broken_packages_give_clear_errors(package, tmp_path):
    pt, pt2 = package
    with pytest.raises(ModelFileError, match="does not exist"):
        load_compiled(tmp_path / "missing.pt2")
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match="not a .pt2 package"):
        load_compiled(bad)
    with pytest.raises(ModelFileError, match="CPU"):
        load_compiled(pt2, device="cuda")
    # the package remembers the source's SHA-256: a changed .pt makes it stale
    other = save_model(load_potential(pt), tmp_path / "other.pt", metadata={"provenance": {"note": "other bytes"}})
    original = pt.read_bytes()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pt.write_bytes(other.read_bytes())
            load_compiled(pt2)
        finally:
            pt.write_bytes(original)
    assert any("stale" in str(w.message) for w in caught)
    # an explicit fallback is trusted as given
    assert load_compiled(pt2, fallback=other).fallback_path == other


def test_compile_command_errors(tmp_path, capsys):
    from mlip_md.cli import main

    assert main(["compile", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["compile", "-o", str(tmp_path / "m.pt"), "--graphs", "energy"]) == 2
    assert "must end in .pt2" in capsys.readouterr().err
    assert main(["compile", "-o", str(tmp_path / "m.pt2"), "--graphs", "forces"]) == 2
    assert "unknown graph 'forces'" in capsys.readouterr().err


def test_unknown_element_is_refused_before_the_graph(models):
    from mlip_md.errors import UnknownElementError

    ts, compiled = models
    atoms = alloy(2, seed=1)
    atoms.numbers[3] = 26  # Fe: the graph's lookup table has no row for it
    from mlip_md.neighbors import neighbor_list

    nl = neighbor_list(atoms.positions, atoms.cell.array, True, compiled.cutoff)
    with pytest.raises(UnknownElementError, match="Fe"):
        compiled(torch.from_numpy(atoms.numbers.astype(np.int64)), torch.from_numpy(np.stack([nl.i, nl.j])),
                 torch.from_numpy(nl.vectors), len(atoms))
