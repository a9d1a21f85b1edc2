"""Cost against the number of elements: feature size, model file, training memory and time, ASE
(monitors off and on) and LAMMPS speed, side by side in one run.

For S = 1, 2, 3, 5, 8 elements (Cu, Ni, Al, Ag, Pd, Au, Pt, C: EMT has them all) it builds random
fcc solid solutions (32 and 108 atoms, random compositions, strained and rattled), labels them
with ASE's EMT, trains a model with `mlip-md train` (n_max 8, l_max 4, hidden 32,32, K = 2 unless
changed) and measures, for a 500-atom random alloy, one thread:
  * D (features per atom) and the model file size;
  * training: peak resident memory of the `mlip-md train` process and wall time per epoch;
  * ASE VelocityVerlet with MLIPCalculator, monitors off and on (every step), best of 3
    interleaved runs each: katom-steps/s;
  * LAMMPS `pair_style mlip` (the fused kernel, one rank): katom-steps/s.
Ratios are against the one-element row. `--channels uncompressed` trains one channel per
element and radial function (the descriptor before compression) for comparison; it is skipped
for element counts whose feature matrix would not fit (`--max-uncompressed`).

    python benchmarks/many_elements.py [--elements 1 2 3 5 8] [--structures 48] [--epochs 20]
                                       [--channels auto|uncompressed|Q] [--output table.md]
                                       [--workdir DIR]

Units: energies eV, lengths Å; speeds are katom-steps/s (atoms x MD steps / wall second / 1000).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ase.io
import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.data import atomic_masses, atomic_numbers
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

from mlip_md.engines.lammps_plugin import plugin_path
from mlip_md.model.io import read_metadata

ELEMENTS = ["Cu", "Ni", "Al", "Ag", "Pd", "Au", "Pt", "C"]
#: fcc lattice constants (Å) for a Vegard's-law guess of each alloy's cell
LATTICE = {"Cu": 3.61, "Ni": 3.52, "Al": 4.05, "Ag": 4.09, "Pd": 3.89, "Au": 4.08, "Pt": 3.92, "C": 3.6}
BIN = Path(sys.prefix) / "bin"


def random_alloy(elements, repeat: int, rng: np.random.Generator, strain: float = 0.03, rattle: float = 0.1):
    """A cubic fcc cell (4 repeat^3 atoms) with a random composition over ``elements``."""
    fractions = rng.dirichlet(np.ones(len(elements)))
    symbols = rng.choice(elements, size=4 * repeat**3, p=fractions)
    a = float(np.mean([LATTICE[s] for s in symbols]))
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(repeat)
    atoms.set_chemical_symbols(list(symbols))
    atoms.set_cell(atoms.cell * (1 + rng.uniform(-strain, strain, 3)), scale_atoms=True)
    atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
    return atoms


def labelled_dataset(elements, n_structures: int, seed: int, path: Path) -> None:
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n_structures):
        atoms = random_alloy(elements, 2 if k % 2 else 3, rng)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_forces()
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")


def train(data: Path, model: Path, args, channels) -> dict:
    cmd = [BIN / "mlip-md", "train", data, "-o", model, "--n-max", 8, "--l-max", 4, "--hidden", args.hidden,
           "--ensemble", args.ensemble, "--epochs", args.epochs, "--patience", args.epochs, "--workers", 1,
           "--no-progress", "--seed", 1]
    if channels is not None:
        cmd += ["--channels", channels]
    out = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB %M WALL %e", *map(str, cmd)], capture_output=True,
                         text=True)
    if out.returncode != 0:
        return {"train_error": (out.stderr.strip().splitlines() or ["?"])[-1][:160]}
    rss_kb, wall = re.findall(r"MAXRSS_KB (\d+) WALL ([0-9.]+)", out.stderr)[-1]
    report = json.loads(model.with_suffix(".json").read_text())
    epochs = sum(report["epochs_per_member"])
    return {"train_peak_gb": int(rss_kb) / 1024**2, "train_s_per_epoch": report["train_seconds"] / max(epochs, 1),
            "train_wall_s": float(wall), "force_rmse_val": report["validation"]["mean"]["force_rmse"]}


def ase_speeds(model: Path, atoms, steps: int, rounds: int = 3) -> dict:
    """katom-steps/s of ASE VelocityVerlet with monitors off and on (every step): the best of
    ``rounds`` interleaved runs each, so both see the same machine load."""
    from mlip_md import MLIPCalculator

    dynamics = {}
    for monitors in (False, True):
        copy = atoms.copy()
        copy.calc = MLIPCalculator(model, monitors=monitors, ood_warnings=False, threads=1)
        MaxwellBoltzmannDistribution(copy, temperature_K=300, rng=np.random.default_rng(0))
        dynamics[monitors] = VelocityVerlet(copy, timestep=1.0 * 0.09822694788464063)  # 1 fs in ASE time units
        dynamics[monitors].run(3)
    best = {False: 0.0, True: 0.0}
    for _ in range(rounds):
        for monitors, dyn in dynamics.items():
            start = time.perf_counter()
            dyn.run(steps)
            best[monitors] = max(best[monitors], len(atoms) * steps / (time.perf_counter() - start) / 1000)
    return {"ase_off": best[False], "ase_on": best[True]}


LAMMPS_INPUT = """units metal
atom_style atomic
boundary p p p
read_data {data}
plugin load {plugin}
pair_style mlip {model} threads 1 ood_warnings no
pair_coeff * * {elements}
velocity all create 300 4928459 mom yes rot yes dist gaussian
timestep 0.001
fix integrate all nve
thermo 100
run 3
run {steps}
"""


def lammps_speed(model: Path, atoms, elements, steps: int, workdir: Path) -> float:
    data = workdir / "alloy.data"
    masses = [atomic_masses[atomic_numbers[s]] for s in elements]
    ase.io.write(data, atoms, format="lammps-data", specorder=list(elements), masses=True)
    text = data.read_text()
    if "Masses" not in text:  # older ASE: write the masses ourselves
        text = text.replace("\n Atoms", "\nMasses\n\n" + "\n".join(
            f"{i + 1} {m}" for i, m in enumerate(masses)) + "\n\n Atoms", 1)
        data.write_text(text)
    script = workdir / "in.alloy"
    script.write_text(LAMMPS_INPUT.format(data=data, plugin=plugin_path(), model=model,
                                          elements=" ".join(elements), steps=steps))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["LD_LIBRARY_PATH"] = f"{Path(sys.prefix) / 'lib'}:{env.get('LD_LIBRARY_PATH', '')}"
    out = subprocess.run([BIN / "lmp", "-in", script, "-log", "none"], capture_output=True, text=True, env=env,
                         cwd=workdir)
    if out.returncode != 0:
        raise SystemExit(f"lmp failed:\n{out.stdout[-1500:]}\n{out.stderr[-1500:]}")
    loop = float(re.findall(r"Loop time of ([0-9.eE+-]+)", out.stdout)[-1])
    return len(atoms) * steps / loop / 1000


def channels_for(option: str, n_species: int):
    if option == "auto":
        return None
    if option == "uncompressed":
        return n_species * 8
    return int(option)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--elements", type=int, nargs="+", default=[1, 2, 3, 5, 8])
    parser.add_argument("--structures", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--hidden", default="32,32")
    parser.add_argument("--ensemble", type=int, default=2)
    parser.add_argument("--channels", default="auto", help="auto, uncompressed or a number Q")
    parser.add_argument("--max-uncompressed", type=int, default=2,
                        help="largest element count trained uncompressed with --channels uncompressed")
    parser.add_argument("--ase-steps", type=int, default=10)
    parser.add_argument("--lammps-steps", type=int, default=50)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--workdir", type=Path, help="keep data and models here; a rerun reuses them")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlip_md_elements_") as scratch:
        tmp = args.workdir or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        for n in args.elements:
            elements = ELEMENTS[:n]
            row = {"elements": n, "symbols": " ".join(elements)}
            rows.append(row)
            if args.channels == "uncompressed" and n > args.max_uncompressed and n > 1:
                row["skipped"] = "uncompressed feature matrix too large"
                continue
            data, model = tmp / f"data{n}_{args.channels}.xyz", tmp / f"model{n}_{args.channels}.pt"
            trained = model.with_suffix(".row.json")
            if trained.exists():  # --workdir of an earlier run: reuse its model and training figures
                row.update(json.loads(trained.read_text()))
            else:
                labelled_dataset(elements, args.structures, seed=n, path=data)
                row.update(train(data, model, args, channels_for(args.channels, n)))
                if "train_error" in row:
                    continue
                trained.write_text(json.dumps(row))
            row["features"] = read_metadata(model).get("n_features")
            row["file_mb"] = model.stat().st_size / 1024**2
            cell = random_alloy(elements, 5, np.random.default_rng(100 + n), strain=0.0, rattle=0.02)
            row.update(ase_speeds(model, cell, args.ase_steps))
            row["lammps"] = lammps_speed(model, cell, elements, args.lammps_steps, tmp)
            print(json.dumps(row), flush=True)
    first = next((r for r in rows if r["elements"] == 1 and "lammps" in r), None)
    lines = ["| elements | D | file MB | train peak GB | train s/epoch | val force RMSE eV/Å | ASE off | ASE on "
             "| on/off | LAMMPS | ASE off / 1 el | LAMMPS / 1 el |", "|" + "---:|" * 12]
    for r in rows:
        if "lammps" not in r:
            lines.append(f"| {r['elements']} | {r.get('skipped') or r.get('train_error')} |" + " |" * 10)
            continue
        rel = (lambda key: f"{r[key] / first[key]:.2f}") if first else (lambda key: "-")
        fr = r.get("force_rmse_val")
        lines.append(
            f"| {r['elements']} | {r['features']} | {r['file_mb']:.1f} | {r['train_peak_gb']:.2f} | "
            f"{r['train_s_per_epoch']:.1f} | {fr if fr is None else f'{fr:.3f}'} | {r['ase_off']:.1f} | "
            f"{r['ase_on']:.1f} | {r['ase_on'] / r['ase_off']:.2f} | {r['lammps']:.1f} | {rel('ase_off')} | "
            f"{rel('lammps')} |")
    table = "\n".join(lines)
    print(table)
    if args.output:
        args.output.write_text(table + "\n")


if __name__ == "__main__":
    main()
