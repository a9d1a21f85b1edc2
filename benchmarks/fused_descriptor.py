"""Fused descriptor kernel (C++ power spectrum + backward, mlip_md.runtime.fused) against the
TorchScript model, side by side in one run, as the Python engines call them.

1. Model call: energy + forces + virial (``model(...)`` + force/virial assembly, monitors off)
   of the shipped model (or --model) on rattled fcc Cu, TorchScript vs fused, float64 and
   float32 (the model re-exported in float32), plus float64 with the K per-member forces
   (``force_sigma``, i-PI's ``--committee full``). The neighbour list is built once and not
   timed. Median of repeated calls after two warm-up calls, TorchScript and fused calls
   alternating (robust ratios on a shared machine). The fused float64 call is also
   split into its three parts (C forward, TorchScript ``evaluate_features``, C backward).
2. End to end: a real i-PI server (NVE Cu, as benchmarks/ipi_driver.py) served by
   ``mlip-md ipi --no-fused`` and by ``mlip-md ipi`` (fused, the default), steps/s.

    python benchmarks/fused_descriptor.py [--sizes 4000 32000] [--no-ipi] [--output table.md]

Set OMP_NUM_THREADS (and GLIBC_TUNABLES, see BENCHMARKS.md) to control the environment.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mlip_md.model.assemble import forces_and_virial
from mlip_md.model.io import load_potential, save_model
from mlip_md.runtime.factory import load_model
from mlip_md.runtime.fused import FusedBackend

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ipi_driver import run_pair  # noqa: E402
from model_throughput import contract_inputs, time_call  # noqa: E402


def time_interleaved(functions: dict, min_repeats: int = 3, min_seconds: float = 1.0) -> dict:
    """Median seconds per call of each function, calls alternating (A B A B ...) so that load
    from other processes on a shared machine hits every variant alike; two warm-up calls each."""
    for fn in functions.values():
        fn()
        fn()
    times = {name: [] for name in functions}
    start = time.perf_counter()
    while min(map(len, times.values())) < min_repeats or time.perf_counter() - start < min_seconds:
        for name, fn in functions.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(values) for name, values in times.items()}


def step_function(model, species, edge_index, vectors, n, force_sigma=False):
    def step():
        out = model(species, edge_index, vectors, n, monitors=False, force_sigma=force_sigma)
        forces_and_virial(out["edge_grad"], edge_index, vectors, n)  # as the Predictor assembles
    return step


def fused_parts(fused: FusedBackend, species, edge_index, vectors, n) -> dict:
    """Median seconds of the three parts of one fused call (monitors off)."""
    index = fused.species_index(species.numpy())
    pairs = np.ascontiguousarray(edge_index.numpy())
    vec = np.ascontiguousarray(vectors.numpy())
    features, density = fused.kernel.power_spectrum_forward(fused.params, index, pairs, vec, n)
    raw = torch.from_numpy(features)
    ei, ev = torch.from_numpy(pairs), torch.from_numpy(vec)

    def middle():
        with torch.enable_grad():
            return fused.module.evaluate_features(species, raw, ei, ev, n, False, False)

    grad = np.ascontiguousarray(middle()["feature_grad"].numpy())
    return {
        "forward": time_call(lambda: fused.kernel.power_spectrum_forward(fused.params, index, pairs, vec, n)),
        "readout": time_call(middle),
        "backward": time_call(lambda: fused.kernel.power_spectrum_backward(fused.params, index, pairs, vec, density,
                                                                           grad, n)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4000, 32000])
    parser.add_argument("--steps", type=int, default=20, help="i-PI steps (halved above 20 000 atoms)")
    parser.add_argument("--no-ipi", action="store_true", help="skip the end-to-end i-PI runs")
    parser.add_argument("--output")
    args = parser.parse_args()

    source = load_model(args.model)
    root = Path(tempfile.mkdtemp(prefix="mlip_md_fused_bench_"))
    f32_path = save_model(load_potential(source.path), root / "f32.pt", dtype="float32")
    models = {"float64": load_model(source.path), "float32": load_model(f32_path)}
    threads = torch.get_num_threads()
    rows = []
    for n_target in args.sizes:
        atoms, species, edge_index, vectors64 = contract_inputs(n_target, source.cutoff)
        n = len(atoms)
        row = {"n": n, "edges": edge_index.shape[1] / n}
        for dtype_name, model in models.items():
            vectors = vectors64.to(model.dtype)
            variants = {"ts": model, "fused": FusedBackend(model)}
            groups = [(dtype_name, False)] + ([("sigma", True)] if dtype_name == "float64" else [])
            for label, sigma in groups:
                got = time_interleaved({f"{kind}_{label}": step_function(variant, species, edge_index, vectors, n,
                                                                         force_sigma=sigma)
                                        for kind, variant in variants.items()}, min_repeats=2 if sigma else 3)
                row.update(got)
                print(f"N={n:>6} {dtype_name}{' + force_sigma' if sigma else ''}: "
                      + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in got.items()), flush=True)
        row["parts"] = fused_parts(FusedBackend(models["float64"]), species, edge_index,
                                   vectors64, n)
        print(f"N={n:>6} fused float64 parts (ms): "
              + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in row["parts"].items()), flush=True)
        if not args.no_ipi:
            steps = max(5, args.steps if n < 20000 else args.steps // 2)
            command = [str(Path(sys.prefix) / "bin" / "mlip-md"), "ipi", "--unix", "--address", "{address}",
                       "--model", str(source.path), "--committee", "off", "--monitor-every", "0"]
            row["ipi_ts"] = run_pair(root / f"ts_{n}", atoms, steps, command + ["--no-fused"])["steps_per_second"]
            row["ipi_fused"] = run_pair(root / f"fused_{n}", atoms, steps, command + ["--fused"])["steps_per_second"]
            print(f"N={n:>6} i-PI steps/s: TorchScript {row['ipi_ts']:.3f}, fused {row['ipi_fused']:.3f}", flush=True)
        rows.append(row)

    def rate(row, key):
        return f"{row['n'] / row[key] / 1e3:.1f}"

    lines = [
        f"Model {source.path.name}: K={source.ensemble_size}, cutoff {source.cutoff} Å, "
        f"{source.metadata['n_features']} features; torch {torch.__version__}, {threads} thread(s).",
        "",
        "| N atoms | edges/atom | TorchScript f64 | fused f64 | fused / TorchScript f64 | TorchScript f32 | fused f32 | "
        "fused / TorchScript f32 | fused f32 / TorchScript f64 | TorchScript f64 + force_sigma | "
        "fused f64 + force_sigma | fused / TorchScript, force_sigma |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['edges']:.0f} | {rate(r, 'ts_float64')} | {rate(r, 'fused_float64')} | "
            f"**{r['ts_float64'] / r['fused_float64']:.2f}x** | {rate(r, 'ts_float32')} | {rate(r, 'fused_float32')} | "
            f"**{r['ts_float32'] / r['fused_float32']:.2f}x** | {r['ts_float64'] / r['fused_float32']:.2f}x | "
            f"{rate(r, 'ts_sigma')} | {rate(r, 'fused_sigma')} | {r['ts_sigma'] / r['fused_sigma']:.2f}x |")
    lines += ["", "Values are katom-steps/s (energy + forces + virial, median of repeated calls).", "",
              "| N atoms | fused f64 call (ms) | C forward | TorchScript evaluate_features | C backward |",
              "|---:|---:|---:|---:|---:|"]
    for r in rows:
        p = r["parts"]
        total = r["fused_float64"]
        lines.append(f"| {r['n']} | {total * 1e3:.1f} | " + " | ".join(
            f"{p[k] * 1e3:.1f} ({p[k] / total:.0%})" for k in ("forward", "readout", "backward")) + " |")
    if not args.no_ipi:
        lines += ["", "| N atoms | i-PI + mlip-md ipi --no-fused (steps/s) | i-PI + mlip-md ipi, fused (steps/s) | ratio |",
                  "|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['n']} | {r['ipi_ts']:.3f} | {r['ipi_fused']:.3f} | **{r['ipi_fused'] / r['ipi_ts']:.2f}x** |")
    table = "\n".join(lines)
    print()
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")


if __name__ == "__main__":
    main()
