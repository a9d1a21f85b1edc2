"""Carve the atoms (and periodic images) within a radius of a point out of a structure.

The high-level engine sees only this cluster, as an isolated (non-periodic) set of atoms. Each
cluster atom remembers the atom it is an image of (``source``), so forces on the cluster map back
by adding into ``source``; several images of one atom appear when the radius exceeds half the
cell.
"""
from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np

from ..errors import HybridSetupError
from .region import completed_cell


class Cluster(NamedTuple):
    """Atoms within ``radius`` of ``centre`` (M of them, sorted by source atom then image)."""

    source: np.ndarray  #: int64 [M] index of the original atom
    vectors: np.ndarray  #: float64 [M, 3] r_image - centre, Å
    distances: np.ndarray  #: float64 [M] |vectors|, Å
    centre: np.ndarray  #: float64 [3] Å

    @property
    def positions(self) -> np.ndarray:
        """Cartesian positions of the cluster atoms (Å), contiguous around the centre."""
        return self.centre + self.vectors


def carve(positions, cell, pbc, centre, radius: float) -> Cluster:
    """Every periodic image of every atom with |r_image - centre| < ``radius`` (Å).

    ``cell`` rows are the cell vectors (ignored along non-periodic directions). Cost: O(N x number
    of cell images that the sphere touches).
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    centre = np.asarray(centre, dtype=np.float64).reshape(3)
    radius = float(radius)
    if not (np.isfinite(radius) and radius > 0):
        raise HybridSetupError(f"cluster radius must be a positive number of Å, got {radius}")
    rel = positions - centre
    if not pbc.any():
        dist = np.sqrt((rel ** 2).sum(axis=1))
        keep = np.flatnonzero(dist < radius)
        return Cluster(keep.astype(np.int64), rel[keep], dist[keep], centre)
    h = completed_cell(cell, pbc)
    frac = np.linalg.solve(h.T, rel.T).T
    frac[:, pbc] -= np.round(frac[:, pbc])  # now in [-1/2, 1/2] along periodic directions
    widths = 1.0 / np.linalg.norm(np.linalg.inv(h), axis=0)  # distance between opposite faces
    reach = radius / widths  # |f_k + S_k| < reach_k is necessary for |vector| < radius
    ranges = [range(-int(np.ceil(r + 0.5)), int(np.ceil(r + 0.5)) + 1) if p else range(1)
              for r, p in zip(reach, pbc)]
    sources, vectors = [], []
    r2 = radius * radius
    for shift in itertools.product(*ranges):
        shifted = frac + np.asarray(shift, dtype=np.float64)
        candidates = np.flatnonzero((np.abs(shifted) < reach).all(axis=1))
        if candidates.size == 0:
            continue
        vec = shifted[candidates] @ h
        keep = (vec ** 2).sum(axis=1) < r2
        if keep.any():
            sources.append(candidates[keep])
            vectors.append(vec[keep])
    if not sources:
        return Cluster(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros(0), centre)
    source = np.concatenate(sources)
    vec = np.concatenate(vectors)
    order = np.argsort(source, kind="stable")
    source, vec = source[order], vec[order]
    return Cluster(source.astype(np.int64), vec, np.sqrt((vec ** 2).sum(axis=1)), centre)
