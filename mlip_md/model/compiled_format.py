"""The compiled-package format (``.pt2``): what :mod:`mlip_md.model.aot_compile` writes and
:mod:`mlip_md.runtime.compiled` (and the LAMMPS plugin) reads.

A package is an AOTInductor archive holding the graphs :data:`GRAPHS` (each returns
:data:`BASE_OUTPUTS` first, then its monitor outputs) and the model's metadata JSON under the
AOTInductor metadata key ``mlip_md.json``, with a ``compiled`` block (:data:`COMPILED_FORMAT`
version :data:`COMPILED_FORMAT_VERSION`, the source file and its SHA-256, the torch version,
graph inputs :data:`INPUT_NAMES` and outputs). :func:`graph_inputs` builds a graph's inputs from
the contract's (species, edge_index, edge_vectors, n_local).
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Union

import torch

from ..errors import ModelFileError
from .descriptor import neighbour_slots

PathLike = Union[str, "os.PathLike[str]"]

#: file suffix of a compiled package
SUFFIX = ".pt2"
#: names of the graphs inside a package
GRAPHS = ("energy", "monitors")
#: outputs every graph returns first, in this order
BASE_OUTPUTS = ("atomic_energy", "edge_grad", "energy_members", "forces", "virial")
INPUT_NAMES = ("species", "species_local", "edge_index", "edge_vectors", "slot", "neighbour_slots")
COMPILED_FORMAT = "mlip_md.aoti"
COMPILED_FORMAT_VERSION = 1


def is_compiled_path(path) -> bool:
    """Whether ``path`` names a compiled package (``.pt2``) rather than a TorchScript model
    file: the one place that looks at the suffix."""
    return path is not None and str(path).endswith(SUFFIX)


def file_sha256(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_graph_names(path: Path) -> list:
    """The mlip_md graphs (of :data:`GRAPHS`, in that order) an AOTInductor package holds."""
    marker = "/data/aotinductor/"
    with zipfile.ZipFile(path) as archive:
        names = {("/" + n).split(marker, 1)[1].split("/")[0] for n in archive.namelist() if marker in "/" + n}
    return [g for g in GRAPHS if g in names]


def check_compiled_block(meta: dict, path: PathLike) -> None:
    """ModelFileError unless the metadata's ``compiled`` block is a format this mlip_md reads."""
    info = meta.get("compiled", {})
    if info.get("format") != COMPILED_FORMAT or int(info.get("format_version", 0)) > COMPILED_FORMAT_VERSION:
        raise ModelFileError(f"{path}: unknown compiled-model format {info.get('format')!r} "
                             f"v{info.get('format_version')}; rebuild it with this mlip_md (mlip-md compile)")


def graph_inputs(species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                 n_local: int) -> tuple[torch.Tensor, ...]:
    """The compiled graphs' inputs from the contract's (species int64 [N_all], edge_index int64
    [2, E], edge_vectors [E, 3] Å, n_local): adds species[:n_local], the neighbour slot of every
    edge [E] and a dummy tensor whose length is the largest neighbour count."""
    slot, max_nb = neighbour_slots(edge_index[0], n_local)
    carrier = torch.empty((max_nb,), dtype=edge_vectors.dtype, device=edge_vectors.device)
    return (species, species[:n_local], edge_index, edge_vectors, slot, carrier)
