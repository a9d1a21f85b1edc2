"""Baseline: uniformly random candidates (near-duplicates skipped)."""
from __future__ import annotations

from typing import List, Sequence

from ..explore import Candidate
from .base import SelectionContext, Strategy, unique_in_order


class RandomStrategy(Strategy):
    name = "random"

    def select(self, pool: Sequence[Candidate], n: int, ctx: SelectionContext) -> List[Candidate]:
        order = ctx.rng.permutation(len(pool))
        chosen = unique_in_order(order, pool, n, ctx)
        for i in chosen:
            pool[i].score = 0.0
        return [pool[i] for i in chosen]
