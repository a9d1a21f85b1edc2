"""Kernel distance to a reference set of training environments, d_min.

For standardised descriptors x and reference environments t (a farthest-point-sampled subset of
the training set, per element), with the normalised Gaussian kernel
k(x, t) = exp(-|x - t|^2 / (2 l^2)) (so k(x, x) = 1), the kernel-induced distance is

    d(x, t) = sqrt(k(x, x) + k(t, t) - 2 k(x, t)) = sqrt(2 - 2 k(x, t))   in [0, sqrt 2)

and d_min(x) = min_t d(x, t): exactly 0 on reference points, growing smoothly away from the
training data and saturating at sqrt 2 far from it. The length l puts the 99th percentile of
held-out training environments at d = 1 (kernel value 1/2), so d_min resolves the region just
outside the training data instead of saturating there. The same formula runs inside the exported
model (``MLIPotential.kernel_distance``); this module fits the reference set and thresholds.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np


def farthest_point_sampling(x: np.ndarray, m: int, seed: int = 0) -> np.ndarray:
    """Indices of ``m`` rows of ``x`` [N, D] chosen greedily, each farthest (Euclidean) from
    those already chosen; starts from the row closest to the mean."""
    n = len(x)
    m = min(m, n)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    chosen = np.empty(m, dtype=np.int64)
    chosen[0] = int(np.argmin(((x - x.mean(axis=0)) ** 2).sum(axis=1)))
    distance = ((x - x[chosen[0]]) ** 2).sum(axis=1)
    for k in range(1, m):
        chosen[k] = int(np.argmax(distance))
        distance = np.minimum(distance, ((x - x[chosen[k]]) ** 2).sum(axis=1))
    return chosen


def squared_distances(x: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """|x_i - t_j|^2 [n, M], clipped at 0 against round-off."""
    d2 = (x**2).sum(axis=1)[:, None] + (refs**2).sum(axis=1)[None, :] - 2.0 * x @ refs.T
    return np.maximum(d2, 0.0)


def kernel_distance(x: np.ndarray, refs: np.ndarray, length: float) -> np.ndarray:
    """d_min [n] of descriptors ``x`` [n, D] to reference set ``refs`` [M, D]."""
    nearest = squared_distances(x, refs).min(axis=1)
    return np.sqrt(np.maximum(2.0 - 2.0 * np.exp(-nearest / (2.0 * length**2)), 0.0))


def fit_reference_set(
    features: np.ndarray,
    species: np.ndarray,
    n_species: int,
    size: int = 256,
    holdout: float = 0.2,
    quantile: float = 0.999,
    max_candidates: int = 20000,
    seed: int = 0,
) -> Tuple[np.ndarray, np.ndarray, float, Dict[int, Dict[str, float]]]:
    """Reference environments per element and the d_min threshold.

    Returns (refs [S, M, D] zero-padded, counts [S], length l, thresholds {s: {...}}): the
    threshold is the ``quantile`` of d_min over held-out training environments (not in the
    reference set), so it says how far typical *unseen* training-like data sit.
    """
    rng = np.random.default_rng(seed)
    picked, held = {}, {}
    for s in range(n_species):
        rows = np.flatnonzero(species == s)
        rng.shuffle(rows)
        rows = rows[:max_candidates]
        n_held = int(round(holdout * len(rows))) if len(rows) > 10 else 0
        held[s], candidates = rows[:n_held], rows[n_held:]
        picked[s] = candidates[farthest_point_sampling(features[candidates], size, seed)]
    m = max((len(v) for v in picked.values()), default=0)
    refs = np.zeros((n_species, m, features.shape[1]))
    counts = np.zeros(n_species, dtype=np.int64)
    nearest_held, gaps = [], []
    for s, rows in picked.items():
        refs[s, : len(rows)] = features[rows]
        counts[s] = len(rows)
        if len(rows) and len(held[s]):
            nearest_held.append(squared_distances(features[held[s]], features[rows]).min(axis=1))
        if len(rows) > 1:
            d2 = squared_distances(features[rows], features[rows])
            np.fill_diagonal(d2, np.inf)
            gaps.append(d2.min(axis=1))
    pool = np.concatenate(nearest_held) if nearest_held else (np.concatenate(gaps) if gaps else np.ones(1))
    # 2 - 2 exp(-q / (2 l^2)) = 1 at the 99th percentile q of squared nearest distances
    length = float(np.sqrt(np.quantile(pool, 0.99) / (2.0 * np.log(2.0))))
    length = length if np.isfinite(length) and length > 0 else 1.0
    thresholds = {}
    for s in range(n_species):
        if counts[s] and len(held[s]):
            d = kernel_distance(features[held[s]], refs[s, : counts[s]], length)
            thresholds[s] = {"empirical": float(np.quantile(d, quantile)), "holdout_max": float(d.max()),
                             "holdout_median": float(np.median(d))}
    return refs, counts, length, thresholds
