#!/usr/bin/env python
"""Cost of the domain monitors (T^2, d_min, contacts, energy sigma) against the prediction, per
element count: random MLIPotential models (untrained weights; normalisation, radial mixing and
monitor statistics fitted to random alloys), one 500-atom fcc cell, one thread.

    python benchmarks/monitor_cost.py --elements 1 3 5 8 [--channels N|none] [--n-max 8] [--repeat 7]
    python benchmarks/monitor_cost.py --memory 3        # peak RSS of MLIPCalculator, monitors on

Prints one JSON line per element count:

* ``engine_off`` / ``engine_on``: seconds per step of ``Predictor.predict`` (the path
  ``MLIPCalculator`` takes, default backend) with monitors off / on, and ``on_over_off``;
* ``torchscript_off`` / ``torchscript_on``: the same through the TorchScript backend alone;
* ``one_pass_extra``: what a fused backend that keeps its one-pass C step would add for the
  monitors: ``descriptor_forward`` (the raw features once more) + ``evaluate_monitors`` (the
  model's monitor method, TorchScript: standardisation, energy sigma, T^2, contacts, d_min), and
  ``one_pass_on_over_off`` = (engine_off + one_pass_extra) / engine_off;
* ``monitors_only``: the monitor functions alone (T^2 and d_min from the standardised features,
  eager module), and ``monitors_share`` = monitors_only / engine_off, the part of a step they add.

Runs with whichever mlip_md is first on sys.path (PYTHONPATH=<old tree> measures an older
version: models then use its own descriptor and monitors; ``--channels`` needs a version with
the compressed descriptor). Timings: best of ``--repeat`` calls after two warm-up calls.
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

ELEMENTS = [29, 28, 13, 46, 47, 79, 78, 26]  # Cu Ni Al Pd Ag Au Pt Fe


def alloy(n_species: int, repeat: int, seed: int, rattle: float = 0.08):
    """Random fcc solid solution of the first ``n_species`` ELEMENTS (4 repeat^3 atoms),
    labelled with zeros (only the statistics are fitted, never the weights)."""
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(repeat)
    atoms.numbers = np.array(ELEMENTS[:n_species])[rng.integers(n_species, size=len(atoms))]
    atoms.rattle(rattle, seed=seed)
    atoms.calc = SinglePointCalculator(atoms, energy=0.0, forces=np.zeros((len(atoms), 3)))
    return atoms


def build_model(n_species: int, n_max: int, l_max: int, channels, path: Path) -> dict:
    from mlip_md.model.io import save_model
    from mlip_md.model.potential import MLIPotential, ModelConfig
    from mlip_md.train import fit
    from mlip_md.train.data import to_graph

    extra = {} if channels is None else {"channels": channels}
    config = ModelConfig(atomic_numbers=sorted(ELEMENTS[:n_species]), n_max=n_max, l_max=l_max, hidden=(32, 32),
                         ensemble_size=2, **extra)
    model = MLIPotential(config).double()
    graphs = [to_graph(alloy(n_species, 4, seed), config.cutoff) for seed in range(6)]  # 6 x 256 atoms
    if getattr(model.descriptor, "compressed", False):
        fit.fit_radial_mixing(model, graphs)
    fit.fit_normalisation(model, graphs)
    fit.fit_domain_statistics(model, graphs)
    save_model(model, path)
    return {"n_features": int(model.n_features), "file_mib": path.stat().st_size / 2**20}


def seconds(call, repeat: int) -> float:
    """Best of ``repeat`` timed calls after two warm-up calls (the least disturbed by other
    processes on a shared machine)."""
    call()
    call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def monitor_functions(path: Path, atoms, repeat: int) -> float:
    """Seconds of the monitors' own work (T^2 and d_min from standardised features)."""
    from mlip_md.model.io import load_potential
    from mlip_md.runtime.predictor import Predictor

    module = load_potential(path).eval()
    features = torch.from_numpy(Predictor(str(path), fused=False).predict_atoms(atoms, monitors=True).features)
    species = module.species_index(torch.from_numpy(atoms.numbers))

    def call():
        with torch.no_grad():
            module.mahalanobis(features, species)
            if module.reference_features.shape[1] > 0:
                module.kernel_distance(features, species)

    return seconds(call, repeat)


def one_pass_monitors(path: Path, atoms, repeat: int):
    """Seconds a fused backend would add to its one-pass step (C descriptor + readout + forces,
    no features kept) to report the monitors: the descriptor forward once more for the raw
    features, then the model's ``evaluate_monitors`` with the members' energies of the one pass.
    None when the version or the model has no such path."""
    from mlip_md.neighbors import neighbor_list
    from mlip_md.runtime.factory import open_model

    backend = open_model(str(path))
    if backend.capabilities.kind != "fused" or backend.native_readout is None \
            or not hasattr(backend.module, "evaluate_monitors"):
        return None
    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, backend.info.cutoff, vectors=True)
    species, n = torch.from_numpy(atoms.numbers), len(atoms)
    edges, vectors = torch.from_numpy(np.stack([nl.i, nl.j])), torch.from_numpy(nl.vectors)
    members = backend.energy_and_forces(species, edges, vectors, n)["energy_members"]
    index, pairs, vecs = backend._kernel_inputs(species, edges, vectors)
    features = torch.from_numpy(backend.kernel.power_spectrum_forward(backend.params, index, pairs, vecs, n)[0])
    pairs_t, vecs_t = torch.from_numpy(pairs), torch.from_numpy(vecs)
    forward = seconds(lambda: backend.kernel.power_spectrum_forward(backend.params, index, pairs, vecs, n), repeat)
    monitors = seconds(lambda: backend.module.evaluate_monitors(species, features, members, pairs_t, vecs_t, n), repeat)
    return forward, monitors


def measure(n_species: int, args) -> dict:
    from mlip_md.runtime.predictor import Predictor

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"random_{n_species}.pt"
        row = {"elements": n_species, "n_max": args.n_max, "channels": args.channels}
        row.update(build_model(n_species, args.n_max, args.l_max, args.channels, path))
        atoms = alloy(n_species, 5, seed=100)  # 500 atoms
        for name, fused in (("engine", None), ("torchscript", False)):
            predictor = Predictor(str(path), fused=fused)
            row[f"{name}_backend"] = predictor.model.capabilities.kind
            for monitors in (False, True):
                key = f"{name}_{'on' if monitors else 'off'}"
                row[key] = out_of_memory_or(lambda: seconds(lambda: predictor.predict_atoms(atoms, monitors=monitors),
                                                            args.repeat))
            if isinstance(row[f"{name}_on"], float):
                row[f"{name}_on_over_off"] = row[f"{name}_on"] / row[f"{name}_off"]
        extra = one_pass_monitors(path, atoms, args.repeat)
        if extra is not None:  # what a fused backend running monitors beside its one pass would add
            row["descriptor_forward"], row["evaluate_monitors"] = extra
            row["one_pass_extra"] = sum(extra)
            row["one_pass_on_over_off"] = (row["engine_off"] + sum(extra)) / row["engine_off"]
        row["monitors_only"] = out_of_memory_or(lambda: monitor_functions(path, atoms, args.repeat))
        if isinstance(row["monitors_only"], float):
            row["monitors_share"] = row["monitors_only"] / row["engine_off"]
        row["us_per_atom"] = {k: 1e6 * row[k] / len(atoms) for k in ("engine_off", "engine_on", "monitors_only",
                                                                     "evaluate_monitors")
                              if isinstance(row.get(k), float)}
    return row


def out_of_memory_or(call):
    """call() or "out of memory" when an allocation fails (run under ulimit -v to fail fast)."""
    try:
        return call()
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, MemoryError) or "alloc" in str(exc):
            return "out of memory"
        raise


def memory(n_species: int, args) -> dict:
    """Peak RSS (GiB) of MLIPCalculator with monitors on, 3 steps on 500 atoms (the model is
    built in a child process, so the peak is the calculator's)."""
    import multiprocessing

    from mlip_md import MLIPCalculator

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"random_{n_species}.pt"
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            info = pool.apply(build_model, (n_species, args.n_max, args.l_max, args.channels, path))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        atoms = alloy(n_species, 5, seed=100)
        atoms.calc = MLIPCalculator(str(path), ood_warnings=False, close_contact="ignore")
        for step in range(3):
            atoms.positions += 0.01
            atoms.get_forces()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        return {"elements": n_species, **info, "peak_rss_gib": peak, "peak_before_calculator_gib": before,
                "backend": atoms.calc.predictor.model.capabilities.kind}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--elements", type=int, nargs="+", default=[1, 3, 5, 8])
    parser.add_argument("--n-max", type=int, default=8)
    parser.add_argument("--l-max", type=int, default=4)
    parser.add_argument("--channels", default="none", help="Q of the compressed descriptor, or none (uncompressed)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--memory", type=int, default=None, help="measure peak memory at this element count")
    args = parser.parse_args()
    args.channels = None if args.channels == "none" else int(args.channels)
    torch.set_num_threads(1)
    if args.memory is not None:
        print(json.dumps(memory(args.memory, args)), flush=True)
        return
    for n in args.elements:
        print(json.dumps(measure(n, args)), flush=True)


if __name__ == "__main__":
    main()
