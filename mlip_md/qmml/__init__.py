"""QM/ML hybrid forces: smooth C^2 switching between a high and a low level, energy conserving.

* :class:`HybridCalculator` -- E = sum_i [s_i E_i^high + (1 - s_i) E_i^low] (exact gradient;
  the energy in :mod:`.hybrid`, the calculator in :mod:`.calculator`);
* :class:`ONIOMCalculator` -- subtractive E_low(all) + E_high(cluster) - E_low(cluster) for
  total-energy-only high levels (tblite, pyscf, any ASE calculator);
* :mod:`.check` -- interface quality report (``mlip-md qmml check``);
* :mod:`.mpi` -- high and low level on separate MPI sub-communicators.
"""
from .calculator import HybridCalculator
from .cluster import Cluster, carve
from .hybrid import HybridModel, HybridResult, reference_shift
from .levels import EAMLevel, EMTLevel, Level, MLIPLevel, as_level
from .oniom import ONIOMCalculator
from .region import AtomCentre, FixedPoint, GroupCentroid, Region
from .switching import SHAPES, Switch

__all__ = ["AtomCentre", "Cluster", "EAMLevel", "EMTLevel", "FixedPoint", "GroupCentroid", "HybridCalculator", "HybridModel",
           "HybridResult", "Level", "MLIPLevel", "ONIOMCalculator", "Region", "SHAPES", "Switch", "as_level", "carve",
           "reference_shift"]
