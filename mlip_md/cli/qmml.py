"""``mlip-md qmml check``: interface quality of a switched QM/ML hybrid (:mod:`mlip_md.qmml.check`);
exit 1 when the energy is not continuous or the switch not C^2."""
from __future__ import annotations

import sys
from pathlib import Path


def add_parsers(sub) -> None:
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
    from ..qmml.check import default_structure, run_check

    if args.hybrid is not None:
        from ..qmml.config import load_hybrid_config

        model, _ = load_hybrid_config(args.hybrid)
    else:
        from ..qmml.hybrid import HybridModel

        model = HybridModel(args.high, args.low, args.centre_atom, (args.r_inner, args.r_outer), shape=args.shape,
                            energy_shift="auto")
    if args.structure is not None:
        from ase.io import read

        atoms = read(args.structure)
    else:
        atoms = default_structure(args.supercell, vacancy=args.vacancy, rattle=args.rattle, seed=args.seed)
    report = run_check(model, atoms, args.output, steps=args.steps, timestep=args.timestep,
                       temperature=args.temperature, seed=args.seed,
                       progress=lambda text: print(f"qmml check: {text}", file=sys.stderr, flush=True))
    print((args.output / "report.md").read_text())
    print(f"wrote {args.output / 'report.json'}, {args.output / 'report.md'}, {args.output / 'drag.png'}")
    return 0 if report["passed"] else 1
