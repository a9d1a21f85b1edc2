"""The built-in potential and its one-file model format.

* :mod:`.potential` (``MLIPotential``: descriptor :mod:`.descriptor`, readout :mod:`.readout`,
  repulsion :mod:`.repulsion`), :mod:`.assemble` (forces and virial from edge gradients),
  :mod:`.native_readout` (the readout in C++);
* :mod:`.io` (save / read / re-export model files), :mod:`.aot_compile` and
  :mod:`.compiled_format` (compiled ``.pt2`` packages);
* :mod:`.conformance` (``mlip-md check``: a model file against the contract).

Loading a model file for evaluation is :func:`mlip_md.load_model` (:mod:`mlip_md.runtime`).
``validate_model`` and ``ValidationReport`` load on first use (they evaluate models through the
runtime, which itself reads model files through this package).
"""
from .io import default_model_path, load_potential, read_metadata, save_model
from .potential import MLIPotential, ModelConfig

__all__ = [
    "MLIPotential",
    "ModelConfig",
    "ValidationReport",
    "default_model_path",
    "load_potential",
    "read_metadata",
    "save_model",
    "validate_model",
]


def __getattr__(name):
    if name in ("validate_model", "ValidationReport"):
        from . import conformance

        return getattr(conformance, name)
    raise AttributeError(f"module 'mlip_md.model' has no attribute {name!r}")
