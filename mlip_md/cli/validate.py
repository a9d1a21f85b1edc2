"""``mlip-md validate vacancy | neb | all``: a model against a reference calculator
(:mod:`mlip_md.validate`); exit 0 when every check passes, 1 when one fails."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def lattice_a(text: str):
    """--a: 'auto' or a positive lattice constant in Å."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--a takes 'auto' or a lattice constant in Å, got {text!r}")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--a must be positive, got {text!r}")
    return value


def add_parsers(sub) -> None:
    p = sub.add_parser("validate", help="validate a model against a reference: vacancy formation energy, CI-NEB "
                       "barrier and MEP quality (JSON + Markdown + PNG; exit 1 when a check fails)",
                       description="Validation workflows. Exit code: 0 all checks pass, 1 a check failed, 2 bad input.")
    vsub = p.add_subparsers(dest="workflow", required=True)
    q = vsub.add_parser("vacancy", help="vacancy formation energy, unrelaxed and relaxed")
    _add_options(q, neb=False, vacancy=True)
    q.set_defaults(func=cmd_validate_vacancy)
    q = vsub.add_parser("neb", help="CI-NEB migration barrier and MEP quality")
    _add_options(q, neb=True, vacancy=False)
    q.set_defaults(func=cmd_validate_neb)
    q = vsub.add_parser("all", help="every workflow; exit 1 when any check fails (for CI gating)")
    _add_options(q, neb=True, vacancy=True)
    q.set_defaults(func=cmd_validate_all)


def _add_options(q, neb: bool, vacancy: bool) -> None:
    from ..validate.common import LATTICE_NAMES, NEB_DEFAULTS as DEFAULTS, NEB_FMAX, RELAX_FMAX, RELAX_MODES, SPRING
    from ..validate.common import VACANCY_THRESHOLD as DEFAULT_THRESHOLD

    q.add_argument("--model", default=None, help="model file (default: the shipped Cu model); "
                   "ref:SPEC uses a reference calculator as the model (e.g. ref:emt)")
    q.add_argument("--reference", required=True, help="reference spec, e.g. emt or lammps:eam/alloy:Cu_mishin1.eam.alloy")
    q.add_argument("--element", default="Cu")
    q.add_argument("--lattice", default="fcc", choices=LATTICE_NAMES)
    q.add_argument("--a", type=lattice_a, default="auto",
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


def _neb_kwargs(args) -> dict:
    return dict(images=args.images, climb=args.climb, initial=args.initial, final=args.final,
                interpolation=args.interpolation, spring=args.spring, max_steps=args.max_steps,
                barrier_rtol=args.barrier_rtol, barrier_atol=args.barrier_atol, barrier_switch=args.barrier_switch,
                fperp_factor=args.fperp_factor, smoothness_ratio=args.smoothness_ratio)


def _common_kwargs(args) -> dict:
    return dict(model=args.model, reference=args.reference, element=args.element, lattice=args.lattice, a=args.a,
                supercell=args.supercell, outdir=args.output, device=args.device)


def _done(report: dict) -> int:
    print(report["markdown"])
    print("wrote " + ", ".join(report["files"]))
    return 0 if report["passed"] else 1


def cmd_validate_vacancy(args) -> int:
    from ..validate.vacancy import run_vacancy

    return _done(run_vacancy(relax_mode=args.relax, fmax=args.fmax, threshold=args.threshold, **_common_kwargs(args)))


def cmd_validate_neb(args) -> int:
    from ..validate.neb import run_neb

    return _done(run_neb(fmax=args.neb_fmax, endpoint_fmax=args.fmax, **_neb_kwargs(args), **_common_kwargs(args)))


def cmd_validate_all(args) -> int:
    from ..validate.suite import run_all

    return _done(run_all(relax_mode=args.relax, fmax=args.fmax, threshold=args.threshold, neb_fmax=args.neb_fmax,
                         progress=lambda text: print(text, file=sys.stderr, flush=True), **_neb_kwargs(args),
                         **_common_kwargs(args)))
