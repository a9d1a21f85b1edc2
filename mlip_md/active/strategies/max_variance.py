"""Largest ensemble disagreement: the candidates whose most uncertain atom has the largest
force std (eV/Å, largest component) or, with ``variance="energy"``, energy std (eV)."""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from ..explore import Candidate
from .base import SelectionContext, Strategy, unique_in_order


def variance_score(c: Candidate, kind: str) -> float:
    if kind == "force" and c.force_sigma is not None:
        return float(np.max(c.force_sigma))
    return float(np.max(c.energy_sigma))


class MaxVarianceStrategy(Strategy):
    name = "max-variance"

    def select(self, pool: Sequence[Candidate], n: int, ctx: SelectionContext) -> List[Candidate]:
        scores = np.array([variance_score(c, ctx.variance) for c in pool])
        order = np.argsort(-scores, kind="stable")
        chosen = unique_in_order(order, pool, n, ctx)
        for i in chosen:
            pool[i].score = float(scores[i])
        return [pool[i] for i in chosen]
