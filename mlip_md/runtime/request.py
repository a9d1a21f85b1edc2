"""What a caller asks of one model evaluation, and what a backend can do.

The same names and meanings as the LAMMPS plugin's backend interface (``lammps_interface/src``).
"""
from __future__ import annotations

import dataclasses
from typing import Tuple


@dataclasses.dataclass(frozen=True)
class EvaluationRequest:
    """One call's needs beyond what every call produces (per-atom energies ``atomic_energy``
    [n_local], member energies ``energy_members`` [K, n_local] and the forces, as edge gradients
    or assembled):

    monitors: the per-atom monitor values (energy_sigma, mahalanobis, d_min, min_distance,
        min_distance_ratio [n_local], features [n_local, D]).
    force_sigma: per-member gradients (``member_edge_grad`` [K, E, 3]; evidential models:
        ``force_sigma`` [N, 3] directly), from which the host gets the per-atom, per-component
        calibrated force std [N, 3] (eV/Å).
    edge_gradients: the contract's per-edge dE/dr_ij (``edge_grad`` [E, 3], eV/Å) even from a
        backend that assembles forces itself: what per-atom virials, partial (sliced)
        evaluation or any host that assembles itself needs.
    virial: the host needs the virial [3, 3] (eV). Python backends that assemble forces always
        return it (one 3x3 product); the field is part of the contract hosts share.
    """

    monitors: bool = True
    force_sigma: bool = False
    edge_gradients: bool = False
    virial: bool = True


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a backend can do.

    kind: "torchscript" | "fused" | "compiled".
    assembles_forces: on calls without ``edge_gradients`` it returns ``forces`` [N_all, 3]
        (eV/Å) and ``virial`` [3, 3] (eV) itself instead of ``edge_grad`` [E, 3]; otherwise the
        host assembles them from ``edge_grad`` (:func:`mlip_md.model.assemble.forces_and_virial`).
    force_sigma: "native" (computed by the backend) or "fallback" (by the TorchScript model the
        backend falls back to).
    devices: torch device types it runs on.
    dtypes: precisions it can run in ("float32", "float64").
    description: the one-line text engines print ("fused descriptor kernel and C readout").
    """

    kind: str
    assembles_forces: bool
    force_sigma: str
    devices: Tuple[str, ...]
    dtypes: Tuple[str, ...]
    description: str
