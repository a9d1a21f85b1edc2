"""Torch threads per process: the Python engines' model call with 1 thread (mlip_md's default)
against N threads (torch's own default is one per core), on an idle machine and with one
CPU-bound competitor process per core but one (a shared or oversubscribed machine).

    python benchmarks/threads.py                 # 108 and 4000 Cu atoms, monitors on and off

Each configuration runs in a fresh process (torch's thread pool is fixed at first use) with the
shipped model and mlip_md's malloc settings; prints ms per call (median of the repeats) and the
ratio N threads / 1 thread (> 1: one thread is faster).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WORKER = r"""
import json, sys, time
from mlip_md.process import configure_for_md
threads, reps = int(sys.argv[1]), int(sys.argv[2])
configure_for_md(threads)
from ase.build import bulk
from mlip_md.runtime.predictor import Predictor
predictor = Predictor(None, skin=0.5)
out = {}
for repeat, label in ((3, 108), (10, 4000)):
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(repeat)
    atoms.rattle(0.05, seed=1)
    for monitors in (True, False):
        predictor.predict_atoms(atoms, monitors=monitors)
        calls = reps * (8 if label == 108 else 1)
        times = []
        for _ in range(calls):
            atoms.positions += 0.0005
            start = time.perf_counter()
            predictor.predict_atoms(atoms, monitors=monitors)
            times.append(time.perf_counter() - start)
        out[f"{label} atoms, monitors {'on' if monitors else 'off'}"] = times
print(json.dumps(out))
"""


def measure(threads: int, reps: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-c", WORKER, str(threads), str(reps)], env=env, capture_output=True,
                          text=True, check=True)
    return {k: 1e3 * statistics.median(v) for k, v in json.loads(proc.stdout.splitlines()[-1]).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="the N to compare with 1")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    for condition in ("idle", "busy"):
        competitors = []
        if condition == "busy":  # one spinning process on every core but one
            competitors = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                           for _ in range(max(1, args.threads - 1))]
        try:
            one, many = measure(1, args.reps), measure(args.threads, args.reps)
        finally:
            for p in competitors:
                p.kill()
        print(f"\n{condition} machine ({len(competitors)} competing process(es)), ms per call, median:")
        print(f"  {'case':<28} {'1 thread':>10} {f'{args.threads} threads':>11} {'ratio':>7}")
        for case in one:
            print(f"  {case:<28} {one[case]:>10.1f} {many[case]:>11.1f} {many[case] / one[case]:>7.2f}")


if __name__ == "__main__":
    main()
