"""Verlet-list reuse: the same pairs as a fresh list while atoms move, few rebuilds, and MD
forces identical to rebuilding every step."""
from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet
from ase import units

from mlip_md.engines.ase import MLIPCalculator
from mlip_md.model.io import save_model
from mlip_md.neighbors import neighbor_list
from mlip_md.verlet import VerletList


def pair_set(nl) -> set:
    shifts = np.asarray(nl.shifts)
    return {(int(a), int(b), *map(int, s)) for a, b, s in zip(nl.i, nl.j, shifts)}


def triclinic_cell(seed: int):
    atoms = bulk("Cu", "fcc", a=3.6).repeat((4, 3, 3))  # primitive (triclinic) cell, 36 atoms
    atoms.rattle(0.05, seed=seed)
    return atoms


def test_same_pairs_as_fresh_list_during_a_random_walk():
    atoms = triclinic_cell(0)
    rng = np.random.default_rng(0)
    vl = VerletList(cutoff=4.0, skin=0.6)
    positions = atoms.positions.copy()
    for _ in range(60):
        positions += rng.normal(scale=0.03, size=positions.shape)
        got = vl.update(positions, atoms.cell.array, atoms.pbc)
        fresh = neighbor_list(positions, atoms.cell.array, atoms.pbc, 4.0, vectors=True, distances=True)
        assert pair_set(got) == pair_set(fresh)
        assert np.all(np.diff(got.i) >= 0)  # sorted by centre, as the fresh list
        order_got = np.lexsort((np.asarray(got.shifts).T.tolist() + [got.j, got.i])[::-1])
        order_fresh = np.lexsort((np.asarray(fresh.shifts).T.tolist() + [fresh.j, fresh.i])[::-1])
        np.testing.assert_allclose(got.vectors[order_got], fresh.vectors[order_fresh], atol=1e-12)
        np.testing.assert_allclose(got.distances[order_got], fresh.distances[order_fresh], atol=1e-12)
        assert np.array_equal(vl.edge_index, np.stack([got.i, got.j]))
    # 60 steps of 0.03 Å random moves: the largest displacement passes skin/2 = 0.3 Å a few times
    assert 2 <= vl.builds <= 20, vl.builds
    assert vl.updates == 60


def test_rebuilds_when_cell_pbc_or_size_change():
    atoms = triclinic_cell(1)
    vl = VerletList(cutoff=4.0, skin=0.5)
    vl.update(atoms.positions, atoms.cell.array, atoms.pbc)
    vl.update(atoms.positions, atoms.cell.array, atoms.pbc)
    assert vl.builds == 1
    strained = atoms.cell.array * 1.001
    got = vl.update(atoms.positions, strained, atoms.pbc)
    assert vl.builds == 2
    assert pair_set(got) == pair_set(neighbor_list(atoms.positions, strained, atoms.pbc, 4.0))
    vl.update(atoms.positions, strained, [True, True, False])
    assert vl.builds == 3
    vl.update(atoms.positions[:-1], strained, [True, True, False])
    assert vl.builds == 4
    vl.invalidate()
    vl.update(atoms.positions[:-1], strained, [True, True, False])
    assert vl.builds == 5


def test_bad_arguments():
    with pytest.raises(ValueError, match="skin"):
        VerletList(4.0, skin=-0.1)
    with pytest.raises(ValueError, match="cutoff"):
        VerletList(0.0)


def test_md_forces_equal_with_and_without_skin(tmp_path, random_potential):
    """NVE at 2000 K: every step's forces and stress with a reused list equal a fresh list's."""
    path = save_model(random_potential, tmp_path / "m.pt")
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=3)
    thermalize_momenta(atoms, temperature_K=2000, rng=np.random.default_rng(3))
    reused = MLIPCalculator(path, skin=0.4, monitors=False)
    fresh = MLIPCalculator(path, monitors=False)
    atoms.calc = reused
    dyn = VelocityVerlet(atoms, 2.0 * units.fs)
    checked = []

    def compare():
        probe = atoms.copy()
        probe.calc = fresh
        np.testing.assert_allclose(atoms.get_forces(), probe.get_forces(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(atoms.get_stress(), probe.get_stress(), rtol=0, atol=1e-12)
        checked.append(1)

    dyn.attach(compare, interval=1)
    dyn.run(40)
    verlet = reused.predictor.verlet
    assert len(checked) == 41 and verlet.updates >= 41
    assert 1 < verlet.builds < verlet.updates / 3, (verlet.builds, verlet.updates)
