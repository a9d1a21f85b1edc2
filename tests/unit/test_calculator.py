"""The ASE calculator: physics against finite differences, results, and bad input."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import CalculationFailed, CalculatorSetupError, PropertyNotImplementedError

from mlip_md import MLIPCalculator
from mlip_md.errors import CloseContactWarning, InvalidStructureError, UnknownElementError
from mlip_md.model.io import save_model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, random_potential):
    return save_model(random_potential, tmp_path_factory.mktemp("calc") / "m.pt")


@pytest.fixture()
def crystal():
    atoms = bulk("Cu", "fcc", a=3.6).repeat((3, 2, 2))
    atoms.set_cell(atoms.cell.array @ np.array([[1, 0.05, 0], [0, 1, 0.03], [0.02, 0, 1]]), scale_atoms=True)
    atoms.rattle(0.05, seed=3)
    return atoms


def test_forces_are_minus_energy_gradient(model_path, crystal):
    crystal.calc = MLIPCalculator(model_path)
    forces = crystal.get_forces()
    h = 1e-5
    for index in (0, 5):
        for axis in range(3):
            crystal.positions[index, axis] += h
            ep = crystal.get_potential_energy()
            crystal.positions[index, axis] -= 2 * h
            em = crystal.get_potential_energy()
            crystal.positions[index, axis] += h
            assert abs(-(ep - em) / (2 * h) - forces[index, axis]) < 1e-7


def test_stress_is_strain_derivative(model_path, crystal):
    crystal.calc = MLIPCalculator(model_path)
    stress = crystal.get_stress(voigt=False)
    cell0 = crystal.cell.array.copy()
    h = 1e-6
    for a, b in [(0, 0), (1, 2), (0, 1)]:
        eps = np.zeros((3, 3))
        eps[a, b] = eps[b, a] = h / 2 if a != b else h
        energies = []
        for sign in (1, -1):
            crystal.set_cell(cell0 @ (np.eye(3) + sign * eps), scale_atoms=True)
            energies.append(crystal.get_potential_energy())
        crystal.set_cell(cell0, scale_atoms=True)
        derivative = (energies[0] - energies[1]) / (2 * h) / crystal.get_volume()
        expected = stress[a, b] if a == b else stress[a, b]
        assert abs(derivative - expected) < 1e-8


def test_results_contents(model_path, crystal):
    calc = MLIPCalculator(model_path, force_sigma=True)
    crystal.calc = calc
    e = crystal.get_potential_energy()
    r = calc.results
    n = len(crystal)
    assert r["free_energy"] == e
    assert np.isclose(r["energies"].sum(), e, atol=1e-10)
    assert r["forces"].shape == (n, 3) and r["stress"].shape == (6,)
    assert np.allclose(r["forces"].sum(axis=0), 0, atol=1e-10)  # Newton's third law
    for key in ("energy_sigma", "mahalanobis", "min_distance", "min_distance_ratio"):
        assert r[key].shape == (n,) and np.all(np.isfinite(r[key]))
    assert r["force_sigma"].shape == (n, 3) and np.all(r["force_sigma"] >= 0)
    assert r["energy_uncertainty"] > 0
    assert r["energy_members"].shape == (3,)
    assert np.isclose(r["energy_members"].mean(), e)
    # ASE's typed results API accepts every extra result
    props = calc.calculate_properties(crystal, ["energy"])
    assert props["energy_sigma"].shape == (n,) and props["ensemble_size"] == 3


def test_molecule_without_cell_has_no_stress(model_path):
    atoms = molecule("CH4")
    atoms.numbers[:] = 29
    atoms.positions *= 2.4
    atoms.calc = MLIPCalculator(model_path)
    assert np.isfinite(atoms.get_potential_energy())
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def test_unknown_element_lists_known_ones(model_path):
    atoms = bulk("Cu", "fcc", a=3.6).repeat(2)
    atoms[3].symbol = "Au"
    atoms.calc = MLIPCalculator(model_path)
    with pytest.raises(UnknownElementError, match=r"element\(s\) Au unknown .* trained on Cu"):
        atoms.get_potential_energy()
    assert issubclass(UnknownElementError, CalculatorSetupError)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_positions(model_path, bad):
    atoms = bulk("Cu", "fcc", a=3.6).repeat(2)
    atoms.positions[2, 1] = bad
    atoms.calc = MLIPCalculator(model_path)
    with pytest.raises(InvalidStructureError, match=r"atom\(s\) \[2\] are NaN or infinite"):
        atoms.get_forces()
    assert issubclass(InvalidStructureError, CalculationFailed)


def test_empty_structure(model_path):
    atoms = Atoms(cell=[5, 5, 5], pbc=True)
    atoms.calc = MLIPCalculator(model_path)
    with pytest.raises(InvalidStructureError, match="no atoms"):
        atoms.get_potential_energy()


@pytest.mark.parametrize("cell,message", [
    ([[3, 0, 0], [0, 3, 0], [0, 0, 0]], "cell vector c is zero but the system is periodic"),
    ([[3, 0, 0], [0, 3, 0], [3, 3, 0]], "volume|degenerate"),
])
def test_zero_volume_periodic_cell(model_path, cell, message):
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [1, 1, 0]], cell=cell, pbc=True)
    atoms.calc = MLIPCalculator(model_path)
    with pytest.raises(InvalidStructureError, match=message):
        atoms.get_potential_energy()


@pytest.mark.parametrize("skin", [0.0, 0.5])  # fresh list; Verlet refresh (closest distance from C)
def test_coincident_atoms(model_path, skin):
    atoms = Atoms("Cu3", positions=[[0, 0, 0], [2.5, 0, 0], [2.5, 0, 0]], pbc=False)
    atoms.calc = MLIPCalculator(model_path, skin=skin)
    with pytest.raises(InvalidStructureError, match="atoms 1 and 2 sit on top of each other"):
        atoms.get_potential_energy()


def test_close_contact_is_flagged_and_warned(model_path, crystal):
    calc = MLIPCalculator(model_path)
    closest = calc.model.metadata["monitors"]["pair_min_distance"]["29-29"]
    crystal.calc = calc
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crystal.get_potential_energy()  # the rattled crystal is inside the training range
    assert calc.results["close_contact"].sum() == 0
    squeezed = crystal.copy()
    squeezed.positions[1] = squeezed.positions[0] + [0.8 * closest, 0, 0]
    squeezed.calc = calc
    with pytest.warns(CloseContactWarning, match=r"atoms \d+ and \d+ are \S+ A apart, 0.\d\d of the closest Cu-Cu "
                      r"distance in training .* closer to a neighbour than in any training structure"):
        squeezed.get_potential_energy()
    assert calc.results["close_contact"][[0, 1]].tolist() == [1, 1]
    assert {0, 1} <= set(calc.last_prediction.close_contacts.tolist())
    assert calc.results["min_distance_ratio"][0] == pytest.approx(0.8, abs=1e-6)
    squeezed.calc = MLIPCalculator(model_path, close_contact="raise")
    with pytest.raises(InvalidStructureError, match="extrapolating"):
        squeezed.get_potential_energy()


def test_shipped_default_loads_without_arguments():
    calc = MLIPCalculator()
    assert calc.model.elements == ["Cu"]
    atoms = bulk("Cu", "fcc", a=3.615).repeat(2)
    atoms.calc = calc
    assert -3.8 < atoms.get_potential_energy() / len(atoms) < -3.3
