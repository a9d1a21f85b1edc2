"""The `mlip-md` commands are thin calls into the library: the library entry points they call
take the command's defaults and give the command's results."""
from __future__ import annotations

import dataclasses
import json

from mlip_md.cli import build_parser, main


def test_driver_options_are_the_ipi_command_options():
    """`mlip-md ipi` fills DriverOptions from its options of the same names: every field is an
    option, and a Python caller gets the command's defaults."""
    from mlip_md.engines.ipi.launch import DriverOptions

    def plain(value):
        return list(value) if isinstance(value, (list, tuple)) else value

    args = build_parser().parse_args(["ipi"])
    for field in dataclasses.fields(DriverOptions):
        assert hasattr(args, field.name), field.name
        assert plain(getattr(args, field.name)) == plain(field.default), field.name
    rules = build_parser().parse_args(["ipi", "--monitor", "mahalanobis:500:warn,dump"]).monitor_rules
    assert [(r.signal, r.threshold, tuple(r.actions)) for r in rules] == [("mahalanobis", 500.0, ("warn", "dump"))]


def test_qmml_check_on_its_default_structure(tmp_path, capsys):
    """`mlip-md qmml check` without --structure: the fcc Cu cell of qmml.check.default_structure
    (vacancy: 107 atoms), report files written, exit 0 for a C^2 switch and continuous energy."""
    assert main(["qmml", "check", "--high", "emt", "--low", "emt", "--vacancy", "--steps", "2",
                 "-o", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["structure"]["atoms"] == 107 and report["passed"]
    assert f"wrote {tmp_path / 'report.json'}" in capsys.readouterr().out


def test_error_summary_line():
    from mlip_md.train.workflow import error_summary

    errors = {"n_structures": 3, "mean": {"energy_rmse_per_atom": 0.00123, "energy_mae_per_atom": 0.001,
                                          "force_rmse": 0.0456, "force_mae": 0.03, "stress_rmse": 0.001}}
    assert error_summary("test", errors) == ("test: energy RMSE 1.23 meV/atom, MAE 1.00; force RMSE 0.0456 eV/Å, "
                                             "MAE 0.0300; stress RMSE 0.160 GPa (3 structures)")
