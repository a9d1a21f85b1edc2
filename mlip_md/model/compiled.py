"""Loading a compiled model package (``.pt2``, see :mod:`mlip_md.model.compile`) so that the
engines call it exactly like the TorchScript model (:class:`~mlip_md.model.io.ExportedModel`).

>>> model = load_compiled("cu.pt2")                 # or load_model("cu.pt2")
>>> out = model(species, edge_index, edge_vectors, n_local, monitors=False)
>>> out["edge_grad"]                                # [E, 3], as from the .pt

What the package does not compile (per-member forces for ``force_sigma``, structures with
fewer than two centre atoms, edges or neighbours) runs on the source TorchScript file, loaded
on first need from the path recorded in the package (or ``fallback=``).
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
from .compile import (
    COMPILED_FORMAT,
    COMPILED_FORMAT_VERSION,
    GRAPHS,
    file_sha256,
    graph_inputs,
)
from .io import METADATA_NAME, ExportedModel, check_metadata

PathLike = Union[str, "os.PathLike[str]"]


def is_compiled_path(path) -> bool:
    return path is not None and str(path).endswith(".pt2")


def _graph_names(path: Path) -> list:
    marker = "/data/aotinductor/"
    with zipfile.ZipFile(path) as archive:
        names = {("/" + n).split(marker, 1)[1].split("/")[0] for n in archive.namelist() if marker in "/" + n}
    return [g for g in GRAPHS if g in names]


class CompiledModel(ExportedModel):
    """An AOTInductor package behaving like :class:`ExportedModel` (same properties, same call).

    ``self.module`` is the source TorchScript module, loaded lazily for the calls the package
    does not cover (see the module docstring).
    """

    def __init__(self, path: Path, graphs: dict[str, object], metadata: dict, fallback: Path | None):
        super().__init__(None, metadata, path)
        self.graphs = graphs
        self.outputs = metadata["compiled"]["outputs"]
        self.fallback_path = fallback
        self._fallback: ExportedModel | None = None
        self.fallback_calls = 0
        self._checked_species: torch.Tensor | None = None

    @classmethod
    def load(cls, path: PathLike, device: str = "cpu", fallback: PathLike | None = None) -> CompiledModel:
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
        names = _graph_names(path)
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
        check_metadata(meta, path)
        info = meta.get("compiled", {})
        if info.get("format") != COMPILED_FORMAT or int(info.get("format_version", 0)) > COMPILED_FORMAT_VERSION:
            raise ModelFileError(f"{path}: unknown compiled-model format {info.get('format')!r} "
                                 f"v{info.get('format_version')}; rebuild it with this mlip_md (mlip-md compile)")
        if info.get("torch_version") != torch.__version__:
            warnings.warn(f"{path} was compiled with torch {info.get('torch_version')}, this is torch "
                          f"{torch.__version__}; rebuild it with mlip-md compile if it misbehaves", stacklevel=2)
        source = Path(fallback) if fallback is not None else Path(info.get("source", ""))
        if fallback is None and source.is_file() and file_sha256(source) != info.get("source_sha256"):
            warnings.warn(f"{source} changed since {path} was compiled from it: the package is stale. Rebuild it "
                          f"with `mlip-md compile {source} -o {path}`", stacklevel=2)
        return cls(path, graphs, meta, source if source.is_file() else None)

    # ------------------------------------------------------------------ fallback
    @property
    def source(self) -> ExportedModel:
        """The TorchScript model this package was compiled from (loaded on first use)."""
        if self._fallback is None:
            if self.fallback_path is None:
                raise ModelFileError(
                    f"this call needs the TorchScript model {self.path} was compiled from (force sigma, or fewer "
                    f"than two atoms / edges), but {self.metadata['compiled'].get('source')} is not there; pass "
                    "its path as fallback= (--model with --compiled)")
            fallback = ExportedModel.load(self.fallback_path)
            fallback.module.to(self.dtype)  # the package's precision (mlip-md compile --dtype)
            fallback.metadata = dict(fallback.metadata, dtype=self.metadata["dtype"])
            self._fallback = fallback
        return self._fallback

    def to(self, device: str) -> CompiledModel:
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

    def __call__(
        self,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        n_local: int,
        monitors: bool = True,
        force_sigma: bool = False,
    ) -> dict[str, torch.Tensor]:
        n_local = int(n_local)
        n_edges = edge_index.shape[1]
        graph = "monitors" if monitors or "energy" not in self.graphs else "energy"
        if force_sigma or graph not in self.graphs or n_local < 2 or n_edges < 2 or species.shape[0] < 2:
            self.fallback_calls += 1
            return self.source(species, edge_index, edge_vectors, n_local, monitors, force_sigma)
        self._check_species(species)
        inputs = graph_inputs(species, edge_index, edge_vectors.to(self.dtype), n_local)
        if inputs[-1].shape[0] < 2:  # fewer than two neighbours everywhere
            self.fallback_calls += 1
            return self.source(species, edge_index, edge_vectors, n_local, monitors, force_sigma)
        values = self.graphs[graph](*inputs)
        return dict(zip(self.outputs[graph], values))


def load_compiled(path: PathLike, device: str = "cpu", fallback: PathLike | None = None) -> CompiledModel:
    """Load a ``.pt2`` package written by :func:`mlip_md.model.compile.compile_model`."""
    return CompiledModel.load(path, device=device, fallback=fallback)
