"""The oracle: labels configurations with a reference calculator built from a SPEC string
(``emt``, ``lammps:eam/alloy:Cu_mishin1.eam.alloy``, ``tblite:GFN2-xTB``; see
:mod:`mlip_md.reference`).

Failures (an exception, SCF not converged, NaN or infinite energy/forces) never propagate:
:meth:`Oracle.label` returns them as :class:`OracleResult` with ``error`` set, and the loop
records them and keeps the configuration for a retry.

Every call is appended to ``oracle_calls.log`` (JSON lines, fsync'd): a ``start`` line before
the calculator runs and an ``end`` line (status, wall time) after its result is committed to
the store. The log is the audit trail that shows no call was lost or repeated.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Callable, Optional, Union

import ase
import numpy as np
from ase.calculators.calculator import Calculator
from ase.calculators.singlepoint import SinglePointCalculator


@dataclasses.dataclass
class OracleResult:
    atoms: Optional[ase.Atoms]  # labelled copy (SinglePointCalculator), None on failure
    error: str  # "" on success
    wall_time: float  # s

    @property
    def ok(self) -> bool:
        return not self.error


class Oracle:
    """Reference labels for configurations.

    ``reference``: a SPEC string, or a zero-argument factory returning an ASE Calculator
    (tests use it to inject failing calculators). ``log``: the call log path (None: no log).
    """

    def __init__(self, reference: Union[str, Callable[[], Calculator]], log: Optional[Path] = None):
        if isinstance(reference, str):
            from ..reference import make_reference

            self.spec = reference
            self._factory = lambda: make_reference(reference)
        else:
            self.spec = getattr(reference, "spec", getattr(reference, "__name__", "custom"))
            self._factory = reference
        self.calc = self._factory()  # fail early on a bad spec
        self.log_path = Path(log) if log is not None else None

    def log(self, event: str, **fields) -> None:
        if self.log_path is None:
            return
        line = json.dumps({"event": event, "time": time.time(), **fields}) + "\n"
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def label(self, atoms: ase.Atoms) -> OracleResult:
        """Energy (eV), forces (eV/Å) and, for 3D-periodic cells, stress (eV/Å^3)."""
        work = atoms.copy()
        work.calc = self.calc
        start = time.perf_counter()
        try:
            results = {"energy": float(work.get_potential_energy()), "forces": np.array(work.get_forces())}
            if work.pbc.all():
                try:
                    results["stress"] = np.array(work.get_stress())
                except Exception:  # calculators without stress: energy and forces suffice
                    pass
        except Exception as exc:  # noqa: BLE001 - any calculator failure is recorded, not raised
            self.calc = self._factory()  # a failed calculator may hold a broken state
            return OracleResult(None, f"{type(exc).__name__}: {exc}", time.perf_counter() - start)
        wall = time.perf_counter() - start
        error = ""
        if not np.isfinite(results["energy"]) or not np.isfinite(results["forces"]).all():
            error = "non-finite energy or forces from the reference"
        elif _scf_failed(self.calc):
            error = "SCF not converged"
        if error:
            self.calc = self._factory()  # no cached failure is served to a retry
            return OracleResult(None, error, wall)
        labelled = atoms.copy()
        labelled.calc = SinglePointCalculator(labelled, **results)
        return OracleResult(labelled, "", wall)


def _scf_failed(calc: Calculator) -> bool:
    """Calculators that report convergence (``converged`` attribute or result) and say no."""
    flag = getattr(calc, "converged", None)
    if flag is None and isinstance(getattr(calc, "results", None), dict):
        flag = calc.results.get("converged")
    return flag is False
