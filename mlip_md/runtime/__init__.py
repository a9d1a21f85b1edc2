"""What every engine and workflow uses to evaluate a model file.

* :mod:`.model_info` -- :class:`ModelInfo`, what a model file says about itself, parsed once;
* :mod:`.request` -- :class:`EvaluationRequest` (what one call needs) and :class:`Capabilities`
  (what a backend can do);
* :mod:`.backend` -- the :class:`Backend` (edges in) and :class:`Evaluator` (structures in)
  interfaces; backends :mod:`.torchscript`, :mod:`.fused` (C++ descriptor kernel) and
  :mod:`.compiled` (``.pt2``), chosen by :func:`open_model` (:mod:`.factory`);
* :mod:`.predictor` -- :class:`Predictor`: structure -> neighbour list -> backend ->
  :class:`Prediction`; :mod:`.parallel` -- the same over MPI ranks; :mod:`.neighbor_reuse` --
  the skin neighbour list reused between steps;
* :mod:`.monitors` (user rules on the uncertainty signals) and :mod:`.safety` (the checks
  every engine applies).

The names listed in ``__all__`` load on first use.
"""
from __future__ import annotations

_EXPORTS = {
    "ModelInfo": "model_info",
    "EvaluationRequest": "request",
    "Capabilities": "request",
    "Backend": "backend",
    "Evaluator": "backend",
    "open_model": "factory",
    "load_model": "factory",
    "Predictor": "predictor",
    "Prediction": "predictor",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mlip_md.runtime' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
