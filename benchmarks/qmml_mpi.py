"""QM/ML hybrid: wall time per evaluation serially (high + low one after the other) and with
the levels on separate MPI ranks (``mpiexec -n 2``: high on rank 1, low on rank 0).

    python benchmarks/qmml_mpi.py                       # serial: times of each part and the total
    mpiexec -n 2 python benchmarks/qmml_mpi.py          # split: per-group times and the total

Setup: fcc Cu (a = 3.615 Å) cubic cell repeated --repeat times, rattled; high = the shipped
mlip_md model on the carved cluster (r_outer 6 Å + buffer 5.5 Å), low = EMT on everything.
Median over --calls evaluations after one warm-up. Prints one Markdown table row.
"""
from __future__ import annotations

import argparse
import statistics
import time

from ase.build import bulk

from mlip_md.qmml import HybridModel
from mlip_md.qmml.mpi import HybridParallel
from mlip_md.runtime.parallel import world_communicator


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=6)
    parser.add_argument("--calls", type=int, default=7)
    parser.add_argument("--high", default="mlip")
    parser.add_argument("--low", default="emt")
    parser.add_argument("--r-inner", type=float, default=3.5)
    parser.add_argument("--r-outer", type=float, default=6.0)
    args = parser.parse_args()
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(args.repeat)
    atoms.rattle(0.05, seed=0)
    model = HybridModel(args.high, args.low, 0, (args.r_inner, args.r_outer), energy_shift="auto")
    state = (atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    comm = world_communicator()
    if comm is None:
        rows = {"high": [], "low": [], "total": []}
        for call in range(args.calls + 1):
            start = time.perf_counter()
            plan = model.plan(*state)
            t0 = time.perf_counter()
            high = model.high_part(plan, atoms.numbers)
            t1 = time.perf_counter()
            low = model.low_part(plan, *state)
            t2 = time.perf_counter()
            model.combine(plan, atoms.numbers, atoms.cell.array, atoms.pbc, high.energies, low.energies,
                          high.forces + low.forces, high.virial + low.virial)
            if call:
                rows["high"].append(t1 - t0)
                rows["low"].append(t2 - t1)
                rows["total"].append(time.perf_counter() - start)
        label, cluster = "serial", len(plan.cluster.source)
    else:
        parallel = HybridParallel(model, comm, high_ranks=1)
        if comm.Get_rank() > 0:
            parallel.serve()
            return
        rows = {"high": [], "low": [], "total": []}
        for call in range(args.calls + 1):
            res = parallel.evaluate(*state)
            if call:
                for key in rows:
                    rows[key].append(parallel.timings[key])
        parallel.shutdown()
        label, cluster = f"mpiexec -n {comm.Get_size()}", res.n_cluster
    med = {k: 1e3 * statistics.median(v) for k, v in rows.items()}
    print(f"| {label} | {len(atoms)} | {cluster} | {med['high']:.0f} | {med['low']:.0f} | {med['total']:.0f} | "
          f"{med['total'] / max(med['high'], med['low']):.2f} | {med['total'] / (med['high'] + med['low']):.2f} |")


if __name__ == "__main__":
    main()
