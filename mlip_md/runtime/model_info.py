"""What a model file says about itself, parsed once from its metadata (``mlip_md.json``).

>>> info = load_model("cu.pt").info              # or ModelInfo.from_metadata(read_metadata(p), p)
>>> info.cutoff, info.elements, info.ensemble_size
(5.5, ('Cu',), 4)
>>> info.domain.mahalanobis_threshold(), info.domain.pair_min_distance(29, 29)
(4534.96..., 1.97...)

Every engine and workflow reads these fields instead of walking the metadata dict; ``raw`` is the
dict itself, for what nothing else reads (``mlip-md info``). Units: Å and eV. The metadata is
validated (:func:`mlip_md.model.io.check_metadata`: format, version, required keys) before it
is parsed; optional blocks (descriptor, calibration, monitors, repulsion, compiled) parse to
None or to their defaults when a file predates them, so that older files keep loading.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import ase.data
import numpy as np

from ..errors import ModelFileError, UnknownElementError
from ..model.io import FORMAT_VERSION, UNITS, check_metadata


@dataclasses.dataclass(frozen=True)
class DescriptorSpec:
    """The metadata block ``descriptor``: what a host needs to run the descriptor itself (the
    fused kernel, csrc ``mlip_power_spectrum_*``). ``kind`` and ``version`` as written (any JSON
    value); the sizes and radii are None when the block lacks them. Version 2 (compressed
    species channels, :mod:`mlip_md.model.descriptor`) adds ``channels`` (Q) and
    ``radial_mixing`` (W, float64 array [n_species, n_max, Q], read-only); for version 1 both
    are None (one-hot, Q = n_species n_max)."""

    kind: Any
    version: Any
    n_species: Optional[int] = None
    n_max: Optional[int] = None
    l_max: Optional[int] = None
    cutoff: Optional[float] = None  # Å
    switch_width: Optional[float] = None  # Å
    channels: Optional[int] = None
    radial_mixing: Optional[np.ndarray] = dataclasses.field(default=None, compare=False, repr=False)

    @classmethod
    def from_block(cls, block: Any) -> Optional["DescriptorSpec"]:
        if not isinstance(block, dict):
            return None

        def number(key, kind):
            return None if block.get(key) is None else kind(block[key])

        spec = cls(block.get("kind"), block.get("version"), number("n_species", int), number("n_max", int),
                   number("l_max", int), number("cutoff", float), number("switch_width", float),
                   number("channels", int), _mixing_array(block.get("radial_mixing")))
        if spec.radial_mixing is not None:
            expected = (spec.n_species, spec.n_max, spec.channels)
            if spec.radial_mixing.shape != expected:
                raise ModelFileError(f"metadata block 'descriptor': radial_mixing has shape "
                                     f"{list(spec.radial_mixing.shape)}, not [n_species, n_max, channels] = "
                                     f"{list(expected)}; re-export the model")
        return spec

    @property
    def n_channels(self) -> Optional[int]:
        """Q: ``channels``, or n_species n_max for a one-hot (version 1) block."""
        if self.channels is not None:
            return self.channels
        if self.n_species is None or self.n_max is None:
            return None
        return self.n_species * self.n_max

    def kernel_params(self) -> Tuple[int, int, int, float, float]:
        """(n_species, n_max, l_max, cutoff Å, switch_width Å): the fused kernel's parameters."""
        return (int(self.n_species), int(self.n_max), int(self.l_max), float(self.cutoff), float(self.switch_width))


def _mixing_array(value: Any) -> Optional[np.ndarray]:
    """The nested list ``radial_mixing`` as a read-only float64 array (None when absent)."""
    if value is None:
        return None
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"metadata block 'descriptor': radial_mixing is not a numeric array [S][n_max][Q] "
                             f"({exc}); re-export the model") from exc
    if array.ndim != 3 or not np.all(np.isfinite(array)):
        raise ModelFileError("metadata block 'descriptor': radial_mixing must be a finite array [S][n_max][Q]; "
                             "re-export the model")
    array.setflags(write=False)
    return array


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Variance calibration (``mlip-md calibrate``): calibrated energy variance per atom =
    energy_variance_scale var_K + energy_variance_floor (eV²); force variance =
    force_variance_scale var_K ((eV/Å)²). Uncalibrated files: 1, 0, 1."""

    energy_variance_scale: float = 1.0
    energy_variance_floor: float = 0.0
    force_variance_scale: float = 1.0

    @classmethod
    def from_block(cls, block: Any) -> "Calibration":
        block = block if isinstance(block, dict) else {}
        return cls(float(block.get("energy_variance_scale", 1.0)), float(block.get("energy_variance_floor", 0.0)),
                   float(block.get("force_variance_scale", 1.0)))


@dataclasses.dataclass(frozen=True)
class MahalanobisStats:
    """Per-atom Mahalanobis T² of one element's training environments: the ``empirical``
    quantile, the largest value ``training_max`` and the effective degrees of freedom ``dof``
    (None when the file lacks them)."""

    empirical: Optional[float] = None
    training_max: Optional[float] = None
    dof: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class DminStats:
    """Kernel distance d_min of one element's held-out training environments to the reference
    set: the ``empirical`` quantile and the largest value ``holdout_max`` (None when absent)."""

    empirical: Optional[float] = None
    holdout_max: Optional[float] = None


def _optional_float(value: Any) -> Optional[float]:
    return None if value is None else float(value)


@dataclasses.dataclass(frozen=True)
class DomainLimits:
    """Where the training data ends (metadata block ``monitors``): per element (atomic number)
    the T² and d_min statistics, and per ordered element pair the closest distance seen in
    training (Å; 0 for pairs never seen)."""

    mahalanobis: Mapping[int, MahalanobisStats] = dataclasses.field(default_factory=dict)
    d_min: Mapping[int, DminStats] = dataclasses.field(default_factory=dict)
    pair_min_distances: Mapping[Tuple[int, int], float] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_metadata(cls, metadata: Mapping) -> "DomainLimits":
        """The limits of a metadata dict (empty ones when it has no ``monitors`` block)."""
        monitors = metadata.get("monitors", {}) if isinstance(metadata, Mapping) else {}

        def per_element(signal: str) -> Dict[int, dict]:
            return {int(z): v for z, v in monitors.get(signal, {}).get("per_element", {}).items()}

        t2 = {z: MahalanobisStats(_optional_float(v.get("empirical")), _optional_float(v.get("training_max")),
                                  _optional_float(v.get("dof"))) for z, v in per_element("mahalanobis").items()}
        d_min = {z: DminStats(_optional_float(v.get("empirical")), _optional_float(v.get("holdout_max")))
                 for z, v in per_element("d_min").items()}
        pairs = {}
        for name, distance in monitors.get("pair_min_distance", {}).items():
            za, zb = (int(z) for z in name.split("-"))
            pairs[(za, zb)] = float(distance)
        return cls(t2, d_min, pairs)

    def mahalanobis_threshold(self) -> float:
        """The largest per-atom T² of the training set over elements (``training_max``; the
        ``empirical`` quantile for files without it); inf without statistics."""
        values = [s.training_max if s.training_max is not None else s.empirical for s in self.mahalanobis.values()]
        return max((v for v in values if v is not None), default=math.inf)

    def d_min_threshold(self) -> float:
        """The largest d_min of held-out training environments over elements (``holdout_max``;
        the ``empirical`` quantile for files without it); inf when the model has no d_min."""
        values = [s.holdout_max if s.holdout_max is not None else s.empirical for s in self.d_min.values()]
        return max((v for v in values if v is not None), default=math.inf)

    def pair_min_distance(self, za: int, zb: int) -> float:
        """Closest training distance of the element pair (Å); inf when the pair never occurred."""
        value = self.pair_min_distances.get((int(za), int(zb)), 0.0)
        return value if value > 0 else math.inf

    def closest_training_distance(self) -> Optional[float]:
        """The largest of the pairs' closest training distances (Å), None when none is known: the
        scale of a test crystal that stays inside the training data."""
        return max((v for v in self.pair_min_distances.values() if v > 0), default=None)


@dataclasses.dataclass(frozen=True)
class RepulsionSpec:
    """The metadata block ``repulsion`` as written (see :mod:`mlip_md.model.repulsion`): ``kind``
    (the block itself when it is not a table), ``version``, ``switch``, and the radii table:
    ``atomic_numbers`` [S], ``r_inner`` / ``r_outer`` [S][S] (Å), None when absent."""

    kind: Any
    version: Any = None
    switch: Any = None
    atomic_numbers: Any = None
    r_inner: Any = None
    r_outer: Any = None

    @classmethod
    def from_block(cls, block: Any) -> Optional["RepulsionSpec"]:
        """None when the file has no repulsion (no block, or kind "none")."""
        if block is None or (isinstance(block, dict) and block.get("kind") == "none"):
            return None
        if not isinstance(block, dict):
            return cls(block)
        return cls(block.get("kind"), block.get("version"), block.get("switch"), block.get("atomic_numbers"),
                   block.get("r_inner"), block.get("r_outer"))


@dataclasses.dataclass(frozen=True)
class CompiledSpec:
    """The metadata block ``compiled`` of a ``.pt2`` package (:mod:`mlip_md.model.aot_compile`):
    its format, the source file and its SHA-256, the torch version it was built with and the
    output names of every graph."""

    format: Any
    format_version: int
    source: Optional[str]
    source_sha256: Optional[str]
    torch_version: Optional[str]
    outputs: Mapping[str, Tuple[str, ...]]

    @classmethod
    def from_block(cls, block: Any) -> Optional["CompiledSpec"]:
        if not isinstance(block, dict):
            return None
        outputs = {name: tuple(names) for name, names in (block.get("outputs") or {}).items()}
        return cls(block.get("format"), int(block.get("format_version", 0)), block.get("source"),
                   block.get("source_sha256"), block.get("torch_version"), outputs)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """One model file's description (see the module docstring). ``dtype``: the precision the
    model runs in ("float32"/"float64"; differs from the file's ``stored_dtype`` after
    ``to_dtype``); ``ensemble_size``: members K it outputs (BLL: sigma points; 0 for an
    evaluator without a committee); ``uq``: "ensemble" | "bll" | "evidential" (None for files
    that predate the key)."""

    path: Optional[Path]
    format_version: int
    mlip_md_version: Optional[str]  # of the mlip_md that wrote the file
    atomic_numbers: Tuple[int, ...]
    cutoff: float  # Å
    dtype: str
    stored_dtype: str
    ensemble_size: int
    uq: Optional[str]
    architecture: Optional[str]
    n_features: Optional[int]
    descriptor: Optional[DescriptorSpec]
    calibration: Calibration
    domain: DomainLimits
    repulsion: Optional[RepulsionSpec]
    compiled: Optional[CompiledSpec]
    units: Mapping[str, str]
    provenance: Mapping[str, Any]
    raw: Dict[str, Any] = dataclasses.field(repr=False, compare=False)

    @classmethod
    def from_metadata(cls, metadata: Dict[str, Any], path=None) -> "ModelInfo":
        """Validate (ModelFileError naming ``path``) and parse a model file's metadata dict,
        which becomes :attr:`raw` (not copied)."""
        check_metadata(metadata, path)
        n_features = metadata.get("n_features")
        return cls(
            path=None if path is None else Path(path),
            format_version=int(metadata["format_version"]),
            mlip_md_version=metadata.get("mlip_md_version"),
            atomic_numbers=tuple(int(z) for z in metadata["atomic_numbers"]),
            cutoff=float(metadata["cutoff"]),
            dtype=str(metadata["dtype"]),
            stored_dtype=str(metadata.get("stored_dtype", metadata["dtype"])),
            ensemble_size=int(metadata["ensemble_size"]),
            uq=metadata.get("uq"),
            architecture=metadata.get("architecture"),
            n_features=None if n_features is None else int(n_features),
            descriptor=DescriptorSpec.from_block(metadata.get("descriptor")),
            calibration=Calibration.from_block(metadata.get("calibration")),
            domain=DomainLimits.from_metadata(metadata),
            repulsion=RepulsionSpec.from_block(metadata.get("repulsion")),
            compiled=CompiledSpec.from_block(metadata.get("compiled")),
            units=dict(metadata.get("units", UNITS)),
            provenance=dict(metadata.get("provenance", {})),
            raw=metadata,
        )

    @classmethod
    def without_file(cls, atomic_numbers, label: str = "evaluator") -> "ModelInfo":
        """The description of an evaluator that is not one model file (the QM/ML hybrid):
        its elements only; no committee (ensemble_size 0), no cutoff (inf), no calibration and
        no training statistics (every monitor threshold inf)."""
        return cls(path=Path(label), format_version=FORMAT_VERSION, mlip_md_version=None,
                   atomic_numbers=tuple(int(z) for z in atomic_numbers), cutoff=math.inf, dtype="float64",
                   stored_dtype="float64", ensemble_size=0, uq=None, architecture=None, n_features=None,
                   descriptor=None, calibration=Calibration(), domain=DomainLimits(), repulsion=None, compiled=None,
                   units=dict(UNITS), provenance={}, raw={})

    @property
    def elements(self) -> Tuple[str, ...]:
        """Chemical symbols of :attr:`atomic_numbers`, in the model's species order."""
        return tuple(ase.data.chemical_symbols[z] for z in self.atomic_numbers)

    def check_elements(self, numbers) -> None:
        """Raise UnknownElementError naming the elements of ``numbers`` (atomic numbers [N]) the
        model does not know, and the ones it knows."""
        present = np.unique(np.asarray(numbers, dtype=np.int64))  # a set over N Python ints costs ~0.3 µs/atom
        unknown = sorted(set(present.tolist()) - set(self.atomic_numbers))
        if unknown:
            names = ", ".join(ase.data.chemical_symbols[z] if 0 < z < len(ase.data.chemical_symbols) else str(z)
                              for z in unknown)
            raise UnknownElementError(
                f"element(s) {names} unknown to model {self.path}; it was trained on "
                f"{', '.join(self.elements)}. Use a model trained on these elements."
            )
