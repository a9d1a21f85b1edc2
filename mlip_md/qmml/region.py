"""The centre of the high-level region and the force terms of a moving centre.

A region centre is one of

* :class:`FixedPoint` -- a point in space (Å);
* :class:`AtomCentre` -- the position of one atom (moves with it);
* :class:`GroupCentroid` -- the centroid of a group of atoms (minimum-image unwrapped around the
  group's first atom, so a group straddling a periodic boundary has the right centroid).

``centre(positions, cell, pbc)`` returns the centre c (Å) and its Jacobian as
``(indices, coefficients)``: c = sum_k coefficients[k] * r[indices[k]] (+ constant), so a term
E(d_i = r_i - c) exerts the force +coefficients[k] * sum_i dE/dd_i on atom indices[k].

Stress convention: the hybrid's strain derivative treats every centre as moving affinely with
the cell (for an atom or a centroid it does anyway; a :class:`FixedPoint` is taken as a point
fixed in the material, not in the laboratory frame).
"""
from __future__ import annotations

import abc
from typing import Sequence, Tuple

import numpy as np
from ..errors import HybridSetupError


class Region(abc.ABC):
    """Base class; see the module docstring."""

    @abc.abstractmethod
    def centre(self, positions: np.ndarray, cell: np.ndarray, pbc) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The centre (Å) and its dependence on the atoms; see the subclasses."""

    def check(self, n_atoms: int) -> None:
        """Raise ValueError when the region refers to atoms the structure does not have."""

    @abc.abstractmethod
    def to_dict(self) -> dict:
        """The region as a hybrid.toml ``[region]`` table."""


class FixedPoint(Region):
    """A fixed point ``point`` (Å, 3 values): no force acts on the centre."""

    def __init__(self, point: Sequence[float]):
        p = np.asarray(point, dtype=np.float64).reshape(-1)
        if p.shape != (3,) or not np.isfinite(p).all():
            raise HybridSetupError(f"a fixed region centre needs 3 finite coordinates in Å, got {point!r}")
        self.point = p

    def centre(self, positions, cell, pbc):
        return self.point.copy(), np.zeros(0, dtype=np.int64), np.zeros(0)

    def to_dict(self) -> dict:
        return {"centre": "point", "point": self.point.tolist()}

    def __repr__(self) -> str:
        return f"FixedPoint({self.point.tolist()})"


class AtomCentre(Region):
    """The region follows atom ``index``."""

    def __init__(self, index: int):
        self.index = int(index)

    def check(self, n_atoms: int) -> None:
        if not -n_atoms <= self.index < n_atoms:
            raise HybridSetupError(f"region centre atom {self.index} does not exist in a structure of {n_atoms} atoms; "
                             "give an index between 0 and N - 1")

    def centre(self, positions, cell, pbc):
        i = self.index % len(positions)
        return np.array(positions[i], dtype=np.float64), np.array([i], dtype=np.int64), np.ones(1)

    def to_dict(self) -> dict:
        return {"centre": "atom", "atom": self.index}

    def __repr__(self) -> str:
        return f"AtomCentre({self.index})"


class GroupCentroid(Region):
    """The region follows the centroid of atoms ``indices`` (equal weights)."""

    def __init__(self, indices: Sequence[int]):
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0 or len(np.unique(idx)) != idx.size:
            raise HybridSetupError(f"a group centre needs a non-empty list of distinct atom indices, got {list(indices)!r}")
        self.indices = idx

    def check(self, n_atoms: int) -> None:
        bad = self.indices[(self.indices < 0) | (self.indices >= n_atoms)]
        if bad.size:
            raise HybridSetupError(f"region group atoms {bad.tolist()} do not exist in a structure of {n_atoms} atoms")

    def centre(self, positions, cell, pbc):
        pos = np.asarray(positions, dtype=np.float64)[self.indices]
        rel = minimum_image(pos - pos[0], cell, pbc)
        c = pos[0] + rel.mean(axis=0)
        return c, self.indices.copy(), np.full(self.indices.size, 1.0 / self.indices.size)

    def to_dict(self) -> dict:
        return {"centre": "group", "group": self.indices.tolist()}

    def __repr__(self) -> str:
        return f"GroupCentroid({self.indices.tolist()})"


def region_from_spec(spec) -> Region:
    """A Region from a Region, an int (atom), 3 numbers (point) or a dict as written by ``to_dict``."""
    if isinstance(spec, Region):
        return spec
    if isinstance(spec, (int, np.integer)):
        return AtomCentre(int(spec))
    if isinstance(spec, dict):
        kind = spec.get("centre", "atom")
        if kind == "atom":
            return AtomCentre(spec["atom"])
        if kind == "point":
            return FixedPoint(spec["point"])
        if kind == "group":
            return GroupCentroid(spec["group"])
        raise HybridSetupError(f"region centre must be 'atom', 'point' or 'group', got {kind!r}")
    return FixedPoint(spec)


def completed_cell(cell: np.ndarray, pbc) -> np.ndarray:
    """The cell with its non-periodic vectors replaced by an orthonormal completion (so that it is
    invertible and fractional coordinates along periodic vectors are well defined)."""
    cell = np.array(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    periodic = np.flatnonzero(pbc)
    if periodic.size == 3:
        return cell
    basis = cell[periodic]
    if periodic.size:
        _, _, vt = np.linalg.svd(basis)
        complement = vt[periodic.size:]
    else:
        complement = np.eye(3)
    out = cell.copy()
    for k, vec in zip(np.flatnonzero(~pbc), complement):
        out[k] = vec
    return out


def minimum_image(vectors: np.ndarray, cell: np.ndarray, pbc) -> np.ndarray:
    """The shortest periodic image of each vector [M, 3] (Å): fractional rounding, then the best
    of the 27 neighbouring shifts (exact for cells that are not extremely skewed)."""
    vectors = np.asarray(vectors, dtype=np.float64).reshape(-1, 3)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    if not pbc.any():
        return vectors.copy()
    h = completed_cell(cell, pbc)
    frac = np.linalg.solve(h.T, vectors.T).T
    frac[:, pbc] -= np.round(frac[:, pbc])
    base = frac @ h
    steps = [(-1, 0, 1) if p else (0,) for p in pbc]
    shifts = np.array(np.meshgrid(*steps, indexing="ij")).reshape(3, -1).T @ h  # [S, 3]
    cand = base[:, None, :] + shifts[None, :, :]
    best = np.argmin((cand ** 2).sum(axis=2), axis=1)
    return cand[np.arange(len(base)), best]
