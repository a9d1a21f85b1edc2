"""Training commands: ``train`` (an ensemble from labelled files, :mod:`mlip_md.train.workflow`),
``evaluate`` (errors on labelled data) and ``calibrate`` (uncertainty scales,
:mod:`mlip_md.uq.calibration`)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_drop_nonfinite, label_warnings


def hidden(text: str):
    """--hidden 64,64 -> (64, 64)."""
    try:
        return tuple(int(x) for x in text.split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden takes comma-separated layer widths like 64,64, got {text!r}")


def add_parsers(sub) -> None:
    _add_train(sub)

    p = sub.add_parser("evaluate", help="energy/force errors of a model on labelled data")
    p.add_argument("model", type=Path)
    p.add_argument("data", type=Path)
    p.add_argument("--json", type=Path)
    add_drop_nonfinite(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("calibrate", help="fit the variance scale of energies and forces on labelled data")
    p.add_argument("model", type=Path)
    p.add_argument("data", type=Path, help="labelled validation structures (energy and forces)")
    p.add_argument("-o", "--output", type=Path, required=True, help="calibrated model file to write")
    p.add_argument("--test", type=Path, help="held-out structures to report calibration quality on")
    p.add_argument("--report", type=Path, help="stem of the report files (default: OUTPUT without suffix)")
    p.add_argument("--distribution", choices=["auto", "gaussian", "student-t"], default="auto",
                   help="predictive distribution of the residual / sigma: auto (default) keeps the more likely of a "
                   "Gaussian and, for ensembles, a Student t with K - 1 dof (energies also one with fitted dof)")
    p.add_argument("--no-floor", action="store_true",
                   help="energies: alpha alone (default: alpha sigma^2 + floor N when its AIC is lower)")
    add_drop_nonfinite(p)
    p.set_defaults(func=cmd_calibrate)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train an ensemble model on labelled structures (extxyz)")
    p.add_argument("data", type=Path, help="labelled structures (energy, forces, optional stress), e.g. extxyz")
    p.add_argument("-o", "--output", type=Path, required=True, help="model file to write (.pt)")
    p.add_argument("--valid", type=Path, help="validation structures (default: split off --val-fraction)")
    p.add_argument("--test", type=Path, help="held-out structures to report errors on after training")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--ensemble", type=int, default=4, help="number of members K (uq=ensemble)")
    p.add_argument("--uq", choices=["ensemble", "bll", "evidential"], default="ensemble",
                   help="uncertainty method: K-member ensemble, Bayesian last layer (Laplace posterior of "
                   "one network's last layer), or an evidential (Normal-Inverse-Gamma) head")
    p.add_argument("--cutoff", type=float, default=5.5, help="cutoff radius in Å")
    p.add_argument("--switch-width", type=float, default=1.0, help="width of the C^2 cutoff switch (Å)")
    p.add_argument("--n-max", type=int, default=8, help="radial basis functions per element")
    p.add_argument("--l-max", type=int, default=4, help="largest angular momentum")
    p.add_argument("--channels", type=int, default=None,
                   help="radial-chemical channels Q of the descriptor (feature size Q + Q(Q+1)/2 (l_max+1)); "
                   "default: 3 n_max / 2 (rounded up) for several elements, so the size does not depend on the "
                   "element count; n_max (one channel per radial function) for one element")
    p.add_argument("--hidden", type=hidden, default=(64, 64), help="hidden layer widths, e.g. 64,64")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-3, help="initial learning rate (Adam)")
    p.add_argument("--patience", type=int, default=25, help="early stopping patience in epochs")
    p.add_argument("--energy-weight", type=float, default=100.0)
    p.add_argument("--force-weight", type=float, default=1.0)
    p.add_argument("--stress-weight", type=float, default=1000.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="training precision")
    p.add_argument("--export-dtype", choices=["float32", "float64"], default="float64")
    p.add_argument("--workers", type=int, default=1, help="members trained in parallel processes")
    p.add_argument("--checkpoint", type=Path, help="checkpoint directory (default: OUTPUT.ckpt)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    p.add_argument("--report", type=Path, help="JSON report (default: OUTPUT with .json)")
    p.add_argument("--reference", default="unknown", help="reference method of the labels (provenance)")
    p.add_argument("--init", type=Path, help="warm start from this model's weights (same architecture)")
    p.add_argument("--no-repulsion", action="store_true",
                   help="leave out the short-range ZBL repulsion below the closest training distances")
    p.add_argument("--no-progress", action="store_true")
    add_drop_nonfinite(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from ..model.potential import ModelConfig
    from ..train.loss import LossWeights
    from ..train.trainer import TrainConfig
    from ..train.workflow import error_summary, read_training_data, train_from_data

    with label_warnings("train"):
        data = read_training_data(args.data, valid=args.valid, test=args.test, val_fraction=args.val_fraction,
                                  seed=args.seed, drop_nonfinite=args.drop_nonfinite)
    model_config = ModelConfig(
        atomic_numbers=[],  # the data's elements
        cutoff=args.cutoff, switch_width=args.switch_width, n_max=args.n_max, l_max=args.l_max, hidden=args.hidden,
        channels=args.channels, ensemble_size=args.ensemble if args.uq == "ensemble" else 1, uq=args.uq,
        repulsion=not args.no_repulsion,
    )
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, patience=args.patience, seed=args.seed,
        weights=LossWeights(args.energy_weight, args.force_weight, args.stress_weight), dtype=args.dtype,
        export_dtype=args.export_dtype,
    )
    report, report_path = train_from_data(
        data, args.output, model_config, config, checkpoint=args.checkpoint, resume=args.resume, report=args.report,
        reference=args.reference, init=args.init, workers=args.workers, progress=not args.no_progress,
    )
    print(error_summary("validation", report["validation"]))
    if "test" in report:
        print(error_summary("test", report["test"]))
    print(f"wrote {args.output} and {report_path}")
    return 0


def cmd_evaluate(args) -> int:
    from ..train.data import read_structures
    from ..train.workflow import error_summary, evaluate_structures

    with label_warnings("evaluate"):
        frames = read_structures(args.data, drop_nonfinite=args.drop_nonfinite)
    errors = evaluate_structures(args.model, frames)
    print(error_summary(str(args.data), errors))
    if args.json:
        from ..files import atomic_write_text

        atomic_write_text(args.json, json.dumps(errors, indent=1))
    return 0


def cmd_calibrate(args) -> int:
    from ..uq.calibration import calibrate_file, markdown

    with label_warnings("calibrate"):
        report = calibrate_file(args.model, args.data, args.output, test=args.test, report_stem=args.report,
                                family=args.distribution, floor=not args.no_floor,
                                drop_nonfinite=args.drop_nonfinite)
    print(markdown(report))
    print(f"wrote {args.output} and {', '.join(report['reports'])}")
    return 0
