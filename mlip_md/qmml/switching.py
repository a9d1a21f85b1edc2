"""Radial switching functions s(r) of the QM/ML hybrid (thin wrapper over the C++ core).

s = 1 for r <= r_inner, 0 for r >= r_outer, and in between 1 - p(x) with
x = (r - r_inner) / (r_outer - r_inner). Shapes (continuity order in brackets):

``smootherstep``  p = 10x^3 - 15x^4 + 6x^5                 (C^2, the default)
``c3``            p = 35x^4 - 84x^5 + 70x^6 - 20x^7         (C^3)
``cosine``        p = x - sin(2 pi x) / (2 pi)               (C^2)
``cosine-c1``     p = (1 - cos(pi x)) / 2                    (only C^1: s'' jumps at both radii;
                  kept to show what ``mlip-md qmml check`` flags)

Lengths in Å; derivatives in 1/Å and 1/Å^2.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ..errors import HybridSetupError
from .._native import core as _core

SHAPES = {"smootherstep": 0, "c3": 1, "cosine": 2, "cosine-c1": 3}


class Switch:
    """A switching function between ``r_inner`` and ``r_outer`` (Å) of a named shape."""

    def __init__(self, r_inner: float, r_outer: float, shape: str = "smootherstep"):
        if shape not in SHAPES:
            raise HybridSetupError(f"unknown switching shape {shape!r}; choose one of {', '.join(SHAPES)}")
        r_inner, r_outer = float(r_inner), float(r_outer)
        if not (np.isfinite(r_inner) and np.isfinite(r_outer) and 0.0 <= r_inner < r_outer):
            raise HybridSetupError(f"switching radii must satisfy 0 <= r_inner < r_outer, got r_inner = {r_inner} Å, "
                             f"r_outer = {r_outer} Å; the shell r_inner..r_outer is where high and low are blended")
        self.r_inner, self.r_outer, self.shape = r_inner, r_outer, shape
        self.code = SHAPES[shape]

    @property
    def continuity(self) -> int:
        """k such that s is C^k."""
        return int(_core.switch_continuity(self.code))

    def __call__(self, r) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(s, ds/dr, d2s/dr2) at distances ``r`` (Å, any shape)."""
        return _core.switch_evaluate(self.code, self.r_inner, self.r_outer, r)

    def __repr__(self) -> str:
        return f"Switch(r_inner={self.r_inner}, r_outer={self.r_outer}, shape={self.shape!r})"
