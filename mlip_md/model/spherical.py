"""Real spherical harmonics as one matrix product over monomials.

Every real spherical harmonic Y_lm evaluated on a unit vector is a polynomial in (x, y, z).
The coefficients of all (l, m) up to ``l_max`` are tabulated once, in exact arithmetic, as a
matrix ``[n_monomials, (l_max + 1)^2]``; evaluation is then "powers of x, y, z -> monomials ->
one matmul", which TorchScript, autograd and compilers all handle well.

Normalisation: orthonormal on the unit sphere (integral of Y_lm Y_l'm' over the sphere is
delta_ll' delta_mm'), no Condon-Shortley phase. Column order: l = 0..l_max, m = -l..l.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Dict, List, Tuple

import numpy as np
import torch

Monomial = Tuple[int, int, int]


def _legendre_derivative(l: int, m: int) -> Dict[int, Fraction]:
    """Coefficients {k: c} of d^m/dz^m P_l(z) = sum_k c z^k (Rodrigues' formula)."""
    # P_l(z) = 1/(2^l l!) d^l/dz^l (z^2 - 1)^l ; expand (z^2-1)^l then differentiate l+m times.
    poly = {2 * k: Fraction(math.comb(l, k) * (-1) ** (l - k)) for k in range(l + 1)}
    for _ in range(l + m):
        poly = {p - 1: c * p for p, c in poly.items() if p > 0}
    scale = Fraction(1, 2**l * math.factorial(l))
    return {p: c * scale for p, c in poly.items()}


def _xy_power(m: int, imaginary: bool) -> Dict[Tuple[int, int], Fraction]:
    """Re or Im of (x + i y)^m as {(a, b): c} meaning c x^a y^b."""
    out: Dict[Tuple[int, int], Fraction] = {}
    for b in range(m + 1):
        # term C(m, b) x^(m-b) (i y)^b ; i^b is real for even b, imaginary for odd b
        if (b % 2 == 1) != imaginary:
            continue
        sign = (-1) ** (b // 2)
        out[(m - b, b)] = Fraction(math.comb(m, b) * sign)
    return out


def spherical_harmonic_table(l_max: int) -> Tuple[List[Monomial], np.ndarray]:
    """Monomials (a, b, c) meaning x^a y^b z^c and the coefficient matrix [n_mono, (l_max+1)^2]."""
    columns: List[Dict[Monomial, float]] = []
    for l in range(l_max + 1):
        for m in range(-l, l + 1):
            am = abs(m)
            norm = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - am) / math.factorial(l + am))
            if m != 0:
                norm *= math.sqrt(2.0)
            zpart = _legendre_derivative(l, am)
            xypart = _xy_power(am, imaginary=m < 0)
            col: Dict[Monomial, float] = {}
            for k, cz in zpart.items():
                for (a, b), cxy in xypart.items():
                    key = (a, b, k)
                    col[key] = col.get(key, 0.0) + float(cz * cxy) * norm
            columns.append(col)
    monomials = sorted({key for col in columns for key in col})
    index = {mono: row for row, mono in enumerate(monomials)}
    table = np.zeros((len(monomials), len(columns)))
    for c, col in enumerate(columns):
        for mono, value in col.items():
            table[index[mono], c] = value
    return monomials, table


class SphericalHarmonics(torch.nn.Module):
    """Real orthonormal spherical harmonics of unit vectors.

    forward(unit_vectors: [E, 3]) -> [E, (l_max + 1)^2], columns ordered (l, m = -l..l).

    Evaluated with the standard recurrences (sectoral (x + i y)^m, then associated Legendre
    polynomials in z), one elementwise op per term, so autograd and compilers see a short
    chain of cheap vector ops rather than gathers. The table above is the reference the
    tests compare against.
    """

    def __init__(self, l_max: int):
        super().__init__()
        if l_max < 0:
            raise ValueError(f"l_max must be >= 0, got {l_max}")
        self.l_max = l_max
        norms: List[float] = []
        for l in range(l_max + 1):
            for m in range(-l, l + 1):
                am = abs(m)
                n = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - am) / math.factorial(l + am))
                norms.append(n * (math.sqrt(2.0) if m != 0 else 1.0))
        self.norms = norms

    def forward(self, unit_vectors: torch.Tensor) -> torch.Tensor:
        x = unit_vectors[:, 0]
        y = unit_vectors[:, 1]
        z = unit_vectors[:, 2]
        one = torch.ones_like(z)
        # cos_m[m] = Re (x + i y)^m, sin_m[m] = Im (x + i y)^m
        cos_m: List[torch.Tensor] = [one]
        sin_m: List[torch.Tensor] = [torch.zeros_like(z)]
        for m in range(1, self.l_max + 1):
            cos_m.append(x * cos_m[m - 1] - y * sin_m[m - 1])
            sin_m.append(x * sin_m[m - 1] + y * cos_m[m - 1])
        # legendre[l][m] = d^m P_l / dz^m (z) (no Condon-Shortley phase), m <= l
        legendre: List[List[torch.Tensor]] = []
        for l in range(self.l_max + 1):
            row: List[torch.Tensor] = []
            for m in range(l + 1):
                if m == l:
                    row.append(one * float(_double_factorial(2 * m - 1)))
                elif m == l - 1:
                    row.append(z * legendre[l - 1][m] * float(2 * m + 1))
                else:
                    row.append(
                        (z * legendre[l - 1][m] * float(2 * l - 1) - legendre[l - 2][m] * float(l + m - 1))
                        / float(l - m)
                    )
            legendre.append(row)
        columns: List[torch.Tensor] = []
        k = 0
        for l in range(self.l_max + 1):
            for m in range(-l, l + 1):
                if m < 0:
                    columns.append(legendre[l][-m] * sin_m[-m] * self.norms[k])
                elif m == 0:
                    columns.append(legendre[l][0] * self.norms[k])
                else:
                    columns.append(legendre[l][m] * cos_m[m] * self.norms[k])
                k += 1
        return torch.stack(columns, dim=1)


def _double_factorial(n: int) -> int:
    out = 1
    while n > 1:
        out *= n
        n -= 2
    return out
