"""Variance-weighted D-optimal design: greedy batch selection by the D-optimal gain of a
structure times its ensemble force disagreement,

    score(c) = [log det(A + X_c^T X_c) - log det A] * sigma_F(c),

A = lambda I + sum of x x^T over the training atoms and the candidates already picked for
this batch (x: an atom's standardised descriptor [D]); X_c [n, D] the candidate's atom
features; sigma_F(c) the largest per-atom ensemble force std (eV/Å; the energy std, eV, with
``variance="energy"``). The gain says how far the structure's environments reach outside the
span of the data (the extrapolation grade, updated after every pick so a batch does not
repeat itself); the ensemble says how wrong the model is likely to be there. Either alone
spends labels: D-optimal on novel but already well-predicted environments, max-variance on
several copies of the same uncertain region.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from ..explore import Candidate
from .base import SelectionContext, Strategy, fingerprint, near_duplicate
from .d_optimal import information_matrix, logdet_gain
from .max_variance import variance_score


class VarianceDOptimalStrategy(Strategy):
    name = "variance-d-optimal"

    def select(self, pool: Sequence[Candidate], n: int, ctx: SelectionContext) -> List[Candidate]:
        if not pool or n <= 0:
            return []
        dim = pool[0].features.shape[1]
        a = information_matrix(ctx.training_features, dim)
        sigma = np.array([variance_score(c, ctx.variance) for c in pool])
        fps = [fingerprint(c.features) for c in pool]
        training = [] if ctx.training_fingerprints is None else list(ctx.training_fingerprints)
        chosen: List[int] = []
        remaining = list(range(len(pool)))
        while remaining and len(chosen) < n:
            best, best_score = None, -np.inf
            for i in remaining:
                if near_duplicate(fps[i], [fps[j] for j in chosen] + training, ctx.dedupe_distance):
                    continue
                score = logdet_gain(a, pool[i].features) * sigma[i]
                if score > best_score:
                    best, best_score = i, score
            if best is None:
                break
            pool[best].score = float(best_score)
            chosen.append(best)
            a += pool[best].features.T @ pool[best].features
            remaining.remove(best)
        return [pool[i] for i in chosen]
