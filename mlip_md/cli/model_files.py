"""Commands on model files and installed paths: ``check`` (conformance), ``info`` (metadata),
``compile`` (.pt2 package), ``upgrade`` (re-export with this version), ``model-path`` and
``lammps-plugin-path``."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def add_parsers(sub) -> None:
    p = sub.add_parser("check", help="conformance check of a model file (exit 1 on failure)")
    p.add_argument("model", nargs="?", default=None, help="model file (default: shipped model)")
    p.add_argument("--json", type=Path, help="also write the report as JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("info", help="print a model file's metadata")
    p.add_argument("model", nargs="?", default=None)
    p.set_defaults(func=cmd_info)

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

    p = sub.add_parser("lammps-plugin-path", help="print the path of the LAMMPS plugin (.so) for `plugin load`, "
                       "building it with CMake on first use")
    p.add_argument("--rebuild", action="store_true", help="build the plugin again even if a cached build exists")
    p.add_argument("--no-build", action="store_true", help="fail instead of building when no cached plugin exists")
    p.add_argument("--info", action="store_true", help="also print the build record (versions, build time) to stderr")
    p.set_defaults(func=cmd_lammps_plugin_path)


def cmd_check(args) -> int:
    from ..model.conformance import validate_model

    report = validate_model(args.model)
    print(report.table())
    if args.json:
        from ..files import atomic_write_text

        atomic_write_text(args.json, json.dumps(report.to_dict(), indent=1))
    return 0 if report.passed else 1


def cmd_info(args) -> int:
    from ..model.io import read_metadata, resolve_model_path

    print(json.dumps(read_metadata(resolve_model_path(args.model)), indent=1))
    return 0


def cmd_compile(args) -> int:
    from ..model.aot_compile import check_compiled, compile_model

    graphs = tuple(g.strip() for g in args.graphs.split(",") if g.strip())
    start = time.perf_counter()
    path = compile_model(args.model, args.output, dtype=args.dtype, graphs=graphs, verbose=True)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.0f} s")
    if not args.no_check:
        for line in check_compiled(path):
            print(line)
    return 0


def cmd_upgrade(args) -> int:
    from ..model.upgrade import upgrade_model

    done = upgrade_model(args.model, args.output, repulsion=not args.no_repulsion)
    print(f"wrote {done.path} (mlip_md {done.info.mlip_md_version}, format {done.info.format_version}; "
          f"added: {', '.join(done.added) if done.added else 'nothing new'})")
    return 0


def cmd_model_path(args) -> int:
    from ..model.io import default_model_path, read_metadata

    path = default_model_path()
    read_metadata(path)  # ModelFileError (exit 2) when the installed file is missing or damaged
    print(path)
    return 0


def cmd_lammps_plugin_path(args) -> int:
    from ..engines.lammps_plugin import PluginBuildError, build_info, plugin_path

    try:
        path = plugin_path(build=not args.no_build, rebuild=args.rebuild, verbose=True)
    except PluginBuildError as exc:
        print(f"mlip-md lammps-plugin-path: error: {exc}", file=sys.stderr)
        return 2
    if args.info:
        print(json.dumps(build_info(path), indent=1), file=sys.stderr)
    print(path)
    return 0
