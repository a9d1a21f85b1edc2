"""Short-range repulsion of a model file: the ZBL screened nuclear repulsion between every pair of
atoms, switched off (C^2) before the closest distance seen in training for that element pair.

An ML potential knows nothing about distances closer than its training data; there it
extrapolates freely (without this term the shipped Cu model put two atoms 0.05 Å apart in a
108-atom crystal at -378 eV, where the EAM it was trained on gives +20 483 eV; with it: +151 982
eV). This term gives such contacts the physical wall and is exactly zero on the training data
and in domain. For one pair of atomic numbers Z_a, Z_b at
distance r (Å, eV):

    V(r)   = s(r) E_ZBL(r),   E_ZBL = k_e Z_a Z_b / r phi(r / a),  k_e = 14.399645 eV Å
    a      = 0.46850 Å / (Z_a^0.23 + Z_b^0.23)
    phi(x) = 0.18175 e^-3.19980x + 0.50986 e^-0.94229x + 0.28022 e^-0.40290x + 0.02817 e^-0.20162x
    s(r)   = 1 - (10 t^3 - 15 t^4 + 6 t^5),  t = clamp((r - r_inner) / (r_outer - r_inner), 0, 1)

(Ziegler, Biersack and Littmark's universal potential with the constants of LAMMPS' pair_style
zbl; s is C^2, 1 below r_inner and exactly 0 from r_outer on.) Radii per element pair:

* r_outer: the closest distance seen in training (buffer ``pair_min_distance``); for a pair never
  seen, :data:`COVALENT_FRACTION` x the sum of the covalent radii (Cu-Cu: 1.98 Å, the shipped
  model's training minimum is 1.97 Å).
* r_inner = :data:`INNER_FRACTION` x r_outer. Below half the closest trained distance the pair is
  in the screened-Coulomb regime (Cu-Cu: E_ZBL(0.99 Å) = 143 eV) that the universal potential
  describes; between r_inner and r_outer ZBL fades in while the ML part, still close to its data
  just below r_outer, keeps contributing, so the wall rises without a kink. Measured on the
  shipped Cu model (one atom pushed towards a neighbour in a 108-atom crystal, energy above the
  crystal: ML + repulsion vs the EAM it was trained on, eV): 1.8 Å 3.6 vs 3.6, 1.5 Å 16 vs 12,
  1.2 Å 65 vs 42, 1.0 Å 141 vs 106, 0.5 Å 1480 vs 1406 (the ML part alone: 3.2, 6.0, 6.9, 6.3,
  4.4). A switch over the outer quarter only (r_inner = 0.75 r_outer) doubles the energy at
  1.7 Å (11.3 vs 5.3 eV); one over three quarters (0.25) lets an ML part that turns attractive
  below its data dominate longer (s = 0.2 at 1.5 Å). The switch itself adds at most 63 eV/Å
  (Cu-Cu, at 1.29 Å).

Every pair's energy is split half and half between its atoms (the contract's edges are directed:
edge i -> j gives V / 2 to centre i), and its gradient joins ``edge_grad``, so every host's
forces, virial and stress include it. The parameters are part of the model file: buffers
``repulsion_inner`` / ``repulsion_outer`` [S, S] of the TorchScript module, and the metadata
block ``repulsion`` (:func:`metadata_block`) that C++ hosts read. The TorchScript module evaluates
it in ``evaluate`` (and compiled packages in their graphs); hosts that run the fused descriptor
kernel and call ``evaluate_features`` add it with the C core (``mlip_repulsion_*``, section 8 of
csrc/include/mlip_md.h): :class:`NativeRepulsion` here, the LAMMPS plugin's ``FusedRepulsion``.
Files without the block (older mlip_md) have no repulsion and keep their numbers;
:func:`mlip_md.model.io.reexport` adds it.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import ase.data
import numpy as np
import torch

from ..errors import ModelFileError

KIND = "zbl"
VERSION = 1
SWITCH = "smootherstep"
#: r_inner = INNER_FRACTION r_outer
INNER_FRACTION = 0.5
#: r_outer of element pairs never seen in training: this fraction of the covalent radii's sum
COVALENT_FRACTION = 0.75
#: e^2 / (4 pi eps_0) in eV Å (LAMMPS units metal), the universal screening length's 0.8854 a_0 in
#: Å and its exponent, and the four terms of the screening function phi
COULOMB = 14.399645
SCREENING_LENGTH = 0.46850
SCREENING_EXPONENT = 0.23
PHI_COEFFICIENTS = (0.18175, 0.50986, 0.28022, 0.02817)
PHI_DECAYS = (3.19980, 0.94229, 0.40290, 0.20162)
FORMULA = ("V(r) = s(r) 14.399645 Z_a Z_b / r phi(r (Z_a^0.23 + Z_b^0.23) / 0.46850), phi(x) = 0.18175 exp(-3.19980 x)"
           " + 0.50986 exp(-0.94229 x) + 0.28022 exp(-0.40290 x) + 0.02817 exp(-0.20162 x); s = 1 - (10 t^3 - 15 t^4"
           " + 6 t^5), t = clamp((r - r_inner) / (r_outer - r_inner), 0, 1); eV, angstrom; V / 2 to each atom")


# --------------------------------------------------------------------------- TorchScript math
def switched_zbl(z_a: torch.Tensor, z_b: torch.Tensor, r: torch.Tensor, r_inner: torch.Tensor,
                 r_outer: torch.Tensor) -> torch.Tensor:
    """V(r) (eV) elementwise: nuclear charges z_a, z_b, distances r (Å, > 0) and radii r_inner <
    r_outer (Å), all of one shape and float dtype."""
    x = r * (z_a.pow(0.23) + z_b.pow(0.23)) / 0.46850
    phi = (0.18175 * torch.exp(-3.19980 * x) + 0.50986 * torch.exp(-0.94229 * x)
           + 0.28022 * torch.exp(-0.40290 * x) + 0.02817 * torch.exp(-0.20162 * x))
    t = ((r - r_inner) / (r_outer - r_inner)).clamp(0.0, 1.0)
    switch = 1.0 - t * t * t * (10.0 + t * (-15.0 + 6.0 * t))
    return switch * (14.399645 * z_a * z_b / r * phi)


def repulsion_atomic_energy(
    charges: torch.Tensor,
    r_inner: torch.Tensor,
    r_outer: torch.Tensor,
    species_index: torch.Tensor,
    edge_index: torch.Tensor,
    vectors: torch.Tensor,
    n_local: int,
    max_radius: float,
) -> torch.Tensor:
    """Per-centre repulsion energy [n_local] (eV, differentiable with respect to ``vectors``):
    charges [S] (Z as floats), r_inner / r_outer [S, S] (Å), species_index [N_all], the
    contract's edge_index [2, E] and vectors [E, 3]. Only edges shorter than ``max_radius`` (the
    largest r_outer) and their pair's r_outer are evaluated."""
    out = torch.zeros((n_local,), dtype=vectors.dtype, device=vectors.device)
    plain = vectors.detach()
    r2 = (plain * plain).sum(dim=1)
    close = torch.nonzero(r2 < max_radius * max_radius).squeeze(1)
    if close.numel() == 0:
        return out
    pairs = edge_index.index_select(1, close)
    si = species_index[pairs[0]]
    sj = species_index[pairs[1]]
    outer = r_outer[si, sj]
    inside = torch.nonzero(r2.index_select(0, close) < outer * outer).squeeze(1)
    if inside.numel() == 0:
        return out
    edges = close.index_select(0, inside)
    si = si.index_select(0, inside)
    sj = sj.index_select(0, inside)
    r = torch.linalg.vector_norm(vectors.index_select(0, edges), dim=1)
    energy = switched_zbl(charges[si], charges[sj], r, r_inner[si, sj], outer.index_select(0, inside))
    return out.index_add(0, edge_index[0].index_select(0, edges), 0.5 * energy)


def repulsion_atomic_energy_dense(
    charges: torch.Tensor,
    r_inner: torch.Tensor,
    r_outer: torch.Tensor,
    species_index: torch.Tensor,
    edge_index: torch.Tensor,
    vectors: torch.Tensor,
    n_local: int,
) -> torch.Tensor:
    """:func:`repulsion_atomic_energy` without data-dependent selection (every edge evaluated,
    masked with ``torch.where``): traceable with symbolic shapes, for compiled packages."""
    si = species_index[edge_index[0]]
    sj = species_index[edge_index[1]]
    outer = r_outer[si, sj]
    r = torch.linalg.vector_norm(vectors, dim=1)
    active = r < outer
    one = torch.ones_like(r)
    # inactive edges get harmless stand-ins (r = 1 Å, switch 0..2 Å) so no inf/NaN reaches autograd
    energy = switched_zbl(charges[si], charges[sj], torch.where(active, r, one),
                          torch.where(active, r_inner[si, sj], 0.0 * one), torch.where(active, outer, 2.0 * one))
    energy = torch.where(active, 0.5 * energy, 0.0 * one)
    return torch.zeros((n_local,), dtype=vectors.dtype, device=vectors.device).index_add(0, edge_index[0], energy)


# --------------------------------------------------------------------------- radii
def repulsion_radii(atomic_numbers, pair_min_distance) -> Tuple[np.ndarray, np.ndarray, List[List[str]]]:
    """(r_inner [S, S], r_outer [S, S] in Å, source [S][S]) from the closest distances seen in
    training [S, S] (0 or non-finite: never seen). r_outer is the closest distance of the pair
    (the smaller of both orders), or :data:`COVALENT_FRACTION` x the covalent radii's sum for
    pairs never seen ("covalent radii"); r_inner = :data:`INNER_FRACTION` r_outer."""
    numbers = [int(z) for z in atomic_numbers]
    closest = np.array(pair_min_distance, dtype=np.float64).reshape(len(numbers), len(numbers))
    closest = np.where(np.isfinite(closest) & (closest > 0), closest, np.inf)
    closest = np.minimum(closest, closest.T)
    radii = np.array([ase.data.covalent_radii[z] for z in numbers])
    fallback = COVALENT_FRACTION * (radii[:, None] + radii[None, :])
    seen = np.isfinite(closest)
    outer = np.where(seen, closest, fallback)
    source = [["training" if seen[a, b] else "covalent radii" for b in range(len(numbers))] for a in range(len(numbers))]
    return INNER_FRACTION * outer, outer, source


def fit_repulsion(module) -> Dict[str, object]:
    """Set ``module``'s repulsion buffers (an :class:`~mlip_md.model.potential.MLIPotential` whose
    ``pair_min_distance`` is fitted) with :func:`repulsion_radii`. Returns a summary."""
    inner, outer, source = repulsion_radii(module.atomic_numbers.tolist(),
                                          module.pair_min_distance.detach().cpu().double().numpy())
    with torch.no_grad():
        module.repulsion_inner.copy_(torch.as_tensor(inner))
        module.repulsion_outer.copy_(torch.as_tensor(outer))
    return {"r_inner": inner.tolist(), "r_outer": outer.tolist(), "outer_source": source}


def clear_repulsion(module) -> None:
    """No repulsion for ``module`` (all radii 0)."""
    with torch.no_grad():
        module.repulsion_inner.zero_()
        module.repulsion_outer.zero_()


def has_repulsion(module) -> bool:
    """Whether ``module`` (a Python or TorchScript potential) carries a repulsion."""
    outer = getattr(module, "repulsion_outer", None)
    return outer is not None and outer.numel() > 0 and float(outer.max()) > 0


def metadata_block(module) -> dict:
    """The metadata block ``repulsion`` of ``module``: ``{"kind": "none"}`` without a repulsion,
    else the kind, version, switch, formula and per-pair radii (Å, [S][S] in the order of
    ``atomic_numbers``) that C++ hosts read."""
    if not has_repulsion(module):
        return {"kind": "none"}
    numbers = [int(z) for z in module.atomic_numbers.tolist()]
    inner = module.repulsion_inner.detach().cpu().double().numpy()
    outer = module.repulsion_outer.detach().cpu().double().numpy()
    closest = module.pair_min_distance.detach().cpu().double().numpy()
    radii = np.array([ase.data.covalent_radii[z] for z in numbers])
    source = [["training" if outer[a, b] == closest[a, b] else
               "covalent radii" if np.isclose(outer[a, b], COVALENT_FRACTION * (radii[a] + radii[b]), rtol=1e-6)
               else "set" for b in range(len(numbers))] for a in range(len(numbers))]
    return {
        "kind": KIND,
        "version": VERSION,
        "switch": SWITCH,
        "formula": FORMULA,
        "atomic_numbers": numbers,
        "r_inner": inner.tolist(),
        "r_outer": outer.tolist(),
        "outer_source": source,
        "inner_fraction": INNER_FRACTION,
        "covalent_fraction": COVALENT_FRACTION,
    }


# --------------------------------------------------------------------------- hosts
def repulsion_unsupported_reason(spec) -> Optional[str]:
    """None when the C core can evaluate a file's repulsion (``spec``: its
    :class:`~mlip_md.runtime.model_info.RepulsionSpec`, None without one), else why not."""
    if spec is None:
        return None
    if spec.kind != KIND or spec.version != VERSION or spec.switch != SWITCH:
        return (f"its repulsion is {spec.kind!r} version {spec.version!r}; this mlip_md's C core implements "
                f"{KIND!r} version {VERSION} ({SWITCH} switch) only")
    return None


def read_repulsion(spec, atomic_numbers, path=None) -> Optional[Dict[str, np.ndarray]]:
    """A file's repulsion (``spec``: its :class:`~mlip_md.runtime.model_info.RepulsionSpec`, the
    model's ``atomic_numbers`` [S]) as arrays ``atomic_numbers`` [S] (int32), ``r_inner`` /
    ``r_outer`` [S, S] (Å), or None when the model has none. Raises :class:`ModelFileError`
    naming ``path`` for an unknown kind or malformed radii."""
    reason = repulsion_unsupported_reason(spec)
    if reason is not None:
        raise ModelFileError(f"model file {path}: {reason}; upgrade mlip_md")
    if spec is None:
        return None
    numbers = [int(z) for z in atomic_numbers]
    try:
        if spec.atomic_numbers is None or spec.r_inner is None or spec.r_outer is None:
            raise KeyError(next(name for name in ("atomic_numbers", "r_inner", "r_outer")
                                if getattr(spec, name) is None))
        params = {
            "atomic_numbers": np.asarray(spec.atomic_numbers, dtype=np.int32),
            "r_inner": np.asarray(spec.r_inner, dtype=np.float64),
            "r_outer": np.asarray(spec.r_outer, dtype=np.float64),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"model file {path}: malformed repulsion block ({exc}); re-export the model") from exc
    s = len(numbers)
    if params["atomic_numbers"].tolist() != numbers or params["r_inner"].shape != (s, s) \
            or params["r_outer"].shape != (s, s):
        raise ModelFileError(f"model file {path}: the repulsion block must list the model's atomic numbers {numbers} "
                             f"and [{s}][{s}] radii; re-export the model")
    return params


class NativeRepulsion:
    """The repulsion of a model file in the C core (``mlip_md._core.Repulsion``), for hosts that
    call ``evaluate_features`` (which leaves it out): per-atom energies, accumulated into the
    host's edge gradients or forces and virial."""

    def __init__(self, params: Dict[str, np.ndarray]):
        from .._native import core

        self.params = params
        self.kernel = core.Repulsion(params["atomic_numbers"], params["r_inner"], params["r_outer"])

    def accumulate(self, species_index: np.ndarray, edge_index: np.ndarray, edge_vectors: np.ndarray, n_local: int,
                   edge_grad: Optional[np.ndarray] = None, forces: Optional[np.ndarray] = None,
                   virial: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
        """Per-atom repulsion energy [n_local] (eV, float64), None when no edge is inside its
        pair's r_outer (in domain: then nothing was added); adds its gradient to ``edge_grad``
        ([E, 3], or [R, E, 3]: every row, e.g. the mean and the ensemble members; float64 or
        float32), ``forces`` [N_all, 3] and ``virial`` [3, 3] (float64; any of them None)."""
        rows = None
        if edge_grad is not None and (edge_grad.ndim == 3 or edge_grad.dtype != np.float64):
            rows, edge_grad = edge_grad, np.zeros(edge_grad.shape[-2:], dtype=np.float64)
        energy, active = self.kernel.evaluate(species_index, edge_index, edge_vectors, n_local, edge_grad, forces,
                                              virial)
        if active == 0:
            return None
        if rows is not None:
            rows += edge_grad.astype(rows.dtype)
        return energy

    @staticmethod
    def add_energies(out: Dict[str, torch.Tensor], energy: Optional[np.ndarray]) -> None:
        """Add per-atom repulsion energies [n_local] (None: none) to ``out``'s atomic_energy,
        energy and every row of energy_members (in their dtype)."""
        if energy is None:
            return
        atomic = out["atomic_energy"]
        pair = torch.from_numpy(energy).to(atomic.dtype)
        out["atomic_energy"] = atomic + pair
        out["energy"] = out["atomic_energy"].sum()
        out["energy_members"] = out["energy_members"] + pair.unsqueeze(0)


def check_module_matches(module, params: Optional[Dict[str, np.ndarray]], path=None) -> None:
    """Raise :class:`ModelFileError` when the TorchScript module's repulsion buffers and the
    metadata block disagree (a hand-edited file: its engines would disagree)."""
    buffers = dict(module.named_buffers()) if module is not None else {}
    outer = buffers.get("repulsion_outer")
    module_has = outer is not None and outer.numel() > 0 and float(outer.max()) > 0
    if params is None and not module_has:
        return
    if params is None or not module_has:
        raise ModelFileError(f"model file {path}: its TorchScript module {'has' if module_has else 'lacks'} a "
                             "short-range repulsion but its metadata says otherwise; re-export the model "
                             "(mlip-md upgrade old.pt -o new.pt)")
    for name in ("r_inner", "r_outer"):
        stored = buffers["repulsion_" + name.split("_")[1]].detach().cpu().double().numpy()
        if not np.allclose(stored, params[name], rtol=1e-6, atol=0.0):
            raise ModelFileError(f"model file {path}: repulsion {name} of the metadata {params[name].tolist()} differs "
                                 f"from the module's {stored.tolist()}; re-export the model")
