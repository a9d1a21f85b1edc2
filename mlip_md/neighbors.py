"""Neighbour lists (full, periodic, any cell) backed by the C++ core.

>>> nl = neighbor_list(positions, cell, pbc=True, cutoff=5.0)
>>> r_ij = positions[nl.j] - positions[nl.i] + nl.shifts @ cell   # == nl.vectors

Conventions
-----------
* FULL list: every (i, j, S) with ``|r_ij| < cutoff`` appears exactly once, in
  both directions (i -> j and j -> i), where
  ``r_ij = positions[j] - positions[i] + S @ cell``.
* The trivial self pair (i, i, S = 0) is never included; periodic self-images
  (i, i, S != 0) are, when the cell is small compared to the cutoff.
* Several images of the same neighbour are included when the cutoff exceeds
  half the cell (or the whole cell).
* Coincident distinct atoms (i != j at distance 0) ARE included, with a zero
  vector and distance, as in ``ase.neighborlist.neighbor_list``; models that
  divide by the distance must guard against them.
* Edges are sorted by ``i`` (ascending); the order among the neighbours of
  one atom is unspecified (deterministic).
* Positions may lie outside the cell: they are wrapped internally, but the
  returned shifts refer to the ORIGINAL positions given.
* Along non-periodic directions the cell vector is ignored (it may be zero,
  e.g. ``cell = np.zeros((3, 3))`` for an isolated molecule) and the shift is
  always 0.
* Units: Angstrom (or whatever unit positions, cell and cutoff share).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mlip_md._native import core as _core

__all__ = ["NeighborList", "neighbor_list", "neighbor_list_from_atoms"]

# relative tolerance below which periodic cell vectors count as degenerate
# (same value as the C++ core, which re-checks)
_DEGENERATE_TOL = 1e-10
_AXES = "abc"


class NeighborList(NamedTuple):
    """Result of :func:`neighbor_list` (one entry per directed edge)."""

    i: np.ndarray  #: int64 [E] centre atom index (ascending)
    j: np.ndarray  #: int64 [E] neighbour atom index
    shifts: np.ndarray  #: int32 [E, 3] cell shift S: r_ij = r_j - r_i + S @ cell
    vectors: np.ndarray | None  #: float64 [E, 3] r_ij in Å (if vectors=True)
    distances: np.ndarray | None  #: float64 [E] |r_ij| in Å (if distances=True)


def _check_positions(positions) -> np.ndarray:
    try:
        pos = np.asarray(positions, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"positions must be a real [N, 3] array of coordinates in Å; could not convert it "
            f"to float64 ({exc})"
        ) from None
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(
            f"positions must have shape [N, 3] (one x, y, z row per atom), got shape "
            f"{pos.shape}; reshape it, e.g. positions.reshape(-1, 3)"
        )
    if not np.isfinite(pos).all():
        bad = np.flatnonzero(~np.isfinite(pos).all(axis=1))
        shown = ", ".join(str(b) for b in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise ValueError(
            f"positions contain NaN or infinite values (atom(s) {shown}); the structure is "
            f"corrupt or the simulation has blown up -- fix the input / reduce the time step "
            f"before building the neighbour list"
        )
    return np.ascontiguousarray(pos)


def _check_pbc(pbc) -> np.ndarray:
    p = np.asarray(pbc)
    if p.ndim == 0:
        p = np.repeat(p, 3)
    if p.shape != (3,):
        raise ValueError(
            f"pbc must be a bool or 3 bools (periodic along a, b, c), got shape {p.shape}"
        )
    return p.astype(bool)


def _check_cell(cell, pbc: np.ndarray) -> np.ndarray:
    if cell is None:
        cell = np.zeros((3, 3))
    try:
        c = np.asarray(cell, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"cell must be a real [3, 3] array (rows = cell vectors in Å); could not convert "
            f"it to float64 ({exc})"
        ) from None
    if c.shape == (3,):  # orthorhombic box lengths
        c = np.diag(c)
    if c.shape != (3, 3):
        raise ValueError(
            f"cell must have shape [3, 3] (rows = cell vectors a, b, c) or [3] (orthorhombic "
            f"lengths), got shape {c.shape}"
        )
    if not np.isfinite(c).all():
        raise ValueError(
            "cell contains NaN or infinite values; give finite cell vectors (use any finite "
            "value, e.g. 0, along non-periodic directions)"
        )
    periodic = np.flatnonzero(pbc)
    lengths = np.linalg.norm(c, axis=1)
    for k in periodic:
        if lengths[k] == 0.0:
            raise ValueError(
                f"cell vector {_AXES[k]} is zero but the system is periodic along it "
                f"(pbc[{k}] = True): give a non-zero cell vector or set pbc[{k}] = False"
            )
    if periodic.size == 3:
        volume = abs(np.linalg.det(c))
        if not volume > _DEGENERATE_TOL * np.prod(lengths):
            raise ValueError(
                f"the periodic cell has zero volume (|det(cell)| = {volume:.3g} Å^3): its "
                f"vectors are linearly dependent; give three independent cell vectors or make "
                f"the degenerate direction non-periodic"
            )
    elif periodic.size == 2:
        k0, k1 = periodic
        area = np.linalg.norm(np.cross(c[k0], c[k1]))
        if not area > _DEGENERATE_TOL * lengths[k0] * lengths[k1]:
            raise ValueError(
                f"the periodic cell vectors {_AXES[k0]} and {_AXES[k1]} are parallel (zero "
                f"area): give two independent vectors or make one of them non-periodic"
            )
    return np.ascontiguousarray(c)


def _check_cutoff(cutoff) -> float:
    try:
        rc = float(cutoff)
    except (TypeError, ValueError):
        raise ValueError(f"cutoff must be a positive number (Å), got {cutoff!r}") from None
    if not (np.isfinite(rc) and rc > 0.0):
        raise ValueError(
            f"cutoff must be a finite number > 0 (Å), got {rc!r}; pass the model's interaction "
            f"radius, e.g. cutoff=5.0"
        )
    return rc


def neighbor_list(
    positions,
    cell,
    pbc,
    cutoff: float,
    *,
    vectors: bool = True,
    distances: bool = False,
    num_threads: int = 1,
) -> NeighborList:
    """Full neighbour list of ``positions`` within ``cutoff``.

    Parameters
    ----------
    positions : array [N, 3], Å (converted to C-contiguous float64).
    cell : array [3, 3] (rows = cell vectors a, b, c), [3] (orthorhombic
        lengths) or None (= zeros, non-periodic). Ignored along non-periodic
        directions.
    pbc : bool or 3 bools, periodicity along a, b, c.
    cutoff : float > 0, Å; pairs with ``|r_ij| < cutoff`` are kept.
    vectors, distances : also return r_ij [E, 3] / |r_ij| [E].
    num_threads : worker threads of the C++ core (result identical for any
        value; 1 = single-threaded, the default).

    Raises
    ------
    ValueError
        On wrong shapes, NaN/inf positions or cell, a zero-volume (or
        degenerate) cell along the periodic directions, or a cutoff that is not
        a finite positive number -- always before the C++ core is called.
    """
    pbc_arr = _check_pbc(pbc)
    pos = _check_positions(positions)
    c = _check_cell(cell, pbc_arr)
    rc = _check_cutoff(cutoff)
    nt = int(num_threads)
    if nt < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads!r}")

    i, j, shifts, vec, dist = _core.compute_neighbors(
        pos, c, pbc_arr, rc, vectors=bool(vectors), distances=bool(distances), num_threads=nt
    )
    return NeighborList(i, j, shifts, vec, dist)


def neighbor_list_from_atoms(atoms, cutoff: float, **kw) -> NeighborList:
    """:func:`neighbor_list` for an ``ase.Atoms`` (positions, cell, pbc)."""
    return neighbor_list(atoms.get_positions(), atoms.cell.array, atoms.pbc, cutoff, **kw)
