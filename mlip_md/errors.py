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


class LabelledDataError(CalculatorSetupError, ValueError):
    """Labelled structures (training, validation, calibration) cannot be used: missing or
    non-finite energy/forces/stress labels, or too few structures for what is fitted."""


class NonFiniteLabelsWarning(UserWarning):
    """Structures with non-finite labels were left out (``--drop-nonfinite``)."""


class CheckpointError(CalculatorSetupError, ValueError):
    """A training checkpoint is truncated, corrupt, holds more than tensors and plain data
    (refused: loading it could run code) or does not match the run being resumed."""


class TrainingError(CalculationFailed):
    """Training produced no usable model (a diverged member, non-finite validation errors)."""


class CloseContactWarning(UserWarning):
    """Two atoms are closer than any pair of that element pair seen in training."""


class ProtocolError(ValueError):
    """A malformed, truncated or inconsistent i-PI socket message."""


class ServerGoneError(ConnectionError):
    """The i-PI server closed the connection or could not be reached."""


class ServerTimeoutError(ServerGoneError):
    """The i-PI server sent nothing (or stopped reading) for longer than the driver's timeout."""


class HybridSetupError(CalculatorSetupError, ValueError):
    """A QM/ML hybrid (mlip_md.qmml) is set up inconsistently: radii, region, levels, cluster."""
