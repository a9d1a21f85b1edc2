"""Partitioned evaluation: blocks of centre atoms add up to the full prediction (the basis of
the MPI driver), and ParallelPredictor with one rank is the plain predictor."""
from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from mlip_md.model.io import save_model
from mlip_md.runtime.parallel import ParallelPredictor
from mlip_md.runtime.predictor import Predictor


class _OneRank:
    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1


@pytest.fixture(scope="module")
def predictor(tmp_path_factory, random_potential):
    return Predictor(save_model(random_potential, tmp_path_factory.mktemp("par") / "m.pt"))


@pytest.mark.parametrize("n_blocks", [2, 3, 5])
def test_blocks_sum_to_full_prediction(predictor, n_blocks):
    atoms = bulk("Cu", "fcc", a=3.6).repeat((3, 3, 2))
    atoms.set_cell(atoms.cell.array @ np.array([[1, 0.04, 0], [0, 1, 0], [0.03, 0, 1]]), scale_atoms=True)
    atoms.rattle(0.05, seed=2)
    args = (atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    full = predictor.predict(*args, monitors=True, force_sigma=True)
    bounds = np.linspace(0, len(atoms), n_blocks + 1).round().astype(int)
    parts = [predictor.predict(*args, monitors=True, force_sigma=True, centres=slice(a, b))
             for a, b in zip(bounds[:-1], bounds[1:])]
    np.testing.assert_allclose(sum(p.forces for p in parts), full.forces, atol=1e-12)
    np.testing.assert_allclose(sum(p.virial for p in parts), full.virial, atol=1e-12)
    np.testing.assert_allclose(sum(p.energies for p in parts), full.energies, atol=1e-13)
    np.testing.assert_allclose(sum(p.energy_members for p in parts), full.energy_members, atol=1e-13)
    np.testing.assert_allclose(sum(p.force_members for p in parts), full.force_members, atol=1e-12)
    np.testing.assert_allclose(sum(p.member_virials for p in parts), full.member_virials, atol=1e-12)
    for name in ("energy_sigma", "mahalanobis", "min_distance_ratio"):
        np.testing.assert_allclose(sum(getattr(p, name) for p in parts), getattr(full, name), atol=1e-12)
    assert sum(p.energy for p in parts) == pytest.approx(full.energy, abs=1e-12)


def test_one_rank_is_the_plain_predictor(predictor):
    atoms = bulk("Cu", "fcc", a=3.6).repeat(2)
    parallel = ParallelPredictor(predictor, _OneRank())
    assert parallel.block(10) == slice(0, 10)
    a = parallel.predict(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    b = predictor.predict(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    np.testing.assert_array_equal(a.forces, b.forces)


def test_blocks_cover_all_atoms_once(predictor):
    class _Ranks:
        def __init__(self, size):
            self.size = size

        def Get_rank(self):
            return 0

        def Get_size(self):
            return self.size

    for size in (1, 2, 3, 7):
        parallel = ParallelPredictor(predictor, _Ranks(size))
        covered = np.concatenate([np.arange(107)[parallel.block(107, r)] for r in range(size)])
        assert covered.tolist() == list(range(107))
