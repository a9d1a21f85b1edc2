"""The compiled backend: a ``.pt2`` package (AOTInductor, see :mod:`mlip_md.model.aot_compile`)
called like the TorchScript model it was compiled from.

>>> model = load_compiled("cu.pt2")                 # or load_model("cu.pt2")
>>> out = model(species, edge_index, edge_vectors, n_local, monitors=False)
>>> out["edge_grad"], out["forces"]                 # [E, 3] as from the .pt; [N_all, 3] eV/Å

The graphs assemble forces [N_all, 3] and the virial [3, 3] themselves. What the package does
not compile (per-member forces for ``force_sigma``, structures with fewer than two centre atoms,
edges or neighbours) runs on the source TorchScript file, loaded on first need from the path
recorded in the package (or ``fallback=``); its edge gradients are assembled here.
"""
from __future__ import annotations

import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Union

import torch

from ..errors import ModelFileError
from ..model.assemble import forces_and_virial
from ..model.compiled_format import GRAPHS, check_compiled_block, file_sha256, graph_inputs, package_graph_names
from ..model.io import METADATA_NAME
from .backend import ModelBackend
from .model_info import ModelInfo
from .request import Capabilities, EvaluationRequest
from .torchscript import TorchScriptBackend

PathLike = Union[str, "os.PathLike[str]"]


class CompiledBackend(ModelBackend):
    """An AOTInductor package with the backend interface (same properties, same call).

    ``source`` is the TorchScript model, loaded lazily for the calls the package does not cover
    (see the module docstring); ``fallback_calls`` counts them.
    """

    def __init__(self, path: Path, graphs: dict[str, object], metadata: dict, fallback: Path | None):
        super().__init__(metadata, path)
        self.graphs = graphs
        self.outputs = self.info.compiled.outputs
        self.fallback_path = fallback
        self._fallback: TorchScriptBackend | None = None
        self.fallback_calls = 0
        self._checked_species: torch.Tensor | None = None
        self.capabilities = Capabilities(kind="compiled", assembles_forces=True, force_sigma="fallback",
                                         devices=("cpu",), dtypes=(self.info.dtype,), description="compiled")

    @classmethod
    def load(cls, path: PathLike, device: str = "cpu", fallback: PathLike | None = None) -> CompiledBackend:
        from torch._inductor.package import load_package

        path = Path(path)
        if not path.exists():
            raise ModelFileError(f"compiled model {path} does not exist; build it with `mlip-md compile MODEL.pt -o {path}`")
        if not zipfile.is_zipfile(path):
            raise ModelFileError(f"compiled model {path} is not a .pt2 package (corrupt or truncated?); "
                                 "rebuild it with mlip-md compile")
        if torch.device(device).type != "cpu":
            raise ModelFileError(f"compiled model {path} was built for the CPU; use device cpu, or the .pt file "
                                 f"on {device}")
        names = package_graph_names(path)
        if not names:
            raise ModelFileError(f"{path} holds no mlip_md graphs ({', '.join(GRAPHS)}); rebuild it with mlip-md compile")
        graphs = {}
        for name in names:
            try:
                graphs[name] = load_package(str(path), name)
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ModelFileError(f"could not load graph {name!r} of compiled model {path}: {first}; rebuild it "
                                     "with mlip-md compile (packages are tied to the torch version and CPU they "
                                     "were built with)") from exc
        text = graphs[names[0]].get_metadata().get(METADATA_NAME)
        if not text:
            raise ModelFileError(f"{path} is an AOTInductor package but not an mlip_md model (no {METADATA_NAME} "
                                 "metadata); build it with mlip-md compile")
        meta = json.loads(text)
        spec = ModelInfo.from_metadata(meta, path).compiled  # validates the metadata first
        check_compiled_block(meta, path)
        if spec.torch_version != torch.__version__:
            warnings.warn(f"{path} was compiled with torch {spec.torch_version}, this is torch "
                          f"{torch.__version__}; rebuild it with mlip-md compile if it misbehaves", stacklevel=2)
        source = Path(fallback) if fallback is not None else Path(spec.source or "")
        if fallback is None and source.is_file() and file_sha256(source) != spec.source_sha256:
            warnings.warn(f"{source} changed since {path} was compiled from it: the package is stale. Rebuild it "
                          f"with `mlip-md compile {source} -o {path}`", stacklevel=2)
        return cls(path, graphs, meta, source if source.is_file() else None)

    # ------------------------------------------------------------------ fallback
    @property
    def source(self) -> TorchScriptBackend:
        """The TorchScript model this package was compiled from (loaded on first use)."""
        if self._fallback is None:
            if self.fallback_path is None:
                raise ModelFileError(
                    f"this call needs the TorchScript model {self.path} was compiled from (force sigma, or fewer "
                    f"than two atoms / edges), but {self.info.compiled.source} is not there; pass "
                    "its path as fallback= (--model with --compiled)")
            # in the package's precision (mlip-md compile --dtype)
            self._fallback = TorchScriptBackend.load(self.fallback_path).to_dtype(self.info.dtype)
        return self._fallback

    def to(self, device: str) -> CompiledBackend:
        if torch.device(device).type != "cpu":
            raise ModelFileError(f"compiled model {self.path} runs on the CPU only; use the .pt file on {device}")
        return self

    def save(self, path: PathLike) -> Path:
        raise ModelFileError("a compiled package cannot be re-saved; save the .pt model and compile it again")

    # ------------------------------------------------------------------ call
    def _check_species(self, species: torch.Tensor) -> None:
        """The graphs map atomic numbers through a lookup table without checks (an unknown
        element would index out of range): check them, once per distinct species array."""
        known = self._checked_species
        if known is not None and known.shape == species.shape and torch.equal(known, species):
            return
        self.check_elements(species.cpu().numpy())
        self._checked_species = species.detach().clone()

    def evaluate(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_local: int,
                 request: EvaluationRequest) -> dict[str, torch.Tensor]:
        n_local = int(n_local)
        graph = "monitors" if request.monitors or "energy" not in self.graphs else "energy"
        compiled = not request.force_sigma and graph in self.graphs and min(n_local, edge_index.shape[1],
                                                                             species.shape[0]) >= 2
        if compiled:
            self._check_species(species)
            inputs = graph_inputs(species, edge_index, edge_vectors.to(self.dtype), n_local)
            compiled = inputs[-1].shape[0] >= 2  # not: fewer than two neighbours everywhere
        if compiled:
            return dict(zip(self.outputs[graph], self.graphs[graph](*inputs)))
        self.fallback_calls += 1
        out = self.source.evaluate(species, edge_index, edge_vectors, n_local, request)
        if not request.edge_gradients:
            out["forces"], out["virial"] = forces_and_virial(out["edge_grad"], edge_index, edge_vectors,
                                                             species.shape[0])
        return out


def load_compiled(path: PathLike, device: str = "cpu", fallback: PathLike | None = None) -> CompiledBackend:
    """Load a ``.pt2`` package written by :func:`mlip_md.model.aot_compile.compile_model`."""
    return CompiledBackend.load(path, device=device, fallback=fallback)
