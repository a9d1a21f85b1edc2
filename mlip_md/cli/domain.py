"""``mlip-md domain crystal-only | bond-breaking``: applicability-domain analyses
(:mod:`mlip_md.domain.workflows`)."""
from __future__ import annotations

from pathlib import Path


def add_parsers(sub) -> None:
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


def cmd_domain(args) -> int:
    from ..domain import workflows
    from ..domain.analysis import bond_breaking_markdown, crystal_only_markdown

    settings = workflows.Settings(reference=args.reference, element=args.element, lattice_constant=args.a,
                                  ensemble=args.ensemble, epochs=args.epochs, seed=args.seed, workers=args.workers)
    if args.analysis == "crystal-only":
        report = workflows.crystal_only(settings, args.output, model=args.model, n_train=args.train_structures,
                                        error_threshold=args.error_threshold, soap=args.soap)
        print(crystal_only_markdown(report))
    else:
        report = workflows.bond_breaking(settings, args.output, s_train_max=args.s_train_max, model=args.model)
        print(bond_breaking_markdown(report))
    print("wrote " + ", ".join(report["files"]))
    return 0
