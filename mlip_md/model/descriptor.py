"""Species-resolved density expansion and its SOAP-like power spectrum (rotation invariant).

For centre atom i the neighbour density is expanded in Q radial-chemical channels q:

    c_i[q, l m] = sum_{j in N(i)} R'_{s_j q}(r_ij) Y_lm(r_ij / |r_ij|),
    R'_{s q}(r) = sum_n W[s, n, q] R_n(r)

with R_n the radial basis (:mod:`mlip_md.model.radial`, n = 0..n_max-1, Å^-3/2), Y_lm the real
spherical harmonics (:mod:`mlip_md.model.spherical`), s_j the species index of neighbour j and
W [S, n_max, Q] the float64 buffer ``radial_mixing``. The features are the l = 0 densities plus
the power spectrum

    p_i[q q', l] = (2l + 1)^(-1/2) sum_m c_i[q, l m] c_i[q', l m],     q <= q',

so D = Q + Q (Q + 1) / 2 (l_max + 1).

* Version 1 (one-hot, Q = S n_max, ``channels`` None or S n_max): W[s, n, s n_max + n] = 1,
  every neighbour species has its own n_max channels, q = s n_max + n; D grows as S^2. This is
  the descriptor of every file written before version 2 (computed by the same code as then).
* Version 2 (compressed, Q < S n_max): each neighbour species gets Q radial functions mixed
  from the same n_max ones (an "alchemical" radial-chemical contraction, Willatt, Musil &
  Ceriotti 2018), so D depends on Q, not on S. W is fitted from data
  (:func:`mlip_md.train.fit.fit_radial_mixing`); until then it is a fixed random orthonormal
  matrix. The mixing is done per edge (radial [E, n_max] x W[s_j] -> [E, Q]), so no tensor of
  size [E, S n_max] or larger is built.

The element of the centre does not enter the features; the readout has one network per element.
The density is accumulated with one dense batched matmul over a padded [n_centres,
max_neighbours] layout, so the cost is linear in the number of neighbours and no
[E, Q, (l_max+1)^2] tensor is ever built.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch

from .radial import RadialBasis
from .spherical import SphericalHarmonics

#: the descriptor's name and version in a model file's metadata block ``descriptor``: what a
#: host that runs the descriptor itself (the fused kernel, csrc ``mlip_power_spectrum_*``) checks.
#: Version 1: one-hot species channels (Q = S n_max); version 2: compressed channels, the block
#: also has ``channels`` (Q) and ``radial_mixing`` (W, nested lists [S][n_max][Q])
DESCRIPTOR_KIND = "power_spectrum"
DESCRIPTOR_VERSION = 1
COMPRESSED_DESCRIPTOR_VERSION = 2
DESCRIPTOR_VERSIONS = (DESCRIPTOR_VERSION, COMPRESSED_DESCRIPTOR_VERSION)


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


def one_hot_mixing(n_species: int, n_max: int) -> torch.Tensor:
    """W [S, n_max, S n_max] float64 with W[s, n, s n_max + n] = 1: the version-1 descriptor."""
    eye = torch.eye(n_species * n_max, dtype=torch.float64)
    return eye.reshape(n_species, n_max, n_species * n_max).contiguous()


def default_mixing(n_species: int, n_max: int, channels: int) -> torch.Tensor:
    """W [S, n_max, Q] float64 before it is fitted: one-hot when Q = S n_max, otherwise Q
    orthonormal columns of a fixed (seed 0) random matrix: a generic full-rank projection, so an
    unfitted model (tests, random-weight models) is deterministic and sees every species."""
    total = n_species * n_max
    if channels == total:
        return one_hot_mixing(n_species, n_max)
    generator = torch.Generator().manual_seed(0)
    gaussian = torch.randn((total, channels), generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    return q.reshape(n_species, n_max, channels).contiguous()


def default_channels(n_species: int, n_max: int) -> int:
    """Q that training picks when the config leaves ``channels`` unset: one-hot (S n_max) for
    one element, otherwise ceil(3 n_max / 2) (at most S n_max): the feature size is the same
    for any number of elements (D = 402 at n_max 8, l_max 4; one element: 188). On the CuNi
    binary (examples/cuni_dataset.py) Q = 1.5 n_max kept 99.996 % of the channel second moment
    and trained as accurate as the uncompressed model (Q = 16); Q = n_max kept 98.4 % and gave
    1.5-1.6x its held-out force RMSE."""
    n_species, n_max = int(n_species), int(n_max)
    if n_species == 1:
        return n_max
    return min(n_species * n_max, (3 * n_max + 1) // 2)


def resolve_channels(n_species: int, n_max: int, channels: Optional[int]) -> int:
    """Q for a descriptor: ``channels`` (1..S n_max) or S n_max (one-hot) for None."""
    total = int(n_species) * int(n_max)
    if channels is None:
        return total
    q = int(channels)
    if q != channels or not 1 <= q <= total:
        raise ValueError(f"channels must be an integer in 1..n_species x n_max = {total} "
                         f"({n_species} x {n_max}), got {channels!r}; None keeps one channel per "
                         "(species, radial function) pair")
    return q


class PowerSpectrum(torch.nn.Module):
    """forward(species_index [N_all] in 0..S-1, centers [E] < n_local, neighbours [E],
    edge_vectors [E, 3] Å, n_local) -> features [n_local, D], D = Q + Q (Q+1)/2 (l_max+1).

    ``channels``: Q, the number of radial-chemical channels (None: S n_max, one-hot, version 1).
    Attributes ``n_channels`` (Q), ``compressed`` (Q < S n_max), buffer ``radial_mixing`` W
    [S, n_max, Q] (float64 until the model is converted; one-hot for version 1)."""

    def __init__(self, n_species: int, cutoff: float, n_max: int, l_max: int, switch_width: float,
                 channels: Optional[int] = None):
        super().__init__()
        self.n_species = int(n_species)
        self.n_max = int(n_max)
        self.l_max = int(l_max)
        self.n_channels = resolve_channels(self.n_species, self.n_max, channels)
        self.compressed = self.n_channels != self.n_species * self.n_max
        self.radial = RadialBasis(cutoff, n_max, switch_width)
        self.harmonics = SphericalHarmonics(l_max)
        q = self.n_channels
        self.register_buffer("radial_mixing", default_mixing(self.n_species, self.n_max, q))
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

    def mix_radial(self, radial: torch.Tensor, neighbour_species: torch.Tensor) -> torch.Tensor:
        """Channel radial functions [E, Q] of every edge: radial [E, n_max] times W[s_j]
        (species index of the neighbour, [E]); one small matmul per species present."""
        mixed = torch.zeros((radial.shape[0], self.n_channels), dtype=radial.dtype, device=radial.device)
        for s in range(self.n_species):
            rows = torch.nonzero(neighbour_species == s).squeeze(1)
            if rows.numel() > 0:
                mixed = mixed.index_copy(0, rows, radial.index_select(0, rows) @ self.radial_mixing[s])
        return mixed

    def mix_radial_dense(self, radial: torch.Tensor, neighbour_species: torch.Tensor) -> torch.Tensor:
        """:meth:`mix_radial` without data-dependent shapes (for tracing): every species'
        matmul on every edge, rows picked with masks ([E, Q] memory, S x the flops)."""
        mixed = torch.zeros((radial.shape[0], self.n_channels), dtype=radial.dtype, device=radial.device)
        for s in range(self.n_species):
            mask = (neighbour_species == s).unsqueeze(1)
            mixed = torch.where(mask, radial @ self.radial_mixing[s], mixed)
        return mixed

    def scatter_density(
        self,
        species_index: torch.Tensor,
        centers: torch.Tensor,
        neighbours: torch.Tensor,
        slot: torch.Tensor,
        max_nb: int,
        radial: torch.Tensor,
        angular: torch.Tensor,
        n_local: int,
        traceable: bool = False,
    ) -> torch.Tensor:
        """Density c [n_local, Q, (l_max+1)^2] from the edge basis and each edge's ``slot``
        among the edges of its centre (:func:`neighbour_slots`)."""
        n_lm = angular.shape[1]
        dtype, device = radial.dtype, radial.device
        idx2: List[Optional[torch.Tensor]] = [centers, slot]
        if self.compressed:
            neighbour_species = species_index[neighbours]
            if traceable:
                mixed = self.mix_radial_dense(radial, neighbour_species)
            else:
                mixed = self.mix_radial(radial, neighbour_species)
            padded_radial = torch.zeros((n_local, max_nb, self.n_channels), dtype=dtype, device=device)
            padded_radial = torch.index_put(padded_radial, idx2, mixed)
        else:  # version 1: one-hot species blocks, exactly as before version 2 existed
            padded_radial = torch.zeros(
                (n_local, max_nb, self.n_species, self.n_max), dtype=dtype, device=device
            )
            idx: List[Optional[torch.Tensor]] = [centers, slot, species_index[neighbours]]
            padded_radial = torch.index_put(padded_radial, idx, radial)
        padded_angular = torch.zeros((n_local, max_nb, n_lm), dtype=dtype, device=device)
        padded_angular = torch.index_put(padded_angular, idx2, angular)
        return torch.bmm(
            padded_radial.reshape(n_local, max_nb, self.n_channels).transpose(1, 2), padded_angular
        )

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
        slot, max_nb = neighbour_slots(centers, n_local)
        return self.scatter_density(species_index, centers, neighbours, slot, max_nb, radial, angular, n_local)
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


def metadata_block(descriptor: PowerSpectrum) -> Dict[str, Any]:
    """The model file's metadata block ``descriptor`` (see docs/model-contract.md): version 1
    for one-hot channels (no mixing in the file), version 2 with ``channels`` and the
    ``radial_mixing`` W as nested lists [S][n_max][Q] otherwise."""
    block: Dict[str, Any] = {
        "kind": DESCRIPTOR_KIND,
        "version": COMPRESSED_DESCRIPTOR_VERSION if descriptor.compressed else DESCRIPTOR_VERSION,
        "n_species": int(descriptor.n_species),
        "n_max": int(descriptor.n_max),
        "l_max": int(descriptor.l_max),
        "cutoff": float(descriptor.radial.cutoff),
        "switch_width": float(descriptor.radial.switch_width),
    }
    if descriptor.compressed:
        block["channels"] = int(descriptor.n_channels)
        block["radial_mixing"] = descriptor.radial_mixing.detach().to(torch.float64).tolist()
    return block
