"""One factory for every backend: which one evaluates a model, and why.

>>> model = open_model("cu.pt")                   # the fused kernel when it can serve the model
>>> model.capabilities.kind, model.choice
('fused', 'fused descriptor kernel: the model has a power_spectrum v1 descriptor block and runs on the CPU')
>>> load_model("cu.pt").capabilities.kind        # the file as stored (open_model(..., fused=False))
'torchscript'

The rules (the engines' ``fused`` / ``compiled`` / ``dtype`` options):

* ``compiled=`` a ``.pt2`` package, or a model path ending in ``.pt2``: the compiled backend
  (:mod:`.compiled`; its TorchScript source serves what the package does not compile);
* otherwise the TorchScript model file (:mod:`.torchscript`), run in ``dtype`` when given;
* ``fused`` None: the fused descriptor kernel (:mod:`.fused`) whenever it can serve the model on
  the device, True: required (FusedModelError naming why not), False: never.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

from ..model.compiled_format import is_compiled_path
from ..model.io import PathLike
from .backend import ModelBackend
from .compiled import load_compiled
from .fused import FusedBackend, FusedModelError, fused_unsupported_reason
from .torchscript import TorchScriptBackend

ModelLike = Union[PathLike, ModelBackend, None]


def open_model(model: ModelLike = None, device: str = "cpu", dtype: Optional[str] = None,
               fused: Optional[bool] = None, compiled: Optional[PathLike] = None) -> ModelBackend:
    """The backend that evaluates ``model`` (a path, None/"default" for the shipped model, or a
    loaded backend) on ``device``, chosen by the rules of the module docstring; its ``choice``
    says why. ``dtype``: "float32" / "float64" (default: the file's); a ``.pt2`` package has the
    precision it was compiled for (``mlip-md compile --dtype``)."""
    if compiled is not None and fused:
        raise FusedModelError("fused=True and compiled= are alternatives (the .pt2 package evaluates its own "
                              "descriptor); pass one of them")
    if compiled is not None and dtype is not None:
        raise ValueError("dtype= and compiled= are alternatives: a .pt2 package runs in the precision it was "
                         "compiled for (mlip-md compile --dtype); pass one of them")
    if compiled is not None:
        fallback = None if model is None or isinstance(model, ModelBackend) else model
        backend = load_compiled(compiled, device=device, fallback=fallback)
        choice = "compiled package: compiled= given (its TorchScript model serves what it does not compile)"
    elif isinstance(model, ModelBackend):
        backend, choice = model.to(device), f"{model.capabilities.description}: the loaded model given"
    elif is_compiled_path(model):
        backend, choice = load_compiled(model, device=device), "compiled package: the model file is a .pt2 package"
    else:
        backend, choice = TorchScriptBackend.load(model, device=device), "TorchScript"
    if dtype is not None:
        if backend.capabilities.kind == "compiled":
            raise ValueError("dtype= needs a TorchScript model file (.pt); a .pt2 package has a fixed precision")
        backend.to_dtype(dtype)
    if compiled is None:
        backend, choice = _fused_or_not(backend, fused, choice)
    backend.choice = choice
    return backend


def _fused_or_not(backend: ModelBackend, fused: Optional[bool], choice: str) -> Tuple[ModelBackend, str]:
    """``backend`` with or without the fused descriptor kernel, as ``fused`` asks, and why."""
    kind = backend.capabilities.kind
    if fused is False:
        if kind == "fused":
            backend = TorchScriptBackend(backend.module, backend.metadata, backend.path)
        return backend, choice if kind == "compiled" else "TorchScript: fused=False"
    if kind == "fused":
        return backend, choice
    if fused is None:
        reason = fused_unsupported_reason(backend)
        if reason is not None:
            return backend, choice if kind == "compiled" else f"{choice}: the fused kernel cannot serve it ({reason})"
        descriptor = backend.info.descriptor
        return FusedBackend(backend), (f"fused descriptor kernel: the model has a {descriptor.kind} "
                                       f"v{descriptor.version} descriptor block and runs on the CPU")
    return FusedBackend(backend), "fused descriptor kernel: fused=True"  # FusedModelError when it cannot


def load_model(path: Optional[PathLike] = None, device: str = "cpu") -> ModelBackend:
    """Load a model file as stored (``None``/"default": the shipped Cu model; ``*.pt2``: a
    compiled package): :func:`open_model` with ``fused=False``."""
    return open_model(path, device=device, fused=False)
