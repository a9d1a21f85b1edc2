"""Label floor of the active-learning benchmark: train the benchmark's model the benchmark's
way (same initial set, batches of 4, warm-started retraining, same TrainConfig) on labels
drawn i.i.d. from the test distribution itself (EMT Langevin-MD snapshots of the four test
structures at the four test temperatures, other seeds than the test set), and report the
labels N needed to reach the test force-RMSE threshold.

No query strategy can beat sampling the target distribution by much: if this passive learner
needs N_floor labels, a strategy's N is near N_floor at best, and ``<= 0.5 x random`` needs
random >= 2 N_floor.

    OMP_NUM_THREADS=1 python benchmarks/active_floor.py --seeds 3 --out /tmp/active_floor
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from ase.calculators.emt import EMT

from mlip_md.active.benchmark import TEST_TEMPERATURES, benchmark_system, make_test_set, run_config
from mlip_md.active.systems import initial_structures, start_structures
from mlip_md.active.testset import oracle_md_snapshots
from mlip_md.reference import labelled
from mlip_md.model.io import load_potential
from mlip_md.model.potential import ModelConfig
from mlip_md.train.data import to_graph
from mlip_md.train.fit import evaluate_errors
from mlip_md.train.trainer import TrainConfig, split_train_val, train_ensemble


def labelled_initial(cfg):
    frames = initial_structures(cfg.system, cfg.initial.n, cfg.initial.rattle, cfg.initial.strain, cfg.run.seed)
    return [labelled(a, EMT()) for a in frames]


def target_pool(seed: int, per_pair: int = 6):
    """EMT MD snapshots: every (test structure, test temperature), shuffled; seeds unlike the test set's."""
    frames = []
    for k, start in enumerate(start_structures(benchmark_system()).values()):
        for t in TEST_TEMPERATURES:
            frames += oracle_md_snapshots(start, EMT(), t, per_pair, 50, seed=[seed, k, int(t), 99])
    order = np.random.default_rng([seed, 5]).permutation(len(frames))
    return [frames[i] for i in order]


def run(out: Path, seed: int, threshold: float, max_labels: int) -> list:
    cfg = run_config(out, "random", seed, threshold, max_labels)
    m = cfg.model
    model_config = ModelConfig(atomic_numbers=[29], cutoff=m.cutoff, switch_width=m.switch_width, n_max=m.n_max,
                               l_max=m.l_max, hidden=tuple(m.hidden), ensemble_size=m.ensemble_size)
    test = [to_graph(a, cfg.model.cutoff) for a in make_test_set(out / "test.extxyz")]
    data = labelled_initial(cfg)
    pool = target_pool(seed)
    t = cfg.train
    tc = TrainConfig(epochs=t.epochs, batch_size=t.batch_size, learning_rate=t.learning_rate, patience=t.patience,
                     val_fraction=t.val_fraction, seed=seed, dtype=t.dtype, device="cpu")
    history, init = [], None
    for it in range(max_labels):
        train, val = split_train_val(data, t.val_fraction, seed)
        path = out / f"floor_s{seed}" / f"model_{it}.pt"
        train_ensemble(train, val, model_config, tc, path, init_from=init, reference="emt")
        init = load_potential(path)
        rmse = evaluate_errors(init, test)["mean"]["force_rmse"]
        history.append((len(data), rmse))
        print(f"seed {seed}: {len(data)} labels, test force RMSE {rmse:.4f} eV/Å", flush=True)
        if rmse <= threshold or len(data) >= max_labels:
            break
        data += pool[:cfg.query.batch_size]
        pool = pool[cfg.query.batch_size:]
    return history


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("active_floor"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threshold", type=float, default=0.1)
    p.add_argument("--max-labels", type=int, default=48)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    curves = {seed: run(args.out, seed, args.threshold, args.max_labels) for seed in range(args.seeds)}
    ns = [next((n for n, r in c if r <= args.threshold), args.max_labels) for c in curves.values()]
    print(f"labels to reach {args.threshold:g} eV/Å, i.i.d. from the test distribution: per seed {ns}, "
          f"mean {np.mean(ns):.1f} +- {np.std(ns, ddof=1) if len(ns) > 1 else 0.0:.1f}")
    (args.out / "floor.json").write_text(json.dumps({"N": ns, "curves": curves}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
