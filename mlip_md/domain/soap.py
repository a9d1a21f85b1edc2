"""Model-agnostic applicability domain: T^2 and d_min on SOAP power spectra (featomic).

The monitors inside a model file use that model's own descriptors. To ask "is this structure
like the training set?" independently of any model (or of a model that is not an mlip_md
model), :class:`SoapDomain` fits the same two statistics on the SOAP power spectrum of the
training structures, computed by featomic (optional extra: ``pip install "mlip_md[soap]"``):

* T^2 per centre element against a shrunk covariance (:mod:`mlip_md.domain.mahalanobis`),
  threshold = empirical quantile over the training environments;
* d_min to a farthest-point-sampled reference set with a normalised Gaussian kernel
  (:mod:`mlip_md.domain.kernel`), threshold from held-out training environments.

Descriptors are standardised per feature with the training mean and standard deviation.
Units: cutoff and Gaussian width in Å; T^2 and d_min are dimensionless.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence

import ase
import numpy as np
import torch

from .kernel import fit_reference_set, kernel_distance
from .mahalanobis import fit_mahalanobis, t_squared


def _featomic():
    try:
        import featomic  # noqa: PLC0415
        from metatensor import Labels  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError("the SOAP descriptor needs featomic: pip install \"mlip_md[soap]\" "
                          "(or pip install featomic)") from exc
    return featomic, Labels


@dataclasses.dataclass(frozen=True)
class SoapDescriptor:
    """SOAP power spectrum per atom (featomic), all element pairs of ``species`` as properties."""

    species: Sequence[int]
    cutoff: float = 5.0  # Å
    smoothing: float = 0.5  # Å, shifted-cosine width at the cutoff
    width: float = 0.3  # Å, Gaussian atom density
    max_radial: int = 6
    max_angular: int = 4

    def __post_init__(self) -> None:
        if self.cutoff <= 0 or self.width <= 0 or not 0 < self.smoothing < self.cutoff:
            raise ValueError(f"SOAP needs cutoff > smoothing > 0 and width > 0 (Å), got cutoff {self.cutoff}, "
                             f"smoothing {self.smoothing}, width {self.width}")
        if len(self.species) == 0:
            raise ValueError("SOAP needs the list of atomic numbers it describes")

    def compute(self, frames: Sequence[ase.Atoms]) -> np.ndarray:
        """Descriptors [sum of atoms over frames, D], rows in frame order then atom order."""
        featomic, Labels = _featomic()
        unknown = sorted({int(z) for atoms in frames for z in np.unique(atoms.numbers)} - set(self.species))
        if unknown:
            raise ValueError(f"atomic numbers {unknown} are not in the SOAP species {list(self.species)}")
        calculator = featomic.SoapPowerSpectrum(
            cutoff={"radius": self.cutoff, "smoothing": {"type": "ShiftedCosine", "width": self.smoothing}},
            density={"type": "Gaussian", "width": self.width},
            basis={"type": "TensorProduct", "max_angular": self.max_angular,
                   "radial": {"type": "Gto", "max_radial": self.max_radial - 1}},
        )
        pairs = [[a, b] for a in self.species for b in self.species if a <= b]
        neighbours = Labels(["neighbor_1_type", "neighbor_2_type"], np.array(pairs, dtype=np.int32))
        descriptor = calculator.compute(list(frames)).keys_to_properties(neighbours).keys_to_samples("center_type")
        block = descriptor.block()
        samples = np.asarray(block.samples.values)  # (system, atom, center_type)
        offsets = np.concatenate([[0], np.cumsum([len(atoms) for atoms in frames])])
        out = np.empty((offsets[-1], block.values.shape[1]))
        out[offsets[samples[:, 0]] + samples[:, 1]] = np.asarray(block.values)
        return out


@dataclasses.dataclass
class SoapDomain:
    """T^2 and d_min on standardised SOAP descriptors of a training set (see module docstring)."""

    descriptor: SoapDescriptor
    mean: np.ndarray
    scale: np.ndarray
    mahalanobis: Dict[int, tuple]  # Z -> (mu, precision, threshold)
    references: np.ndarray  # [S, M, D]
    counts: np.ndarray  # [S]
    length: float
    d_min_thresholds: Dict[int, float]

    @classmethod
    def fit(cls, descriptor: SoapDescriptor, frames: Sequence[ase.Atoms], shrinkage: float = 0.05,
            reference_size: int = 256, quantile: float = 0.999, seed: int = 0) -> "SoapDomain":
        x = descriptor.compute(frames)
        numbers = np.concatenate([atoms.numbers for atoms in frames])
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 1e-12 * max(scale.max(), 1e-300), scale, 1.0)
        x = (x - mean) / scale
        species = list(descriptor.species)
        index = np.searchsorted(species, numbers)
        mahalanobis = {}
        for s, z in enumerate(species):
            rows = torch.from_numpy(x[index == s])
            if len(rows) == 0:
                continue
            mu, precision, _ = fit_mahalanobis(rows, shrinkage)
            t2 = t_squared(rows, mu, precision).numpy()
            mahalanobis[z] = (mu.numpy(), precision.numpy(), float(np.quantile(t2, quantile)))
        refs, counts, length, thresholds = fit_reference_set(x, index, len(species), size=reference_size,
                                                             quantile=quantile, seed=seed)
        d_thresholds = {species[s]: float(v["empirical"]) for s, v in thresholds.items()}
        return cls(descriptor, mean, scale, mahalanobis, refs, counts, length, d_thresholds)

    def evaluate(self, frames: Sequence[ase.Atoms]) -> Dict[str, np.ndarray]:
        """Per atom (frame order, then atom order): ``t2``, ``d_min`` and ``outside`` (beyond
        either threshold of its element)."""
        x = (self.descriptor.compute(frames) - self.mean) / self.scale
        numbers = np.concatenate([atoms.numbers for atoms in frames])
        species = list(self.descriptor.species)
        t2, d_min, outside = np.full(len(x), np.inf), np.full(len(x), np.inf), np.ones(len(x), dtype=bool)
        for s, z in enumerate(species):
            rows = numbers == z
            if not rows.any() or z not in self.mahalanobis:
                continue  # an element absent from training: infinitely far
            mu, precision, threshold = self.mahalanobis[z]
            delta = x[rows] - mu
            t2[rows] = ((delta @ precision) * delta).sum(axis=1)
            d_min[rows] = kernel_distance(x[rows], self.references[s, : self.counts[s]], self.length)
            outside[rows] = (t2[rows] > threshold) | (d_min[rows] > self.d_min_thresholds.get(z, np.inf))
        return {"t2": t2, "d_min": d_min, "outside": outside}

    def thresholds(self) -> Dict[str, Dict[int, float]]:
        return {"t2": {z: v[2] for z, v in self.mahalanobis.items()}, "d_min": dict(self.d_min_thresholds)}


def soap_domain_signals(train: List[ase.Atoms], frames: Sequence[ase.Atoms], cutoff: float) -> Dict[str, np.ndarray]:
    """Fit on ``train`` and evaluate ``frames``: the model-agnostic signals of the analyses."""
    species = sorted({int(z) for atoms in train for z in np.unique(atoms.numbers)})
    domain = SoapDomain.fit(SoapDescriptor(species, cutoff=cutoff), train)
    return domain.evaluate(frames)
