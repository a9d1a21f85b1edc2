"""mlip_add_edge_forces (csrc/src/assemble.cpp), the assembly the LAMMPS plugin calls: forces,
virial and per-atom virial ADDED to a host's arrays, strided rows for per-member forces, and the
first non-finite gradient named; checked against the torch assembly Python uses."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mlip_md._native import core
from mlip_md.model.assemble import forces_from_edge_grad, member_forces_from_edge_grad, virial_from_edge_grad


def _edges(seed=0, n_atoms=7, n_edges=40):
    rng = np.random.default_rng(seed)
    edge_index = rng.integers(0, n_atoms, size=(2, n_edges))
    return edge_index, rng.normal(size=(n_edges, 3)), rng.normal(size=(n_edges, 3))


def test_sums_added_to_the_hosts_arrays_with_per_atom_virial():
    edge_index, grad, vectors = _edges()
    n = 7
    forces = np.ones((n, 3))  # another term's forces already there
    virial = np.full((3, 3), 2.0)
    atom_virial = np.zeros((n, 6))
    assert core.add_edge_forces(edge_index, grad, vectors, forces, virial=virial, atom_virial=atom_virial) == -1
    g, ei = torch.from_numpy(grad), torch.from_numpy(edge_index)
    np.testing.assert_allclose(forces, 1.0 + forces_from_edge_grad(g, ei, n).numpy(), rtol=0, atol=1e-13)
    w = virial_from_edge_grad(g, torch.from_numpy(vectors)).numpy()
    np.testing.assert_allclose(virial, 2.0 + w, rtol=0, atol=1e-12)
    # per atom: half of each edge's -r (x) g to both ends; the rows sum to the global virial
    expected = np.zeros((n, 6))
    for (i, j), r, gv in zip(edge_index.T, vectors, grad):
        term = -np.array([r[0] * gv[0], r[1] * gv[1], r[2] * gv[2], r[0] * gv[1], r[0] * gv[2], r[1] * gv[2]])
        expected[i] += 0.5 * term
        expected[j] += 0.5 * term
    np.testing.assert_allclose(atom_virial, expected, rtol=0, atol=1e-13)
    np.testing.assert_allclose(atom_virial.sum(axis=0), w.ravel()[[0, 4, 8, 1, 2, 5]], rtol=0, atol=1e-12)
    # the overwriting form Python's predictor uses is the same sum into zeros
    f0, w0 = core.assemble_forces(edge_index, grad, vectors, n)
    forces, virial = np.zeros((n, 3)), np.zeros((3, 3))
    core.add_edge_forces(edge_index, grad, vectors, forces, virial=virial)
    np.testing.assert_array_equal(f0, forces)
    np.testing.assert_array_equal(w0, virial)


def test_member_forces_side_by_side_in_strided_rows():
    edge_index, _, _ = _edges(seed=1)
    k, n = 3, 7
    member_grad = np.random.default_rng(2).normal(size=(k, edge_index.shape[1], 3))
    fm = np.zeros((n, 3 * k))
    for m in range(k):
        assert core.add_edge_forces(edge_index, member_grad[m], None, fm, column=3 * m) == -1
    ref = member_forces_from_edge_grad(torch.from_numpy(member_grad), torch.from_numpy(edge_index), n).numpy()
    np.testing.assert_allclose(fm.reshape(n, k, 3).transpose(1, 0, 2), ref, rtol=0, atol=1e-13)


def test_non_finite_gradient_and_bad_input_are_named():
    edge_index, grad, vectors = _edges(seed=3)
    grad[5, 1] = np.nan
    grad[9, 0] = np.inf
    forces = np.zeros((7, 3))
    assert core.add_edge_forces(edge_index, grad, vectors, forces) == edge_index[0, 5]
    edge_index[1, 2] = 7
    with pytest.raises(ValueError, match=r"edge 2 joins atoms \d+-7, outside 0..6"):
        core.add_edge_forces(edge_index, grad, vectors, np.zeros((7, 3)))
    with pytest.raises(ValueError, match=r"atom_virial must be a writable C-contiguous float64 array of shape \[7, 6\]"):
        core.add_edge_forces(edge_index, grad, vectors, np.zeros((7, 3)), atom_virial=np.zeros((7, 3)))
    with pytest.raises(ValueError, match="column 2 leaves no 3 columns"):
        core.add_edge_forces(edge_index, grad, None, np.zeros((7, 4)), column=2)
