"""Strategy benchmark: oracle queries N each query strategy needs before the model reaches a
test force RMSE threshold, on one fixed EMT Cu test set (bulk, vacancy, (111) and (100)
slabs; MD snapshots at 300-1500 K), mean +- std over seeds. Every run is an ordinary
resumable active-learning run in OUT/runs/<strategy>_s<seed>, so an interrupted benchmark
continues where it stopped.

Outputs: OUT/benchmark.json, OUT/benchmark.md (table), OUT/learning_curves.png.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence

import ase.io
import numpy as np

from ..files import atomic_path, atomic_write_text
from .config import ActiveConfig, ExploreSection, InitialSection, ModelSection, QuerySection, RunSection, Stage
from .config import StopSection, SystemSection, TestSection, TrainSection
from .report import plot_curves
from .systems import start_structures
from .testset import oracle_md_snapshots

DEFAULT_THRESHOLD = 0.1  # eV/Å
DEFAULT_MAX_LABELS = 48
TEST_TEMPERATURES = (300.0, 700.0, 1100.0, 1500.0)
TEST_STRUCTURES = ("bulk", "vacancy", "surface111", "surface100")
EXPLORE_TEMPERATURES = (300.0, 800.0, 1500.0)


def benchmark_system(extra_structures: Sequence[str] = ()) -> SystemSection:
    """The test structures, then ``extra_structures`` explored as well (never in the test set)."""
    return SystemSection(element="Cu", a=3.6, structures=list(TEST_STRUCTURES) + list(extra_structures),
                         supercell=2, slab_size=[3, 3, 4], vacuum=6.0)


def make_test_set(path: Path, snapshots: int = 2, md_steps: int = 50, seed: int = 1234) -> List[ase.Atoms]:
    """The shared test set (EMT Langevin MD snapshots), written once, atomically."""
    if path.exists():
        return ase.io.read(path, ":")
    from ase.calculators.emt import EMT

    frames = []
    for k, (name, start) in enumerate(start_structures(benchmark_system()).items()):
        for temperature in TEST_TEMPERATURES:
            frames += oracle_md_snapshots(start, EMT(), temperature, snapshots, md_steps,
                                          seed=[seed, k, int(temperature)])
    with atomic_path(path) as tmp:
        ase.io.write(tmp, frames, format="extxyz")
    return frames


def run_config(out: Path, strategy: str, seed: int, threshold: float, max_labels: int,
               stage_steps: int = 15, batch_size: int = 4, extra_structures: Sequence[str] = (),
               temperatures: Sequence[float] = EXPLORE_TEMPERATURES) -> ActiveConfig:
    return ActiveConfig(
        run=RunSection(directory=f"runs/{strategy}_s{seed}", seed=seed),
        system=benchmark_system(extra_structures),
        initial=InitialSection(n=4, rattle=0.05, strain=0.01),
        model=ModelSection(n_max=6, l_max=3, hidden=[32, 32], ensemble_size=3),
        train=TrainSection(epochs=40, patience=10, batch_size=8),
        explore=ExploreSection(timestep_fs=3.0, sample_every=5,
                               schedule=[Stage(float(t), stage_steps) for t in temperatures]),
        query=QuerySection(strategy=strategy, batch_size=batch_size),
        test=TestSection(file="test.extxyz"),
        stop=StopSection(target_force_rmse=threshold, max_labels=max_labels, max_iterations=100),
        base_dir=Path(out).resolve(),
    ).validate()


def queries_to_threshold(history: Sequence[dict], threshold: float) -> Optional[int]:
    for h in history:
        if h["force_rmse"] <= threshold:
            return int(h["labels"])
    return None


def summarise(runs: dict, threshold: float, max_labels: int) -> dict:
    rows = {}
    for strategy, per_seed in runs.items():
        ns = [queries_to_threshold(h, threshold) for h in per_seed.values()]
        reached = [n for n in ns if n is not None]
        # runs that never reach the threshold count as the budget (a lower bound on N)
        values = np.array([n if n is not None else max_labels for n in ns], dtype=float)
        rows[strategy] = {"N": ns, "mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1
                          else 0.0, "reached": len(reached), "runs": len(ns),
                          "final_force_rmse": [h[-1]["force_rmse"] for h in per_seed.values()]}
    if "random" in rows:
        for r in rows.values():
            r["ratio_to_random"] = r["mean"] / rows["random"]["mean"]
    return rows


def markdown_table(rows: dict, threshold: float, max_labels: int) -> str:
    lines = [f"Oracle queries N to reach a test force RMSE <= {threshold:g} eV/Å (EMT Cu; budget {max_labels}; "
             "mean +- std over seeds; a run that never reaches it counts as the budget)", "",
             "| strategy | N (mean +- std) | per seed | reached | N / N(random) | final force RMSE (eV/Å) |",
             "|---|---:|---|---:|---:|---|"]
    for name, r in rows.items():
        per_seed = ", ".join(str(n) if n is not None else f">{max_labels}" for n in r["N"])
        ratio = f"{r['ratio_to_random']:.2f}" if "ratio_to_random" in r else "-"
        final = ", ".join(f"{x:.3f}" for x in r["final_force_rmse"])
        lines.append(f"| {name} | {r['mean']:.1f} +- {r['std']:.1f} | {per_seed} | {r['reached']}/{r['runs']} | "
                     f"{ratio} | {final} |")
    return "\n".join(lines)


def threshold_table(runs: dict, thresholds: Sequence[float], max_labels: int) -> str:
    """Mean N over seeds at several (looser) thresholds, from the same learning curves."""
    lines = ["| strategy | " + " | ".join(f"N at {t:g} eV/Å" for t in thresholds) + " |",
             "|---|" + "---:|" * len(thresholds)]
    for name, per_seed in runs.items():
        cells = []
        for t in thresholds:
            ns = [queries_to_threshold(h, t) for h in per_seed.values()]
            values = np.array([n if n is not None else max_labels for n in ns], dtype=float)
            cells.append(f"{values.mean():.1f}" + ("" if all(n is not None for n in ns) else "*"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_benchmark(out, seeds: int = 3, strategies: Sequence[str] = ("random", "max-variance", "d-optimal",
                                                                     "adversarial"),
                  threshold: float = DEFAULT_THRESHOLD, max_labels: int = DEFAULT_MAX_LABELS,
                  stage_steps: int = 15, batch_size: int = 4, extra_structures: Sequence[str] = (),
                  temperatures: Sequence[float] = EXPLORE_TEMPERATURES, bars: bool = True, log=print) -> dict:
    """``stage_steps``: MD steps per schedule stage (one stage per entry of ``temperatures``, K;
    a frame every 5 steps: the pool the strategies choose from holds up to
    structures x stages x stage_steps / 5 frames); ``batch_size``: structures labelled per
    iteration (one retraining each); ``extra_structures``: explored besides the four test
    structures (e.g. ``divacancy``, ``surface110``), never part of the test set."""
    from .loop import ActiveLoop

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    test = make_test_set(out / "test.extxyz")
    log(f"test set: {len(test)} EMT Cu structures ({out / 'test.extxyz'})")
    runs = {}
    for strategy in strategies:
        runs[strategy] = {}
        for seed in range(seeds):
            log(f"--- {strategy}, seed {seed}")
            cfg = run_config(out, strategy, seed, threshold, max_labels, stage_steps, batch_size, extra_structures,
                             temperatures)
            report = ActiveLoop(cfg, bars=bars, log=log).run()
            runs[strategy][seed] = report["history"]
    rows = summarise(runs, threshold, max_labels)
    table = markdown_table(rows, threshold, max_labels)
    looser = [t for t in (0.2, 0.15, 0.12) if t > threshold]
    if looser:
        table += ("\n\nMean N at looser thresholds, read off the same runs (* some run never got there: "
                  "counted as the budget):\n\n" + threshold_table(runs, looser + [threshold], max_labels))
    curves = {s: [[(h["labels"], h["force_rmse"]) for h in hist] for hist in per.values()] for s, per in runs.items()}
    plot_curves(curves, out / "learning_curves.png", threshold=threshold)
    result = {"threshold": threshold, "max_labels": max_labels, "seeds": seeds, "summary": rows,
              "config": run_config(out, "random", 0, threshold, max_labels, stage_steps, batch_size, extra_structures,
                                   temperatures).to_dict(),
              "curves": curves, "markdown": table}
    atomic_write_text(out / "benchmark.json", json.dumps(result, indent=1, default=str))
    atomic_write_text(out / "benchmark.md", table + "\n")
    return result
