"""examples/water_dataset.py: the water data set of issue 18 (GFN2-xTB through tblite). The
--quick run, as a user runs it, writes clusters and a periodic box whose labels equal GFN2-xTB's,
whose box stress is the strain derivative of the energy, with whole molecules and the
requested density; the intramolecular distortions are exact."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "water_dataset.py"
SPLITS = ("train", "val", "test")


def _module():
    spec = importlib.util.spec_from_file_location("water_dataset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _geometry(atoms):
    """O-H lengths [n, 2] and H-O-H angles [n] (degrees) of whole molecules in O H H order."""
    x = atoms.positions.reshape(-1, 3, 3)
    v = x[:, 1:] - x[:, :1]
    r = np.linalg.norm(v, axis=2)
    cos = np.einsum("ij,ij->i", v[:, 0], v[:, 1]) / (r[:, 0] * r[:, 1])
    return r, np.degrees(np.arccos(cos))


def test_distortions_are_exact_and_keep_the_oxygens():
    module = _module()
    rng = np.random.default_rng(0)
    atoms = module.place_waters(5, rng)
    assert not atoms.pbc.any() and np.linalg.norm(atoms.positions[::3], axis=1).max() <= module.cluster_radius(5) + 0.5
    oo = atoms.get_all_distances()[::3, ::3][np.triu_indices(5, 1)]
    assert oo.min() >= module.MIN_OO
    r0, a0 = _geometry(atoms)
    bond_change, angle_change = rng.normal(0, 0.05, (5, 2)), rng.normal(0, 6.0, 5)
    moved = module.distorted(atoms, bond_change, angle_change)
    r1, a1 = _geometry(moved)
    np.testing.assert_allclose(r1, r0 + bond_change, atol=1e-12)
    np.testing.assert_allclose(a1, a0 + angle_change, atol=1e-9)
    np.testing.assert_allclose(moved.positions[::3], atoms.positions[::3])
    r2, a2 = _geometry(module.recentred(atoms))
    np.testing.assert_allclose(r2, r0 + module.GFN2_MONOMER[0] - module.QSPCFW["r0"], atol=1e-12)
    np.testing.assert_allclose(a2, a0 + module.GFN2_MONOMER[1] - module.QSPCFW["theta0"], atol=1e-9)
    box = module.place_waters(16, rng, box=module.box_length(16, 1.0))
    assert abs(16 * 18.015 / 6.02214076e23 / (box.get_volume() * 1e-24) - 1.0) < 1e-3  # g/cm^3


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    pytest.importorskip("tblite.ase", reason="tblite (optional extra: pip install tblite) is not installed")
    out = tmp_path_factory.mktemp("water_quick")
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--quick", "--seed", "1"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return out, run.stdout, {s: ase.io.read(out / f"water_{s}.extxyz", ":") for s in SPLITS}


def test_quick_run_labels_clusters_and_a_box_with_gfn2_xtb(quick):
    from mlip_md.reference import make_reference

    out, stdout, splits = quick
    frames = [a for s in SPLITS for a in splits[s]]
    assert f"wrote {out}" in stdout and "labelling time per structure" in stdout
    assert {a.info["config_type"] for a in frames} == {"cluster", "box"}
    assert {a.info["variant"] for a in frames} == {"md", "perturbed"}
    for a in frames:
        assert a.get_chemical_symbols() == ["O", "H", "H"] * a.info["molecules"]
        r, angle = _geometry(a)  # whole molecules, also in the box
        assert 0.75 <= r.min() and r.max() < 1.3 and 80 < angle.min() and angle.max() < 135
    box = next(a for a in frames if a.info["config_type"] == "box")
    assert box.pbc.all() and "stress" in box.calc.results
    assert abs(box.info["molecules"] * 18.015 / 6.02214076e23 / (box.get_volume() * 1e-24) - box.info["density"]) < 1e-3
    reference = make_reference("tblite:GFN2-xTB", verbosity=0)
    for a in [f for f in frames if f.info["config_type"] == "cluster"][::2]:
        b = a.copy()
        b.calc = reference
        assert abs(b.get_potential_energy() - a.get_potential_energy()) < 1e-6
        np.testing.assert_allclose(b.get_forces(), a.get_forces(), atol=1e-5)
    # the box's label is GFN2-xTB's energy, its stress the strain derivative of that energy (xx, yz)
    b = box.copy()
    b.calc = reference
    cell, positions, h = b.cell.array.copy(), b.positions.copy(), 1e-4
    for (i, j), voigt in (((0, 0), 0), ((1, 2), 3)):
        energies = []
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            eps[i, j] += 0.5 * sign * h
            eps[j, i] += 0.5 * sign * h
            b.set_cell(cell @ (np.eye(3) + eps))
            b.positions = positions @ (np.eye(3) + eps)
            energies.append(b.get_potential_energy())
        assert abs((energies[0] - energies[1]) / (2 * h) / box.get_volume() - box.get_stress()[voigt]) < 2e-6
        assert abs(np.mean(energies) - box.get_potential_energy()) < 1e-4  # + O(h^2)
    summary = json.loads((out / "water_summary.json").read_text())
    assert summary["frames"] == len(frames) and summary["label_seconds_by_structure"]["box 4"] > 0
