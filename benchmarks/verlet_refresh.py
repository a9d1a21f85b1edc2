"""Per-step neighbour-list cost in the Python engines: a Verlet-list refresh versus a fresh
list, side by side in one run.

System: fcc Cu (a = 3.615 Å, cubic cell repeated, rattled), the shipped model's cutoff 5.5 Å,
skin 0.5 Å (the i-PI driver's and MLIPCalculator's default). Each call gets new positions (the
rattled crystal plus 0.02 Å Gaussian moves, so no rebuild is triggered). Columns, median wall
time per call on one thread:

* fresh mlip_md: ``neighbor_list(..., cutoff, vectors=True, distances=True)``, what every step
  costs with ``skin = 0``;
* fresh vesin (if installed): ``vesin.NeighborList(cutoff).compute(..., "ijSD")``;
* refresh: ``VerletList.update(..., details=False)`` (i, j, vectors and the closest distance:
  what the engines use); refresh + details adds shifts and distances;
* build: the one-off cost when the skin is exceeded (list at cutoff + skin, then the compact
  candidates with their first refresh).

    python benchmarks/verlet_refresh.py [--sizes 500 4000 32000] [--output table.md]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from ase.build import bulk

from mlip_md.neighbors import neighbor_list
from mlip_md.runtime.neighbor_reuse import VerletList

CUTOFF, SKIN = 5.5, 0.5


def median_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def measure(n_target: int, runs: int) -> dict:
    cells = max(1, round((n_target / 4) ** (1 / 3)))
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(cells)
    atoms.rattle(0.02, seed=0)
    cell, pbc = atoms.cell.array, atoms.pbc
    rng = np.random.default_rng(0)
    frames = [atoms.positions + rng.normal(scale=0.02, size=atoms.positions.shape) for _ in range(8)]
    step = iter(range(10**9))

    def positions():
        return frames[next(step) % len(frames)]

    row = {"n": len(atoms)}
    row["fresh"] = median_ms(lambda: neighbor_list(positions(), cell, pbc, CUTOFF, vectors=True, distances=True),
                             runs)
    try:
        import vesin

        calc = vesin.NeighborList(cutoff=CUTOFF, full_list=True)
        row["vesin"] = median_ms(lambda: calc.compute(positions(), cell, True, "ijSD"), runs)
    except ImportError:
        row["vesin"] = None
    verlet = VerletList(CUTOFF, SKIN)
    verlet.update(atoms.positions, cell, pbc)
    row["refresh"] = median_ms(lambda: verlet.update(positions(), cell, pbc, details=False), runs)
    row["refresh_details"] = median_ms(lambda: verlet.update(positions(), cell, pbc), runs)
    if verlet.builds != 1:
        raise RuntimeError(f"the refresh runs rebuilt the list ({verlet.builds} builds)")

    def build():
        verlet.invalidate()
        verlet.update(positions(), cell, pbc, details=False)

    row["build"] = median_ms(build, max(3, runs // 4))
    row["pairs"] = verlet.edge_index.shape[1]
    row["candidates"] = verlet._packed.n_pairs
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 4000, 32000])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    lines = ["| N atoms | pairs (candidates) | fresh mlip_md (ms) | fresh vesin (ms) | refresh (ms) | "
             "refresh + details (ms) | fresh / refresh | build (ms, one-off) | refresh ns/candidate |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in args.sizes:
        r = measure(n, args.runs)
        vesin = f"{r['vesin']:.2f}" if r["vesin"] is not None else "n/a"
        lines.append(f"| {r['n']} | {r['pairs']} ({r['candidates']}) | {r['fresh']:.2f} | {vesin} | "
                     f"{r['refresh']:.2f} | {r['refresh_details']:.2f} | **{r['fresh'] / r['refresh']:.1f}x** | "
                     f"{r['build']:.1f} | {1e6 * r['refresh'] / r['candidates']:.1f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
