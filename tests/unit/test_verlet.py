"""Verlet-list reuse: the same pairs as a fresh list while atoms move, few rebuilds, and MD
forces identical to rebuilding every step."""
from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet
from ase import units

from mlip_md._native import core
from mlip_md.engines.ase import MLIPCalculator
from mlip_md.model.io import save_model
from mlip_md.neighbors import neighbor_list
from mlip_md.runtime.neighbor_reuse import VerletList


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


def test_details_false_gives_the_same_pairs_and_the_closest_distance():
    atoms = triclinic_cell(2)
    vl = VerletList(cutoff=4.0, skin=0.5)
    full = vl.update(atoms.positions, atoms.cell.array, atoms.pbc)
    full = (full.i.copy(), full.j.copy(), full.vectors.copy(), full.distances.min())
    lean = vl.update(atoms.positions, atoms.cell.array, atoms.pbc, details=False)
    assert lean.shifts is None and lean.distances is None
    assert np.array_equal(lean.i, full[0]) and np.array_equal(lean.j, full[1])
    assert np.array_equal(lean.vectors, full[2])
    assert vl.min_distance == pytest.approx(full[3], abs=1e-14)


def test_stale_candidates_are_reported_and_rebuilt_never_truncated():
    """Pairs closer than cutoff - skin at the build are kept without a cutoff test; if an atom
    moved further than skin / 2 anyway, the C refresh reports it and VerletList rebuilds."""
    atoms = triclinic_cell(3)
    cutoff, skin = 4.0, 0.5
    cand = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff + skin)
    packed = core.VerletCandidates(atoms.positions, atoms.cell.array, cand.i, cand.j, cand.shifts, cutoff, skin)
    e = len(cand.i)
    buffers = (np.empty(2 * e, np.int64), np.empty((e, 3)))
    fresh = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    n, closest = packed.filter(atoms.positions, *buffers)
    assert n == len(fresh.i) and closest == pytest.approx(np.linalg.norm(fresh.vectors, axis=1).min())
    # pull atom 0 1.5 Å away from its nearest neighbour: a sure pair leaves the cutoff
    k = int(np.argmin(np.linalg.norm(fresh.vectors, axis=1)))
    moved = atoms.positions.copy()
    moved[fresh.i[k]] -= 1.5 * fresh.vectors[k] / np.linalg.norm(fresh.vectors[k])
    far = np.flatnonzero(np.linalg.norm(neighbor_list(moved, atoms.cell.array, atoms.pbc, cutoff + skin).vectors,
                                        axis=1) >= cutoff)
    assert len(far)
    with pytest.raises(core.StaleCandidatesError, match="rebuild"):
        packed.filter(moved, *buffers)
    # VerletList: a build whose reference was not the true last position still answers exactly
    vl = VerletList(cutoff, skin)
    vl.update(atoms.positions, atoms.cell.array, atoms.pbc)
    vl._reference = moved.copy()  # as if the displacement check had been skipped
    got = vl.update(moved, atoms.cell.array, atoms.pbc)
    assert pair_set(got) == pair_set(neighbor_list(moved, atoms.cell.array, atoms.pbc, cutoff))
    assert vl.builds == 2


def test_candidates_bad_input_names_the_problem():
    atoms = triclinic_cell(4)
    cand = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.5)
    with pytest.raises(ValueError, match="sorted ascending"):
        core.VerletCandidates(atoms.positions, atoms.cell.array, cand.i[::-1], cand.j[::-1], cand.shifts[::-1], 4.0, 0.5)
    j = cand.j.copy()
    j[3] = len(atoms)
    with pytest.raises(ValueError, match="0..35"):
        core.VerletCandidates(atoms.positions, atoms.cell.array, cand.i, j, cand.shifts, 4.0, 0.5)
    with pytest.raises(ValueError, match="cutoff > 0 and skin >= 0"):
        core.VerletCandidates(atoms.positions, atoms.cell.array, cand.i, cand.j, cand.shifts, 4.0, -0.5)
    packed = core.VerletCandidates(atoms.positions, atoms.cell.array, cand.i, cand.j, cand.shifts, 4.0, 0.5)
    e = len(cand.i)
    with pytest.raises(ValueError, match="positions must be"):
        packed.filter(atoms.positions[:-1], np.empty(2 * e, np.int64), np.empty((e, 3)))
    with pytest.raises(ValueError, match="out_ij must hold"):
        packed.filter(atoms.positions, np.empty(e, np.int64), np.empty((e, 3)))


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
