"""The built-in potential: power-spectrum descriptor -> per-element ensemble MLPs.

The module is TorchScript-able and implements the exported-model contract (docs/model-contract.md):

    forward(species int64 [N_all] (atomic numbers), edge_index int64 [2, E] (row 0: centre i <
            n_local, row 1: neighbour j, any atom), edge_vectors float [E, 3] (r_j - r_i, Å),
            n_local int) -> Dict[str, Tensor]

All energies are eV, lengths Å. Forces and virial are assembled by the host from ``edge_grad``
(see :mod:`mlip_md.model.assemble`).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import torch

from .descriptor import PowerSpectrum
from .readout import EnsembleReadout
from .repulsion import repulsion_atomic_energy

MAX_ATOMIC_NUMBER = 118
UQ_METHODS = ("ensemble", "bll", "evidential")
#: the domain monitors' statistics (T^2, d_min), fitted after training
#: (mlip_md.train.fit.fit_domain_monitors); training members never read them
MONITOR_BUFFERS = ("domain_center", "domain_projection", "domain_component_mean", "domain_component_precision",
                   "domain_residual_weight", "domain_mean", "domain_precision", "reference_features", "reference_count",
                   "kernel_length")
#: monitor buffers whose shape depends on the fitted data or the file's age (see __init__)
DATA_SHAPED_BUFFERS = ("domain_projection", "domain_component_mean", "domain_component_precision", "domain_mean",
                       "domain_precision", "reference_features")


@dataclasses.dataclass
class ModelConfig:
    """Hyper-parameters of :class:`MLIPotential` (lengths in Å)."""

    atomic_numbers: List[int]
    cutoff: float = 5.5
    switch_width: float = 1.0
    n_max: int = 8
    l_max: int = 4
    hidden: Tuple[int, ...] = (64, 64)
    ensemble_size: int = 4
    #: "ensemble" (K members), "bll" (Bayesian last layer of one network: its Laplace posterior
    #: is exported as 2 (H + 1) S symmetric sigma points) or "evidential" (Normal-Inverse-Gamma
    #: head of one network)
    uq: str = "ensemble"
    #: add the short-range ZBL repulsion (mlip_md.model.repulsion) when the training statistics
    #: are fitted: zero on the training data, a physical wall below the closest trained distance
    repulsion: bool = True
    #: radial-chemical channels Q of the descriptor (mlip_md.model.descriptor): None = one per
    #: (species, radial function) pair, S n_max (version 1, every file written before the key
    #: existed); fewer compress the neighbour species (version 2, D independent of S). Training
    #: resolves its default (:func:`mlip_md.model.descriptor.default_channels`) into an integer.
    channels: Optional[int] = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        d["hidden"] = tuple(d.get("hidden", (64, 64)))
        return cls(**d)


class MLIPotential(torch.nn.Module):
    """Strictly local ensemble potential; see the module docstring for the call contract.

    Output keys (all for the n_local centre atoms):
      atomic_energy [n], energy [] (sum), edge_grad [E, 3], energy_members [K, n],
      features [n, D] (standardised descriptors), energy_sigma [n] (calibrated ensemble std, eV),
      mahalanobis [n] (T^2 of the features against the training distribution of the element),
      min_distance [n] (Å, inf without neighbours), min_distance_ratio [n] (min over neighbours
      of r_ij / smallest r seen in training for that element pair; < 1 means closer than ever
      seen), d_min [n] (kernel distance to the training reference set, when fitted), and
      ``member_edge_grad`` [K, E, 3] when requested through ``evaluate``.

    Energies and gradients of ``evaluate`` include the short-range repulsion
    (:mod:`mlip_md.model.repulsion`: ZBL below the closest trained distance of each element pair,
    half of each pair's energy to each atom, the same in every member; buffers
    ``repulsion_inner`` / ``repulsion_outer``, zero = none).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        numbers = [int(z) for z in config.atomic_numbers]
        if len(numbers) == 0 or len(set(numbers)) != len(numbers):
            raise ValueError(f"atomic_numbers must be unique and non-empty, got {numbers}")
        if any(z < 1 or z > MAX_ATOMIC_NUMBER for z in numbers):
            raise ValueError(f"atomic numbers must be in 1..{MAX_ATOMIC_NUMBER}, got {numbers}")
        if config.uq not in UQ_METHODS:
            raise ValueError(f"uq must be one of {UQ_METHODS}, got {config.uq!r}")
        if config.uq != "ensemble" and config.ensemble_size != 1:
            raise ValueError(f"uq={config.uq!r} describes one network: use ensemble_size=1")
        self.config = config
        self.uq = config.uq
        self.cutoff = float(config.cutoff)
        self.n_species = len(numbers)
        hidden_size = int(config.hidden[-1]) if len(config.hidden) else 0
        # members the model outputs: the ensemble, or the BLL sigma points
        self.bll_dim = len(numbers) * (hidden_size + 1)
        self.n_members = 2 * self.bll_dim if config.uq == "bll" else int(config.ensemble_size)
        self.known_elements = " ".join(str(z) for z in numbers)
        lookup = torch.full((MAX_ATOMIC_NUMBER + 1,), -1, dtype=torch.long)
        lookup[torch.tensor(numbers)] = torch.arange(len(numbers))
        self.register_buffer("species_to_index", lookup)
        self.register_buffer("atomic_numbers", torch.tensor(numbers, dtype=torch.long))
        self.descriptor = PowerSpectrum(
            len(numbers), config.cutoff, config.n_max, config.l_max, config.switch_width, config.channels
        )
        n_features = self.descriptor.n_features
        self.n_features = n_features
        self.readout = EnsembleReadout(len(numbers), int(config.ensemble_size), n_features, list(config.hidden),
                                       n_outputs=4 if config.uq == "evidential" else 1)
        self.readout.reset(seed=0)
        # Normalisation, fitted on training data (see mlip_md.train).
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_scale", torch.ones(n_features))
        self.register_buffer("atomic_reference_energy", torch.zeros(len(numbers)))
        self.register_buffer("energy_scale", torch.ones(()))
        # Calibration: sigma_cal^2 = alpha sigma^2 (+ a per-atom floor for energies, eV^2/atom:
        # the in-domain error the ensemble spread does not see; see mlip_md.uq.calibration).
        self.register_buffer("energy_variance_scale", torch.ones(()))
        self.register_buffer("energy_variance_floor", torch.zeros(()))
        self.register_buffer("force_variance_scale", torch.ones(()))
        # Domain statistics of the training set, in the bounded monitor space of
        # mlip_md.domain.monitor_space (P components, set by mlip_md.train.fit): centre [D],
        # projection [D, P], per element the component mean [S, P] and precision [S, P, P] and
        # the weight of the distance from the subspace [S]. P = 0 until fitted.
        self.register_buffer("domain_center", torch.zeros(n_features))
        self.register_buffer("domain_projection", torch.zeros(n_features, 0))
        self.register_buffer("domain_component_mean", torch.zeros(len(numbers), 0))
        self.register_buffer("domain_component_precision", torch.zeros(len(numbers), 0, 0))
        self.register_buffer("domain_residual_weight", torch.zeros(len(numbers)))
        # Files written before the monitor space carry the dense per-element mean [S, D] and
        # precision [S, D, D] here (load_potential, mlip-md upgrade); empty otherwise.
        self.register_buffer("domain_mean", torch.zeros(len(numbers), 0))
        self.register_buffer("domain_precision", torch.zeros(len(numbers), 0, 0))
        self.register_buffer("pair_min_distance", torch.zeros(len(numbers), len(numbers)))
        # Short-range repulsion (mlip_md.model.repulsion): ZBL switched off between r_inner and
        # r_outer (Å, per element pair); all zero = none (set by mlip_md.train.fit)
        self.register_buffer("repulsion_inner", torch.zeros(len(numbers), len(numbers)))
        self.register_buffer("repulsion_outer", torch.zeros(len(numbers), len(numbers)))
        # Kernel-distance reference environments per element (see mlip_md.domain.kernel) in the
        # monitor coordinates [S, M, P + 1] (older files: the features [S, M, D]); empty until
        # fitted, then d_min is among the outputs.
        self.register_buffer("reference_features", torch.zeros(len(numbers), 0, n_features))
        self.register_buffer("reference_count", torch.zeros(len(numbers), dtype=torch.long))
        self.register_buffer("kernel_length", torch.ones(()))
        # Bayesian last layer: per element, sqrt(D) x the rows of the Cholesky factor of the
        # posterior covariance of (last-layer weights, bias); zero until fitted.
        self.register_buffer("bll_factor", torch.zeros(len(numbers), hidden_size + 1, self.bll_dim))

    @torch.jit.unused
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the monitor statistics' shapes are data-dependent (P, the reference set's size) or
        # those of an older file (dense T^2): take the incoming shape
        for name in DATA_SHAPED_BUFFERS:
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.zeros_like(state_dict[key], dtype=getattr(self, name).dtype))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ helpers
    def species_index(self, species: torch.Tensor) -> torch.Tensor:
        """Map atomic numbers [N] to 0..S-1, raising a clear error for unknown ones."""
        if species.numel() > 0:
            low = int(species.min())
            high = int(species.max())
            if low < 1 or high > 118:
                raise ValueError(
                    "atomic numbers must be in 1..118, got "
                    + str(low) + ".." + str(high)
                )
        index = self.species_to_index[species]
        if species.numel() > 0 and bool((index < 0).any()):
            bad = int(species[index < 0][0])
            raise ValueError(
                "atomic number " + str(bad) + " is unknown to this model; it knows "
                + self.known_elements
            )
        return index

    def standardised_features(
        self,
        species_index: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        n_local: int,
    ) -> torch.Tensor:
        raw = self.descriptor(species_index, edge_index[0], edge_index[1], edge_vectors, n_local)
        return (raw - self.feature_mean) / self.feature_scale

    def heads(self, features: torch.Tensor, local_species: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Per-atom energies of every member, ``members`` [K, n] (eV), and the UQ head's extra
        outputs: ``deviations`` [D, n] (BLL, eV) or ``epistemic_variance`` [n] (evidential, eV^2,
        uncalibrated) with the Normal-Inverse-Gamma parameters ``nu``, ``alpha``, ``beta``."""
        hidden, raw = self.readout(features, local_species)
        reference = self.atomic_reference_energy[local_species]
        energies = raw[:, :, 0] * self.energy_scale + reference  # [K, n]
        result: Dict[str, torch.Tensor] = {}
        if self.uq == "bll":
            phi = torch.cat([hidden[0], torch.ones_like(hidden[0][:, :1])], dim=1)  # [n, H + 1]
            if self.n_species == 1:
                deviations = phi @ self.bll_factor[0]
            else:
                deviations = torch.bmm(phi.unsqueeze(1), self.bll_factor[local_species]).squeeze(1)
            deviations = (deviations * self.energy_scale).T  # [D, n]
            result["deviations"] = deviations
            result["members"] = torch.cat([energies + deviations, energies - deviations], dim=0)
        elif self.uq == "evidential":
            nu = torch.nn.functional.softplus(raw[0, :, 1]) + 1e-6
            alpha = torch.nn.functional.softplus(raw[0, :, 2]) + 1.0 + 1e-6
            beta = torch.nn.functional.softplus(raw[0, :, 3]) + 1e-9
            result["nu"] = nu
            result["alpha"] = alpha
            result["beta"] = beta
            result["epistemic_variance"] = beta / (nu * (alpha - 1.0)) * self.energy_scale * self.energy_scale
            result["members"] = energies
        else:
            result["members"] = energies
        return result

    def member_energies(self, features: torch.Tensor, local_species: torch.Tensor) -> torch.Tensor:
        """Per-member atomic energies [K, n] in eV."""
        return self.heads(features, local_species)["members"]

    def domain_coordinates(self, features: torch.Tensor) -> torch.Tensor:
        """Monitor coordinates [n, P + 1] of standardised features [n, D]: the component scores
        z = (x - c) V and the distance r from the P-dimensional subspace
        (:mod:`mlip_md.domain.monitor_space`); files written before it (no projection): the
        features themselves."""
        p = self.domain_projection.shape[1]
        if p == 0:
            return features
        delta = features - self.domain_center
        z = delta @ self.domain_projection
        residual = ((delta * delta).sum(dim=1) - (z * z).sum(dim=1)).clamp_min(0.0)
        return torch.cat([z, torch.sqrt(residual).unsqueeze(1)], dim=1)

    def element_t_squared(self, coordinates: torch.Tensor, s: int) -> torch.Tensor:
        """T^2 [m] of m environments' monitor coordinates against element ``s``'s statistics:
        (z - mu_s)^T Pi_s (z - mu_s) + w_s r^2 (dense (x - mu_s)^T Pi_s (x - mu_s) for files
        written before the monitor space; 0 before any statistics were fitted)."""
        p = self.domain_projection.shape[1]
        if p == 0:
            if self.domain_precision.shape[1] == 0:
                return torch.zeros((coordinates.shape[0],), dtype=coordinates.dtype, device=coordinates.device)
            delta = coordinates - self.domain_mean[s]
            return ((delta @ self.domain_precision[s]) * delta).sum(dim=1)
        delta = coordinates[:, :p] - self.domain_component_mean[s]
        r = coordinates[:, p]
        return ((delta @ self.domain_component_precision[s]) * delta).sum(dim=1) + self.domain_residual_weight[s] * r * r

    def t_squared(self, coordinates: torch.Tensor, local_species: torch.Tensor) -> torch.Tensor:
        """T^2 [n] from monitor coordinates [n, P + 1], one element at a time (no per-atom
        gather of precision matrices)."""
        if self.n_species == 1:
            return self.element_t_squared(coordinates, 0)
        out = torch.zeros((coordinates.shape[0],), dtype=coordinates.dtype, device=coordinates.device)
        for s in range(self.n_species):
            rows = torch.nonzero(local_species == s).squeeze(1)
            if rows.numel() == 0:
                continue
            out = out.index_copy(0, rows, self.element_t_squared(coordinates.index_select(0, rows), s))
        return out

    def mahalanobis(self, features: torch.Tensor, local_species: torch.Tensor) -> torch.Tensor:
        """T^2 [n] of standardised features [n, D] against the training distribution of each
        atom's element (:mod:`mlip_md.domain.monitor_space`)."""
        return self.t_squared(self.domain_coordinates(features), local_species)

    def kernel_distance(self, features: torch.Tensor, local_species: torch.Tensor) -> torch.Tensor:
        """d_min [n] of standardised features [n, D] (see :meth:`reference_distance`)."""
        return self.reference_distance(self.domain_coordinates(features), local_species)

    def reference_distance(self, coordinates: torch.Tensor, local_species: torch.Tensor) -> torch.Tensor:
        """d_min [n] = min over the element's reference environments t of
        sqrt(2 - 2 exp(-|y - t|^2 / (2 l^2))) in monitor coordinates y [n, P + 1] (0 on
        reference points, < sqrt 2)."""
        nearest = torch.full((coordinates.shape[0],), float("inf"), dtype=coordinates.dtype, device=coordinates.device)
        for s in range(self.n_species):
            count = int(self.reference_count[s])
            if count == 0:
                continue
            rows = torch.nonzero(local_species == s).squeeze(1)
            if rows.numel() == 0:
                continue
            x = coordinates.index_select(0, rows)
            refs = self.reference_features[s, :count]
            # min_t |x - t|^2 = |x|^2 + min_t (|t|^2 - 2 x.t): one [m, M] matrix, written once
            partial = torch.addmm((refs * refs).sum(dim=1), x, refs.T, beta=1.0, alpha=-2.0)
            d2 = (x * x).sum(dim=1) + partial.min(dim=1)[0]
            nearest = nearest.index_copy(0, rows, d2.clamp_min(0.0))
        kernel = torch.exp(-nearest / (2.0 * self.kernel_length * self.kernel_length))
        return torch.sqrt((2.0 - 2.0 * kernel).clamp_min(0.0))

    def contact_distances(
        self,
        species_index: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        n_local: int,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-atom nearest-neighbour distance (Å) and its ratio to the training minimum."""
        r = torch.linalg.vector_norm(edge_vectors.detach(), dim=1)
        reference = self.pair_min_distance[
            species_index[edge_index[0]], species_index[edge_index[1]]
        ]
        ratio = r / reference.clamp_min(1e-12)
        inf = torch.full((n_local,), float("inf"), dtype=r.dtype, device=r.device)
        nearest = inf.scatter_reduce(0, edge_index[0], r, reduce="amin", include_self=True)
        nearest_ratio = inf.scatter_reduce(0, edge_index[0], ratio, reduce="amin", include_self=True)
        return nearest, nearest_ratio

    def repulsion_energy(
        self,
        species_index: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        n_local: int,
    ) -> torch.Tensor:
        """Per-centre energy [n_local] (eV) of the short-range repulsion (zeros without one;
        differentiable with respect to ``edge_vectors``)."""
        max_radius = float(self.repulsion_outer.max())
        if max_radius <= 0.0:
            return torch.zeros((n_local,), dtype=edge_vectors.dtype, device=edge_vectors.device)
        charges = self.atomic_numbers.to(edge_vectors.dtype)
        return repulsion_atomic_energy(charges, self.repulsion_inner, self.repulsion_outer, species_index, edge_index,
                                       edge_vectors, n_local, max_radius)

    def _check_call(self, species: torch.Tensor, n_local: int) -> None:
        """Errors shared by the contract calls: grad mode off, n_local out of range."""
        if not torch.is_grad_enabled():
            raise RuntimeError(
                "mlip_md models compute forces with autograd: call them with grad mode "
                "enabled (not inside torch.no_grad())"
            )
        if n_local < 0 or n_local > species.shape[0]:
            raise ValueError("n_local must be between 0 and the number of atoms")

    # ------------------------------------------------------------------ contract
    @torch.jit.export
    def evaluate(
        self,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        n_local: int,
        compute_monitors: bool,
        compute_force_sigma: bool,
    ) -> Dict[str, torch.Tensor]:
        """The contract call with switches for the optional outputs (see class docstring)."""
        self._check_call(species, n_local)
        if edge_vectors.dtype != self.feature_mean.dtype:
            raise ValueError(
                "edge_vectors dtype does not match the model dtype; convert the inputs "
                "(model.to(dtype)) before calling"
            )
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError("edge_index must have shape [2, E]")
        if edge_vectors.dim() != 2 or edge_vectors.shape[1] != 3 or edge_vectors.shape[0] != edge_index.shape[1]:
            raise ValueError("edge_vectors must have shape [E, 3] matching edge_index [2, E]")
        species_index = self.species_index(species)
        if self.training:
            vectors = edge_vectors
            if not vectors.requires_grad:
                vectors = vectors.requires_grad_(True)
        else:
            vectors = edge_vectors.detach().requires_grad_(True)
        features = self.standardised_features(species_index, edge_index, vectors, n_local)
        pair_energy = self.repulsion_energy(species_index, edge_index, vectors, n_local)
        return self._outputs(species_index, features, vectors, "edge_grad", edge_index, edge_vectors, n_local,
                             compute_monitors, compute_force_sigma, pair_energy)

    @torch.jit.export
    def evaluate_features(
        self,
        species: torch.Tensor,
        raw_features: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        n_local: int,
        compute_monitors: bool,
        compute_force_sigma: bool,
    ) -> Dict[str, torch.Tensor]:
        """``evaluate`` after the descriptor: for hosts that compute the raw power spectrum
        themselves (the fused C++ kernel, ``mlip_power_spectrum_forward_*`` in csrc/) and map
        feature gradients back to edges with its backward pass.

        raw_features [n_local, D] (model dtype) replace the descriptor; edge_index / edge_vectors
        are only read by the contact-distance monitors. Returns the keys of ``evaluate`` with
        ``feature_grad`` [n_local, D] (dE/d raw_features, eV) instead of ``edge_grad``, and
        ``member_feature_grad`` [K, n_local, D] instead of ``member_edge_grad``.

        The short-range repulsion (a pair term of the edges, metadata block ``repulsion``) is
        NOT in these energies: the host adds it with the C core (``mlip_repulsion_*``, as
        :class:`mlip_md.runtime.fused.FusedBackend` and the LAMMPS plugin do), energies to
        atomic_energy and every member, gradients to every edge-gradient row.
        """
        self._check_call(species, n_local)
        if raw_features.dtype != self.feature_mean.dtype:
            raise ValueError("raw_features dtype does not match the model dtype")
        if raw_features.dim() != 2 or raw_features.shape[0] != n_local or raw_features.shape[1] != self.n_features:
            raise ValueError(
                "raw_features must have shape [n_local, " + str(self.n_features) + "]"
            )
        species_index = self.species_index(species)
        raw = raw_features.detach().requires_grad_(True)
        features = (raw - self.feature_mean) / self.feature_scale
        return self._outputs(species_index, features, raw, "feature_grad", edge_index, edge_vectors, n_local,
                             compute_monitors, compute_force_sigma, None)

    def _outputs(
        self,
        species_index: torch.Tensor,
        features: torch.Tensor,
        target: torch.Tensor,
        grad_name: str,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        n_local: int,
        compute_monitors: bool,
        compute_force_sigma: bool,
        pair_energy: Optional[torch.Tensor],
    ) -> Dict[str, torch.Tensor]:
        """Energies, gradients with respect to ``target`` (edge vectors or raw features, output
        key ``grad_name`` and ``"member_" + grad_name``) and monitors from the standardised
        features [n_local, D]; ``pair_energy`` [n_local] (the repulsion, a function of
        ``target``) is added to every member."""
        local_species = species_index[:n_local]
        heads = self.heads(features, local_species)
        members = heads["members"]  # [K, n]
        if pair_energy is not None:
            members = members + pair_energy.unsqueeze(0)
        atomic_energy = members.mean(dim=0)
        total = atomic_energy.sum()
        grads = torch.autograd.grad(
            [total], [target], create_graph=self.training, allow_unused=True,
            retain_graph=self.training or compute_force_sigma,
        )
        gradient = grads[0]
        if gradient is None:
            gradient = torch.zeros_like(target)
        out: Dict[str, torch.Tensor] = {
            "atomic_energy": atomic_energy if self.training else atomic_energy.detach(),
            "energy": total if self.training else total.detach(),
            grad_name: gradient,
            "energy_members": members if self.training else members.detach(),
        }
        if self.uq == "evidential":
            for key in ("nu", "alpha", "beta"):
                out["evidential_" + key] = heads[key] if self.training else heads[key].detach()
            variance = heads["epistemic_variance"].detach()
            out["energy_variance"] = variance * self.energy_variance_scale + self.energy_variance_floor
        if compute_monitors:
            detached = features.detach()
            out["features"] = detached
            if self.uq == "evidential":
                sigma = torch.sqrt(heads["epistemic_variance"].detach())
            elif self.uq == "bll":
                # the 2D sigma points mu +- sqrt(D) L^T phi have variance phi^T Sigma phi
                sigma = torch.sqrt((heads["deviations"].detach() ** 2).mean(dim=0))
            elif self.n_members > 1:
                sigma = members.detach().std(dim=0)
            else:
                sigma = torch.zeros_like(atomic_energy.detach())
            out["energy_sigma"] = torch.sqrt(sigma * sigma * self.energy_variance_scale + self.energy_variance_floor)
            out.update(self.domain_monitors(detached, species_index, edge_index, edge_vectors, n_local))
        if compute_force_sigma:
            if self.uq == "evidential":
                # the evidential head has no force spread of its own: the per-atom energy sigma
                # (calibrated separately for forces) stands for each component's uncertainty
                sigma = torch.sqrt(heads["epistemic_variance"].detach() * self.force_variance_scale)
                out["force_sigma"] = sigma.unsqueeze(1).expand(n_local, 3).contiguous()
            elif self.uq == "bll":
                spread = self.edge_grads(heads["deviations"], target)  # [D, E, 3]
                out["member_" + grad_name] = torch.cat([gradient.detach() + spread, gradient.detach() - spread], dim=0)
            else:
                out["member_" + grad_name] = self.edge_grads(members, target)
        return out

    def domain_monitors(self, features: torch.Tensor, species_index: torch.Tensor, edge_index: torch.Tensor,
                        edge_vectors: torch.Tensor, n_local: int) -> Dict[str, torch.Tensor]:
        """``mahalanobis``, ``min_distance`` (Å), ``min_distance_ratio`` and, with a reference set,
        ``d_min``, all [n_local], from standardised features [n_local, D] (no gradients)."""
        local_species = species_index[:n_local]
        coordinates = self.domain_coordinates(features)  # [n, P + 1], shared by T^2 and d_min
        out: Dict[str, torch.Tensor] = {"mahalanobis": self.t_squared(coordinates, local_species)}
        nearest, ratio = self.contact_distances(species_index, edge_index, edge_vectors, n_local)
        out["min_distance"] = nearest
        out["min_distance_ratio"] = ratio
        if self.reference_features.shape[1] > 0:
            out["d_min"] = self.reference_distance(coordinates, local_species)
        return out

    @torch.jit.export
    def evaluate_monitors(
        self,
        species: torch.Tensor,
        raw_features: torch.Tensor,
        energy_members: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        n_local: int,
    ) -> Dict[str, torch.Tensor]:
        """The monitor outputs of ``evaluate_features`` alone: ``features`` [n_local, D],
        ``energy_sigma``, ``mahalanobis``, ``min_distance``, ``min_distance_ratio`` and ``d_min``
        [n_local], with no energies and no gradients. For hosts that compute energies, forces and
        the members' per-atom energies ``energy_members`` [K, n_local] (eV) themselves (the
        fused backend's one-pass C kernel and readout) and the raw features [n_local, D] with the
        descriptor kernel. Ensemble models (a BLL or evidential head's spread comes from
        ``evaluate_features``)."""
        if self.uq != "ensemble":
            raise ValueError("evaluate_monitors serves ensemble models; this model's uq is " + self.uq
                             + ": call evaluate_features")
        if n_local < 0 or n_local > species.shape[0]:
            raise ValueError("n_local must be between 0 and the number of atoms")
        if raw_features.dim() != 2 or raw_features.shape[0] != n_local or raw_features.shape[1] != self.n_features:
            raise ValueError("raw_features must have shape [n_local, " + str(self.n_features) + "]")
        if energy_members.dim() != 2 or energy_members.shape[0] != self.n_members or energy_members.shape[1] != n_local:
            raise ValueError("energy_members must have shape [" + str(self.n_members) + ", n_local]")
        species_index = self.species_index(species)
        features = ((raw_features.to(self.feature_mean.dtype) - self.feature_mean) / self.feature_scale).detach()
        members = energy_members.detach().to(features.dtype)
        if self.n_members > 1:
            sigma = members.std(dim=0)
        else:
            sigma = torch.zeros_like(members[0])
        out: Dict[str, torch.Tensor] = {
            "features": features,
            "energy_sigma": torch.sqrt(sigma * sigma * self.energy_variance_scale + self.energy_variance_floor),
        }
        out.update(self.domain_monitors(features, species_index, edge_index, edge_vectors.detach(), n_local))
        return out

    def edge_grads(self, per_atom: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """d(sum over atoms of per_atom[k])/d(vectors) for every row k: [K, *vectors.shape]
        (vectors: the edge vectors [E, 3] or the raw features [n, D])."""
        grads: List[torch.Tensor] = []
        for k in range(per_atom.shape[0]):
            g = torch.autograd.grad(
                [per_atom[k].sum()], [vectors], retain_graph=True, allow_unused=True
            )[0]
            grads.append(torch.zeros_like(vectors) if g is None else g)
        return torch.stack(grads, dim=0)

    def forward(
        self,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        n_local: int,
    ) -> Dict[str, torch.Tensor]:
        return self.evaluate(species, edge_index, edge_vectors, n_local, True, False)
