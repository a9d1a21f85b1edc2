"""D-optimal design: greedily add the candidate that most increases the log-determinant of
the information matrix A = lambda I + sum over atoms of x x^T of the selected set (training
atoms included), x the atom's standardised descriptor [D]. The gain of a structure with atom
features X [n, D] is log det(A + X^T X) - log det A = log det(I + X A^-1 X^T): large when its
environments point in directions the data do not span yet (the extrapolation-grade idea of
moment tensor potentials, here on the model's descriptors)."""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from ..explore import Candidate
from .base import SelectionContext, Strategy, fingerprint, near_duplicate


def information_matrix(features: Optional[np.ndarray], dim: int, ridge: float = 1e-3) -> np.ndarray:
    a = ridge * np.eye(dim)
    if features is not None and len(features):
        a = a + features.T @ features
    return a


def logdet_gain(a: np.ndarray, x: np.ndarray) -> float:
    """log det(A + X^T X) - log det(A) for A [D, D] (positive definite) and X [n, D]."""
    sign0, base = np.linalg.slogdet(a)
    sign1, new = np.linalg.slogdet(a + x.T @ x)
    if sign0 <= 0 or sign1 <= 0:
        raise np.linalg.LinAlgError("information matrix is not positive definite")
    return float(new - base)


def greedy_d_optimal(xs: Sequence[np.ndarray], n: int, a: np.ndarray,
                     allowed=lambda i, chosen: True) -> List[tuple]:
    """Greedy selection of up to ``n`` of the feature blocks ``xs``; returns (index, gain)."""
    a = a.copy()
    chosen: List[tuple] = []
    remaining = list(range(len(xs)))
    while remaining and len(chosen) < n:
        best, best_gain = None, -np.inf
        for i in remaining:
            if not allowed(i, [c for c, _ in chosen]):
                continue
            gain = logdet_gain(a, xs[i])
            if gain > best_gain:
                best, best_gain = i, gain
        if best is None:
            break
        chosen.append((best, best_gain))
        a += xs[best].T @ xs[best]
        remaining.remove(best)
    return chosen


class DOptimalStrategy(Strategy):
    name = "d-optimal"

    def select(self, pool: Sequence[Candidate], n: int, ctx: SelectionContext) -> List[Candidate]:
        if not pool:
            return []
        dim = pool[0].features.shape[1]
        a = information_matrix(ctx.training_features, dim)
        fps = [fingerprint(c.features) for c in pool]
        training = [] if ctx.training_fingerprints is None else list(ctx.training_fingerprints)

        def allowed(i, chosen):
            return not near_duplicate(fps[i], [fps[j] for j in chosen] + training, ctx.dedupe_distance)

        picks = greedy_d_optimal([c.features for c in pool], n, a, allowed)
        for i, gain in picks:
            pool[i].score = gain
        return [pool[i] for i, _ in picks]
