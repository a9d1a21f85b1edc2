"""The ``mlip-md`` command line.

    mlip-md demo                         MD with the shipped Cu model (the main job)
    mlip-md ipi --model m.pt             serve a model to a running i-PI server
    mlip-md train data.extxyz -o m.pt    train an ensemble model
    mlip-md check m.pt                   conformance check of a model file
    mlip-md evaluate m.pt data.extxyz    errors of a model on labelled data
    mlip-md info m.pt                    print a model's metadata
    mlip-md upgrade old.pt -o new.pt     re-export an older model file with this version
    mlip-md model-path                   print the shipped model's path (for LAMMPS inputs)
    mlip-md lammps-plugin-path           print the LAMMPS plugin's path (for plugin load)
    mlip-md active run config.toml       active learning loop (resumable); `active benchmark`

More: calibrate, compile, validate, domain, qmml check (`mlip-md COMMAND --help`; docs/ has a
page per engine and workflow).
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import active, domain, md, model_files, qmml, train, validate

#: one module per verb family, each adding its sub-commands (in this order) with add_parsers(sub):
#: md (demo, ipi), model_files (check, info, compile, upgrade, model-path, lammps-plugin-path),
#: train (train, evaluate, calibrate), validate, domain, active, qmml
FAMILIES = (md, model_files, train, validate, domain, active, qmml)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every sub-command; each sets ``func`` (args -> exit code)."""
    from .. import __version__

    parser = argparse.ArgumentParser(prog="mlip-md", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mlip_md {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for family in FAMILIES:
        family.add_parsers(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command. Exit codes: what the command returns (0 done, 1 a check failed or the
    run stopped on an error it reports itself), 2 bad input (usage errors, and a CalculatorError
    (every mlip_md error), FileNotFoundError, FileExistsError or ValueError as one line
    'mlip-md COMMAND: error: ...'), 130 interrupted (Ctrl-C)."""
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

