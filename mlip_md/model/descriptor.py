"""Species-resolved density expansion and its SOAP-like power spectrum (rotation invariant).

For centre atom i, neighbour species s and radial channel n:

    c_i[s n, l m] = sum_{j in N(i), Z_j = s} R_n(r_ij) Y_lm(r_ij / |r_ij|)

and the features are the l = 0 densities plus the power spectrum

    p_i[q q', l] = (2l + 1)^(-1/2) sum_m c_i[q, l m] c_i[q', l m],     q <= q',  q = (s, n)

so D = Q + Q (Q + 1) / 2 (l_max + 1) with Q = n_species * n_max. The density is accumulated
with one dense batched matmul over a padded [n_centres, max_neighbours] layout, so the cost is
linear in the number of neighbours and no [E, Q, (l_max+1)^2] tensor is ever built.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .radial import RadialBasis
from .spherical import SphericalHarmonics

#: the descriptor's name and version in a model file's metadata block ``descriptor``: what a
#: host that runs the descriptor itself (the fused kernel, csrc ``mlip_power_spectrum_*``) checks
DESCRIPTOR_KIND = "power_spectrum"
DESCRIPTOR_VERSION = 1


def neighbour_slots(centers: torch.Tensor, n_centres: int) -> Tuple[torch.Tensor, int]:
    """Position of each edge among the edges of its centre, and the largest neighbour count.

    centers: int64 [E] (any order). Returns (slot int64 [E], max_neighbours).
    """
    n_edges = centers.shape[0]
    counts = torch.bincount(centers, minlength=n_centres)
    max_neighbours = int(counts.max()) if n_edges > 0 else 0
    offsets = torch.cumsum(counts, 0) - counts
    arange = torch.arange(n_edges, dtype=torch.long, device=centers.device)
    if n_edges > 1 and bool((centers[1:] < centers[:-1]).any()):
        order = torch.sort(centers, stable=True)[1]
        slot = torch.empty_like(centers)
        slot[order] = arange - offsets[centers[order]]
        return slot, max_neighbours
    return arange - offsets[centers], max_neighbours


class PowerSpectrum(torch.nn.Module):
    """forward(species_index [N_all] in 0..S-1, centers [E] < n_local, neighbours [E],
    edge_vectors [E, 3] Å, n_local) -> features [n_local, D]."""

    def __init__(self, n_species: int, cutoff: float, n_max: int, l_max: int, switch_width: float):
        super().__init__()
        self.n_species = int(n_species)
        self.n_max = int(n_max)
        self.l_max = int(l_max)
        self.n_channels = self.n_species * self.n_max
        self.radial = RadialBasis(cutoff, n_max, switch_width)
        self.harmonics = SphericalHarmonics(l_max)
        q = self.n_channels
        rows, cols = torch.triu_indices(q, q)
        self.register_buffer("pair_index", (rows * q + cols).contiguous())
        self.register_buffer(
            "l_weights",
            torch.tensor([(2 * l + 1) ** -0.5 for l in range(l_max + 1)], dtype=torch.float64),
        )
        self.n_features = q + rows.numel() * (l_max + 1)

    def basis(self, edge_vectors: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Radial [E, n_max] and angular [E, (l_max+1)^2] basis of every edge."""
        r = torch.linalg.vector_norm(edge_vectors, dim=1)
        return self.radial(r), self.harmonics(edge_vectors / r.unsqueeze(1))

    def density(
        self,
        species_index: torch.Tensor,
        centers: torch.Tensor,
        neighbours: torch.Tensor,
        radial: torch.Tensor,
        angular: torch.Tensor,
        n_local: int,
    ) -> torch.Tensor:
        """Density coefficients c [n_local, Q, (l_max+1)^2] from the edge basis."""
        n_lm = angular.shape[1]
        slot, max_nb = neighbour_slots(centers, n_local)
        dtype, device = radial.dtype, radial.device
        padded_radial = torch.zeros(
            (n_local, max_nb, self.n_species, self.n_max), dtype=dtype, device=device
        )
        idx: List[Optional[torch.Tensor]] = [centers, slot, species_index[neighbours]]
        padded_radial = torch.index_put(padded_radial, idx, radial)
        padded_angular = torch.zeros((n_local, max_nb, n_lm), dtype=dtype, device=device)
        idx2: List[Optional[torch.Tensor]] = [centers, slot]
        padded_angular = torch.index_put(padded_angular, idx2, angular)
        return torch.bmm(
            padded_radial.reshape(n_local, max_nb, self.n_channels).transpose(1, 2), padded_angular
        )

    def power_spectrum(self, c: torch.Tensor) -> torch.Tensor:
        """Features [n, D] from the density c [n, Q, (l_max+1)^2]."""
        n_local = c.shape[0]
        q = self.n_channels
        parts = [c[:, :, 0]]
        for l in range(self.l_max + 1):
            block = c[:, :, l * l : (l + 1) * (l + 1)]
            gram = torch.bmm(block, block.transpose(1, 2)).reshape(n_local, q * q)
            parts.append(gram.index_select(1, self.pair_index) * self.l_weights[l])
        return torch.cat(parts, dim=1)

    def forward(
        self,
        species_index: torch.Tensor,
        centers: torch.Tensor,
        neighbours: torch.Tensor,
        edge_vectors: torch.Tensor,
        n_local: int,
    ) -> torch.Tensor:
        radial, angular = self.basis(edge_vectors)
        c = self.density(species_index, centers, neighbours, radial, angular, n_local)
        return self.power_spectrum(c)
