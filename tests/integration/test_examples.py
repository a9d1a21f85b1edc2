"""Every shipped example input runs, for a few steps, with the real programs: each
``examples/ipi/*.xml`` under a real ``i-pi`` server served by ``mlip-md ipi``, each
``examples/lammps/in.*`` with the real ``lmp`` and the plugin (``in.neb`` on several partitions
under ``mpiexec``). The inputs are found by globbing: a new example without a recipe here fails.
The LAMMPS inputs also stop with a clear message when ``-var plugin`` / ``-var model`` is missing.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
import pytest

from mlip_md.engines.ipi.server import IPIServer, read_properties
from mlip_md.model.io import default_model_path
from md_programs import run_lmp, served_steps, start_ipi_driver, thermo_rows, unique_address  # noqa: E402

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
IPI_INPUTS = sorted(p.name for p in (EXAMPLES / "ipi").glob("*.xml"))
LAMMPS_INPUTS = sorted(p.name for p in (EXAMPLES / "lammps").glob("in.*"))


# ----------------------------------------------------------------------------- i-PI
#: the options of the driver serving each i-PI example (examples/ipi/README.md). One driver each:
#: a second one for the PIMD beads may connect only after a run this short is over (two drivers
#: sharing beads: test_ipi.py::test_pimd_beads_served_by_two_independent_drivers)
IPI_DRIVER_OPTIONS: Dict[str, Tuple[str, ...]] = {
    "nve.xml": (),
    "nvt.xml": (),
    "pimd.xml": (),
    "committee.xml": ("--committee", "full"),
}
IPI_STEPS = 3


def shortened_ipi_input(source: Path, workdir: Path, steps: int, address: str) -> str:
    """Copy an example (and the files it reads) into ``workdir`` with ``steps`` steps and its
    own socket address; returns the rewritten XML."""
    text = source.read_text()
    text, n_steps = re.subn(r"<total_steps>\s*\d+\s*</total_steps>", f"<total_steps> {steps} </total_steps>", text)
    text, n_addresses = re.subn(r"<address>\s*\S+\s*</address>", f"<address> {address} </address>", text)
    assert n_steps == 1 and n_addresses == 1, f"{source.name}: expected one <total_steps> and one <address>"
    (workdir / source.name).write_text(text)
    for name in re.findall(r"<file[^>]*>\s*(\S+)\s*</file>", text):
        shutil.copy(source.parent / name, workdir / name)
    return text


@pytest.mark.parametrize("name", IPI_INPUTS)
def test_ipi_example_runs(name, tmp_path):
    assert name in IPI_DRIVER_OPTIONS, (f"examples/ipi/{name} has no recipe: add it to IPI_DRIVER_OPTIONS "
                                        "(and to examples/ipi/README.md)")
    options = IPI_DRIVER_OPTIONS[name]
    readme = (EXAMPLES / "ipi" / "README.md").read_text()
    assert f"i-pi {name}" in readme and " ".join(options) in readme, f"examples/ipi/README.md does not show {name}"
    address = unique_address(name.split(".")[0])
    text = shortened_ipi_input(EXAMPLES / "ipi" / name, tmp_path, IPI_STEPS, address)
    with IPIServer(tmp_path, name, socket_path=f"/tmp/ipi_{address}") as server:
        server.wait_for_socket()
        driver = start_ipi_driver("--address", address, "--unix", "--timeout", "120", *options, cwd=tmp_path)
        assert server.wait(timeout=300) == 0, server.log_tail()
        _, err = driver.communicate(timeout=120)
    assert driver.returncode == 0, err
    beads = int(re.search(r"nbeads='(\d+)'", text).group(1))
    assert served_steps(err) >= beads * IPI_STEPS, err
    prefix = re.search(r"<output prefix='(\w+)'>", text).group(1)
    properties = read_properties(tmp_path / f"{prefix}.out")
    assert len(properties["step"]) >= 1 and np.isfinite(properties["potential{electronvolt}"]).all()
    if "committee_pot" in text:  # one committee member per ensemble member, parsed from the extras
        rows = [line.split() for line in (tmp_path / f"{prefix}.committee_pot_0").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
        assert rows and all(len(row) > 1 for row in rows)


# ----------------------------------------------------------------------------- LAMMPS
def _last_number(pattern: str) -> Callable[[str], float]:
    return lambda log: float(re.findall(pattern, log)[-1])


@dataclasses.dataclass(frozen=True)
class LammpsRecipe:
    """How a LAMMPS example runs here: its ``-var`` values (short runs), MPI partitions, the
    examples whose output files it reads, the files it writes for others, and a check of its log."""

    variables: dict
    check: Callable[[str, Path], None]
    partitions: int = 0
    reads_from: Tuple[str, ...] = ()
    writes: Tuple[str, ...] = ()


def _thermo_finite(rows_expected: int):
    def check(log: str, workdir: Path) -> None:
        rows = np.array(thermo_rows(log))
        assert len(rows) == rows_expected and np.isfinite(rows).all(), log[-2000:]
    return check


def _nve_conserves(log: str, workdir: Path) -> None:
    rows = thermo_rows(log)  # step temp pe ke etotal press; n = 3: 108 atoms
    etotal = np.array([row[4] for row in rows])
    assert len(rows) == 2 and abs(etotal[-1] - etotal[0]) / 108 < 1e-4, rows  # eV/atom over 20 fs


def _minimized(log: str, workdir: Path) -> None:
    assert -1.0 < _last_number(r"vacancy relaxation energy: (\S+) eV")(log) < 0.0


def _box_relaxed(log: str, workdir: Path) -> None:
    assert abs(_last_number(r"relaxed: pe \S+ eV, a \S+ A, press (\S+) bar")(log)) < 50.0  # bar


def _end_states(log: str, workdir: Path) -> None:
    assert abs(_last_number(r"end-state energy difference .*: (\S+) eV")(log)) < 1e-3  # symmetric hop
    final = (workdir / "neb_final.txt").read_text().split()
    assert int(final[0]) == 107 and (workdir / "neb_initial.data").is_file()


def _neb_barrier(log: str, workdir: Path) -> None:
    rows = thermo_rows(log)
    header = "Step MaxReplicaForce MaxAtomForce GradV0 GradV1 GradVc EBF EBR RDT".split()
    assert 0.3 < rows[-1][header.index("EBF")] < 1.5, rows[-1]  # eV: vacancy hop in Cu


def _dump_halt_ran(log: str, workdir: Path) -> None:
    assert re.search(r"stopped at step \d+ with max energy sigma", log), log[-2000:]


LAMMPS_RECIPES: Dict[str, LammpsRecipe] = {
    "in.nve": LammpsRecipe({"n": 3, "steps": 20}, _nve_conserves),
    "in.nvt": LammpsRecipe({"n": 3, "steps": 20}, _thermo_finite(2)),
    "in.npt": LammpsRecipe({"n": 3, "steps": 20}, _thermo_finite(2)),
    "in.minimize": LammpsRecipe({"n": 3}, _minimized),
    "in.box_relax": LammpsRecipe({"n": 3}, _box_relaxed),
    "in.dump_halt": LammpsRecipe({"n": 3, "steps": 20}, _dump_halt_ran),
    "in.neb_endpoints": LammpsRecipe({"n": 3}, _end_states, writes=("neb_initial.data", "neb_final.txt")),
    "in.neb": LammpsRecipe({"nsteps": 50, "nclimb": 50}, _neb_barrier, partitions=3,
                           reads_from=("in.neb_endpoints",)),
}


@pytest.fixture(scope="module")
def lammps_example(plugin, tmp_path_factory):
    """Runs an example (once per module, in a directory of its own, after the examples it reads
    from) and returns (log text, directory)."""
    done: Dict[str, Tuple[str, Path]] = {}

    def run(name: str) -> Tuple[str, Path]:
        if name not in done:
            recipe = LAMMPS_RECIPES[name]
            workdir = tmp_path_factory.mktemp(name.replace(".", "_"))
            for other in recipe.reads_from:
                _, other_dir = run(other)
                for file in LAMMPS_RECIPES[other].writes:
                    shutil.copy(other_dir / file, workdir / file)
            args = ["-in", EXAMPLES / "lammps" / name, "-log", "example.log",
                    "-var", "plugin", plugin, "-var", "model", default_model_path()]
            for key, value in recipe.variables.items():
                args += ["-var", key, value]
            if recipe.partitions:
                args = ["-partition", f"{recipe.partitions}x1", "-pscreen", "none", *args]
            proc = run_lmp(args, workdir, mpi=recipe.partitions, timeout=400)
            assert proc.returncode == 0, f"{name}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            assert "ERROR" not in proc.stdout, proc.stdout[-3000:]
            done[name] = ((workdir / "example.log").read_text(), workdir)
        return done[name]

    return run


@pytest.mark.parametrize("name", LAMMPS_INPUTS)
def test_lammps_example_runs(name, lammps_example):
    assert name in LAMMPS_RECIPES, f"examples/lammps/{name} has no recipe: add it to LAMMPS_RECIPES"
    readme = (EXAMPLES / "lammps" / "README.md").read_text()
    assert f"`{name}`" in readme, f"examples/lammps/README.md does not list {name}"
    log, workdir = lammps_example(name)
    LAMMPS_RECIPES[name].check(log, workdir)


@pytest.mark.parametrize("name", LAMMPS_INPUTS)
def test_lammps_example_needs_plugin_and_model(name, plugin, tmp_path):
    """Without -var plugin / -var model, or with an empty or wrong path, the input stops at once
    with one line naming the variable and the command that prints the path."""
    model = str(default_model_path())
    cases = [
        ([], f"ERROR: {name} needs -var plugin PATH, the LAMMPS plugin (mlip-md lammps-plugin-path prints it)"),
        (["-var", "plugin", plugin], f"ERROR: {name} needs -var model PATH, a model file (mlip-md model-path prints"),
        (["-var", "plugin", plugin, "-var", "model", ""], f"ERROR: {name}: -var model : no such file (mlip-md model-path"),
        (["-var", "plugin", "", "-var", "model", model], f"ERROR: {name}: -var plugin : no such file"),
        (["-var", "plugin", plugin, "-var", "model", "missing.pt"], f"ERROR: {name}: -var model missing.pt: no such file"),
    ]
    for variables, message in cases:
        proc = run_lmp(["-in", EXAMPLES / "lammps" / name, "-log", "none", *variables], tmp_path, timeout=120)
        errors = [line for line in proc.stdout.splitlines() if "ERROR" in line]
        assert proc.returncode == 1 and len(errors) == 1 and errors[0].startswith(message), (variables, proc.stdout)
