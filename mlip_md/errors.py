"""Exceptions of mlip_md, derived from ASE's calculator errors so ASE code catches them.

Every message names the problem and the fix.
"""
from __future__ import annotations

from ase.calculators.calculator import CalculationFailed, CalculatorSetupError


class ModelFileError(CalculatorSetupError):
    """A model file is missing, corrupt, not an mlip_md model or from a newer format."""


class UnknownElementError(CalculatorSetupError, ValueError):
    """The structure holds an element the model was not trained on."""


class InvalidStructureError(CalculationFailed, ValueError):
    """The structure cannot be evaluated (NaN/inf positions, empty, degenerate cell)."""


class CloseContactWarning(UserWarning):
    """Two atoms are closer than any pair of that element pair seen in training."""


class ProtocolError(ValueError):
    """A malformed, truncated or inconsistent i-PI socket message."""


class ServerGoneError(ConnectionError):
    """The i-PI server closed the connection or could not be reached."""


class HybridSetupError(CalculatorSetupError, ValueError):
    """A QM/ML hybrid (mlip_md.qmml) is set up inconsistently: radii, region, levels, cluster."""
