"""examples/cuni_dataset.py: the Cu-Ni binary-alloy data set of issue 18 (labelled with the
wheel's CuNi EAM). The --quick run, as a user runs it, writes labels equal to the reference,
every kind of structure, the right ordered phases, disjoint groups, and is deterministic."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest

from mlip_md.reference import make_reference

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "cuni_dataset.py"
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("cuni_quick")
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--quick", "--seed", "3"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return out, run.stdout, {s: ase.io.read(out / f"cuni_{s}.extxyz", ":") for s in SPLITS}


def test_quick_run_labels_every_kind_with_the_reference(quick):
    out, stdout, splits = quick
    frames = [a for s in SPLITS for a in splits[s]]
    assert "reference Cu: a0 = 3.615 Å, E_coh = 3.540 eV" in stdout and f"wrote {out}" in stdout
    assert 10 <= len(frames) <= 40 and all(32 - 1 <= len(a) <= 108 for a in frames)
    assert {a.info["config_type"] for a in frames} == {"solid_solution", "ordered", "vacancy", "strained"}
    assert {0.0, 600.0, 900.0} <= {a.info["temperature"] for a in frames}
    groups = [{a.info["group"] for a in splits[s]} for s in SPLITS]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    reference = make_reference("lammps:eam/alloy:CuNi.eam.alloy")
    for a in frames[::3]:
        assert a.pbc.all() and set(a.numbers) <= {28, 29}
        b = a.copy()
        b.calc = reference
        assert abs(b.get_potential_energy() - a.get_potential_energy()) < 1e-6
        np.testing.assert_allclose(b.get_forces(), a.get_forces(), atol=1e-6)
        np.testing.assert_allclose(b.get_stress(), a.get_stress(), atol=1e-7)
    for a in frames:  # compositions as labelled: ordered phases exact, vacancies one site short
        sites = 4 * a.info["supercell"] ** 3
        assert len(a) == sites - a.info["n_vacancies"]
        if a.info["n_vacancies"] == 0:
            assert (a.numbers == 28).sum() == round(a.info["x_ni"] * sites)


def test_ordered_phases_and_determinism(quick):
    spec = importlib.util.spec_from_file_location("cuni_dataset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    l12 = module.ordered_phase("Cu3Ni", 2)
    l10 = module.ordered_phase("CuNi", 1)
    assert len(l12) == 32 and (l12.numbers == 28).sum() == 8
    ni = l12[l12.numbers == 28]  # L1_2: Ni on a simple-cubic sublattice, no Ni-Ni nearest neighbours
    assert ni.get_all_distances(mic=True)[np.triu_indices(8, 1)].min() == pytest.approx(module.lattice_constant(0.25))
    assert sorted(np.round(l10.positions[l10.numbers == 28][:, 2], 6)) == [0.0, 0.0]  # L1_0: Ni layer at z = 0
    out = Path(quick[0]).parent / "again"
    module.generate(str(out), seed=3, quick=True, verbose=False)
    for s in SPLITS:
        first = quick[2][s]
        again = ase.io.read(out / f"cuni_{s}.extxyz", ":")
        assert [a.get_potential_energy() for a in again] == [a.get_potential_energy() for a in first]
