"""Exact convex-hull membership of descriptors, by linear programming.

x lies in conv{t_1..t_M} iff there are weights lambda >= 0 with sum(lambda) = 1 and
sum_j lambda_j t_j = x. Feasibility of that LP (scipy's HiGHS) decides membership exactly (to
the solver tolerance) in any dimension; for the signed distance outside the hull the LP is
relaxed with slacks and their L1 norm minimised. Meant for low-dimensional descriptors (a few
to a few tens of components): the cost grows with M and D.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linprog


def in_hull(points: np.ndarray, hull: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Bool [n]: is each row of ``points`` [n, D] inside conv(rows of ``hull`` [M, D])?"""
    return hull_distance(points, hull) <= tol


def hull_distance(points: np.ndarray, hull: np.ndarray) -> np.ndarray:
    """L1 distance [n] from each point to the convex hull (0 inside): minimise sum(s+ + s-)
    subject to T^T lambda + s+ - s- = x, sum lambda = 1, lambda, s+, s- >= 0."""
    points = np.atleast_2d(np.asarray(points, dtype=float))
    hull = np.asarray(hull, dtype=float)
    m, d = hull.shape
    if points.shape[1] != d:
        raise ValueError(f"points have {points.shape[1]} components, the hull {d}")
    if m == 0:
        raise ValueError("the hull needs at least one point")
    a_eq = np.zeros((d + 1, m + 2 * d))
    a_eq[:d, :m] = hull.T
    a_eq[:d, m : m + d] = np.eye(d)
    a_eq[:d, m + d :] = -np.eye(d)
    a_eq[d, :m] = 1.0
    cost = np.concatenate([np.zeros(m), np.ones(2 * d)])
    out = np.empty(len(points))
    for k, x in enumerate(points):
        result = linprog(cost, A_eq=a_eq, b_eq=np.concatenate([x, [1.0]]), bounds=(0, None), method="highs")
        if not result.success:
            raise RuntimeError(f"hull LP failed for point {k}: {result.message}")
        out[k] = result.fun
    return out
