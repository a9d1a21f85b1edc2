"""Validation of a model against a reference calculator: vacancy formation energy, CI-NEB
migration barrier and MEP quality, with JSON / Markdown / PNG reports and PASS/FAIL checks.

>>> from mlip_md.validate import run_vacancy, run_neb, run_all
>>> report = run_vacancy("m.pt", "lammps:eam/alloy:Cu_mishin1.eam.alloy", outdir="validation")
>>> report["passed"], report["comparison"]["e_f_relaxed_diff"]

The "model" is a model file (-> :class:`mlip_md.MLIPCalculator`), ``None`` (the shipped model),
a reference spec prefixed ``ref:`` (e.g. ``ref:emt``) or any ASE calculator object; the
reference is a spec string (see :func:`mlip_md.reference.make_reference`) or an ASE calculator.
Ensemble error bars are reported when the model's results hold ``energy_members`` with K > 1.

Modules: common (defaults, model and reference resolution), structures (cells, hops, lattice
constants, relaxations), vacancy, neb, report (files and PASS/FAIL tables), suite
(``mlip-md validate all``).
"""
from __future__ import annotations

from .common import evaluate, member_energies, resolve_model, resolve_reference  # noqa: F401 (the package's API)

__all__ = ["run_vacancy", "run_neb", "run_all", "resolve_model", "resolve_reference", "member_energies"]


def __getattr__(name):
    if name == "run_vacancy":
        from .vacancy import run_vacancy

        return run_vacancy
    if name == "run_neb":
        from .neb import run_neb

        return run_neb
    if name == "run_all":
        from .suite import run_all

        return run_all
    raise AttributeError(f"module 'mlip_md.validate' has no attribute {name!r}")
