"""Built-in potential, the one-file model format, and the conformance check."""
from .io import ExportedModel, default_model_path, load_model, load_potential, read_metadata, save_model
from .potential import MLIPotential, ModelConfig
from .validate import ValidationReport, validate_model

__all__ = [
    "ExportedModel",
    "MLIPotential",
    "ModelConfig",
    "ValidationReport",
    "default_model_path",
    "load_model",
    "load_potential",
    "read_metadata",
    "save_model",
    "validate_model",
]
