"""examples/alsimgcufe_dataset.py: the five-element (Al, Si, Mg, Cu, Fe) data set of issue 18,
labelled with the wheel's AlSiMgCuFe MEAM. The --quick run, as a user runs it, writes labels equal
to the reference, every family and variant, all five elements, disjoint groups and its timings;
the cells start at the reference's equilibrium volume."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk

from mlip_md.reference import make_reference

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "alsimgcufe_dataset.py"
SPLITS = ("train", "val", "test")


def _module():
    spec = importlib.util.spec_from_file_location("alsimgcufe_dataset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("alsimgcufe_quick")
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--quick", "--seed", "3"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return out, run.stdout, {s: ase.io.read(out / f"alsimgcufe_{s}.extxyz", ":") for s in SPLITS}


def test_quick_run_labels_every_kind_with_the_reference(quick):
    out, stdout, splits = quick
    frames = [a for s in SPLITS for a in splits[s]]
    assert f"wrote {out}" in stdout and "ms per structure" in stdout
    assert 20 <= len(frames) <= 60 and all(30 <= len(a) <= 108 for a in frames)
    assert {a.info["config_type"] for a in frames} == {"solid_solution", "fcc_mixture", "bcc_mixture", "elemental"}
    assert {a.info["variant"] for a in frames} == {"ideal", "vacancy", "strained", "rattled"}
    assert set(np.concatenate([a.get_chemical_symbols() for a in frames])) == {"Al", "Si", "Mg", "Cu", "Fe"}
    mixtures = [a for a in frames if a.info["config_type"] == "fcc_mixture"]
    assert all(len(set(a.get_chemical_symbols())) == 5 for a in mixtures)
    groups = [{a.info["group"] for a in splits[s]} for s in SPLITS]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    for a in frames:
        assert a.pbc.all() and np.abs(a.info["strain"]).max() <= 0.03 + 1e-12
        assert (a.info["n_vacancies"] > 0) == (a.info["variant"] == "vacancy")
        frac = a.cell.scaled_positions(a.positions)
        assert frac.min() >= -1e-9 and frac.max() < 1 + 1e-9  # wrapped
    reference = make_reference(_module().SPEC)
    for a in frames[::4]:
        b = a.copy()
        b.calc = reference
        # extxyz keeps 8 decimals of the positions
        assert abs(b.get_potential_energy() - a.get_potential_energy()) < 1e-6
        np.testing.assert_allclose(b.get_forces(), a.get_forces(), atol=1e-6)
        np.testing.assert_allclose(b.get_stress(), a.get_stress(), atol=1e-7)
    summary = json.loads((out / "alsimgcufe_summary.json").read_text())
    assert summary["frames"] == len(frames) and summary["splits"] == {s: len(splits[s]) for s in SPLITS}
    assert summary["label_ms_per_structure"] > 0 and summary["md_steps"] > 0


def test_cells_start_at_the_reference_equilibrium_volume():
    """Pure fcc Al ends at the library's lattice constant (4.05 Å) with zero pressure; a random
    mixture at a volume where the pressure is small against its bulk modulus (~1 eV/Å^3 / 10)."""
    module = _module()
    reference = make_reference(module.SPEC)
    al = module.equilibrium_volume(module.lattice_cell("fcc", (2, 2, 2)), reference)
    assert abs(al.get_volume() / len(al) - 4.05**3 / 4) < 0.02
    al.calc = reference
    assert np.abs(al.get_stress()[:3]).max() < 2e-4  # eV/Å^3 (0.03 GPa)
    rng = np.random.default_rng(1)
    mixture = module.decorate(module.lattice_cell("bcc", (3, 3, 3)), module.mixture_fractions("random", rng), rng)
    mixture = module.equilibrium_volume(mixture, reference)
    mixture.calc = reference
    assert abs(mixture.get_stress()[:3].mean()) < 5e-3  # eV/Å^3 (0.8 GPa)


def test_decorate_counts_and_determinism():
    module = _module()
    cell = bulk("Al", "fcc", a=4.05, cubic=True) * (2, 2, 2)
    fractions = {"Al": 0.6, "Si": 0.1, "Mg": 0.1, "Cu": 0.1, "Fe": 0.1}
    a = module.decorate(cell, fractions, np.random.default_rng(7))
    b = module.decorate(cell, fractions, np.random.default_rng(7))
    assert a.get_chemical_symbols() == b.get_chemical_symbols()
    assert module.formula(a) == "Al20Si3Mg3Cu3Fe3"  # 32 sites: largest remainders
    dilute = module.decorate(cell, {"Al": 0.97, "Cu": 0.01, "Fe": 0.02}, np.random.default_rng(0), every_element=False)
    assert module.formula(dilute) == "Al31Fe1"
    assert module.formula(module.decorate(cell, {"Al": 0.97, "Cu": 0.01, "Fe": 0.02}, np.random.default_rng(0))) == \
        "Al30Cu1Fe1"
