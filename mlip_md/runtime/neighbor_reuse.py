"""Neighbour-list reuse between MD steps: a skin ("Verlet") neighbour list for the Python engines.

>>> vl = VerletList(cutoff=5.5, skin=0.5)
>>> nl = vl.update(positions, cell, pbc)          # a NeighborList within the cutoff
>>> vl.builds, vl.updates                          # full builds vs calls

The candidate pairs are built (C++ cell list) at ``cutoff + skin`` and stored compactly in C++
(:class:`mlip_md._core.VerletCandidates`: rows by centre atom ordered by distance, int32
neighbours, a code into a table of the distinct shift vectors ``S @ cell``); every call
recomputes the vectors from the current positions and keeps the pairs inside ``cutoff`` (one
C++ pass, no allocation; pairs closer than ``cutoff - skin`` at the build are kept without a
test, see ``csrc/src/verlet.cpp``). The
candidates are rebuilt when any atom moved more than ``skin / 2`` since the last build (two
atoms approaching each other then cannot have crossed from beyond ``cutoff + skin`` to inside
``cutoff``), or when the number of atoms, the cell or the periodicity changed. The result is
the same set of pairs as a fresh :func:`~mlip_md.neighbors.neighbor_list`, sorted by ``i``
(only the order among the neighbours of one atom may differ).

Units: Å. The arrays returned are views of buffers reused on the next call: copy them to
keep them. ``skin = 0`` builds a fresh list on every call. ``update(..., details=False)``
skips the shifts and distances (the engines need only i, j and the vectors) and leaves the
smallest distance in ``min_distance``.
"""
from __future__ import annotations

import numpy as np

from .._native import core as _core
from ..neighbors import NeighborList, neighbor_list


class VerletList:
    """Reusable full neighbour list of one system; see the module docstring."""

    def __init__(self, cutoff: float, skin: float = 0.5, num_threads: int = 1):
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0 Å, got {cutoff}")
        if not skin >= 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin}")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.num_threads = int(num_threads)
        self.builds = 0  # full neighbour-list builds
        self.updates = 0  # calls of update()
        self._reference = None  # positions at the last build
        self._cell = None
        self._pbc = None
        self._candidates = None  # NeighborList at cutoff + skin
        self._packed = None  # _core.VerletCandidates of the candidates
        self._buffers = None
        self.edge_index = None  # [2, E] view of the last update's pairs (i row, j row)
        self.min_distance = np.inf  # Å, smallest distance of the last update's pairs

    def invalidate(self) -> None:
        """Force a full build on the next update."""
        self._reference = None

    def needs_build(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> bool:
        if self._reference is None or self.skin == 0.0 or positions.shape != self._reference.shape:
            return True
        if not (np.array_equal(cell, self._cell) and np.array_equal(pbc, self._pbc)):
            return True
        moved = positions - self._reference
        return bool(np.einsum("ij,ij->i", moved, moved).max(initial=0.0) > 0.25 * self.skin * self.skin)

    def update(self, positions, cell, pbc, details: bool = True) -> NeighborList:
        """Pairs within the cutoff for these positions (Å) with their vectors; with ``details``
        also their shifts and distances (otherwise ``None``)."""
        positions = np.ascontiguousarray(positions, dtype=np.float64)
        cell = np.asarray(cell if cell is not None else np.zeros((3, 3)), dtype=np.float64).reshape(3, 3)
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
        self.updates += 1
        if self.needs_build(positions, cell, pbc):
            if self.skin == 0.0:
                self.builds += 1
                nl = neighbor_list(positions, cell, pbc, self.cutoff, vectors=True, distances=True,
                                   num_threads=self.num_threads)
                self.edge_index = np.stack([nl.i, nl.j])
                self.min_distance = float(nl.distances.min(initial=np.inf))
                return nl
            self._build(positions, cell, pbc)
        try:
            n = self._filter(positions, details)
        except _core.StaleCandidatesError:  # cannot happen after needs_build(); never truncate silently
            self._build(positions, cell, pbc)
            n = self._filter(positions, details)
        out_ij, out_k, out_v, out_d = self._buffers
        self.edge_index = out_ij[: 2 * n].reshape(2, n)  # i and j, C-contiguous: no np.stack needed
        shifts = _LazyShifts(self._candidates.shifts, out_k[:n]) if details else None
        return NeighborList(self.edge_index[0], self.edge_index[1], shifts, out_v[:n],
                            out_d[:n] if details else None)

    def _filter(self, positions, details: bool) -> int:
        out_ij, out_k, out_v, out_d = self._buffers
        n, self.min_distance = self._packed.filter(positions, out_ij, out_v, out_k if details else None,
                                                   out_d if details else None)
        return n

    def _build(self, positions, cell, pbc) -> None:
        cand = neighbor_list(positions, cell, pbc, self.cutoff + self.skin, vectors=False,
                             num_threads=self.num_threads)
        self.builds += 1
        self._candidates = cand
        self._packed = _core.VerletCandidates(positions, cell, cand.i, cand.j, cand.shifts, self.cutoff,
                                              self.skin)
        e = len(cand.i)
        self._buffers = (np.empty(2 * e, np.int64), np.empty(e, np.int64), np.empty((e, 3), np.float64),
                         np.empty(e, np.float64))
        self._reference = positions.copy()
        self._cell = cell.copy()
        self._pbc = pbc.copy()


class _LazyShifts:
    """Shifts of the kept pairs, gathered only when used (the engines do not need them)."""

    def __init__(self, shifts: np.ndarray, index: np.ndarray):
        self._shifts = shifts
        self._index = index

    def __array__(self, dtype=None, copy=None):
        out = self._shifts[self._index]
        return out if dtype is None else out.astype(dtype)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, key):
        return np.asarray(self)[key]
