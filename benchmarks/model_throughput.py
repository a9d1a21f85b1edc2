"""Model evaluation throughput: atom-steps/s of energy + forces (+ virial) for the shipped
model (or --model), float32 and float64, eager PyTorch vs the exported TorchScript module vs
the compiled AOTInductor packages (`mlip-md compile`, given with --compiled64 / --compiled32),
side by side in one run. The neighbour list is built once per size and not timed (it is
benchmarked in benchmarks/neighbors.py); the model call and force/virial assembly are.

    python benchmarks/model_throughput.py [--model m.pt] [--sizes 500 4000 32000] [--output table.md] \
        [--compiled64 m.pt2] [--compiled32 m32.pt2]

Set GLIBC_TUNABLES (see BENCHMARKS.md) and OMP_NUM_THREADS to control the environment.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from ase.build import bulk

from mlip_md.model.assemble import forces_and_virial
from mlip_md.model.io import load_potential, save_model
from mlip_md.neighbors import neighbor_list
from mlip_md.runtime.factory import load_model


def crystal(n_target: int, seed: int = 0):
    cells = max(1, round((n_target / 4) ** (1 / 3)))
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(cells)
    atoms.rattle(0.05, seed=seed)
    return atoms


def contract_inputs(n_target: int, cutoff: float):
    """A rattled fcc Cu cell of about ``n_target`` atoms as the model contract takes it:
    (atoms, species int64 [n], edge_index int64 [2, E], edge vectors float64 [E, 3] Å)."""
    atoms = crystal(n_target)
    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    return (atoms, torch.from_numpy(atoms.numbers.astype(np.int64)),
            torch.from_numpy(np.stack([nl.i, nl.j])), torch.from_numpy(nl.vectors))


def time_call(fn, min_repeats: int = 3, min_seconds: float = 1.0) -> float:
    fn()  # warm-up (TorchScript profiling runs, allocator)
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 4000, 32000])
    parser.add_argument("--output")
    parser.add_argument("--compiled64", help="package of --model compiled in float64 (mlip-md compile)")
    parser.add_argument("--compiled32", help="package of --model compiled in float32 (mlip-md compile --dtype float32)")
    args = parser.parse_args()

    source = load_model(args.model)
    eager64 = load_potential(source.path).eval()
    variants = {}
    for dtype_name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
        variants[("eager", dtype_name)] = (eager64 if dtype is torch.float64 else load_potential(source.path).to(dtype).eval(), dtype)
        tmp = f"/tmp/mlip_md_bench_{os.getpid()}_{dtype_name}.pt"
        save_model(load_potential(source.path), tmp, dtype=dtype_name)
        variants[("torchscript", dtype_name)] = (load_model(tmp).module, dtype)
        os.unlink(tmp)
        package = args.compiled64 if dtype is torch.float64 else args.compiled32
        if package:
            variants[("compiled", dtype_name)] = (load_model(package), dtype)

    rows = []
    for n_target in args.sizes:
        atoms, species, edge_index, vectors64 = contract_inputs(n_target, source.cutoff)
        n = len(atoms)
        for (kind, dtype_name), (module, dtype) in variants.items():
            vectors = vectors64.to(dtype)

            def step():
                if kind == "compiled":  # forces and virial come assembled from the graph
                    module(species, edge_index, vectors, n, monitors=False)
                    return
                out = module.evaluate(species, edge_index, vectors, n, False, False)
                forces_and_virial(out["edge_grad"], edge_index, vectors, n)

            seconds = time_call(step)
            rows.append((n, kind, dtype_name, seconds, n / seconds))
            print(f"N={n:>6} {kind:<11} {dtype_name}: {seconds * 1e3:9.2f} ms  {n / seconds / 1e3:8.1f} katom-steps/s", flush=True)

    threads = torch.get_num_threads()
    kinds = [k for k in ("eager", "torchscript", "compiled") if any(r[1] == k for r in rows)]
    names = {"eager": "eager", "torchscript": "TorchScript", "compiled": "compiled"}
    header = [f"{names[k]} {d[-2:]}" for d in ("float64", "float32") for k in kinds]
    extra = ["compiled / TorchScript f64", "compiled / TorchScript f32"] if "compiled" in kinds else []
    lines = [
        f"Model {source.path.name}: K={source.ensemble_size}, cutoff {source.cutoff} Å, "
        f"{source.metadata['n_features']} features; torch {torch.__version__}, {threads} thread(s).",
        "",
        "| N atoms | edges/atom | " + " | ".join(header + extra) + " |",
        "|---:|---:|" + "---:|" * (len(header) + len(extra)),
    ]
    for n in sorted({r[0] for r in rows}):
        got = {(r[1], r[2]): r[4] for r in rows if r[0] == n}
        nl_edges = neighbor_list(crystal(n).positions, crystal(n).cell.array, True, source.cutoff).i.size / n
        cells = [f"{got[(k, d)] / 1e3:.1f}" if (k, d) in got else "-" for d in ("float64", "float32") for k in kinds]
        for d in ("float64", "float32")[: len(extra)]:
            cells.append(f"**{got[('compiled', d)] / got[('torchscript', d)]:.2f}x**" if ("compiled", d) in got else "-")
        lines.append(f"| {n} | {nl_edges:.0f} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Values are katom-steps/s (energy + forces + virial, median of repeated calls).")
    table = "\n".join(lines)
    print()
    print(table)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(table + "\n")


if __name__ == "__main__":
    main()
