"""This checkout against an earlier commit, side by side in one run: the LAMMPS plugin and the
i-PI driver with the shipped model, interleaved rounds, medians and ratios.

    python benchmarks/against_commit.py BASE [--atoms 32000] [--rounds 3] [--steps 10]

BASE is checked out into a temporary git worktree; its compiled core is built in place and its
plugin with `mlip-md lammps-plugin-path` (cached like any plugin build). Then, for each round,
the same LAMMPS input (examples/lammps/in.nve of this checkout, fcc Cu, 1 fs NVE) runs with the
base plugin and with this checkout's, serial and under `mpiexec -n 2`, in float64 and float32,
and the i-PI driver benchmark (benchmarks/ipi_driver.py of each tree, 4000 atoms, no extras)
runs with each tree's package. Prints LAMMPS loop times and i-PI steps/s with new / base ratios
(< 1 loop time, > 1 steps/s: this checkout is faster).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.prefix) / "bin"


def run(cmd, env=None, cwd=None) -> str:
    proc = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout + proc.stderr


def plugin_of(tree: Path, env: dict) -> str:
    """The plugin built from ``tree``'s sources with ``tree``'s package."""
    env = dict(env, PYTHONPATH=str(tree), MLIP_MD_LAMMPS_SOURCE=str(tree / "lammps_interface"))
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "try:\n from mlip_md.engines.lammps_plugin import plugin_path\n"
            "except ImportError:\n from mlip_md.engines.lammps import plugin_path\n"
            "print(plugin_path(build=True))")
    return run([sys.executable, "-c", code, tree], env=env, cwd=tempfile.gettempdir()).strip().splitlines()[-1]


def lammps_loop_time(plugin: str, model: str, cells: int, steps: int, ranks: int, extra: str, env: dict) -> float:
    cmd = ([BIN / "mpiexec", "-n", ranks] if ranks > 1 else []) + [
        BIN / "lmp", "-in", ROOT / "examples/lammps/in.nve", "-var", "plugin", plugin, "-var", "model", model,
        "-var", "n", cells, "-var", "steps", steps, "-var", "extra", extra, "-log", "none"]
    out = run(cmd, env=env, cwd=tempfile.gettempdir())
    return float(re.findall(r"Loop time of ([0-9.eE+-]+)", out)[-1])


def ipi_steps_per_second(tree: Path, env: dict) -> float:
    out = run([sys.executable, tree / "benchmarks/ipi_driver.py", "--sizes", "4000", "--steps", "20", "--no-extras"],
              env=dict(env, PYTHONPATH=str(tree)), cwd=tempfile.gettempdir())
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return float(rows[0]["ours"])  # the `mlip-md ipi` column


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="commit to compare with (e.g. HEAD~1 or a hash)")
    parser.add_argument("--atoms", type=int, default=32000, help="4 n^3 fcc atoms (default 32000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-ipi", action="store_true", help="LAMMPS only")
    args = parser.parse_args()
    cells = round((args.atoms / 4) ** (1 / 3))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="mlip_md_base_") as tmp:
        base = Path(tmp) / "base"
        run(["git", "-C", ROOT, "worktree", "add", "--detach", base, args.base])
        try:
            run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"], cwd=base)
            trees = {"base": base, "new": ROOT}
            plugins = {name: plugin_of(tree, env) for name, tree in trees.items()}
            model = str(ROOT / "mlip_md/data/cu_default.pt")
            cases = [(ranks, extra) for ranks in (1, 2) for extra in ("", "dtype float32")]
            times = {(name, case): [] for name in trees for case in cases}
            rates = {name: [] for name in trees}
            for _ in range(args.rounds):
                for case in cases:
                    for name in trees:
                        times[name, case].append(lammps_loop_time(plugins[name], model, cells, args.steps, *case, env))
                if not args.no_ipi:
                    for name, tree in trees.items():
                        rates[name].append(ipi_steps_per_second(tree, env))
        finally:
            run(["git", "-C", ROOT, "worktree", "remove", "--force", base])
    print(f"\nLAMMPS, {4 * cells**3} atoms, {args.steps} steps, loop time (s), median of {args.rounds} rounds")
    print(f"| ranks | precision | base {args.base} | this checkout | new / base |\n|---:|---|---:|---:|---:|")
    for ranks, extra in cases:
        old, new = (statistics.median(times[name, (ranks, extra)]) for name in ("base", "new"))
        print(f"| {ranks} | {extra.split()[-1] if extra else 'float64'} | {old:.3f} | {new:.3f} | {new / old:.3f} |")
    if not args.no_ipi:
        old, new = statistics.median(rates["base"]), statistics.median(rates["new"])
        print(f"\ni-PI driver, 4000 atoms, steps/s, median of {args.rounds}: base {old:.2f}, this checkout {new:.2f}, "
              f"new / base {new / old:.3f}")


if __name__ == "__main__":
    main()
