"""The runtime's two interfaces and what the backends share.

* :class:`Backend` evaluates a model file on a graph of edges (the model contract): the
  TorchScript module (:mod:`.torchscript`), the fused descriptor kernel (:mod:`.fused`) or a
  compiled package (:mod:`.compiled`); :func:`mlip_md.runtime.factory.open_model` picks one.
* :class:`Evaluator` evaluates structures (positions, cell) for the engines: the
  :class:`~mlip_md.runtime.predictor.Predictor`, its MPI wrapper, the QM/ML hybrid and the
  active-learning recorder.

Units: Å, eV, eV/Å; shapes: N_all atoms (centres first), n_local centres, E edges, K members.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Protocol, runtime_checkable

import torch

from ..model.io import DTYPES
from .model_info import ModelInfo
from .request import Capabilities, EvaluationRequest


@runtime_checkable
class Backend(Protocol):
    """A model evaluated on edges. ``evaluate(species int64 [N_all], edge_index int64 [2, E]
    (centre i < n_local, neighbour j), edge_vectors [E, 3] = r_j - r_i (Å), n_local, request)``
    returns, per the contract: ``atomic_energy`` [n_local] and ``energy_members`` [K, n_local]
    (eV, model dtype); ``edge_grad`` [E, 3] = dE/dr_ij (eV/Å) when ``request.edge_gradients``
    or when the backend does not assemble forces (:attr:`Capabilities.assembles_forces`), else
    ``forces`` [N_all, 3] (eV/Å) and ``virial`` [3, 3] (eV); the monitor values with
    ``request.monitors``; ``member_edge_grad`` [K, E, 3] (or, evidential models,
    ``force_sigma`` [N_all, 3]) with ``request.force_sigma``.

    ``backend(species, edge_index, edge_vectors, n_local, monitors, force_sigma)`` is the same
    call with ``edge_gradients`` (the raw contract outputs). ``choice`` says why the factory
    picked this backend."""

    info: ModelInfo
    capabilities: Capabilities
    choice: str
    device: torch.device

    def evaluate(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_local: int,
                 request: EvaluationRequest) -> Dict[str, torch.Tensor]: ...

    def check_elements(self, numbers) -> None: ...


@runtime_checkable
class Evaluator(Protocol):
    """Structures in, :class:`~mlip_md.runtime.predictor.Prediction` out: what the engines call.

    ``predict(numbers int [N], positions [N, 3] Å, cell [3, 3] Å (rows), pbc [3], monitors,
    force_sigma)``: ``monitors`` and ``force_sigma`` are the caller's part of an
    :class:`EvaluationRequest` (edge gradients and the virial are the evaluator's business).
    ``info`` describes what it evaluates (elements, monitor thresholds, committee size K; K = 0:
    no committee, ``Prediction.energy_members`` is None); ``check_elements`` raises
    UnknownElementError for elements it cannot evaluate; ``model_seconds`` is the wall time
    spent inside model calls so far (profiling)."""

    @property
    def info(self) -> ModelInfo: ...

    @property
    def model_seconds(self) -> float: ...

    def check_elements(self, numbers) -> None: ...

    def predict(self, numbers, positions, cell, pbc, monitors: bool = True, force_sigma: bool = False): ...


class WrappedEvaluator:
    """Base of the evaluators that add something around another one (``self.predictor``: MPI
    distribution, recording): :attr:`info`, :attr:`model_seconds` and :meth:`check_elements`
    are the wrapped evaluator's; subclasses implement ``predict``."""

    def __init__(self, predictor: Evaluator):
        self.predictor = predictor

    @property
    def info(self) -> ModelInfo:
        return self.predictor.info

    @property
    def model_seconds(self) -> float:
        """Wall time the wrapped evaluator spent inside model calls (this process)."""
        return self.predictor.model_seconds

    def check_elements(self, numbers) -> None:
        self.predictor.check_elements(numbers)


class ModelBackend:
    """What every backend shares: the model file's metadata (``metadata``, the dict ``save``
    writes; assigning a new dict re-parses :attr:`info`), its path, the device, and the
    properties read from :attr:`info`. Subclasses set :attr:`capabilities` and implement
    :meth:`evaluate`."""

    capabilities: Capabilities
    #: why the factory chose this backend (set by :func:`mlip_md.runtime.factory.open_model`)
    choice: str = "constructed directly"

    def __init__(self, metadata: dict, path: Optional[Path] = None, device: str = "cpu"):
        self.path = path
        self.info = ModelInfo.from_metadata(metadata, path)
        self.device = torch.device(device)

    @property
    def metadata(self) -> dict:
        """The file's metadata dict (:attr:`ModelInfo.raw`); edits in place are written by
        ``save`` but not re-parsed: assign a new dict to update :attr:`info` as well."""
        return self.info.raw

    @metadata.setter
    def metadata(self, value: dict) -> None:
        self.info = ModelInfo.from_metadata(value, self.path)

    def update_metadata(self, block: str, **values) -> None:
        """Set ``values`` in the metadata block ``block`` (created when absent; in place: a
        backend sharing this dict, e.g. a fused one made from this, saves them too) and re-parse
        :attr:`info`."""
        self.info.raw.setdefault(block, {}).update(values)
        self.info = ModelInfo.from_metadata(self.info.raw, self.path)

    @property
    def cutoff(self) -> float:
        """Interaction cutoff in Å."""
        return self.info.cutoff

    @property
    def atomic_numbers(self) -> list:
        return list(self.info.atomic_numbers)

    @property
    def elements(self) -> list:
        return list(self.info.elements)

    @property
    def dtype(self) -> torch.dtype:
        """The precision the model runs in."""
        return DTYPES[self.info.dtype]

    @property
    def ensemble_size(self) -> int:
        return self.info.ensemble_size

    def check_elements(self, numbers) -> None:
        """Raise UnknownElementError naming unknown elements and the known ones."""
        self.info.check_elements(numbers)

    def evaluate(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_local: int,
                 request: EvaluationRequest) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def __call__(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_local: int,
                 monitors: bool = True, force_sigma: bool = False) -> Dict[str, torch.Tensor]:
        """The contract's raw outputs (``edge_grad`` included): :meth:`evaluate` with
        ``edge_gradients``."""
        return self.evaluate(species, edge_index, edge_vectors, n_local,
                             EvaluationRequest(monitors=monitors, force_sigma=force_sigma, edge_gradients=True))

