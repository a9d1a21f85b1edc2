"""Reports of the validation workflows: PASS/FAIL checks, JSON, Markdown tables, the MEP plot.

Every file is written atomically (temporary file in the target directory, then renamed), so an
interrupted run never leaves a half-written report.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from ..files import atomic_path, atomic_write_text


@dataclasses.dataclass
class Check:
    """One line of the PASS/FAIL table. ``threshold=None`` and ``passed=None``: informational.
    With a threshold, ``passed = value <= threshold`` (a NaN value fails)."""

    name: str
    value: float
    threshold: Optional[float]
    unit: str = ""
    passed: Optional[bool] = None
    fmt: str = "num"

    def __post_init__(self):
        self.value = float(self.value)
        if self.passed is None and self.threshold is not None:
            self.passed = bool(math.isfinite(self.value) and self.value <= self.threshold)

    @property
    def status(self) -> str:
        return "info" if self.passed is None else ("PASS" if self.passed else "FAIL")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["status"] = self.status
        return d


# ------------------------------------------------------------------------------------------
# formatting
# ------------------------------------------------------------------------------------------


def fmt(value, unit: str = "", style: str = "num", signed: bool = False) -> str:
    if value is None:
        return "-"
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if style == "pct":
        return f"{100 * value:+.2f} %" if signed else f"{100 * value:.2f} %"
    if unit == "steps":
        return f"{int(round(value))}"
    text = f"{value:+.4f}" if signed else f"{value:.4f}"
    return text


def _pm(value, std) -> str:
    return fmt(value) + ("" if std is None else f" ± {std:.4f}")


def checks_table(checks: List[dict], workflow: Optional[str] = None) -> List[str]:
    cols = (["workflow"] if workflow else []) + ["check", "value", "threshold", "result"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for c in checks:
        unit = f" {c['unit']}" if c["unit"] and c["unit"] != "steps" and c["fmt"] != "pct" else ""
        value = fmt(c["value"], c["unit"], c["fmt"]) + unit
        if c["unit"] == "steps":
            value += " steps"
        thr = "-" if c["threshold"] is None else "<= " + fmt(c["threshold"], c["unit"], c["fmt"]) + unit
        status = {"PASS": "PASS", "FAIL": "**FAIL**", "info": "info"}[c["status"]]
        lines.append(("| " + c.get("workflow", workflow) + " " if workflow else "")
                     + f"| {_cell(c['name'])} | {value} | {thr} | {status} |")
    return lines


def _cell(text: str) -> str:
    """Escape pipes for a Markdown table cell."""
    return text.replace("|", "\\|")


def _verdict(report: dict) -> str:
    return "**PASS**" if report["passed"] else "**FAIL**"


# ------------------------------------------------------------------------------------------
# vacancy
# ------------------------------------------------------------------------------------------


def vacancy_markdown(report: dict) -> str:
    s, m, r = report["settings"], report["model_results"], report["reference_results"]
    ens = m.get("ensemble") or {}
    lines = [
        f"## Vacancy formation energy: {report['model']} vs {report['reference']} — {_verdict(report)}",
        "",
        f"{s['element']} {s['lattice']}, {s['supercell']}x{s['supercell']}x{s['supercell']} supercell "
        f"({m['n_atoms']} sites), a = {s['a']}, relax = {s['relax']} ({s['optimizer']}, fmax {s['fmax']:g} eV/Å); "
        "E_f = E_defect - (N - 1) E_pristine / N, each calculator relaxed with its own forces"
        + (f"; ± = std over the model's {ens['members']} ensemble members" if ens else "") + ".",
        "",
        "| quantity | model | reference | model - reference |",
        "|---|---|---|---|",
        f"| lattice constant a (Å) | {fmt(m['lattice_constant'])} | {fmt(r['lattice_constant'])} | "
        f"{fmt(m['lattice_constant'] - r['lattice_constant'], signed=True)} |",
        f"| E_f unrelaxed (eV) | {_pm(m['e_f_unrelaxed'], ens.get('e_f_unrelaxed_std'))} | {fmt(r['e_f_unrelaxed'])} | "
        f"{fmt(report['comparison']['e_f_unrelaxed_diff'], signed=True)} |",
        f"| E_f relaxed (eV) | {_pm(m['e_f_relaxed'], ens.get('e_f_relaxed_std'))} | {fmt(r['e_f_relaxed'])} | "
        f"{fmt(report['comparison']['e_f_relaxed_diff'], signed=True)} |",
        f"| relaxation energy (eV) | {fmt(m['relaxation_energy'])} | {fmt(r['relaxation_energy'])} | "
        f"{fmt(m['relaxation_energy'] - r['relaxation_energy'], signed=True)} |",
        f"| max displacement on relaxation (Å) | {fmt(m['max_displacement'])} | {fmt(r['max_displacement'])} | "
        f"{fmt(m['max_displacement'] - r['max_displacement'], signed=True)} |",
    ]
    if "formation_volume" in m:
        lines.append(f"| formation volume (atomic volumes) | {fmt(m['formation_volume'])} | "
                     f"{fmt(r['formation_volume'])} | {fmt(m['formation_volume'] - r['formation_volume'], signed=True)} |")
    lines.append(f"| relaxation steps | {m['relaxation']['steps']} | {r['relaxation']['steps']} | |")
    lines += ["", *checks_table(report["checks"])]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# NEB
# ------------------------------------------------------------------------------------------


def neb_markdown(report: dict) -> str:
    s, m, r, o = report["settings"], report["model_path"], report["reference_path"], report["reference_on_model_path"]
    c = report["comparison"]
    ens = m.get("ensemble") or {}
    cell = (f"{s['element']} {s['lattice']} {s['supercell']}x{s['supercell']}x{s['supercell']}, a = {s['a']}"
            if s["path"] != "user" else f"user end points {s['initial']} -> {s['final']}")
    lines = [
        f"## Migration barrier and MEP (CI-NEB): {report['model']} vs {report['reference']} — {_verdict(report)}",
        "",
        f"{s['path']}: {cell}; {s['images']} intermediate images, {'climbing image, ' if s['climb'] else ''}"
        f"improved tangent, {s['interpolation']} interpolation, k = {s['spring']:g} eV/Å², {s['optimizer']} to "
        f"fmax {s['fmax']:g} eV/Å (end points: BFGS to {s['endpoint_fmax']:g} eV/Å), each calculator on its own path"
        + (f"; ± = std over the model's {ens['members']} ensemble members" if ens else "") + ".",
        "",
        "| quantity | model | reference | model - reference |",
        "|---|---|---|---|",
        f"| barrier E_b = E_saddle - E_initial (eV) | {_pm(m['barrier'], ens.get('barrier_std'))} | {fmt(r['barrier'])} | "
        f"{fmt(c['barrier_diff'], signed=True)}"
        + (f" ({fmt(c['barrier_relative_error'] * np.sign(c['barrier_diff']), style='pct', signed=True)})"
           if c["barrier_relative_error"] is not None else "") + " |",
        f"| saddle image | {m['saddle_image']} | {r['saddle_image']} | |",
        f"| reverse barrier (eV) | {fmt(m['reverse_barrier'])} | {fmt(r['reverse_barrier'])} | "
        f"{fmt(m['reverse_barrier'] - r['reverse_barrier'], signed=True)} |",
        f"| reaction energy E_final - E_initial (eV) | {fmt(m['reaction_energy'])} | {fmt(r['reaction_energy'])} | "
        f"{fmt(m['reaction_energy'] - r['reaction_energy'], signed=True)} |",
        f"| path length (Å) | {fmt(m['reaction_coordinate'][-1])} | {fmt(r['reaction_coordinate'][-1])} | "
        f"{fmt(m['reaction_coordinate'][-1] - r['reaction_coordinate'][-1], signed=True)} |",
        f"| max \\|F_perp\\| (eV/Å) | {fmt(m['f_perp_max'])} | {fmt(r['f_perp_max'])} | |",
        f"| max jump of \\|F_perp\\| between neighbours (eV/Å) | {fmt(m['f_perp_max_jump'])} | "
        f"{fmt(r['f_perp_max_jump'])} | |",
        f"| smoothness max\\|d2E\\|/mean(h)² (eV/Å²) | {fmt(m['smoothness'])} | {fmt(r['smoothness'])} | "
        f"{fmt(m['smoothness'] - r['smoothness'], signed=True)} |",
        f"| NEB steps (converged) | {m['steps']} ({'yes' if m['converged'] else 'no'}) | "
        f"{r['steps']} ({'yes' if r['converged'] else 'no'}) | |",
        f"| reference barrier along the model's path (eV) | | {fmt(o['barrier'])} | "
        f"{fmt(m['barrier'] - o['barrier'], signed=True)} |",
    ]
    if m.get("lattice_constant") is not None:
        lines.append(f"| lattice constant a (Å) | {fmt(m['lattice_constant'])} | {fmt(r['lattice_constant'])} | "
                     f"{fmt(m['lattice_constant'] - r['lattice_constant'], signed=True)} |")
    lines += ["", "Energy profiles (eV, relative to the initial image; s = reaction coordinate in Å):", ""]
    cols = ["image", "s model", "E model"]
    if ens:
        cols.append("σ(E - E_0) model")
    if "energy_uncertainty" in m:
        cols.append("σ(E) model")
    cols += ["E ref on model images", "\\|F_perp\\| model", "\\|F_perp\\| ref on model images", "s ref", "E ref"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for i in range(len(m["energies"])):
        row = [str(i), fmt(m["reaction_coordinate"][i]), fmt(m["relative_energies"][i], signed=True)]
        if ens:
            row.append(fmt(ens["relative_energy_std"][i]))
        if "energy_uncertainty" in m:
            row.append(fmt(m["energy_uncertainty"][i]))
        row += [fmt(o["relative_energies"][i], signed=True), fmt(m["f_perp"][i]), fmt(o["f_perp"][i])]
        if i < len(r["energies"]):
            row += [fmt(r["reaction_coordinate"][i]), fmt(r["relative_energies"][i], signed=True)]
        else:
            row += ["", ""]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", *checks_table(report["checks"])]
    return "\n".join(lines)


def neb_plot(report: dict, path: Path) -> Path:
    """Both MEPs (energy vs reaction coordinate) with the model's ensemble band, the reference
    on the model's images, and |F_perp| per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, r, o = report["model_path"], report["reference_path"], report["reference_on_model_path"]
    sm, em = np.array(m["reaction_coordinate"]), np.array(m["relative_energies"])
    sr, er = np.array(r["reaction_coordinate"]), np.array(r["relative_energies"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
    ax = axes[0]
    ax.plot(sr, er, "k-s", ms=4, lw=1.5, label=f"reference path ({report['reference']})")
    ax.plot(sm, em, "C0-o", ms=4, lw=1.5, label="model path")
    ens = m.get("ensemble")
    if ens:
        sig = np.array(ens["relative_energy_std"])
        ax.fill_between(sm, em - sig, em + sig, color="C0", alpha=0.25,
                        label=f"model ensemble ±σ (K = {ens['members']})")
    ax.plot(sm, o["relative_energies"], "C3x", ms=7, mew=1.5, label="reference on model images")
    ax.set_xlabel("reaction coordinate s (Å)")
    ax.set_ylabel("E - E_initial (eV)")
    title = f"E_b: model {m['barrier']:.3f}"
    if ens:
        title += f" ± {ens['barrier_std']:.3f}"
    ax.set_title(title + f" eV, reference {r['barrier']:.3f} eV", fontsize=10)
    top = max(np.max(em), np.max(er), np.max(o["relative_energies"]))
    bottom = min(np.min(em), np.min(er), np.min(o["relative_energies"]))
    span = max(top - bottom, 1e-3)
    ax.set_ylim(bottom - 0.05 * span, top + 0.55 * span)  # room for the legend above the path
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    ax = axes[1]
    ax.semilogy(range(len(m["f_perp"])), np.maximum(m["f_perp"], 1e-6), "C0-o", ms=4, label="model path")
    ax.semilogy(range(len(r["f_perp"])), np.maximum(r["f_perp"], 1e-6), "k-s", ms=4, label="reference path")
    ax.semilogy(range(len(o["f_perp"])), np.maximum(o["f_perp"], 1e-6), "C3x", ms=7,
                label="reference on model images")
    limit = report["settings"]["fperp_factor"] * report["settings"]["fmax"]
    ax.axhline(limit, color="0.5", ls="--", lw=1, label=f"converged limit {limit:g} eV/Å")
    ax.set_xlabel("image")
    ax.set_ylabel("max atomic |F_perp| (eV/Å)")
    ax.legend(fontsize=8)
    fig.suptitle(f"CI-NEB: {report['model']} vs {report['reference']}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return Path(path)


# ------------------------------------------------------------------------------------------
# suite summary
# ------------------------------------------------------------------------------------------


def summary_markdown(summary: dict, sections: Dict[str, str]) -> str:
    rows = []
    for name, rep in summary["workflows"].items():
        for c in rep["checks"]:
            rows.append({**c, "workflow": name})
    lines = [f"# Validation: {summary['model']} vs {summary['reference']} — {_verdict(summary)}", "",
             *checks_table(rows, workflow="x"), ""]
    for text in sections.values():
        lines += [text, ""]
    return "\n".join(lines).rstrip()


# ------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: Path, data: dict) -> Path:
    atomic_write_text(path, json.dumps(data, indent=1, default=_json_default) + "\n")
    return Path(path)


def finish_report(report: dict, checks: List[Check], outdir, stem: str, markdown: Callable[[dict], str],
                  plot: Optional[Callable[[dict, Path], Path]] = None, structures: Optional[dict] = None) -> dict:
    """Attach the checks and verdict; when ``outdir`` is given write STEM.json, STEM.md,
    STEM.png (if ``plot``) and the ``structures`` ({file name: list of Atoms}) there."""
    report["checks"] = [c.to_dict() for c in checks]
    report["passed"] = all(c.passed is not False for c in checks)
    report["markdown"] = markdown(report)
    report["files"] = []
    if outdir is not None:
        outdir = Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        files = [outdir / f"{stem}.json", outdir / f"{stem}.md"]
        if plot is not None:
            files.append(outdir / f"{stem}.png")
        for name in structures or {}:
            files.append(outdir / name)
        report["files"] = [str(f) for f in files]
        if plot is not None:
            plot(report, outdir / f"{stem}.png")
        for name, frames in (structures or {}).items():
            from ase.io import write

            with atomic_path(outdir / name) as tmp:
                write(str(tmp), frames, format="extxyz")
        atomic_write_text(outdir / f"{stem}.md", report["markdown"] + "\n")
        write_json(outdir / f"{stem}.json", {k: v for k, v in report.items() if k != "markdown"})
    return report
