"""mlip_md: machine-learning interatomic potentials in production molecular dynamics.

The heavy parts (torch) load on first use: ``import mlip_md`` stays cheap for the CLI.
"""
__version__ = "0.1.0"

__all__ = ["MLIPCalculator", "load_model", "validate_model", "neighbor_list", "__version__"]


def __getattr__(name):
    if name == "MLIPCalculator":
        from .engines.ase import MLIPCalculator

        return MLIPCalculator
    if name == "load_model":
        from .runtime.factory import load_model

        return load_model
    if name == "validate_model":
        from .model.conformance import validate_model

        return validate_model
    if name == "neighbor_list":
        from .neighbors import neighbor_list

        return neighbor_list
    raise AttributeError(f"module 'mlip_md' has no attribute {name!r}")
