"""Final report of a run: report.json, report.md (one row per iteration) and
learning_curve.png (test force RMSE vs labels), plus the oracle-call audit from the log."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Optional

from ..files import atomic_path, atomic_write_text


def oracle_audit(log_path: Optional[Path]) -> dict:
    """Calls started/ended per row: ``repeated`` lists rows labelled successfully more than once
    (must be empty), ``interrupted`` rows whose call started but never ended."""
    starts, ends, done = Counter(), Counter(), Counter()
    if log_path is not None and Path(log_path).exists():
        for line in Path(log_path).read_text().splitlines():
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # a line torn by a kill: not a completed call
                continue
            row = event.get("row")
            if event["event"] == "start":
                starts[row] += 1
            elif event["event"] == "end":
                ends[row] += 1
                if event.get("status") == "done":
                    done[row] += 1
    return {"calls_started": sum(starts.values()), "calls_ended": sum(ends.values()),
            "labels_done": sum(done.values()),
            "repeated": sorted(r for r, c in done.items() if c > 1),
            "interrupted": sorted(r for r in starts if starts[r] > ends[r])}


def write_report(store, state: dict, log_path: Optional[Path]) -> dict:
    history = state["history"]
    report = {"directory": str(store.directory), "stopped": state.get("stopped"), "history": history,
              "labels": store.count(kind="train", status="done"),
              "failed": store.count(kind="train", status="failed"),
              "oracle": oracle_audit(log_path)}
    if history:
        report["final_force_rmse"] = history[-1]["force_rmse"]
        report["final_model"] = str(store.model_path(history[-1]["iteration"]))
    atomic_write_text(store.directory / "report.json", json.dumps(report, indent=1))
    lines = ["| iteration | labels | test force RMSE (eV/Å) | test energy RMSE (meV/atom) | triggered / frames "
             "| selected |", "|---:|---:|---:|---:|---:|---:|"]
    for h in history:
        ex = h.get("explore") or {}
        lines.append(f"| {h['iteration']} | {h['labels']} | {h['force_rmse']:.4f} | "
                     f"{h['energy_rmse_per_atom'] * 1e3:.2f} | "
                     f"{ex.get('triggered', '-')} / {ex.get('frames', '-')} | {ex.get('selected', '-')} |")
    lines.append("")
    lines.append(f"stopped: {report['stopped']}; oracle calls: {report['oracle']['calls_started']} started, "
                 f"{report['oracle']['labels_done']} labels, {report['failed']} failed rows")
    atomic_write_text(store.directory / "report.md", "\n".join(lines) + "\n")
    if history:
        plot_curves({"run": [[(h["labels"], h["force_rmse"]) for h in history]]},
                    store.directory / "learning_curve.png")
    return report


def summary(report: dict, relative_to: Optional[Path] = None) -> str:
    """The closing lines of ``mlip-md active run`` for a :func:`write_report` report: why it
    stopped, labels and oracle calls, the final model with its test force RMSE (eV/Å), and where
    report.md is. Paths under ``relative_to`` (default: the working directory) are shown relative."""
    base = Path.cwd() if relative_to is None else Path(relative_to)

    def shown(path) -> str:
        path = Path(path)
        return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)

    audit = report["oracle"]
    lines = [f"stopped: {report['stopped']}",
             f"labels: {report['labels']} ({report['failed']} configurations failed), oracle calls: "
             f"{audit['calls_started']} started, repeated labels: {len(audit['repeated'])}"]
    if "final_model" in report:
        lines.append(f"final model: {shown(report['final_model'])} (test force RMSE {report['final_force_rmse']:.4f} eV/Å)")
    lines.append(f"report: {shown(Path(report['directory']) / 'report.md')}")
    return "\n".join(lines)


def plot_curves(curves: dict, path: Path, threshold: Optional[float] = None) -> None:
    """curves: label -> list of runs, each a list of (labels, force RMSE)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (name, runs) in enumerate(curves.items()):
        for r, run in enumerate(runs):
            x, y = zip(*run)
            ax.plot(x, y, "o-", ms=3, color=colors[k % len(colors)], alpha=0.8, lw=1.2,
                    label=name if r == 0 else None)
    if threshold:
        ax.axhline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:g} eV/Å")
    ax.set_xlabel("oracle queries (training labels)")
    ax.set_ylabel("test force RMSE (eV/Å)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
