"""Per-element multilayer perceptrons for K ensemble members, evaluated in one batched pass."""
from __future__ import annotations

import math
from typing import List, Tuple

import torch


class EnsembleLinear(torch.nn.Module):
    """Affine map with independent weights per (species, member).

    weight [S, K, in, out], bias [S, K, 1, out]; forward(x [K, n, in] or [n, in], s) -> [K, n, out].
    """

    def __init__(self, n_species: int, n_members: int, n_in: int, n_out: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(n_species, n_members, n_in, n_out))
        self.bias = torch.nn.Parameter(torch.zeros(n_species, n_members, 1, n_out))
        self.n_in = n_in

    def reset(self, generator: torch.Generator, member: int = -1) -> None:
        """Draw fresh weights (all members, or only `member`) from N(0, 1/n_in)."""
        with torch.no_grad():
            w = torch.randn(self.weight.shape, generator=generator, dtype=self.weight.dtype)
            w /= math.sqrt(self.n_in)
            if member < 0:
                self.weight.copy_(w)
                self.bias.zero_()
            else:
                self.weight[:, member].copy_(w[:, member])
                self.bias[:, member].zero_()

    def forward(self, x: torch.Tensor, s: int) -> torch.Tensor:
        weight = self.weight[s]
        if x.dim() == 2:
            # shared input: one GEMM [n, in] x [in, K*out] instead of K broadcast products
            k, n_in, n_out = weight.shape
            y = torch.mm(x, weight.permute(1, 0, 2).reshape(n_in, k * n_out))
            return y.reshape(x.shape[0], k, n_out).transpose(0, 1) + self.bias[s]
        return torch.bmm(x, weight) + self.bias[s]


class EnsembleReadout(torch.nn.Module):
    """forward(features [N, D], species_index [N]) -> (last hidden layer [K, N, H],
    outputs [K, N, C]) for K members and C output channels per atom (1 for an energy; 4 for an
    evidential head).

    Hidden layers use SiLU (smooth, so forces and their derivatives are continuous).
    """

    def __init__(self, n_species: int, n_members: int, n_features: int, hidden: List[int], n_outputs: int = 1):
        super().__init__()
        if len(hidden) == 0:
            raise ValueError("the readout needs at least one hidden layer")
        sizes = [n_features] + list(hidden) + [n_outputs]
        self.layers = torch.nn.ModuleList(
            [EnsembleLinear(n_species, n_members, a, b) for a, b in zip(sizes[:-1], sizes[1:])]
        )
        self.n_species = n_species
        self.n_members = n_members
        self.n_hidden = int(hidden[-1])
        self.n_outputs = n_outputs

    def reset(self, seed: int, member: int = -1) -> None:
        generator = torch.Generator().manual_seed(seed)
        for layer in self.layers:
            layer.reset(generator, member)

    def _mlp(self, x: torch.Tensor, s: int) -> Tuple[torch.Tensor, torch.Tensor]:
        n_layers = len(self.layers)
        hidden = x
        for k, layer in enumerate(self.layers):
            if k < n_layers - 1:
                hidden = torch.nn.functional.silu(layer(hidden, s))
            else:
                x = layer(hidden, s)
        return hidden, x

    def forward(self, features: torch.Tensor, species_index: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.n_species == 1:
            return self._mlp(features, 0)
        n = features.shape[0]
        hidden = torch.zeros((self.n_members, n, self.n_hidden), dtype=features.dtype, device=features.device)
        out = torch.zeros((self.n_members, n, self.n_outputs), dtype=features.dtype, device=features.device)
        for s in range(self.n_species):
            rows = torch.nonzero(species_index == s).squeeze(1)
            if rows.numel() > 0:
                h, o = self._mlp(features.index_select(0, rows), s)
                hidden = hidden.index_copy(1, rows, h)
                out = out.index_copy(1, rows, o)
        return hidden, out
