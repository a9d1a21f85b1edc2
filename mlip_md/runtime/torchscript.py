"""The TorchScript backend: a model file's module (``mlip_md.model.io``) called as it is.

>>> model = TorchScriptBackend.load("cu.pt")        # or load_model("cu.pt")
>>> out = model(species, edge_index, edge_vectors, n_local, monitors=False)
>>> out["edge_grad"]                                # [E, 3] eV/Å: the host assembles forces

Runs on any device torch runs on, in float32 or float64 (:meth:`TorchScriptBackend.to_dtype`);
forces come from autograd inside the module, returned as edge gradients.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import torch

from ..model.io import DTYPES, PathLike, load_module, resolve_model_path, write_model_file
from .backend import ModelBackend
from .request import Capabilities, EvaluationRequest

CAPABILITIES = Capabilities(kind="torchscript", assembles_forces=False, force_sigma="native", devices=("cpu", "cuda"),
                            dtypes=tuple(DTYPES), description="TorchScript")


class TorchScriptBackend(ModelBackend):
    """A loaded model file: the TorchScript module, its metadata and the device it lives on.

    :meth:`evaluate` runs the module's ``evaluate`` with grad mode on (forces come from
    autograd) and the inputs converted to the model's dtype and device; it always returns
    ``edge_grad`` [E, 3] (``capabilities.assembles_forces`` is False).
    """

    capabilities = CAPABILITIES

    def __init__(self, module: torch.jit.ScriptModule, metadata: dict, path: Optional[Path] = None,
                 device: str = "cpu"):
        super().__init__(metadata, path, device)
        self.module = module

    @classmethod
    def load(cls, path: Optional[PathLike] = None, device: str = "cpu") -> "TorchScriptBackend":
        """Load a model file (None/"default": the shipped model) onto ``device``."""
        path = resolve_model_path(path)
        module, meta = load_module(path, device)
        return cls(module, meta, path, device)

    def to(self, device: str) -> "TorchScriptBackend":
        self.module.to(device)
        self.device = torch.device(device)
        return self

    def to_dtype(self, dtype: str) -> "TorchScriptBackend":
        """Run the model in ``dtype`` ("float32" or "float64"): its floating-point weights and
        buffers are converted in place (integer tables kept) and ``info.dtype`` follows, with the
        file's own precision kept as ``info.stored_dtype``. The file is unchanged."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if dtype != self.info.dtype:
            self.module.to(DTYPES[dtype])
            self.metadata = dict(self.metadata, dtype=dtype, stored_dtype=self.info.stored_dtype)
        return self

    def evaluate(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_local: int,
                 request: EvaluationRequest) -> Dict[str, torch.Tensor]:
        with torch.enable_grad():
            return self.module.evaluate(
                species.to(self.device),
                edge_index.to(self.device),
                edge_vectors.to(device=self.device, dtype=self.dtype),
                int(n_local),
                request.monitors,
                request.force_sigma,
            )

    def save(self, path: PathLike) -> Path:
        """Write module and (possibly edited) metadata atomically."""
        return write_model_file(self.module, self.metadata, path)
