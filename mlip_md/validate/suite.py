"""``mlip-md validate all``: the vacancy and NEB workflows with shared settings, one verdict.

Writes vacancy.{json,md}, neb.{json,md,png}, the two NEB paths (extxyz) and summary.{json,md}
(every check of every workflow in one table, then each workflow's section) to ``outdir``.
``passed`` is False when any check of any workflow fails (the CLI then exits with 1).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Union

from ..files import atomic_write_text
from .common import RELAX_FMAX, resolve_model, resolve_reference
from .neb import DEFAULTS, NEB_FMAX, SPRING, run_neb
from .report import summary_markdown, write_json
from .vacancy import DEFAULT_THRESHOLD, run_vacancy


def run_all(model=None, reference=None, element: str = "Cu", lattice: str = "fcc",
            a: Union[str, float, None] = "auto", supercell: int = 4, relax_mode: str = "positions",
            fmax: float = RELAX_FMAX, threshold: float = DEFAULT_THRESHOLD, images: int = 7, climb: bool = True,
            initial=None, final=None, interpolation: str = "linear", neb_fmax: float = NEB_FMAX,
            spring: float = SPRING, max_steps: int = 1000, barrier_rtol: float = DEFAULTS["barrier_rtol"],
            barrier_atol: float = DEFAULTS["barrier_atol"], barrier_switch: float = DEFAULTS["barrier_switch"],
            fperp_factor: float = DEFAULTS["fperp_factor"], smoothness_ratio: float = DEFAULTS["smoothness_ratio"],
            outdir: Union[str, Path, None] = "validation", device: str = "cpu", progress=print) -> dict:
    """Run every workflow; returns {passed, model, reference, workflows: {name: report}, files}."""
    ref_calc, ref_label = resolve_reference(reference)  # fail early on bad input
    model_calc, model_label = resolve_model(model, device=device)
    for calc, label in ((ref_calc, ref_label), (model_calc, model_label)):
        try:
            calc.validate_label = label  # keeps the labels in the per-workflow reports
        except AttributeError:  # pragma: no cover - calculators with slots
            pass
    say = progress or (lambda *a, **k: None)
    t0 = time.perf_counter()
    say(f"validate: vacancy formation energy ({model_label} vs {ref_label}) ...")
    vac = run_vacancy(model_calc, ref_calc, element=element, lattice=lattice, a=a, supercell=supercell,
                      relax_mode=relax_mode, fmax=fmax, threshold=threshold, outdir=outdir)
    say(f"validate: vacancy {'PASS' if vac['passed'] else 'FAIL'} ({vac['seconds']:.0f} s); CI-NEB ...")
    neb = run_neb(model_calc, ref_calc, element=element, lattice=lattice, a=a, supercell=supercell, images=images,
                  climb=climb, initial=initial, final=final, interpolation=interpolation, fmax=neb_fmax,
                  endpoint_fmax=fmax, spring=spring, max_steps=max_steps, barrier_rtol=barrier_rtol,
                  barrier_atol=barrier_atol, barrier_switch=barrier_switch, fperp_factor=fperp_factor,
                  smoothness_ratio=smoothness_ratio, outdir=outdir)
    say(f"validate: neb {'PASS' if neb['passed'] else 'FAIL'} ({neb['seconds']:.0f} s)")
    workflows = {"vacancy": vac, "neb": neb}
    summary = {"passed": all(r["passed"] for r in workflows.values()), "model": model_label,
               "reference": ref_label, "workflows": workflows, "seconds": time.perf_counter() - t0}
    markdown = summary_markdown(summary, {k: v["markdown"] for k, v in workflows.items()})
    summary["markdown"] = markdown
    files = [f for r in workflows.values() for f in r["files"]]
    if outdir is not None:
        outdir = Path(outdir)
        files += [str(outdir / "summary.json"), str(outdir / "summary.md")]
        atomic_write_text(outdir / "summary.md", markdown + "\n")
        write_json(outdir / "summary.json", {
            "passed": summary["passed"], "model": model_label, "reference": ref_label, "seconds": summary["seconds"],
            "workflows": {k: {kk: vv for kk, vv in v.items() if kk != "markdown"} for k, v in workflows.items()}})
    summary["files"] = files
    return summary
