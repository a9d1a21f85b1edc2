"""QM/ML hybrid (mlip_md.qmml): switching functions from the C++ core, exact weighted levels,
cluster carving with periodic images, forces/stress of the hybrid against finite differences
(atoms in the switching shell, moving centres), energy continuity across the boundaries, NVE,
the subtractive ONIOM mode and the hybrid.toml configuration."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from mlip_md import MLIPCalculator
from mlip_md.runtime.predictor import Predictor
from mlip_md.qmml import (AtomCentre, EAMLevel, EMTLevel, FixedPoint, GroupCentroid, HybridCalculator, HybridModel,
                          MLIPLevel, ONIOMCalculator, Switch, as_level, carve, reference_shift)
from mlip_md.qmml.check import check_switch, drag, nve_comparison, run_check
from mlip_md.qmml.config import HybridEvaluator, load_hybrid_config
from mlip_md.qmml.oniom import total_energy_only

R_IN, R_OUT = 2.5, 4.5


def cu(repeat=3, vacancy=True, rattle=0.08, seed=3):
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(repeat)
    if vacancy:
        del atoms[0]
    atoms.rattle(rattle, seed=seed)
    return atoms


def fd_forces(atoms, calc, indices, h=1e-5):
    """Central differences of the energy for the given atoms: [len(indices), 3]."""
    out = []
    for i in indices:
        row = []
        for k in range(3):
            work = atoms.copy()
            work.calc = calc
            work.positions[i, k] += h
            e_plus = work.get_potential_energy()
            work.positions[i, k] -= 2 * h
            row.append(-(e_plus - work.get_potential_energy()) / (2 * h))
        out.append(row)
    return np.array(out)


# ------------------------------------------------------------------------------- switching
@pytest.mark.parametrize("shape", ["smootherstep", "c3", "cosine", "cosine-c1"])
def test_switch_values_and_derivatives(shape):
    sw = Switch(1.0, 3.0, shape=shape)
    r = np.linspace(0.0, 4.0, 401)
    s, ds, d2s = sw(r)
    x = np.clip((r - 1.0) / 2.0, 0, 1)
    p = {"smootherstep": 10 * x**3 - 15 * x**4 + 6 * x**5,
         "c3": 35 * x**4 - 84 * x**5 + 70 * x**6 - 20 * x**7,
         "cosine": x - np.sin(2 * np.pi * x) / (2 * np.pi),
         "cosine-c1": 0.5 * (1 - np.cos(np.pi * x))}[shape]
    np.testing.assert_allclose(s, 1 - p, atol=1e-14)
    assert s[r <= 1.0].min() == 1.0 and s[r >= 3.0].max() == 0.0
    h = 1e-6
    inside = (r > 1.01) & (r < 2.99)
    np.testing.assert_allclose(ds[inside], (sw(r[inside] + h)[0] - sw(r[inside] - h)[0]) / (2 * h), atol=1e-8)
    np.testing.assert_allclose(d2s[inside], (sw(r[inside] + h)[1] - sw(r[inside] - h)[1]) / (2 * h), atol=1e-6)
    report = check_switch(sw)
    assert report["claimed_continuity"] == {"cosine-c1": 1, "c3": 3}.get(shape, 2)
    assert report["is_c2"] == (shape != "cosine-c1")  # the numerical check catches the C^1 shape
    assert report["numerical_continuity_up_to_2"] == (1 if shape == "cosine-c1" else 2)


def test_switch_bad_input():
    with pytest.raises(ValueError, match="r_inner < r_outer"):
        Switch(3.0, 2.0)
    with pytest.raises(ValueError, match="unknown switching shape"):
        Switch(1.0, 2.0, shape="tanh")
    with pytest.raises(ValueError, match="not finite"):
        Switch(1.0, 2.0)(np.array([1.5, np.nan]))


# ------------------------------------------------------------------------------- levels
def test_emt_level_equals_ase_emt():
    for atoms in (cu(), molecule("CH3CH2OH")):
        atoms.calc = EMT()
        n = len(atoms)
        res = EMTLevel().evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, np.arange(n), np.ones(n))
        np.testing.assert_allclose(res.energies, atoms.get_potential_energies(), atol=1e-12)
        np.testing.assert_allclose(res.forces, atoms.get_forces(), atol=1e-12)
        if atoms.pbc.all():
            np.testing.assert_allclose(-res.virial.T / atoms.get_volume(), atoms.get_stress(voigt=False), atol=1e-13)


def test_mlip_level_equals_predictor_and_centre_subsets():
    atoms = cu()
    n = len(atoms)
    level = MLIPLevel()
    full = Predictor().predict_atoms(atoms, monitors=False)
    res = level.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, np.arange(n), np.ones(n))
    np.testing.assert_allclose(res.energies, full.energies, atol=1e-12)
    np.testing.assert_allclose(res.forces, full.forces, atol=1e-12)
    np.testing.assert_allclose(res.virial, full.virial, atol=1e-11)
    centres = np.array([2, 9, 40])
    part = level.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, centres, np.ones(3))
    np.testing.assert_allclose(part.energies, full.energies[centres], atol=1e-12)


@pytest.mark.parametrize("spec", ["Cu_mishin1.eam.alloy", "AlCu.eam.alloy"])
def test_eam_level_equals_lammps_pe_atom(spec):
    from mlip_md.reference import make_reference

    atoms = cu(rattle=0.1)
    if spec.startswith("AlCu"):
        atoms.numbers[::3] = 13
    atoms.calc = make_reference(f"lammps:eam/alloy:{spec}")
    n = len(atoms)
    res = as_level(f"lammps:eam/alloy:{spec}").evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc,
                                                        np.arange(n), np.ones(n))
    np.testing.assert_allclose(res.energies, atoms.get_potential_energies(), atol=1e-12)
    np.testing.assert_allclose(res.forces, atoms.get_forces(), atol=1e-12)


@pytest.mark.parametrize("level", [EMTLevel(), MLIPLevel(), EAMLevel("Cu_mishin1.eam.alloy")],
                         ids=["emt", "mlip", "eam"])
def test_weighted_forces_are_the_gradient_of_the_weighted_energy(level):
    atoms = cu(2, rattle=0.1)
    n = len(atoms)
    w = np.random.default_rng(0).uniform(0, 1, n)

    def energy(pos):
        return float(w @ level.evaluate(atoms.numbers, pos, atoms.cell.array, atoms.pbc, np.arange(n), w).energies)

    res = level.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, np.arange(n), w)
    h = 1e-5
    for i, k in [(0, 0), (3, 1), (7, 2), (12, 0)]:
        plus, minus = atoms.positions.copy(), atoms.positions.copy()
        plus[i, k] += h
        minus[i, k] -= h
        assert res.forces[i, k] == pytest.approx(-(energy(plus) - energy(minus)) / (2 * h), abs=1e-8)


# ------------------------------------------------------------------------------- cluster
def test_carve_matches_brute_force_images():
    atoms = bulk("Cu", "fcc", a=3.6).repeat((2, 2, 1))
    atoms.set_cell(atoms.cell.array @ np.array([[1, 0.1, 0], [0, 1, 0], [0.2, 0, 1]]), scale_atoms=True)
    atoms.rattle(0.05, seed=1)
    centre = np.array([0.3, 0.7, 1.1])
    radius = 7.0  # larger than the cell: several images of every atom
    cl = carve(atoms.positions, atoms.cell.array, True, centre, radius)
    brute = []
    for j, shift in itertools.product(range(len(atoms)), itertools.product(range(-6, 7), repeat=3)):
        v = atoms.positions[j] + np.array(shift) @ atoms.cell.array - centre
        if np.linalg.norm(v) < radius:
            brute.append((j, *np.round(v, 9)))
    got = sorted((int(s), *np.round(v, 9)) for s, v in zip(cl.source, cl.vectors))
    assert got == sorted(brute) and len(got) > 4 * len(atoms)
    np.testing.assert_allclose(cl.positions - cl.vectors, np.broadcast_to(centre, cl.vectors.shape))


# ------------------------------------------------------------------------------- hybrid
REGIONS = {"point": FixedPoint([1.0, 2.0, 3.0]), "atom": AtomCentre(5), "group": GroupCentroid([5, 6, 13])}


@pytest.mark.parametrize("high,low,region", [("emt", "mlip", "atom"), ("mlip", "emt", "group"),
                                             ("emt", "mlip", "point"),
                                             ("mlip", "lammps:eam/alloy:Cu_mishin1.eam.alloy", "atom")])
def test_hybrid_forces_equal_finite_differences(high, low, region):
    atoms = cu()
    calc = HybridCalculator(high, low, REGIONS[region], (R_IN, R_OUT), energy_shift="auto")
    atoms.calc = calc
    forces = atoms.get_forces()
    s = calc.last.switch
    shell = np.flatnonzero((s > 0) & (s < 1))
    assert shell.size >= 10 and calc.last.n_cluster > len(atoms)  # periodic images in the cluster
    centre_atoms = {"point": [], "atom": [5], "group": [5, 13]}[region]
    outside = [int(np.flatnonzero(s == 0)[0])]
    check = list(shell[[0, len(shell) // 2, -1]]) + centre_atoms + outside
    np.testing.assert_allclose(forces[check], fd_forces(atoms, calc, check), atol=2e-8)
    if region != "point":  # a moving centre keeps the sum of forces zero
        assert np.abs(forces.sum(axis=0)).max() < 1e-12


def test_hybrid_stress_equals_strain_derivative_and_energies_add_up():
    atoms = cu(rattle=0.05)
    atoms.set_cell(atoms.cell.array * 0.99, scale_atoms=True)
    calc = HybridCalculator("mlip", "emt", AtomCentre(7), (R_IN, R_OUT), energy_shift={29: 3.52})
    atoms.calc = calc
    stress = atoms.get_stress()
    np.testing.assert_allclose(stress, calc.calculate_numerical_stress(atoms, d=1e-6), atol=1e-9)
    assert np.abs(stress).max() > 1e-3
    last = calc.last
    assert atoms.get_potential_energies().sum() == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
    blended = last.switch * np.nan_to_num(last.energies_high) + (1 - last.switch) * last.energies_low
    np.testing.assert_allclose(last.energies, blended, atol=1e-12)


def test_hybrid_limits_are_the_pure_levels():
    atoms = cu()
    n = len(atoms)
    args = (atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, np.arange(n), np.ones(n))
    emt = EMTLevel().evaluate(*args)
    # a region that holds nobody (fixed point in the vacancy, r_outer below the nearest atom): pure low
    vacancy_site = bulk("Cu", "fcc", a=3.615, cubic=True).positions[0]
    gap = np.linalg.norm(atoms.positions - vacancy_site, axis=1).min()
    nobody = HybridModel("mlip", "emt", FixedPoint(vacancy_site), (0.3 * gap, 0.9 * gap)).evaluate(*args[:4])
    assert nobody.n_high_centres == 0
    assert nobody.energy == pytest.approx(emt.energies.sum(), abs=1e-12)
    np.testing.assert_allclose(nobody.forces, emt.forces, atol=1e-12)
    # high == low: the hybrid is that level exactly, whatever the switch
    same = HybridModel("emt", "emt", AtomCentre(3), (R_IN, R_OUT)).evaluate(*args[:4])
    assert same.energy == pytest.approx(emt.energies.sum(), abs=1e-11)
    np.testing.assert_allclose(same.forces, emt.forces, atol=1e-11)


def test_energy_continuous_across_both_boundaries():
    atoms = cu()
    model = HybridModel("emt", "mlip", AtomCentre(5), (R_IN, R_OUT), energy_shift="auto")
    for boundary in (R_IN, R_OUT, model.cluster_radius):
        result = drag(model, atoms, boundary, half_width=0.2, points=3)
        assert result["energy_jump"] < 1e-10, (boundary, result["energy_jump"])
        assert result["force_jump"] < 1e-4  # O(2 delta F'), continuous forces


def test_nve_with_atoms_crossing_the_shell_conserves_energy_like_the_pure_models():
    """Boundaries on the 1st and 3rd neighbour shells, so vibrating atoms cross both all the time;
    no energy shift, so the levels' zeros differ by 3.5 eV/atom and the switching terms
    Delta_i s' carry forces of several eV/Å: dropping them (tried) breaks conservation 40x over
    (max |E - E0| 3.8 meV/atom against 0.06)."""
    atoms = cu(rattle=0.02)
    model = HybridModel("emt", "mlip", AtomCentre(5), (2.556, 4.427))
    runs = nve_comparison(model, atoms, steps=30, timestep=2.0, temperature=900.0, seed=1)
    hybrid = runs["hybrid"]
    assert hybrid["crossings"]["r_inner"] > 0 and hybrid["crossings"]["r_outer"] > 0
    pure = max(runs["high"]["max_deviation_meV_per_atom"], runs["low"]["max_deviation_meV_per_atom"])
    assert hybrid["max_deviation_meV_per_atom"] < 1.5 * pure + 0.01, runs
    pure_drift = max(abs(runs["high"]["drift_meV_per_atom_ps"]), abs(runs["low"]["drift_meV_per_atom_ps"]))
    assert abs(hybrid["drift_meV_per_atom_ps"]) < 1.5 * pure_drift + 0.2, runs


def test_setup_errors_name_the_fix():
    atoms = cu()
    with pytest.raises(Exception, match="buffer .* smaller than the high level's cutoff"):
        HybridModel("mlip", "emt", 0, (R_IN, R_OUT), buffer=2.0)
    with pytest.raises(Exception, match="two periodic images within r_outer"):
        HybridModel("emt", "emt", 0, (R_IN, 6.0)).evaluate(atoms.numbers, atoms.positions, atoms.cell.array, True)
    with pytest.raises(Exception, match="ONIOMCalculator"):
        HybridModel(total_energy_only(EMT()), "emt", 0, (R_IN, R_OUT))
    with pytest.raises(ValueError, match="does not exist"):
        HybridModel("emt", "emt", 500, (R_IN, R_OUT)).evaluate(atoms.numbers, atoms.positions, atoms.cell.array, True)


def test_reference_shift_puts_levels_on_one_energy_zero():
    ref = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(2)
    shift = reference_shift("mlip", "emt", ref)
    assert shift[29] == pytest.approx(3.5, abs=0.1)  # EMT's zero is the cohesive energy, the model's the atom


# ------------------------------------------------------------------------------- ONIOM
def test_oniom_forces_stress_and_links():
    from mlip_md.reference import make_reference

    atoms = cu(rattle=0.1)
    # any calculators: the shipped model hidden behind energy + forces, LAMMPS EAM as the low level
    low = make_reference("lammps:eam/alloy:Cu_mishin1.eam.alloy")
    calc = ONIOMCalculator.sphere(total_energy_only(MLIPCalculator(monitors=False)), low, atoms, 4, 4.0)
    atoms.calc = calc
    forces = atoms.get_forces()
    check = [4, int(calc.region[-1]), 20]
    np.testing.assert_allclose(forces[check], fd_forces(atoms, calc, check), atol=2e-8)
    np.testing.assert_allclose(atoms.get_stress(), calc.calculate_numerical_stress(atoms, d=1e-6), atol=1e-9)
    # with link atoms (here Cu "links" so that EMT handles them), forces stay the exact gradient
    linked = ONIOMCalculator(total_energy_only(EMT()), low, [4, 10], links=[(4, 20), (10, 30)],
                             link_element="Cu", link_ratio=0.6)
    atoms.calc = linked
    f = atoms.get_forces()
    np.testing.assert_allclose(f[[4, 20, 30]], fd_forces(atoms, linked, [4, 20, 30]), atol=2e-8)
    # high == low: ONIOM is the low level
    same = ONIOMCalculator(EMT(), EMT(), calc.region)
    atoms.calc = same
    reference = atoms.copy()
    reference.calc = EMT()
    assert atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-10)
    with pytest.raises(Exception, match="q inside the region and m outside"):
        ONIOMCalculator(EMT(), EMT(), [1, 2], links=[(5, 1)])


def _tblite_example():
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "examples" / "qmml_oniom_tblite.py"
    return runpy.run_path(str(script), run_name="example")["main"]


def test_oniom_link_atom_example_with_a_total_energy_stand_in():
    """The tblite example's set-up (ethanol, H link atom) with EMT hidden behind energy + forces."""
    result = _tblite_example()(steps=3, high=total_energy_only(EMT()))
    assert len(result["region"]) == 5 and result["fd_error"] < 1e-6


def test_oniom_tblite_example():
    pytest.importorskip("tblite.ase", reason="tblite (optional extra: pip install tblite) is not installed")
    result = _tblite_example()(steps=3)
    assert np.isfinite(result["energy"]) and result["fd_error"] < 1e-3  # limited by SCF convergence


# ------------------------------------------------------------------------------- config, report
def test_hybrid_toml_and_ipi_evaluator(tmp_path):
    path = tmp_path / "hybrid.toml"
    path.write_text('high = "emt"\nlow = "mlip"\nenergy_shift = "auto"\n[region]\natom = 5\n'
                    '[switch]\nr_inner = 2.5\nr_outer = 4.5\nshape = "c3"\n[mpi]\nhigh_ranks = 1\n')
    model, mpi = load_hybrid_config(path)
    assert mpi == {"high_ranks": 1} and model.switch.shape == "c3" and model.region.index == 5
    atoms = cu()
    pred = HybridEvaluator(model).predict(atoms.numbers, atoms.positions, atoms.cell.array, True)
    direct = HybridModel("emt", "mlip", 5, (2.5, 4.5), shape="c3", energy_shift="auto").evaluate(
        atoms.numbers, atoms.positions, atoms.cell.array, True)
    assert pred.energy == pytest.approx(direct.energy, abs=1e-12)
    np.testing.assert_allclose(pred.forces, direct.forces, atol=1e-12)
    path.write_text('high = "emt"\nlow = "mlip"\n[region]\natom = 5\npoint = [0, 0, 0]\n[switch]\nr_inner = 1\n'
                    'r_outer = 2\n')
    with pytest.raises(ValueError, match="exactly one of"):
        load_hybrid_config(path)
    path.write_text('high = "emt"\nlow = "mlip"\ncolour = 1\n')
    with pytest.raises(ValueError, match="unknown keys"):
        load_hybrid_config(path)


def test_check_report_files(tmp_path):
    atoms = cu(2, vacancy=False)  # 32 atoms: small and quick
    model = HybridModel("emt", "mlip", 0, (1.5, 3.0), energy_shift="auto")
    report = run_check(model, atoms, tmp_path, steps=4, drag_points=7)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["energy_jump_max"] == report["energy_jump_max"] < 1e-10 and saved["passed"]
    assert (tmp_path / "drag.png").stat().st_size > 10_000
    text = (tmp_path / "report.md").read_text()
    assert "Delta E_max" in text and "epsilon_F" in text
    assert report["force_mismatch"]["shell"]["atoms"] > 0


def test_group_centroid_across_the_periodic_boundary():
    atoms = cu(vacancy=False, rattle=0.0)
    a = 3.615
    atoms.positions[1] -= atoms.cell.array[1]  # atom 1, (0, a/2, a/2), moved one cell away
    c, idx, coeff = GroupCentroid([0, 1]).centre(atoms.positions, atoms.cell.array, True)
    np.testing.assert_allclose(c, [0.0, a / 4, a / 4], atol=1e-12)
    assert idx.tolist() == [0, 1] and coeff.tolist() == [0.5, 0.5]


def test_cli_reports_bad_hybrid_setup(capsys, tmp_path):
    from mlip_md.cli import main
    from mlip_md.errors import HybridSetupError

    assert main(["qmml", "check", "--r-inner", "5", "--r-outer", "4", "-o", str(tmp_path)]) == 2
    assert "r_inner < r_outer" in capsys.readouterr().err
    assert issubclass(HybridSetupError, ValueError)
