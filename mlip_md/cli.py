"""The ``mlip-md`` command line.

    mlip-md demo                         MD with the shipped Cu model (the main job)
    mlip-md train data.extxyz -o m.pt    train an ensemble model
    mlip-md check m.pt                   conformance check of a model file
    mlip-md evaluate m.pt data.extxyz    errors of a model on labelled data
    mlip-md info m.pt                    print a model's metadata
    mlip-md upgrade old.pt -o new.pt     re-export an older model file with this version
    mlip-md model-path                   print the shipped model's path (for LAMMPS inputs)
    mlip-md lammps-plugin-path           print the LAMMPS plugin's path (for plugin load)
    mlip-md active run config.toml       active learning loop (resumable); `active benchmark`
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import List, Optional


def _hidden(text: str):
    try:
        return tuple(int(x) for x in text.split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden takes comma-separated layer widths like 64,64, got {text!r}")


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
    p.add_argument("--hidden", type=_hidden, default=(64, 64), help="hidden layer widths, e.g. 64,64")
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
    _add_drop_nonfinite(p)
    p.set_defaults(func=cmd_train)


def _add_drop_nonfinite(p) -> None:
    p.add_argument("--drop-nonfinite", action="store_true",
                   help="leave out structures with NaN/inf energy, forces or stress (one warning lists them; "
                   "default: refuse the data, naming them)")


@contextlib.contextmanager
def _label_warnings(command: str):
    """Print the NonFiniteLabelsWarning of --drop-nonfinite as 'mlip-md COMMAND: warning: ...'
    lines when the block ends; other warnings are shown as usual."""
    import warnings

    from .errors import NonFiniteLabelsWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NonFiniteLabelsWarning)
        yield
    for item in caught:
        if issubclass(item.category, NonFiniteLabelsWarning):
            print(f"mlip-md {command}: warning: {item.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)


def cmd_train(args) -> int:
    from tqdm import tqdm

    from .model.io import load_potential
    from .model.potential import ModelConfig
    from .train.data import read_structures
    from .train.fit import evaluate_errors
    from .train.data import to_graph
    from .train.loss import LossWeights
    from .train.trainer import TrainConfig, split_train_val, train_ensemble
    from ._atomic import atomic_write_text

    with _label_warnings("train"):
        frames = read_structures(args.data, drop_nonfinite=args.drop_nonfinite)
        valid = read_structures(args.valid, drop_nonfinite=args.drop_nonfinite) if args.valid else None
        test = read_structures(args.test, drop_nonfinite=args.drop_nonfinite) if args.test else None
    if valid is not None:
        train, val = frames, valid
    else:
        train, val = split_train_val(frames, args.val_fraction, args.seed)
    numbers = sorted({int(z) for a in train + val for z in a.numbers})
    model_config = ModelConfig(
        atomic_numbers=numbers,
        cutoff=args.cutoff,
        switch_width=args.switch_width,
        n_max=args.n_max,
        l_max=args.l_max,
        hidden=args.hidden,
        ensemble_size=args.ensemble if args.uq == "ensemble" else 1,
        uq=args.uq,
        repulsion=not args.no_repulsion,
    )
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        patience=args.patience,
        seed=args.seed,
        weights=LossWeights(args.energy_weight, args.force_weight, args.stress_weight),
        dtype=args.dtype,
        export_dtype=args.export_dtype,
    )
    checkpoint = args.checkpoint or args.output.with_suffix(args.output.suffix + ".ckpt")
    bars = {}

    def progress_factory(k: int, total: int):
        if args.no_progress:
            return None
        bar = tqdm(total=args.epochs, desc=f"member {k + 1}/{total}", position=k if args.workers > 1 else 0,
                   leave=True, dynamic_ncols=True)
        bars[k] = bar

        def update(record: dict) -> None:
            bar.n = record["epoch"]
            bar.set_postfix(F=f"{record['val_force_rmse']:.4f}", E=f"{record['val_energy_rmse_per_atom'] * 1e3:.2f}meV",
                            lr=f"{record['lr']:.1e}", refresh=False)
            bar.refresh()

        return update

    init = load_potential(args.init) if args.init else None
    print(f"training {args.ensemble} members on {len(train)} structures (validation {len(val)}), "
          f"elements {numbers}, checkpoints in {checkpoint}")
    report = train_ensemble(
        train, val, model_config, config, args.output,
        checkpoint_dir=checkpoint, resume=args.resume, progress_factory=progress_factory,
        reference=args.reference, init_from=init, workers=args.workers,
    )
    for bar in bars.values():
        bar.close()
    if args.test:
        from .model.io import load_potential as reload

        test = [to_graph(a, args.cutoff) for a in test]
        report["test"] = evaluate_errors(reload(args.output), test)
    report_path = args.report or args.output.with_suffix(".json")
    atomic_write_text(report_path, json.dumps(report, indent=1))
    _print_errors("validation", report["validation"])
    if "test" in report:
        _print_errors("test", report["test"])
    print(f"wrote {args.output} and {report_path}")
    return 0


def _print_errors(name: str, errors: dict) -> None:
    m = errors["mean"]
    print(f"{name}: energy RMSE {m['energy_rmse_per_atom'] * 1e3:.2f} meV/atom, MAE {m['energy_mae_per_atom'] * 1e3:.2f}; "
          f"force RMSE {m['force_rmse']:.4f} eV/Å, MAE {m['force_mae']:.4f}"
          + (f"; stress RMSE {m['stress_rmse'] * 160.21766:.3f} GPa" if "stress_rmse" in m else "")
          + f" ({errors['n_structures']} structures)")


def cmd_check(args) -> int:
    from .model.validate import validate_model

    report = validate_model(args.model)
    print(report.table())
    if args.json:
        from ._atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(report.to_dict(), indent=1))
    return 0 if report.passed else 1


def cmd_evaluate(args) -> int:
    from .model.io import load_potential
    from .train.data import read_structures, to_graph
    from .train.fit import evaluate_errors

    module = load_potential(args.model)
    with _label_warnings("evaluate"):
        frames = read_structures(args.data, drop_nonfinite=args.drop_nonfinite)
    graphs = [to_graph(a, module.cutoff) for a in frames]
    errors = evaluate_errors(module, graphs)
    _print_errors(str(args.data), errors)
    if args.json:
        from ._atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(errors, indent=1))
    return 0


def cmd_calibrate(args) -> int:
    from .uq.calibration import calibrate_file, markdown

    with _label_warnings("calibrate"):
        report = calibrate_file(args.model, args.data, args.output, test=args.test, report_stem=args.report,
                                family=args.distribution, floor=not args.no_floor,
                                drop_nonfinite=args.drop_nonfinite)
    print(markdown(report))
    print(f"wrote {args.output} and {', '.join(report['reports'])}")
    return 0


def cmd_domain(args) -> int:
    from .domain import workflows

    settings = workflows.Settings(reference=args.reference, element=args.element, lattice_constant=args.a,
                                  ensemble=args.ensemble, epochs=args.epochs, seed=args.seed, workers=args.workers)
    if args.analysis == "crystal-only":
        report = workflows.crystal_only(settings, args.output, model=args.model, n_train=args.train_structures,
                                        error_threshold=args.error_threshold, soap=args.soap)
        from .domain.analysis import crystal_only_markdown as render
    else:
        report = workflows.bond_breaking(settings, args.output, s_train_max=args.s_train_max, model=args.model)
        from .domain.analysis import bond_breaking_markdown as render
    print(render(report))
    print("wrote " + ", ".join(report["files"]))
    return 0


def cmd_upgrade(args) -> int:
    from .model.io import read_metadata, reexport

    if args.output.resolve() == args.model.resolve():
        raise ValueError(f"--output {args.output} is the input file; write the upgraded model to a new file")
    before = read_metadata(args.model)
    path = reexport(args.model, args.output, repulsion=not args.no_repulsion)
    after = read_metadata(path)
    def present(meta: dict, block: str) -> bool:
        return isinstance(meta.get(block), dict) and meta[block].get("kind", "none") != "none"

    added = [block for block in ("descriptor", "repulsion") if present(after, block) and not present(before, block)]
    print(f"wrote {path} (mlip_md {after['mlip_md_version']}, format {after['format_version']}; "
          f"added: {', '.join(added) if added else 'nothing new'})")
    return 0


def cmd_model_path(args) -> int:
    from .model.io import default_model_path, read_metadata

    path = default_model_path()
    read_metadata(path)  # ModelFileError (exit 2) when the installed file is missing or damaged
    print(path)
    return 0


def cmd_info(args) -> int:
    from .model.io import read_metadata, resolve_model_path

    print(json.dumps(read_metadata(resolve_model_path(args.model)), indent=1))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_ase_demo, run_ipi_demo
    from .process import configure_for_md

    settings = configure_for_md(args.threads)
    common = dict(model=args.model, steps=args.steps, temperature=args.temperature, timestep=args.timestep,
                  supercell=args.supercell, seed=args.seed, device=args.device, process=settings.describe())
    if args.engine == "ase":
        result = run_ase_demo(**common)
    else:
        result = run_ipi_demo(keep=args.keep, **common)
    print("summary")
    print(result.table())
    return 0


def _monitor_rule(text: str):
    from .monitor import Rule

    try:
        signal, threshold, actions = text.split(":")
        return Rule(signal, float(threshold), tuple(a for a in actions.split(",") if a))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--monitor takes SIGNAL:THRESHOLD:ACTION[,ACTION], e.g. mahalanobis:500:warn,dump ({exc})"
        )


def _threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--threads takes a whole number >= 1, got {text!r}")
    return value


def _add_threads(p) -> None:
    p.add_argument("--threads", type=_threads, default=None,
                   help="torch threads per process (default: OMP_NUM_THREADS if set, else 1: right for MPI ranks "
                   "and busy machines; more can help large cells on an idle machine)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"takes a number of seconds >= 0 (0: no limit), got {text!r}")
    return value


def _add_ipi(sub) -> None:
    p = sub.add_parser("ipi", help="serve a model to a running i-PI server (i-PI client / driver)")
    p.add_argument("--model", default=None, help="model file (default: shipped Cu model)")
    p.add_argument("--hybrid", type=Path, help="serve the QM/ML hybrid described by this hybrid.toml instead of "
                   "--model (see mlip_md/qmml/config.py); under mpiexec high and low level run on separate ranks")
    p.add_argument("--address", default=None, help="unix socket name (/tmp/ipi_NAME, default mlip_md) or TCP host")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--unix", action="store_true", help="unix socket (default unless --port is given)")
    mode.add_argument("--port", type=int, help="TCP port (inet socket)")
    p.add_argument("--host", help="TCP host (default: --address, or localhost)")
    p.add_argument("--socket-prefix", default="/tmp/ipi_", help="prefix of unix socket paths (i-PI's default)")
    p.add_argument("--structure", type=Path, help="file with the system's atoms (elements in i-PI's order); "
                   "needed for models with several elements")
    p.add_argument("--committee", choices=["off", "energy", "full"], default="energy",
                   help="committee keys in the extras: energy = committee_pot (cheap), full = also "
                   "per-member forces and virials (K backward passes per step)")
    p.add_argument("--monitor", type=_monitor_rule, action="append", default=[],
                   help="SIGNAL:THRESHOLD:ACTIONS, e.g. mahalanobis:500:warn,dump (repeatable); "
                   "actions warn, dump, label, halt")
    p.add_argument("--monitor-every", type=int, default=1,
                   help="compute the monitors (sigma, T^2, d_min, contacts; the extras' *_max keys, the "
                   "--close-contact / out-of-domain checks and the --monitor rules) every N steps; 0: never "
                   "(no checks; committee_pot is sent every step regardless)")
    p.add_argument("--hysteresis", type=float, default=0.1, help="a fired rule re-arms below threshold x (1 - h)")
    p.add_argument("--cooldown", type=int, default=0, help="steps a rule stays quiet after firing")
    p.add_argument("--dedupe", type=float, default=0.05,
                   help="skip dumping/labelling frames whose extreme environment is this close (RMS, "
                   "standardised descriptor units) to one already written; 0 disables")
    p.add_argument("--close-contact", choices=["warn", "halt", "dump", "ignore"], default="warn",
                   help="atoms closer than any pair in training (checked on monitor steps): warn (default, "
                   "rate-limited), halt (i-PI's soft exit via --exit-file), dump (warn and append the frame to "
                   "--dump) or ignore")
    p.add_argument("--ood-warnings", action=argparse.BooleanOptionalAction, default=True,
                   help="warn (rate-limited) when an atom's T^2 or d_min is above the largest value of the "
                   "training data (default on; --no-ood-warnings turns it off)")
    p.add_argument("--dump", type=Path, default=Path("mlip_md_flagged.extxyz"),
                   help="extxyz file for dump actions and --close-contact dump")
    p.add_argument("--label", type=Path, default=Path("mlip_md_candidates.extxyz"), help="extxyz file for label actions")
    p.add_argument("--exit-file", type=Path, default=Path("EXIT"),
                   help="file created by a halt action; i-PI stops softly when it sees EXIT in its directory")
    p.add_argument("--connect-timeout", type=float, default=60.0, help="seconds to wait for the server")
    p.add_argument("--timeout", type=_seconds, default=600.0,
                   help="give up (exit 1) when i-PI sends nothing for this many seconds, between or in the middle "
                   "of messages (default %(default)g; 0: wait forever, e.g. for a driver that may idle)")
    p.add_argument("--device", default="cpu")
    _add_threads(p)
    p.add_argument("--compiled", type=Path, help="compiled package of --model (mlip-md compile) to evaluate instead; "
                   "--model serves what it does not cover (force sigma). --model m.pt2 alone also works")
    p.add_argument("--skin", type=float, default=0.5,
                   help="Å: reuse the neighbour list until an atom moved more than skin/2 (0: rebuild every step)")
    p.add_argument("--dtype", choices=["float64", "float32"], default=None,
                   help="precision to run the model in (default: the file's; float32 is ~1.5x faster, forces "
                   "agree to ~1e-6 relative); not with --compiled")
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=None,
                   help="descriptor in the fused C++ kernel (default: whenever the model and device support it, "
                   "not with --compiled); --fused requires it, --no-fused runs the TorchScript descriptor")
    p.set_defaults(func=cmd_ipi)


def cmd_ipi(args) -> int:
    import logging

    from .process import configure_for_md

    from .engines.ipi import Driver, SocketClient, serve
    from .monitor import MonitorPolicy
    from .parallel import ParallelPredictor, world_communicator
    from .predictor import Predictor

    comm = world_communicator()
    rank = 0 if comm is None else comm.Get_rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"mlip-md ipi{'' if comm is None else f' [rank {rank}]'}: %(message)s")
    settings = configure_for_md(args.threads)
    if args.hybrid is not None:
        from .qmml.config import hybrid_evaluator

        evaluator = hybrid_evaluator(args.hybrid, comm)
    else:
        predictor = Predictor(args.model, device=args.device, skin=args.skin, compiled=args.compiled,
                              fused=args.fused, dtype=args.dtype)
        evaluator = predictor if comm is None else ParallelPredictor(predictor, comm)
        from .model.fused import FusedModel

        description = "; model {}{}, neighbour-list skin {:g} Å, {}".format(
            predictor.model.path, " (compiled)" if args.compiled or str(args.model).endswith(".pt2") else
            " (fused descriptor)" if isinstance(predictor.model, FusedModel) else "",
            args.skin, settings.describe() + ("" if comm is None else " per rank"))
    if rank > 0:
        from .errors import InvalidStructureError, UnknownElementError

        try:
            evaluator.serve()
        except (InvalidStructureError, UnknownElementError):
            return 1  # every rank met the same structure; rank 0 logs the reason (engines.ipi.serve)
        return 0
    numbers = None
    if args.structure:
        from ase.io import read

        numbers = read(args.structure).numbers
    monitor = None
    if args.monitor:
        monitor = MonitorPolicy(args.monitor, dump_path=args.dump, label_path=args.label, hysteresis=args.hysteresis,
                                cooldown=args.cooldown, dedupe_distance=args.dedupe)
    unix = args.port is None
    client = SocketClient((args.address or "mlip_md") if unix else (args.host or args.address or "localhost"), unix=unix,
                          port=args.port, socket_prefix=args.socket_prefix, connect_timeout=args.connect_timeout,
                          timeout=args.timeout)
    try:
        driver = Driver(evaluator, client, numbers=numbers, committee=args.committee, monitor=monitor,
                        exit_file=args.exit_file, monitor_every=args.monitor_every,
                        close_contact=args.close_contact, ood_warnings=args.ood_warnings, dump_path=args.dump)
        if args.hybrid is None:
            driver.description = description  # appended to the "connected to i-PI" log line
        return serve(driver)
    finally:
        if comm is not None:
            evaluator.shutdown()


def _add_lammps(sub) -> None:
    p = sub.add_parser("lammps-plugin-path", help="print the path of the LAMMPS plugin (.so) for `plugin load`, "
                       "building it with CMake on first use")
    p.add_argument("--rebuild", action="store_true", help="build the plugin again even if a cached build exists")
    p.add_argument("--no-build", action="store_true", help="fail instead of building when no cached plugin exists")
    p.add_argument("--info", action="store_true", help="also print the build record (versions, build time) to stderr")
    p.set_defaults(func=cmd_lammps_plugin_path)


def cmd_lammps_plugin_path(args) -> int:
    from .engines.lammps import PluginBuildError, build_info, plugin_path

    try:
        path = plugin_path(build=not args.no_build, rebuild=args.rebuild, verbose=True)
    except PluginBuildError as exc:
        print(f"mlip-md lammps-plugin-path: error: {exc}", file=sys.stderr)
        return 2
    if args.info:
        print(json.dumps(build_info(path), indent=1), file=sys.stderr)
    print(path)
    return 0


def _lattice_a(text: str):
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--a takes 'auto' or a lattice constant in Å, got {text!r}")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--a must be positive, got {text!r}")
    return value


def _add_validate(sub) -> None:
    from .validate import LATTICE_NAMES, NEB_DEFAULTS as DEFAULTS, NEB_FMAX, RELAX_FMAX, RELAX_MODES, SPRING
    from .validate import VACANCY_THRESHOLD as DEFAULT_THRESHOLD

    p = sub.add_parser("validate", help="validate a model against a reference: vacancy formation energy, CI-NEB "
                       "barrier and MEP quality (JSON + Markdown + PNG; exit 1 when a check fails)",
                       description="Validation workflows. Exit code: 0 all checks pass, 1 a check failed, 2 bad input.")
    vsub = p.add_subparsers(dest="workflow", required=True)

    def common(q, neb: bool, vacancy: bool) -> None:
        q.add_argument("--model", default=None, help="model file (default: the shipped Cu model); "
                       "ref:SPEC uses a reference calculator as the model (e.g. ref:emt)")
        q.add_argument("--reference", required=True, help="reference spec, e.g. emt or lammps:eam/alloy:Cu_mishin1.eam.alloy")
        q.add_argument("--element", default="Cu")
        q.add_argument("--lattice", default="fcc", choices=LATTICE_NAMES)
        q.add_argument("--a", type=_lattice_a, default="auto",
                       help="lattice constant in Å, or auto: each calculator at its own equilibrium (default)")
        q.add_argument("--supercell", type=int, default=4, help="repeats of the conventional cell (4: 256 fcc sites)")
        q.add_argument("--fmax", type=float, default=RELAX_FMAX,
                       help="force tolerance of the relaxations (vacancy, NEB end points; BFGS), eV/Å (default %(default)g)")
        q.add_argument("-o", "--output", type=Path, default=Path("validation"), help="report directory (default %(default)s)")
        q.add_argument("--device", default="cpu", help="device of the model (cpu or cuda)")
        if vacancy:
            q.add_argument("--relax", choices=RELAX_MODES, default="positions",
                           help="positions: fixed cell; positions+volume: also the defect cell's volume (isotropic)")
            q.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                           help="largest |E_f(model) - E_f(reference)| that passes, eV (default %(default)g)")
        if neb:
            q.add_argument("--images", type=int, default=7, help="intermediate NEB images (default %(default)s)")
            q.add_argument("--climb", action=argparse.BooleanOptionalAction, default=True,
                           help="climbing image (default on)")
            q.add_argument("--initial", type=Path, help="initial structure (any ase-readable file); default: "
                           "nearest-neighbour vacancy hop")
            q.add_argument("--final", type=Path, help="final structure (same atoms, same order as --initial)")
            q.add_argument("--interpolation", choices=["linear", "idpp"], default="linear")
            q.add_argument("--neb-fmax", type=float, default=NEB_FMAX,
                           help="NEB convergence (FIRE), eV/Å (default %(default)g)")
            q.add_argument("--spring", type=float, default=SPRING, help="spring constant, eV/Å² (default %(default)g)")
            q.add_argument("--max-steps", type=int, default=1000, help="NEB optimiser step limit (default %(default)s)")
            q.add_argument("--barrier-rtol", type=float, default=DEFAULTS["barrier_rtol"],
                           help="largest relative barrier error that passes (default %(default)g)")
            q.add_argument("--barrier-atol", type=float, default=DEFAULTS["barrier_atol"],
                           help="largest absolute barrier error (eV) that passes below --barrier-switch (default %(default)g)")
            q.add_argument("--barrier-switch", type=float, default=DEFAULTS["barrier_switch"],
                           help="reference barriers from this value (eV) on are judged relatively (default %(default)g)")
            q.add_argument("--fperp-factor", type=float, default=DEFAULTS["fperp_factor"],
                           help="converged MEP: max |F_perp| <= this x --neb-fmax (default %(default)g)")
            q.add_argument("--smoothness-ratio", type=float, default=DEFAULTS["smoothness_ratio"],
                           help="model smoothness <= this x the reference's (+ noise floor); 0 reports only "
                           "(default %(default)g)")

    q = vsub.add_parser("vacancy", help="vacancy formation energy, unrelaxed and relaxed")
    common(q, neb=False, vacancy=True)
    q.set_defaults(func=cmd_validate_vacancy)
    q = vsub.add_parser("neb", help="CI-NEB migration barrier and MEP quality")
    common(q, neb=True, vacancy=False)
    q.set_defaults(func=cmd_validate_neb)
    q = vsub.add_parser("all", help="every workflow; exit 1 when any check fails (for CI gating)")
    common(q, neb=True, vacancy=True)
    q.set_defaults(func=cmd_validate_all)


def _neb_kwargs(args) -> dict:
    return dict(images=args.images, climb=args.climb, initial=args.initial, final=args.final,
                interpolation=args.interpolation, spring=args.spring, max_steps=args.max_steps,
                barrier_rtol=args.barrier_rtol, barrier_atol=args.barrier_atol, barrier_switch=args.barrier_switch,
                fperp_factor=args.fperp_factor, smoothness_ratio=args.smoothness_ratio)


def _validate_common(args) -> dict:
    return dict(model=args.model, reference=args.reference, element=args.element, lattice=args.lattice, a=args.a,
                supercell=args.supercell, outdir=args.output, device=args.device)


def _validate_done(report: dict) -> int:
    print(report["markdown"])
    print("wrote " + ", ".join(report["files"]))
    return 0 if report["passed"] else 1


def cmd_validate_vacancy(args) -> int:
    from .validate.vacancy import run_vacancy

    return _validate_done(run_vacancy(relax_mode=args.relax, fmax=args.fmax, threshold=args.threshold,
                                      **_validate_common(args)))


def cmd_validate_neb(args) -> int:
    from .validate.neb import run_neb

    return _validate_done(run_neb(fmax=args.neb_fmax, endpoint_fmax=args.fmax, **_neb_kwargs(args),
                                  **_validate_common(args)))


def cmd_validate_all(args) -> int:
    from .validate.suite import run_all

    progress = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    return _validate_done(run_all(relax_mode=args.relax, fmax=args.fmax, threshold=args.threshold,
                                  neb_fmax=args.neb_fmax, progress=progress, **_neb_kwargs(args),
                                  **_validate_common(args)))


def _add_active(sub) -> None:
    p = sub.add_parser("active", help="active learning: MD exploration, domain-shift trigger, query strategies, "
                       "oracle labels, retraining; resumable")
    asub = p.add_subparsers(dest="workflow", required=True)
    q = asub.add_parser("run", help="run (or resume, after any interruption) the loop described by a TOML config")
    q.add_argument("config", type=Path, help="TOML config (see README: Active learning)")
    q.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    q.set_defaults(func=cmd_active_run)
    q = asub.add_parser("benchmark", help="oracle queries each strategy needs to reach a test force RMSE (EMT Cu)")
    q.add_argument("--out", type=Path, default=Path("active_benchmark"), help="output directory (resumable)")
    q.add_argument("--seeds", type=int, default=3)
    q.add_argument("--strategies", default="random,max-variance,d-optimal,adversarial",
                   help="comma-separated strategies")
    q.add_argument("--threshold", type=float, default=None, help="test force RMSE to reach, eV/Å (default 0.1)")
    q.add_argument("--max-labels", type=int, default=None, help="label budget per run (default 48)")
    q.add_argument("--stage-steps", type=int, default=None,
                   help="MD steps per exploration stage (default 15; 3 stages, a frame every 5 steps)")
    q.add_argument("--batch-size", type=int, default=None, help="structures labelled per iteration (default 4)")
    q.add_argument("--temperatures", default=None,
                   help="comma-separated exploration stage temperatures, K (default 300,800,1500)")
    q.add_argument("--extra-structures", default=None,
                   help="comma-separated structures explored besides the test ones (divacancy, surface110)")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=cmd_active_benchmark)


def cmd_active_run(args) -> int:
    from .active import run

    report = run(args.config, bars=not args.no_progress)
    audit = report["oracle"]
    print(f"stopped: {report['stopped']}")
    print(f"labels: {report['labels']} ({report['failed']} configurations failed), oracle calls: "
          f"{audit['calls_started']} started, repeated labels: {len(audit['repeated'])}")
    def shown(path) -> str:
        path = Path(path)
        return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)

    if "final_model" in report:
        print(f"final model: {shown(report['final_model'])} (test force RMSE {report['final_force_rmse']:.4f} eV/Å)")
    print(f"report: {shown(Path(report['directory']) / 'report.md')}")
    return 0


def cmd_active_benchmark(args) -> int:
    from .active.benchmark import run_benchmark

    kwargs = {k: v for k, v in (("threshold", args.threshold), ("max_labels", args.max_labels),
                                ("stage_steps", args.stage_steps), ("batch_size", args.batch_size)) if v is not None}
    if args.temperatures:
        kwargs["temperatures"] = [float(t) for t in args.temperatures.split(",") if t]
    if args.extra_structures:
        kwargs["extra_structures"] = [s for s in args.extra_structures.split(",") if s]
    result = run_benchmark(args.out, seeds=args.seeds, strategies=[s for s in args.strategies.split(",") if s],
                           bars=not args.no_progress, **kwargs)
    print(result["markdown"])
    print(f"wrote {args.out / 'benchmark.json'}, {args.out / 'benchmark.md'}, {args.out / 'learning_curves.png'}")
    return 0


def _add_qmml(sub) -> None:
    p = sub.add_parser("qmml", help="QM/ML hybrid tools")
    qsub = p.add_subparsers(dest="qmml_command", required=True)
    q = qsub.add_parser("check", help="interface quality of a switched hybrid: switch smoothness, force mismatch, "
                        "energy continuity across the boundaries, NVE drift (JSON + Markdown + PNG)")
    q.add_argument("--hybrid", type=Path, help="hybrid.toml (overrides --high/--low/--centre-atom/--r-*/--shape)")
    q.add_argument("--high", default="mlip", help="high level: emt, mlip (shipped model), mlip:PATH")
    q.add_argument("--low", default="emt", help="low level (same forms as --high)")
    q.add_argument("--centre-atom", type=int, default=0, help="index of the atom the region follows")
    q.add_argument("--r-inner", type=float, default=2.5, help="Å; s = 1 inside")
    q.add_argument("--r-outer", type=float, default=4.5, help="Å; s = 0 beyond")
    q.add_argument("--shape", default="smootherstep", help="smootherstep, c3, cosine or cosine-c1")
    q.add_argument("--structure", type=Path, help="structure file (default: fcc Cu cubic supercell)")
    q.add_argument("--supercell", type=int, default=3, help="fcc Cu cubic cell repeats when no --structure")
    q.add_argument("--vacancy", action="store_true", help="remove the last atom of the default supercell")
    q.add_argument("--rattle", type=float, default=0.05, help="Å of random displacement of the default supercell")
    q.add_argument("--steps", type=int, default=200, help="NVE steps per run")
    q.add_argument("--timestep", type=float, default=1.0, help="fs")
    q.add_argument("--temperature", type=float, default=600.0, help="K (initial velocities)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("-o", "--output", type=Path, default=Path("qmml_report"), help="output directory")
    q.set_defaults(func=cmd_qmml_check)


def cmd_qmml_check(args) -> int:
    from .qmml import HybridModel
    from .qmml.check import run_check

    if args.hybrid is not None:
        from .qmml.config import load_hybrid_config

        model, _ = load_hybrid_config(args.hybrid)
    else:
        model = HybridModel(args.high, args.low, args.centre_atom, (args.r_inner, args.r_outer), shape=args.shape,
                            energy_shift="auto")
    if args.structure is not None:
        from ase.io import read

        atoms = read(args.structure)
    else:
        from ase.build import bulk

        atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(args.supercell)
        if args.vacancy:
            del atoms[-1]
        atoms.rattle(args.rattle, seed=args.seed)
    report = run_check(model, atoms, args.output, steps=args.steps, timestep=args.timestep,
                       temperature=args.temperature, seed=args.seed,
                       progress=lambda text: print(f"qmml check: {text}", file=sys.stderr, flush=True))
    print((args.output / "report.md").read_text())
    print(f"wrote {args.output / 'report.json'}, {args.output / 'report.md'}, {args.output / 'drag.png'}")
    return 0 if report["passed"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlip-md", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"mlip_md {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="MD of Cu with a vacancy using the shipped model (i-PI by default)")
    p.add_argument("--model", default=None, help="model file (default: shipped Cu model)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--temperature", type=float, default=600.0, help="target temperature in K")
    p.add_argument("--timestep", type=float, default=1.0, help="fs")
    p.add_argument("--supercell", type=int, default=3, help="fcc cubic cell repeats (3 -> 107 atoms)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--engine", choices=["i-pi", "ase"], default="i-pi",
                   help="i-pi: NVT with a real i-PI server (default); ase: NVE with ASE's Velocity Verlet")
    p.add_argument("--keep", type=Path, help="keep i-PI's input and output files in this directory")
    _add_threads(p)
    p.set_defaults(func=cmd_demo)

    _add_train(sub)
    _add_ipi(sub)
    _add_lammps(sub)
    _add_validate(sub)
    _add_qmml(sub)
    _add_active(sub)

    p = sub.add_parser("check", help="conformance check of a model file (exit 1 on failure)")
    p.add_argument("model", nargs="?", default=None, help="model file (default: shipped model)")
    p.add_argument("--json", type=Path, help="also write the report as JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("evaluate", help="energy/force errors of a model on labelled data")
    p.add_argument("model", type=Path)
    p.add_argument("data", type=Path)
    p.add_argument("--json", type=Path)
    _add_drop_nonfinite(p)
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
    _add_drop_nonfinite(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("domain", help="applicability-domain analyses (JSON + Markdown + PNG)")
    p.add_argument("analysis", choices=["crystal-only", "bond-breaking"],
                   help="crystal-only: bulk-trained model on vacancies/surfaces/distorted cells; "
                   "bond-breaking: dimer model scanned past its training range")
    p.add_argument("-o", "--output", type=Path, default=Path("domain_report"), help="output directory")
    p.add_argument("--reference", default="emt", help="reference spec, e.g. emt or lammps:eam/alloy:Cu_mishin1.eam.alloy")
    p.add_argument("--element", default="Cu")
    p.add_argument("--a", type=float, help="fcc lattice constant (Å); default: relaxed with the reference")
    p.add_argument("--model", type=Path, help="analyse this model instead of training one")
    p.add_argument("--ensemble", type=int, default=4)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--train-structures", type=int, default=120)
    p.add_argument("--error-threshold", type=float, help="eV/Å (default: 3x the in-domain force RMSE)")
    p.add_argument("--soap", action="store_true",
                   help="crystal-only: also score atoms with model-agnostic T^2 / d_min on SOAP descriptors "
                   "(needs featomic: pip install \"mlip_md[soap]\")")
    p.add_argument("--s-train-max", type=float, default=0.2, help="largest bond stretch in the dimer training set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_domain)

    p = sub.add_parser("compile", help="compile a model file into an AOTInductor package (.pt2) for faster MD")
    p.add_argument("model", nargs="?", default=None, help="TorchScript model file (default: shipped model)")
    p.add_argument("-o", "--output", type=Path, help="package to write (default: MODEL with suffix .pt2)")
    p.add_argument("--dtype", choices=["float32", "float64"], help="precision of the compiled graphs (default: the model's)")
    p.add_argument("--graphs", default="energy,monitors",
                   help="graphs to compile: energy (energies, forces, virial), monitors (+ sigma, T^2, d_min, contacts)")
    p.add_argument("--no-check", action="store_true", help="skip comparing the package with the .pt on a test cell")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("upgrade", help="re-export a model file written by an older mlip_md with this version "
                       "(weights, statistics, calibration and metadata kept; adds the descriptor block, the "
                       "evaluate_features method and the short-range repulsion older files lack)")
    p.add_argument("model", type=Path, help="model file (.pt) to upgrade")
    p.add_argument("-o", "--output", type=Path, required=True, help="model file to write")
    p.add_argument("--no-repulsion", action="store_true",
                   help="leave out (or remove) the short-range repulsion (mlip_md.model.repulsion)")
    p.set_defaults(func=cmd_upgrade)

    p = sub.add_parser("model-path", help="print the path of the shipped Cu model file, e.g. for LAMMPS: "
                       "lmp -in in.nve -var model $(mlip-md model-path)")
    p.set_defaults(func=cmd_model_path)

    p = sub.add_parser("info", help="print a model file's metadata")
    p.add_argument("model", nargs="?", default=None)
    p.set_defaults(func=cmd_info)
    return parser


def cmd_compile(args) -> int:
    import time

    from .model.compile import check_compiled, compile_model

    graphs = tuple(g.strip() for g in args.graphs.split(",") if g.strip())
    start = time.perf_counter()
    path = compile_model(args.model, args.output, dtype=args.dtype, graphs=graphs, verbose=True)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.0f} s")
    if not args.no_check:
        for line in check_compiled(path):
            print(line)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ase.calculators.calculator import CalculatorError

    try:
        return int(args.func(args) or 0)
    except (CalculatorError, FileNotFoundError, ValueError, FileExistsError) as exc:
        print(f"mlip-md {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mlip-md {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
