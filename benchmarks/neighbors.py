"""Neighbour-list benchmark: ASE, matscipy, vesin and mlip_md side by side.

System: fcc Cu (a = 3.615 Å, cubic 4-atom cell repeated), cutoff 5 Å, FULL
list with i, j, shifts and vectors (ASE / matscipy: "ijSD"; vesin: "ijSD";
mlip_md: vectors=True). Median wall time over several runs; M pairs/s =
pairs / median time. All libraries single-threaded in the main table (vesin
with n_threads=1; mlip_md num_threads=1); an optional second table compares
the multi-threaded paths (--threads N).

    python benchmarks/neighbors.py                      # markdown to stdout
    python benchmarks/neighbors.py --output bench.md    # ... and to a file
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from ase.build import bulk

SIZES = {500: (5, 5, 5), 4000: (10, 10, 10), 32000: (20, 20, 20), 100000: (25, 25, 40)}
CUTOFF = 5.0


def make_copper(n: int):
    if n in SIZES:
        reps = SIZES[n]
    else:
        k = max(1, round((n / 4) ** (1 / 3)))
        reps = (k, k, k)
    return bulk("Cu", "fcc", a=3.615, cubic=True).repeat(reps)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def median_time(fn, min_runs: int, min_seconds: float, clock=time.perf_counter, max_runs: int = 50):
    """Median time of fn() (after one warm-up call) on `clock`; returns (t, result)."""
    result = fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_runs and (
        len(times) < min_runs or time.perf_counter() - start < min_seconds
    ):
        t0 = clock()
        result = fn()
        times.append(clock() - t0)
    return statistics.median(times), result


def runners(atoms, threads: int):
    """name -> zero-argument callable returning the number of pairs."""
    pos = atoms.positions
    cell = atoms.cell.array
    out = {}

    try:
        from ase.neighborlist import neighbor_list as ase_nl

        out["ASE"] = lambda: len(ase_nl("ijSD", atoms, CUTOFF)[0])
    except ImportError:  # pragma: no cover
        pass
    try:
        from matscipy.neighbours import neighbour_list as ms_nl

        out["matscipy"] = lambda: len(ms_nl("ijSD", atoms, CUTOFF)[0])
    except ImportError:  # pragma: no cover
        pass
    try:
        import vesin

        calc = vesin.NeighborList(cutoff=CUTOFF, full_list=True, n_threads=threads)
        out["vesin"] = lambda: len(calc.compute(pos, cell, True, "ijSD")[0])
    except ImportError:  # pragma: no cover
        pass

    from mlip_md.neighbors import neighbor_list

    out["mlip_md"] = lambda: len(
        neighbor_list(pos, cell, True, CUTOFF, vectors=True, num_threads=threads).i
    )
    return out


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def versions() -> str:
    parts = []
    for mod in ("numpy", "ase", "matscipy", "vesin"):
        try:
            parts.append(f"{mod} {__import__(mod).__version__}")
        except Exception:  # pragma: no cover
            pass
    return ", ".join(parts)


def run_table(sizes, threads, ase_max, min_runs, min_seconds, clock, only=None, log=sys.stderr):
    names = ["ASE", "matscipy", "vesin", "mlip_md"] if only is None else only
    rows = []
    for n in sizes:
        atoms = make_copper(n)
        fns = runners(atoms, threads)
        row = {"N": len(atoms), "pairs": None, "res": {}}
        for name in names:
            if name not in fns:
                row["res"][name] = "n/a"
                continue
            if name == "ASE" and len(atoms) > ase_max:
                row["res"][name] = "skipped"
                continue
            t, pairs = median_time(fns[name], min_runs, min_seconds, CLOCKS[clock])
            if row["pairs"] is None:
                row["pairs"] = pairs
            elif pairs != row["pairs"]:
                raise RuntimeError(f"{name} found {pairs} pairs, others {row['pairs']}")
            row["res"][name] = t
            print(f"  N={len(atoms):6d} {name:9s} {t * 1e3:9.2f} ms  {pairs / t / 1e6:6.1f} M pairs/s",
                  file=log, flush=True)
        rows.append(row)
    return names, rows


def format_table(names, rows) -> str:
    head = "| N atoms | pairs |" + "".join(f" {n} ms (M pairs/s) |" for n in names)
    head += " mlip_md / vesin |"
    sep = "|---:|---:|" + "---:|" * len(names) + "---:|"
    lines = [head, sep]
    for row in rows:
        cells = [f"{row['N']}", f"{row['pairs']}"]
        for name in names:
            v = row["res"][name]
            if isinstance(v, str):
                cells.append(v)
            else:
                cells.append(f"{v * 1e3:.2f} ({row['pairs'] / v / 1e6:.1f})")
        m, vz = row["res"].get("mlip_md"), row["res"].get("vesin")
        if isinstance(m, float) and isinstance(vz, float):
            cells.append(f"**{vz / m:.2f}x**")
        else:
            cells.append("n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for the extra multi-threaded table (vesin, mlip_md); "
                             "0 = skip it")
    parser.add_argument("--ase-max", type=int, default=4000,
                        help="skip ASE above this many atoms (it is slow)")
    parser.add_argument("--min-runs", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="wall: elapsed time (default); cpu: process CPU time, robust "
                             "against other load on the machine (single-thread table only)")
    parser.add_argument("--output", help="also write the markdown to this file")
    args = parser.parse_args(argv)

    print("single-threaded:", file=sys.stderr)
    names, rows = run_table(args.sizes, 1, args.ase_max, args.min_runs, args.min_seconds,
                            args.clock)
    md = [
        f"fcc Cu, a = 3.615 Å, cutoff {CUTOFF} Å, full list with i, j, shifts, vectors; "
        f"median {args.clock} time in ms (M pairs/s); last column = mlip_md pairs/s / vesin "
        f"pairs/s (> 1: mlip_md faster). ASE skipped above {args.ase_max} atoms (too slow).",
        "",
        f"Machine: {machine_description()}; {versions()}.",
        "",
        "**Single thread** (vesin `n_threads=1`, mlip_md `num_threads=1`):",
        "",
        format_table(names, rows),
    ]
    if args.threads > 1:
        print(f"{args.threads} threads:", file=sys.stderr)
        names_t, rows_t = run_table(args.sizes, args.threads, args.ase_max, args.min_runs,
                                    args.min_seconds, "wall", only=["vesin", "mlip_md"])
        md += [
            "",
            f"**{args.threads} threads** (vesin `n_threads={args.threads}`, "
            f"mlip_md `num_threads={args.threads}`; wall time):",
            "",
            format_table(names_t, rows_t),
        ]
    text = "\n".join(md) + "\n"
    sys.stdout.write(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
