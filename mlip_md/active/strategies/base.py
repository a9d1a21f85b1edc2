"""The query-strategy interface and the near-duplicate suppression all strategies share.

A strategy gets the pool of triggered candidates (:class:`mlip_md.active.explore.Candidate`)
and returns at most ``n`` configurations to label, best first, none of them a near-duplicate
of another selected one or of a training structure. Near-duplicates: the RMS distance between
structure fingerprints (per-atom standardised descriptors: mean and std over atoms,
concatenated) is below ``dedupe_distance``.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Callable, List, Optional, Sequence

import numpy as np

from ..explore import Candidate


@dataclasses.dataclass
class SelectionContext:
    """What a strategy may use besides the pool.

    training_features [M, D]: standardised descriptors of every training atom (current model);
    training_fingerprints [T, 2D]; scorer: describes new configurations (adversarial);
    objective: differentiable (energy, variance) of positions (adversarial).
    """

    rng: np.random.Generator
    dedupe_distance: float = 0.02
    training_features: Optional[np.ndarray] = None
    training_fingerprints: Optional[np.ndarray] = None
    scorer: Optional[object] = None
    objective: Optional[Callable] = None
    variance: str = "force"
    adversarial_temperature_K: float = 1500.0
    adversarial_steps: int = 10
    adversarial_step_size: float = 0.02


def fingerprint(features: np.ndarray) -> np.ndarray:
    """Structure fingerprint [2D] from per-atom features [n, D]."""
    return np.concatenate([features.mean(axis=0), features.std(axis=0)])


def near_duplicate(fp: np.ndarray, others: Sequence[np.ndarray], distance: float) -> bool:
    if distance <= 0 or len(others) == 0:
        return False
    diff = np.asarray(others) - fp
    return bool(np.sqrt((diff**2).mean(axis=1)).min() < distance)


def unique_in_order(order: Sequence[int], pool: Sequence[Candidate], n: int, ctx: SelectionContext) -> List[int]:
    """Walk ``order`` and keep candidates that are no near-duplicate of a kept one or of a
    training structure, until ``n`` are kept."""
    kept: List[int] = []
    fps: List[np.ndarray] = []
    training = [] if ctx.training_fingerprints is None else list(ctx.training_fingerprints)
    for i in order:
        fp = fingerprint(pool[i].features)
        if near_duplicate(fp, fps + training, ctx.dedupe_distance):
            continue
        kept.append(int(i))
        fps.append(fp)
        if len(kept) == n:
            break
    return kept


class Strategy(abc.ABC):
    """Selects configurations to label from a pool of candidates."""

    name: str = ""

    @abc.abstractmethod
    def select(self, pool: Sequence[Candidate], n: int, ctx: SelectionContext) -> List[Candidate]:
        """At most ``n`` candidates (with ``score`` set), best first."""
