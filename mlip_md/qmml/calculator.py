"""ASE calculator of the smooth QM/ML hybrid (:mod:`.hybrid`), serial or split over MPI ranks
(:mod:`.mpi`). Units: ASE's (eV, Å, eV/Å, eV/Å^3)."""
from __future__ import annotations

import time
from typing import Optional, Sequence

import ase
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from ..errors import HybridSetupError
from .hybrid import HybridModel, HybridResult
from .mpi import hybrid_runner


class HybridCalculator(Calculator):
    """ASE calculator of the smooth QM/ML hybrid (see the module docstring).

    ``HybridCalculator(high, low, region, switch)`` with ``switch`` a Switch or (r_inner, r_outer)
    in Å; keyword arguments as :class:`HybridModel`. Results: energy, free_energy, energies [N],
    forces [N, 3], stress (3D-periodic cells). ``calc.last`` holds the full :class:`HybridResult`
    (switch values, per-level per-atom energies, cluster size).

    MPI: pass ``comm`` (mpi4py communicator, size >= 2) and optionally ``high_ranks``; rank 0 uses
    the calculator, every other rank calls ``calc.serve()``, and rank 0 calls ``calc.shutdown()``
    at the end (see :mod:`mlip_md.qmml.mpi`).
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, high=None, low=None, region=None, switch=None, *, model: Optional[HybridModel] = None,
                 comm=None, high_ranks: Optional[int] = None, **kwargs):
        calc_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in ("label", "atoms", "directory")}
        super().__init__(**calc_kwargs)
        if model is None:
            if high is None or low is None or region is None or switch is None:
                raise HybridSetupError("HybridCalculator needs high, low, region and switch (or model=HybridModel)")
            model = HybridModel(high, low, region, switch, **kwargs)
        self.model = model
        self.runner = hybrid_runner(model, comm, high_ranks)
        self.last: Optional[HybridResult] = None
        self.seconds = 0.0

    def calculate(self, atoms=None, properties: Sequence[str] = ("energy",),
                  system_changes: Sequence[str] = tuple(all_changes)) -> None:
        super().calculate(atoms, properties, system_changes)
        a: ase.Atoms = self.atoms
        start = time.perf_counter()
        res = self.runner.evaluate(a.numbers, a.positions, a.cell.array, a.pbc)
        self.seconds += time.perf_counter() - start
        self.last = res
        self.results = {"energy": res.energy, "free_energy": res.energy, "energies": res.energies,
                        "forces": res.forces}
        if res.stress is not None:
            self.results["stress"] = full_3x3_to_voigt_6_stress(res.stress)

    def serve(self) -> None:
        """Ranks > 0: evaluate parts until rank 0 calls :meth:`shutdown`."""
        self.runner.serve()

    def shutdown(self) -> None:
        """Rank 0, at the end: release the other ranks."""
        self.runner.shutdown()
