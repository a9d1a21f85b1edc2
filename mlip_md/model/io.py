"""One-file model format: TorchScript module + JSON metadata stored inside (``_extra_files``).

Python and C++ (``torch::jit::load(path, device, extra_files)``) read the same file. The
metadata entry is ``mlip_md.json``; see :func:`build_metadata` for its fields.
"""
from __future__ import annotations

import datetime
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import ase.data
import torch

from .. import __version__
from ..files import atomic_path
from ..errors import ModelFileError
from .descriptor import metadata_block as descriptor_block
from .potential import MLIPotential, ModelConfig
from .repulsion import clear_repulsion, fit_repulsion, has_repulsion, metadata_block

METADATA_NAME = "mlip_md.json"
FORMAT_NAME = "mlip_md.model"
FORMAT_VERSION = 1
UNITS = {"length": "angstrom", "energy": "eV", "force": "eV/angstrom", "stress": "eV/angstrom^3"}
DTYPES = {"float32": torch.float32, "float64": torch.float64}

PathLike = Union[str, "os.PathLike[str]"]


#: buffers added after format version 1 was fixed; files without them still load
OPTIONAL_BUFFERS = ("reference_features", "reference_count", "kernel_length", "bll_factor", "energy_variance_floor",
                    "repulsion_inner", "repulsion_outer", "descriptor.radial_mixing",
                    # the bounded monitor space (mlip_md.domain.monitor_space); older files keep their
                    # dense domain_mean / domain_precision, which the module still evaluates
                    "domain_center", "domain_projection", "domain_component_mean", "domain_component_precision",
                    "domain_residual_weight")


def default_model_path() -> Path:
    """The Cu model shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "data" / "cu_default.pt"


def resolve_model_path(path: Optional[PathLike]) -> Path:
    """``None`` or ``"default"`` -> the shipped model; otherwise the given path."""
    if path is None or str(path) == "default":
        return default_model_path()
    return Path(path)


def build_metadata(module: MLIPotential, dtype: str, extra: Optional[Dict[str, Any]] = None) -> dict:
    """Metadata for ``module``: format, elements, cutoff, dtype, ensemble, calibration, units."""
    numbers = [int(z) for z in module.atomic_numbers.tolist()]
    meta: Dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "mlip_md_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "architecture": "power_spectrum_ensemble_mlp",
        "model_config": module.config.to_dict(),
        "atomic_numbers": numbers,
        "elements": [ase.data.chemical_symbols[z] for z in numbers],
        "cutoff": float(module.cutoff),
        "dtype": dtype,
        "ensemble_size": int(module.n_members),  # members the model outputs (BLL: sigma points)
        "uq": module.uq,
        "n_features": int(module.n_features),
        # what a host needs to run the descriptor itself (csrc mlip_power_spectrum_*) and call
        # the model's evaluate_features for the rest
        "descriptor": descriptor_block(module.descriptor),
        "calibration": {
            "energy_variance_scale": float(module.energy_variance_scale),
            "energy_variance_floor": float(module.energy_variance_floor),
            "force_variance_scale": float(module.force_variance_scale),
        },
        "monitors": {"pair_min_distance": _pair_min_distances(module, numbers)},
        # the short-range repulsion (mlip_md.model.repulsion), for hosts that evaluate it in C++
        "repulsion": metadata_block(module),
        "provenance": {},
        "units": dict(UNITS),
    }
    if extra:
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(meta.get(key), dict):
                meta[key].update(value)
            else:
                meta[key] = value
    return meta


def _pair_min_distances(module: MLIPotential, numbers: list) -> Dict[str, float]:
    table = module.pair_min_distance
    return {
        f"{za}-{zb}": float(table[a, b]) for a, za in enumerate(numbers) for b, zb in enumerate(numbers)
    }


def save_model(
    module: MLIPotential,
    path: PathLike,
    dtype: str = "float64",
    metadata: Optional[Dict[str, Any]] = None,
) -> Path:
    """Script ``module`` (in eval mode, converted to ``dtype``) and write it atomically."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    was_training = module.training
    module = module.eval()
    original_dtype = module.feature_mean.dtype
    module.to(DTYPES[dtype])
    try:
        with warnings.catch_warnings():
            # TorchScript is the portable format of docs/model-contract.md (libtorch loads it in LAMMPS)
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=DeprecationWarning)
            scripted = torch.jit.script(module)
        write_model_file(scripted, build_metadata(module, dtype, metadata), path)
    finally:
        module.to(original_dtype)
        module.train(was_training)
    return Path(path)


def read_metadata(path: PathLike) -> dict:
    """Read and check only the metadata of a model file (cheap: no TorchScript load)."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist; pass the path of a .pt file written by mlip-md train")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"model file {path} is not a TorchScript archive (corrupt or truncated?); "
            "re-export it with mlip_md.model.save_model or mlip-md train"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/extra/" + METADATA_NAME)]
            if not names:
                raise ModelFileError(
                    f"{path} is a TorchScript file but not an mlip_md model (no {METADATA_NAME} "
                    "metadata); export models with mlip_md.model.save_model"
                )
            meta = json.loads(archive.read(names[0]).decode())
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise ModelFileError(f"model file {path} is corrupt ({exc}); re-export it") from exc
    check_metadata(meta, path)
    return meta


def check_metadata(meta: dict, path: PathLike) -> None:
    if meta.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path} is not an mlip_md model (metadata format {meta.get('format')!r})")
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise ModelFileError(f"{path}: metadata has no integer format_version; re-export the model")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written in model format {version}, newer than this mlip_md "
            f"{__version__} reads (format {FORMAT_VERSION}); upgrade mlip_md"
        )
    for key in ("atomic_numbers", "cutoff", "dtype", "ensemble_size"):
        if key not in meta:
            raise ModelFileError(f"{path}: metadata lacks {key!r}; re-export the model")


#: argument types (after self) and return type of the contract methods hosts call
CONTRACT_METHODS = {
    "evaluate": (["Tensor", "Tensor", "Tensor", "int", "bool", "bool"], "Dict[str, Tensor]"),
    "evaluate_features": (["Tensor", "Tensor", "Tensor", "Tensor", "int", "bool", "bool"], "Dict[str, Tensor]"),
}


def _check_contract_methods(module: torch.jit.ScriptModule, meta: dict, path: PathLike) -> None:
    """Raise ModelFileError unless ``module`` has ``evaluate`` (and ``evaluate_features`` when the
    metadata has a descriptor block) with the contract's signature: a foreign TorchScript module
    carrying copied mlip_md metadata is refused at load time, not at its first call."""
    required = ["evaluate"] + (["evaluate_features"] if isinstance(meta.get("descriptor"), dict) else [])
    for name in required:
        arguments, returns = CONTRACT_METHODS[name]
        if not module._c._has_method(name):
            raise ModelFileError(f"model file {path} carries mlip_md metadata but its TorchScript module has no {name} method "
                                 "(not a model exported by mlip_md, or a damaged one); re-export the model with "
                                 "mlip_md.model.save_model or mlip-md train")
        schema = module._c._get_method(name).schema
        found = ([str(a.type) for a in schema.arguments[1:]], [str(r.type) for r in schema.returns])
        if found != (arguments, [returns]):
            raise ModelFileError(f"model file {path}: its {name} method has the signature ({', '.join(found[0])}) -> "
                                 f"{', '.join(found[1])}, not the contract's ({', '.join(arguments)}) -> {returns}; "
                                 "re-export the model with mlip_md.model.save_model or mlip-md train")


def load_module(path: PathLike, device: str = "cpu") -> Tuple[torch.jit.ScriptModule, dict]:
    """(TorchScript module in eval mode on ``device``, checked metadata dict) of a model file;
    ModelFileError naming the file when it is missing, damaged or not an mlip_md model."""
    meta = read_metadata(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=DeprecationWarning)
            module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # torch raises RuntimeError subclasses with long traces
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"could not load TorchScript model {path}: {first}; re-export it") from exc
    _check_contract_methods(module, meta, path)
    module.eval()
    return module, meta


def write_model_file(module: torch.jit.ScriptModule, metadata: dict, path: PathLike) -> Path:
    """Write a scripted module with ``metadata`` (the ``mlip_md.json`` entry) atomically."""
    with atomic_path(path) as tmp:
        torch.jit.save(module, str(tmp), _extra_files={METADATA_NAME: json.dumps(metadata, indent=1)})
    return Path(path)


def load_potential(path: PathLike) -> MLIPotential:
    """Rebuild the trainable Python module (for fine-tuning / warm starts) from a model file."""
    scripted, meta = load_module(resolve_model_path(path))
    config = ModelConfig.from_dict(meta["model_config"])
    module = MLIPotential(config).to(torch.float64)  # load_state_dict copies into the existing dtype
    state = {k: v.to(torch.float64) if v.is_floating_point() else v for k, v in scripted.state_dict().items()}
    missing, unexpected = module.load_state_dict(state, strict=False)
    # older files lack them; a compressed descriptor's mixing is no default (version 2 writes it)
    missing = [name for name in missing
               if name not in OPTIONAL_BUFFERS or (name == "descriptor.radial_mixing" and module.descriptor.compressed)]
    if missing or unexpected:
        raise ModelFileError(f"{path}: weights do not match the architecture in its metadata "
                             f"(missing {missing}, unexpected {unexpected}); re-export the model")
    return module.to(torch.float64)


def reexport(path: PathLike, output: PathLike, repulsion: Optional[bool] = True) -> Path:
    """Re-script a model file with this version's code, keeping weights, statistics and
    metadata (calibration, monitors, provenance): gives older files the newer buffers.

    ``repulsion``: True adds the short-range repulsion (:mod:`mlip_md.model.repulsion`, radii
    from the file's closest training distances) to a file without one, False removes it, None
    keeps the file's (none for files older than it). In-domain results are unchanged."""
    meta = read_metadata(path)
    drop = ("format", "format_version", "mlip_md_version", "created", "repulsion")
    keep = {k: v for k, v in meta.items() if k not in drop}
    module = load_potential(path)
    if repulsion is True and not has_repulsion(module):
        fit_repulsion(module)
    elif repulsion is False:
        clear_repulsion(module)
    if repulsion is not None:
        module.config.repulsion = bool(repulsion)
        keep["model_config"] = dict(keep.get("model_config", {}), repulsion=bool(repulsion))
    return save_model(module, output, dtype=meta["dtype"], metadata=keep)

