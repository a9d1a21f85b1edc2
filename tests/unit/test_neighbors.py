"""Tests of mlip_md.neighbors (C++ cell list) against ase.neighborlist."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list
from hypothesis import given, settings
from hypothesis import strategies as st

from mlip_md.neighbors import NeighborList, neighbor_list, neighbor_list_from_atoms

ALL_PBC = list(itertools.product([False, True], repeat=3))


# ----------------------------------------------------------------------------
# helpers
def reference(positions, cell, pbc, cutoff):
    """ASE full list as {(i, j, Sx, Sy, Sz): r_ij}."""
    atoms = Atoms(positions=positions, cell=cell, pbc=pbc)
    i, j, S, D = ase_neighbor_list("ijSD", atoms, cutoff, self_interaction=False)
    return {(a, b, *s): d for a, b, s, d in zip(i.tolist(), j.tolist(), S.tolist(), D)}


def as_dict(nl: NeighborList):
    return {
        (a, b, *s): v
        for a, b, s, v in zip(nl.i.tolist(), nl.j.tolist(), nl.shifts.tolist(), nl.vectors)
    }


def assert_matches_ase(positions, cell, pbc, cutoff, num_threads=1):
    positions = np.asarray(positions, dtype=float)
    cell = np.asarray(cell, dtype=float)
    nl = neighbor_list(positions, cell, pbc, cutoff, distances=True, num_threads=num_threads)
    E = len(nl.i)
    # dtypes / shapes of the fixed API
    assert nl.i.dtype == np.int64 and nl.i.shape == (E,)
    assert nl.j.dtype == np.int64 and nl.j.shape == (E,)
    assert nl.shifts.dtype == np.int32 and nl.shifts.shape == (E, 3)
    assert nl.vectors.dtype == np.float64 and nl.vectors.shape == (E, 3)
    assert nl.distances.dtype == np.float64 and nl.distances.shape == (E,)
    # sorted by i, no (i, i, 0), no shift along non-periodic directions
    assert np.all(np.diff(nl.i) >= 0)
    assert not np.any((nl.i == nl.j) & np.all(nl.shifts == 0, axis=1))
    for k in range(3):
        if not pbc[k]:
            assert np.all(nl.shifts[:, k] == 0)
    # r_ij == r_j - r_i + S @ cell, |r_ij| == distance < cutoff
    expected = positions[nl.j] - positions[nl.i] + nl.shifts @ cell
    np.testing.assert_allclose(nl.vectors, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(nl.distances, np.linalg.norm(nl.vectors, axis=1), rtol=1e-15, atol=0)
    assert np.all(nl.distances < cutoff)

    ours = as_dict(nl)
    assert len(ours) == E, "duplicate (i, j, S) entries"
    ref = reference(positions, cell, pbc, cutoff)
    # pairs within rounding of the cutoff may legitimately differ
    near = 1e-9
    missing = {k for k, d in ref.items() if k not in ours and np.linalg.norm(d) < cutoff - near}
    extra = {k for k, v in ours.items() if k not in ref and np.linalg.norm(v) < cutoff - near}
    assert not missing, f"{len(missing)} pairs missing, e.g. {sorted(missing)[:5]}"
    assert not extra, f"{len(extra)} spurious pairs, e.g. {sorted(extra)[:5]}"
    for key in ours.keys() & ref.keys():
        np.testing.assert_allclose(ours[key], ref[key], rtol=0, atol=1e-10)
    return nl


def random_cell(rng, kind, scale):
    if kind == "cubic":
        return np.eye(3) * scale
    if kind == "orthorhombic":
        return np.diag(rng.uniform(0.6, 1.4, 3) * scale)
    if kind == "triclinic":
        # skewed but well-conditioned: identity + large random off-diagonal
        m = np.eye(3) + rng.uniform(-0.6, 0.6, (3, 3))
        while abs(np.linalg.det(m)) < 0.3:
            m = np.eye(3) + rng.uniform(-0.6, 0.6, (3, 3))
        return m * scale
    if kind == "very_skewed":
        a = np.array([1.0, 0.0, 0.0])
        b = np.array([rng.uniform(2.0, 3.0), 0.4, 0.0])  # nearly parallel to a
        c = np.array([rng.uniform(-2, 2), rng.uniform(-2, 2), 0.5])
        return np.array([a, b, c]) * scale
    raise ValueError(kind)


# ----------------------------------------------------------------------------
# comparison with ASE
@pytest.mark.parametrize("pbc", ALL_PBC, ids=lambda p: "".join("T" if x else "F" for x in p))
@pytest.mark.parametrize("kind", ["cubic", "orthorhombic", "triclinic", "very_skewed"])
def test_random_cells_all_pbc(pbc, kind):
    rng = np.random.default_rng(hash((pbc, kind)) % 2**32)
    for trial in range(3):
        n = int(rng.integers(2, 40))
        scale = rng.uniform(4.0, 9.0)
        cell = random_cell(rng, kind, scale)
        cutoff = rng.uniform(1.5, 5.0)
        if kind == "very_skewed":  # thin cell: ASE gets slow with many images
            n, cutoff = min(n, 12), min(cutoff, 3.0)
        # atoms inside AND outside the cell
        frac = rng.uniform(-1.5, 2.5, (n, 3))
        positions = frac @ cell
        assert_matches_ase(positions, cell, pbc, cutoff)


@pytest.mark.parametrize("pbc", ALL_PBC, ids=lambda p: "".join("T" if x else "F" for x in p))
def test_tiny_cells_many_images(pbc):
    """Cutoff several times the cell: many periodic images, self-images."""
    rng = np.random.default_rng(7)
    for trial in range(3):
        cell = random_cell(rng, "triclinic", rng.uniform(1.0, 2.0))
        n = int(rng.integers(1, 4))
        positions = rng.uniform(-1, 2, (n, 3)) @ cell
        cutoff = 3.0 * np.max(np.linalg.norm(cell, axis=1))
        assert_matches_ase(positions, cell, pbc, cutoff)


def test_single_atom_tiny_cell_self_images():
    cell = np.array([[1.0, 0, 0], [0.3, 1.1, 0], [0.2, 0.1, 0.9]])
    nl = assert_matches_ase([[0.1, 0.2, 0.3]], cell, [True] * 3, 3.3)
    assert len(nl.i) > 100 and np.all(nl.i == 0) and np.all(nl.j == 0)
    # every image appears with its mirror image
    keys = set(map(tuple, nl.shifts.tolist()))
    assert all(tuple(-s for s in k) in keys for k in keys)


@pytest.mark.parametrize("pbc", ALL_PBC, ids=lambda p: "".join("T" if x else "F" for x in p))
def test_zero_cell_vectors_along_non_periodic(pbc):
    """Non-periodic cell vectors are ignored: zero or arbitrary gives the same list."""
    rng = np.random.default_rng(11)
    cell = random_cell(rng, "triclinic", 6.0)
    positions = rng.uniform(-0.5, 1.5, (30, 3)) @ cell
    for k in range(3):
        if not pbc[k]:
            cell[k] = 0.0
    if not any(pbc):  # ASE wants *some* cell for nothing; zeros are fine
        cell = np.zeros((3, 3))
    nl = assert_matches_ase(positions, cell, pbc, 3.5)
    # arbitrary (even degenerate) vectors along non-periodic directions
    cell2 = cell.copy()
    for k in range(3):
        if not pbc[k]:
            cell2[k] = cell2[(k + 1) % 3] if pbc[(k + 1) % 3] else [1e-3, 0, 0]
    nl2 = neighbor_list(positions, cell2, pbc, 3.5)
    assert as_dict(nl).keys() == as_dict(nl2).keys()


def test_isolated_molecule_zero_cell():
    mol = molecule("C6H6")
    mol.positions += 100.0  # far from the origin
    nl = neighbor_list(mol.positions, np.zeros((3, 3)), False, 2.0)
    ref = reference(mol.positions, np.zeros((3, 3)), [False] * 3, 2.0)
    assert as_dict(nl).keys() == ref.keys()
    assert np.all(nl.shifts == 0)
    # cell=None is accepted as "no cell"
    assert len(neighbor_list(mol.positions, None, False, 2.0).i) == len(nl.i)


def test_sparse_molecule_far_apart_atoms():
    """Huge bounding box, few atoms: bin count must stay bounded."""
    positions = np.array([[0.0, 0, 0], [1.0, 0, 0], [1e5, 0, 0], [1e5, 1e5, 1e5], [1e5, 1e5, 1e5 + 0.5]])
    nl = neighbor_list(positions, np.zeros((3, 3)), False, 1.5)
    assert sorted(zip(nl.i.tolist(), nl.j.tolist())) == [(0, 1), (1, 0), (3, 4), (4, 3)]


@pytest.mark.parametrize("n", [0, 1, 2])
@pytest.mark.parametrize("pbc", [True, False, (True, False, True)])
def test_few_atoms(n, pbc):
    rng = np.random.default_rng(n)
    cell = random_cell(rng, "triclinic", 3.0)
    positions = rng.uniform(0, 1, (n, 3)) @ cell
    nl = neighbor_list(positions, cell, pbc, 4.0, distances=True)
    if n == 0:
        assert nl.i.shape == (0,) and nl.shifts.shape == (0, 3) and nl.vectors.shape == (0, 3)
        assert nl.distances.shape == (0,)
    else:
        assert_matches_ase(positions, cell, np.broadcast_to(pbc, 3), 4.0)


def test_two_atoms_non_periodic():
    nl = neighbor_list([[0, 0, 0], [0, 0, 1.5]], np.zeros((3, 3)), False, 2.0, distances=True)
    assert nl.i.tolist() == [0, 1] and nl.j.tolist() == [1, 0]
    np.testing.assert_allclose(nl.vectors, [[0, 0, 1.5], [0, 0, -1.5]])
    np.testing.assert_allclose(nl.distances, [1.5, 1.5])


def test_coincident_atoms_are_included():
    """Documented choice (same as ASE): distinct atoms at distance 0 are neighbours."""
    positions = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [2.0, 1.0, 1.0]])
    nl = neighbor_list(positions, np.eye(3) * 10, True, 1.5, distances=True)
    pairs = set(zip(nl.i.tolist(), nl.j.tolist()))
    assert {(0, 1), (1, 0)} <= pairs
    assert (0, 0) not in pairs
    assert_matches_ase(positions, np.eye(3) * 10, [True] * 3, 1.5)


def test_positions_far_outside_cell():
    """Shifts refer to the ORIGINAL (unwrapped) positions."""
    rng = np.random.default_rng(3)
    cell = random_cell(rng, "triclinic", 5.0)
    frac = rng.uniform(0, 1, (20, 3)) + rng.integers(-50, 50, (20, 3))
    positions = frac @ cell
    nl = assert_matches_ase(positions, cell, [True] * 3, 4.0)
    assert np.abs(nl.shifts).max() > 20


def test_bulk_copper_counts():
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat((3, 3, 3))
    atoms.rattle(0.05, seed=1)
    nl = neighbor_list_from_atoms(atoms, 3.0)
    assert np.all(np.bincount(nl.i, minlength=len(atoms)) == 12)
    assert_matches_ase(atoms.positions, atoms.cell.array, atoms.pbc, 5.0)


def test_vectors_identity_large_coordinates():
    rng = np.random.default_rng(5)
    cell = random_cell(rng, "triclinic", 20.0)
    positions = rng.uniform(-3, 4, (300, 3)) @ cell
    nl = neighbor_list(positions, cell, True, 6.0)
    r = positions[nl.j] - positions[nl.i] + nl.shifts @ cell
    assert np.max(np.abs(nl.vectors - r)) < 1e-12


def test_options_vectors_distances():
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat((2, 2, 2))
    full = neighbor_list_from_atoms(atoms, 4.0, vectors=True, distances=True)
    nov = neighbor_list_from_atoms(atoms, 4.0, vectors=False, distances=True)
    none = neighbor_list_from_atoms(atoms, 4.0, vectors=False, distances=False)
    assert nov.vectors is None and none.vectors is None and none.distances is None
    np.testing.assert_array_equal(nov.distances, full.distances)
    np.testing.assert_array_equal(none.j, full.j)
    np.testing.assert_array_equal(none.shifts, full.shifts)


@pytest.mark.parametrize("pbc", [True, (True, False, True)])
@pytest.mark.parametrize("vectors, distances", [(True, True), (False, True), (False, False)])
def test_threads_give_identical_result(pbc, vectors, distances):
    rng = np.random.default_rng(9)
    cell = random_cell(rng, "triclinic", 40.0)
    positions = rng.uniform(0, 1, (5000, 3)) @ cell  # > 2 x 2048: threads are used
    kw = dict(vectors=vectors, distances=distances)
    one = neighbor_list(positions, cell, pbc, 4.0, **kw)
    for nt in (2, 3):
        many = neighbor_list(positions, cell, pbc, 4.0, num_threads=nt, **kw)
        for a, b in zip(one, many):
            np.testing.assert_array_equal(a, b)
    assert len(one.i) > 100_000


def test_input_conversion():
    """Non-contiguous / float32 / list inputs are converted; results agree."""
    rng = np.random.default_rng(2)
    cell = random_cell(rng, "triclinic", 6.0)
    pos = rng.uniform(0, 1, (25, 3)) @ cell
    ref = neighbor_list(pos, cell, True, 3.0)
    fortran = np.asfortranarray(pos)
    strided = np.zeros((25, 6))
    strided[:, ::2] = pos
    for variant in (fortran, strided[:, ::2], pos.tolist()):
        nl = neighbor_list(variant, cell.tolist(), [1, 1, 1], 3)
        np.testing.assert_array_equal(nl.j, ref.j)
        np.testing.assert_array_equal(nl.shifts, ref.shifts)
    nl32 = neighbor_list(pos.astype(np.float32), cell, True, 3.0)
    assert nl32.vectors.dtype == np.float64


def test_zero_copy_result_buffers():
    nl = neighbor_list(np.random.default_rng(0).uniform(0, 5, (50, 3)), np.eye(3) * 5, True, 2.5)
    for arr in (nl.i, nl.j, nl.shifts, nl.vectors):
        assert not arr.flags.owndata  # memory owned by a capsule over the C buffer
        assert arr.base is not None and not isinstance(arr.base, np.ndarray)
        assert arr.flags.c_contiguous and arr.flags.writeable


def test_raw_binding_shape_checks():
    from mlip_md import _core

    with pytest.raises(ValueError):
        _core.compute_neighbors(np.zeros((3, 2)), np.eye(3), [True] * 3, 1.0)
    with pytest.raises(ValueError):
        _core.compute_neighbors(np.zeros((3, 3)), np.eye(2), [True] * 3, 1.0)
    # the C core re-checks what the front-end validates
    with pytest.raises(ValueError, match="cutoff"):
        _core.compute_neighbors(np.zeros((3, 3)), np.eye(3), [True] * 3, -1.0)
    with pytest.raises(ValueError, match="volume"):
        flat = np.array([[5.0, 0, 0], [0, 5, 0], [5, 5, 0]])
        _core.compute_neighbors(np.zeros((3, 3)), flat, [True] * 3, 1.0)
    with pytest.raises(ValueError, match="zero"):
        _core.compute_neighbors(np.zeros((3, 3)), np.zeros((3, 3)), [True] * 3, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        _core.compute_neighbors(np.full((3, 3), np.nan), np.eye(3), [True] * 3, 1.0)


# ----------------------------------------------------------------------------
# bad input: ValueError with a helpful message, raised before the C core
GOOD_POS = np.zeros((2, 3))
GOOD_CELL = np.eye(3) * 5.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(positions=np.array([[0, 0, np.nan], [1, 1, 1]])), "NaN or infinite.*atom.*0"),
        (dict(positions=np.array([[0, 0, 0], [1, np.inf, 1]])), "NaN or infinite.*atom.*1"),
        (dict(positions=np.zeros((2, 2))), r"shape \[N, 3\]"),
        (dict(positions=np.zeros(6)), r"shape \[N, 3\]"),
        (dict(positions=np.zeros((2, 3, 1))), r"shape \[N, 3\]"),
        (dict(positions=[["a", "b", "c"]]), "float64"),
        (dict(cell=np.array([[np.inf, 0, 0], [0, 5, 0], [0, 0, 5]])), "cell contains NaN or inf"),
        (dict(cell=np.array([[np.nan, 0, 0], [0, 5, 0], [0, 0, 5]]), pbc=False), "cell contains NaN"),
        (dict(cell=np.zeros((2, 3))), r"cell must have shape \[3, 3\]"),
        (dict(cell=np.zeros((3, 3))), "zero but the system is periodic.*pbc\\[0\\] = False"),
        (dict(cell=[[5, 0, 0], [0, 5, 0], [5, 5, 0]]), "zero volume.*independent"),
        (dict(cell=[[5, 0, 0], [10, 0, 0], [0, 0, 0]], pbc=[True, True, False]), "parallel"),
        (dict(cell=[[5, 0, 0], [0, 5, 0], [0, 0, 0]], pbc=True), "cell vector c is zero"),
        (dict(pbc=[True, False]), "pbc must be"),
        (dict(cutoff=-1.0), "finite number > 0"),
        (dict(cutoff=0.0), "finite number > 0"),
        (dict(cutoff=np.nan), "finite number > 0"),
        (dict(cutoff=np.inf), "finite number > 0"),
        (dict(cutoff="five"), "positive number"),
        (dict(cutoff=None), "positive number"),
    ],
)
def test_bad_input_raises_value_error(kwargs, match, monkeypatch):
    from mlip_md import neighbors

    def must_not_be_called(*args, **kw):  # validation happens BEFORE C
        raise AssertionError("the C core was called with invalid input")

    monkeypatch.setattr(neighbors._core, "compute_neighbors", must_not_be_called)
    args = dict(positions=GOOD_POS, cell=GOOD_CELL, pbc=True, cutoff=2.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        neighbor_list(args["positions"], args["cell"], args["pbc"], args["cutoff"])


def test_absurd_cutoff_vs_cell_is_a_value_error():
    with pytest.raises(ValueError, match="cutoff is too large.*smaller cutoff"):
        neighbor_list([[0.0, 0, 0]], np.eye(3) * 0.01, True, 100.0)


def test_non_finite_non_periodic_cell_rows_are_ignored_by_core():
    from mlip_md import _core

    cell = np.array([[5.0, 0, 0], [0, 5, 0], [np.nan, np.inf, 0]])
    _, _, S, V, _ = _core.compute_neighbors(
        np.array([[0.0, 0, 0], [1, 0, 0]]), cell, [True, True, False], 2.0
    )
    np.testing.assert_array_equal(V, [[1, 0, 0], [-1, 0, 0]])


def test_huge_sparse_periodic_cell():
    nl = neighbor_list([[0, 0, 0], [1, 0, 0], [5e5, 5e5, 5e5]], np.eye(3) * 1e6, True, 2.0)
    assert nl.i.tolist() == [0, 1] and nl.j.tolist() == [1, 0]


def test_degenerate_non_periodic_direction_is_fine():
    # zero-volume cell is fine when the degenerate direction is non-periodic
    cell = np.array([[5.0, 0, 0], [0, 5, 0], [5, 5, 0]])
    nl = neighbor_list([[0, 0, 0], [1, 0, 0]], cell, [True, True, False], 2.0)
    assert len(nl.i) == 2


# ----------------------------------------------------------------------------
# property-based: random systems vs ASE
@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 25),
    pbc=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    cutoff=st.floats(0.5, 6.0),
    scale=st.floats(1.0, 8.0),
)
def test_hypothesis_vs_ase(seed, n, pbc, cutoff, scale):
    rng = np.random.default_rng(seed)
    cell = random_cell(rng, "triclinic", scale)
    positions = rng.uniform(-1.0, 2.0, (n, 3)) @ cell
    if n == 0:
        nl = neighbor_list(positions, cell, pbc, cutoff)
        assert len(nl.i) == 0
        return
    assert_matches_ase(positions, cell, pbc, cutoff)


# ----------------------------------------------------------------------------
# large-N smoke test against vesin (pair count; no timing assertions)
def test_large_n_pair_count_vs_vesin():
    vesin = pytest.importorskip("vesin")
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat((17, 17, 18))  # 20808 atoms
    atoms.rattle(0.1, seed=4)
    nl = neighbor_list_from_atoms(atoms, 5.0, distances=True)
    calc = vesin.NeighborList(cutoff=5.0, full_list=True)
    vi, vj, vS, vd = calc.compute(atoms.positions, atoms.cell.array, True, "ijSd")
    assert len(atoms) > 20000
    assert len(nl.i) == len(vi)
    np.testing.assert_array_equal(np.bincount(nl.i, minlength=len(atoms)),
                                  np.bincount(vi, minlength=len(atoms)))
    np.testing.assert_allclose(np.sort(nl.distances), np.sort(vd), atol=1e-12)
