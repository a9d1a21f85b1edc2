"""MD commands: ``mlip-md demo`` (the shipped model in i-PI or ASE) and ``mlip-md ipi`` (serve a
model to a running i-PI server, :mod:`mlip_md.engines.ipi.launch`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_threads, monitor_rule, options_from, seconds


def add_parsers(sub) -> None:
    _add_demo(sub)
    _add_ipi(sub)


def _add_demo(sub) -> None:
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
    add_threads(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from ..demo import run_ase_demo, run_ipi_demo
    from ..process import configure_for_md

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
    p.add_argument("--monitor", dest="monitor_rules", metavar="MONITOR", type=monitor_rule, action="append",
                   default=[], help="SIGNAL:THRESHOLD:ACTIONS, e.g. mahalanobis:500:warn,dump (repeatable); "
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
    p.add_argument("--timeout", type=seconds, default=600.0,
                   help="give up (exit 1) when i-PI sends nothing for this many seconds, between or in the middle "
                   "of messages (default %(default)g; 0: wait forever, e.g. for a driver that may idle)")
    p.add_argument("--device", default="cpu")
    add_threads(p)
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
    from ..engines.ipi.launch import DriverOptions, run_driver

    return run_driver(options_from(DriverOptions, args))
