"""Radial basis with a C^2 cutoff: spherical Bessel-like functions times a smootherstep switch.

R_n(r) = sqrt(2 / r_c) sin(n pi r / r_c) / r * f_c(r),   n = 1..n_max,   r in Å.

f_c is 1 below r_on = r_c - switch_width and falls to 0 at r_c with the quintic smootherstep
1 - (10 t^3 - 15 t^4 + 6 t^5), t = (r - r_on) / switch_width, so value, first and second
derivative all vanish at r_c: energies, forces and their derivatives are continuous when a
neighbour crosses the cutoff.
"""
from __future__ import annotations

import math

import torch


def smooth_cutoff(r: torch.Tensor, cutoff: float, switch_width: float) -> torch.Tensor:
    """C^2 switch: 1 for r <= cutoff - switch_width, 0 for r >= cutoff. r in Å, any shape."""
    t = ((r - (cutoff - switch_width)) / switch_width).clamp(0.0, 1.0)
    return 1.0 - t * t * t * (10.0 - 15.0 * t + 6.0 * t * t)


class RadialBasis(torch.nn.Module):
    """forward(r: [E] Å) -> [E, n_max]."""

    def __init__(self, cutoff: float, n_max: int, switch_width: float):
        super().__init__()
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0 Å, got {cutoff}")
        if not 0 < switch_width <= cutoff:
            raise ValueError(f"switch_width must be in (0, cutoff], got {switch_width}")
        if n_max < 1:
            raise ValueError(f"n_max must be >= 1, got {n_max}")
        self.cutoff = float(cutoff)
        self.switch_width = float(switch_width)
        self.n_max = int(n_max)
        self.register_buffer(
            "frequencies", torch.arange(1, n_max + 1, dtype=torch.float64) * math.pi / cutoff
        )
        self.prefactor = math.sqrt(2.0 / cutoff)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        envelope = smooth_cutoff(r, self.cutoff, self.switch_width) * self.prefactor / r
        return torch.sin(r.unsqueeze(1) * self.frequencies) * envelope.unsqueeze(1)
