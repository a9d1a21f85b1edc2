"""The default safety policy (mlip_md.runtime.safety, mirrored in the LAMMPS plugin) in each engine's real
output: a real ``i-pi`` server with the ``mlip-md ipi`` driver as a subprocess (its log), and the
real ``lmp`` with the plugin (its log file, serial and ``mpiexec -n 2``).

Three structures with the shipped model: an isolated Cu atom (out of domain: T² 8400 > 4535),
two Cu atoms 0.05 Å apart in a 108-atom cell (close contact), and 500 atoms of fcc Cu thermalised
at 600 K (in domain: quiet). The messages are compared word for word with the Python formatter.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk

from mlip_md.engines.ipi.server import IPIServer, read_properties, write_ipi_xyz
from mlip_md.engines.lammps_module import find_potential, import_lammps
from mlip_md.model.io import default_model_path
from mlip_md.runtime.safety import close_contact_message, out_of_domain_message

pytestmark = pytest.mark.slow

BIN = Path(sys.prefix) / "bin"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
MODEL = default_model_path()
# the shipped model's limits (metadata "monitors") and the isolated atom's values
PAIR_MIN, T2_MAX, D_MIN_MAX = 1.9717890410861696, 4534.9630327758005, 1.2078317861232575
ISOLATED_T2, ISOLATED_D_MIN = 8399.84651906, 1.35758981


def isolated_atom() -> Atoms:
    return Atoms("Cu", positions=[[10.0, 10.0, 10.0]], cell=[20.0, 20.0, 20.0], pbc=True)


def squeezed_pair() -> Atoms:
    """108 fcc Cu atoms with atom 1 moved to 0.05 Å from atom 0 (LAMMPS IDs 1 and 2)."""
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(3)
    atoms.positions[1] = atoms.positions[0] + [0.05, 0.0, 0.0]
    return atoms


def isolated_message(step_atom: int) -> str:
    return out_of_domain_message(0, 1, (ISOLATED_T2, T2_MAX, step_atom), (ISOLATED_D_MIN, D_MIN_MAX, step_atom))


def pair_message(a: int, b: int, action: str = "warn") -> str:
    return close_contact_message(0, a, b, 0.05, 0.05 / PAIR_MIN, "Cu-Cu", PAIR_MIN, 2, action=action)


@pytest.fixture(scope="module")
def thermal_cu() -> Atoms:
    """500 fcc Cu atoms (5x5x5 cubic cells) after 0.6 ps of Langevin MD at 600 K with LAMMPS's
    eam/alloy (Mishin's Cu): positions and velocities of a thermal crystal, independent of the
    model under test."""
    lmp = import_lammps().lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        lmp.commands_list([
            "units metal", "atom_style atomic", "atom_modify map array", "lattice fcc 3.615",
            "region box block 0 5 0 5 0 5", "create_box 1 box", "create_atoms 1 box", "mass 1 63.546",
            "pair_style eam/alloy", f"pair_coeff * * {find_potential('Cu_mishin1.eam.alloy')} Cu",
            "velocity all create 1200 4242 mom yes rot yes dist gaussian", "fix md all nve",
            "fix heat all langevin 600 600 0.1 777", "timestep 0.002", "run 300",
        ])
        n = lmp.get_natoms()
        order = np.argsort(np.array(lmp.numpy.extract_atom("id"))[:n])
        positions = np.array(lmp.numpy.extract_atom("x"))[:n][order]
        velocities = np.array(lmp.numpy.extract_atom("v"))[:n][order]  # Å/ps
    finally:
        lmp.close()
    atoms = Atoms("Cu500", positions=positions, cell=np.eye(3) * 5 * 3.615, pbc=True)
    atoms.set_velocities(velocities / (1000 * units.fs))
    atoms.wrap()
    assert 450 < atoms.get_temperature() < 750
    return atoms


# ------------------------------------------------------------------------------ ASE
def test_ase_thermal_crystal_is_quiet(thermal_cu):
    """(The isolated atom and the pair in ASE: tests/unit/test_safety.py.)"""
    from ase.md.verlet import VelocityVerlet

    from mlip_md import MLIPCalculator
    from mlip_md.errors import CloseContactWarning
    from mlip_md.runtime.monitors import ExtrapolationWarning

    atoms = thermal_cu.copy()
    atoms.calc = MLIPCalculator(skin=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExtrapolationWarning)
        warnings.simplefilter("error", CloseContactWarning)
        VelocityVerlet(atoms, 1.0 * units.fs).run(5)
    assert atoms.calc.results["mahalanobis"].max() < T2_MAX / 4


# ------------------------------------------------------------------------------ i-PI
def ipi_xml(address: str, steps: int, timestep_fs: float, temperature: float) -> str:
    return f"""<simulation verbosity='low' safe_stride='100000'>
  <output prefix='sim'>
    <properties stride='1' filename='out'> [ step, temperature{{kelvin}}, potential{{electronvolt}} ] </properties>
  </output>
  <total_steps> {steps} </total_steps>
  <prng> <seed> 4242 </seed> </prng>
  <ffsocket name='mlip_md' mode='unix'> <address> {address} </address> <latency> 1e-4 </latency> </ffsocket>
  <system>
    <initialize nbeads='1'>
      <file mode='xyz' units='angstrom'> init.xyz </file>
      <velocities mode='thermal' units='kelvin'> {temperature} </velocities>
    </initialize>
    <forces> <force forcefield='mlip_md'> </force> </forces>
    <motion mode='dynamics'>
      <dynamics mode='nve'> <timestep units='femtosecond'> {timestep_fs} </timestep> </dynamics>
    </motion>
  </system>
</simulation>"""


def run_ipi(workdir: Path, atoms: Atoms, steps: int, *driver_args, timestep_fs=1e-4, temperature=10.0):
    """i-PI NVE of ``atoms`` served by ``mlip-md ipi`` (cwd = workdir, so its EXIT file is the
    one i-PI watches). Returns (the driver's log, the steps i-PI wrote)."""
    address = f"mlip_safety_{os.getpid()}_{time.monotonic_ns() % 10**8}"
    write_ipi_xyz(workdir / "init.xyz", atoms)
    (workdir / "input.xml").write_text(ipi_xml(address, steps, timestep_fs, temperature))
    with IPIServer(workdir, socket_path=f"/tmp/ipi_{address}") as server:
        server.wait_for_socket()
        driver = subprocess.run([str(BIN / "mlip-md"), "ipi", "--address", address, "--unix", *driver_args],
                                cwd=workdir, env=ENV, capture_output=True, text=True, timeout=300)
        assert driver.returncode == 0, driver.stderr
        assert server.wait(timeout=120) == 0, server.log_tail()
    return driver.stderr, len(read_properties(workdir / "sim.out")["step"])


def logged(log: str, kind: str) -> list:
    """The driver's messages of one kind ("close contact" / "out of domain"), prefix removed."""
    return [line.split("mlip-md ipi: ", 1)[1] for line in log.splitlines() if f"mlip_md {kind} on step" in line]


def test_ipi_isolated_atom_one_warning_then_rate_limited(tmp_path):
    log, written = run_ipi(tmp_path, isolated_atom(), 12)
    assert written >= 12
    messages = logged(log, "out of domain")
    assert len(messages) == 2, log
    assert messages[0] == isolated_message(0)
    assert messages[1].startswith("mlip_md out of domain on step 10:")
    assert "; 10 step(s) with atoms out of domain (10 atom(s) in all) since the message on step 0;" in messages[1]
    assert logged(log, "close contact") == []


def test_ipi_squeezed_pair_warns_once_per_gap_and_halt_stops_softly(tmp_path):
    (tmp_path / "warn").mkdir()
    log, _ = run_ipi(tmp_path / "warn", squeezed_pair(), 12)
    messages = logged(log, "close contact")
    assert len(messages) == 2 and logged(log, "out of domain") == [], log
    assert messages[0] == pair_message(0, 1)
    assert "on step 10:" in messages[1] and "10 step(s) with close contacts (20 atom(s) in all)" in messages[1]

    (tmp_path / "halt").mkdir()
    steps = 200
    log, written = run_ipi(tmp_path / "halt", squeezed_pair(), steps, "--close-contact", "halt")
    assert f"halting: {pair_message(0, 1, 'halt')}" in log, log
    assert (tmp_path / "halt" / "EXIT").exists() and written < steps  # i-PI's soft exit


def test_ipi_thermal_crystal_is_quiet_and_ood_warnings_switch_off(tmp_path, thermal_cu):
    (tmp_path / "thermal").mkdir()
    log, written = run_ipi(tmp_path / "thermal", thermal_cu, 6, timestep_fs=1.0, temperature=600.0)
    assert written >= 6 and logged(log, "close contact") == logged(log, "out of domain") == [], log
    (tmp_path / "off").mkdir()
    log, _ = run_ipi(tmp_path / "off", isolated_atom(), 3, "--no-ood-warnings")
    assert logged(log, "out of domain") == [], log


# ------------------------------------------------------------------------------ LAMMPS
def lammps_input(plugin: str, atoms: Atoms, steps: int, pair_extra: str = "", timestep_ps: float = 1e-7,
                 velocities: bool = False, model: Path = MODEL) -> str:
    """Orthogonal box, atoms with IDs 1..N in ASE order (one type per element, in order of first
    appearance), pair_style mlip with the shipped model (or ``model``)."""
    elements = list(dict.fromkeys(atoms.get_chemical_symbols()))
    lines = ["units metal", "atom_style atomic", "atom_modify map array", "boundary p p p",
             "region box block 0 {!r} 0 {!r} 0 {!r}".format(*map(float, np.diag(atoms.cell.array))),
             f"create_box {len(elements)} box"]
    lines += ["create_atoms {} single {!r} {!r} {!r} units box remap yes".format(elements.index(e) + 1, *map(float, r))
              for e, r in zip(atoms.get_chemical_symbols(), atoms.positions)]
    lines += [f"mass {t} 63.546" for t in range(1, len(elements) + 1)]
    lines += [f"plugin load {plugin}", f"pair_style mlip {model} {pair_extra}", "pair_coeff * * " + " ".join(elements)]
    if velocities:
        v = atoms.get_velocities() * 1000 * units.fs  # Å/ps
        lines += ["set atom {} vx {!r} vy {!r} vz {!r}".format(k + 1, *map(float, r)) for k, r in enumerate(v)]
    lines += [f"timestep {timestep_ps!r}", "thermo 1", "fix md all nve", f"run {steps}",
              'print "after the run: step $(step)"']
    return "\n".join(lines) + "\n"


def run_lmp(workdir: Path, text: str, ranks: int = 1):
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "in.safety").write_text(text)
    command = ([str(BIN / "mpiexec"), "-n", str(ranks)] if ranks > 1 else []) + [
        str(BIN / "lmp"), "-in", "in.safety", "-log", "log.lammps", "-screen", "none"]
    proc = subprocess.run(command, cwd=workdir, env=ENV, capture_output=True, text=True, timeout=300)
    return proc, (workdir / "log.lammps").read_text()


def warned(log: str, kind: str) -> list:
    """The plugin's messages of one kind: 'WARNING: <message> (src/file.cpp:line)' -> message."""
    return [re.sub(r" \(src/\S+:\d+\)$", "", line[len("WARNING: "):]) for line in log.splitlines()
            if line.startswith("WARNING: ") and f"mlip_md {kind} on step" in line]


@pytest.mark.parametrize("ranks", [1, 2])
def test_lammps_isolated_atom_warns_once(plugin, tmp_path, ranks):
    # default: the out-of-domain check runs on step 0 and every 200 steps: one message in 12 steps
    proc, log = run_lmp(tmp_path / "default", lammps_input(plugin, isolated_atom(), 12), ranks)
    assert proc.returncode == 0, log[-3000:]
    assert warned(log, "out of domain") == [isolated_message(1)], log[-3000:]  # atom ID 1
    assert "out-of-domain atoms (T^2 > 4535, d_min > 1.208) warned about every 200 steps" in log
    # checked every step: rate-limited repeats; ood_warnings no: silent
    proc, log = run_lmp(tmp_path / "every", lammps_input(plugin, isolated_atom(), 12, "ood_every 1"), ranks)
    messages = warned(log, "out of domain")
    assert len(messages) == 2 and messages[0] == isolated_message(1), log[-3000:]
    assert messages[1].startswith("mlip_md out of domain on step 10:")
    assert "; 10 step(s) with atoms out of domain (10 atom(s) in all) since the message on step 0;" in messages[1]
    proc, log = run_lmp(tmp_path / "off", lammps_input(plugin, isolated_atom(), 3, "ood_every 1 ood_warnings no"))
    assert proc.returncode == 0 and "WARNING" not in log, log[-3000:]


@pytest.mark.parametrize("ranks", [1, 2])
def test_lammps_squeezed_pair_warns_every_step_check_and_halts(plugin, tmp_path, ranks):
    proc, log = run_lmp(tmp_path / "warn", lammps_input(plugin, squeezed_pair(), 12), ranks)
    assert proc.returncode == 0, log[-3000:]
    messages = warned(log, "close contact")
    assert len(messages) == 2 and warned(log, "out of domain") == [], log[-3000:]
    assert messages[0] == pair_message(1, 2)  # atom IDs
    assert "on step 10:" in messages[1] and "10 step(s) with close contacts (20 atom(s) in all)" in messages[1]

    proc, log = run_lmp(tmp_path / "halt", lammps_input(plugin, squeezed_pair(), 12, "close_contact halt"), ranks)
    assert proc.returncode != 0 and "after the run" not in log
    assert f"ERROR: pair_style mlip: {pair_message(1, 2, 'halt')}" in log, log[-3000:]
    proc, log = run_lmp(tmp_path / "ignore", lammps_input(plugin, squeezed_pair(), 3, "close_contact ignore "
                                                          "ood_warnings no"), ranks)
    assert proc.returncode == 0 and "WARNING" not in log, log[-3000:]


def test_lammps_thermal_crystal_is_quiet(plugin, tmp_path, thermal_cu):
    text = lammps_input(plugin, thermal_cu, 20, "ood_every 1", timestep_ps=0.001, velocities=True)
    proc, log = run_lmp(tmp_path, text)
    assert proc.returncode == 0, log[-3000:]
    assert "after the run: step 20" in log and "for 20 steps with 500 atoms" in log
    assert "WARNING" not in log, log[-3000:]


@pytest.mark.parametrize("ranks", [1, 2])
def test_lammps_contacts_per_element_pair_match_ase(plugin, tmp_path, ranks):
    """A (Ni, Cu) model whose closest training distances differ per pair (the plugin's per-pair
    table): the same contact, atoms, count and text as the ASE calculator."""
    import torch

    from mlip_md import MLIPCalculator
    from mlip_md.errors import CloseContactWarning
    from mlip_md.model.io import save_model
    from mlip_md.model.potential import MLIPotential, ModelConfig

    torch.manual_seed(0)
    module = MLIPotential(ModelConfig(atomic_numbers=[28, 29], cutoff=4.6, n_max=3, l_max=1, hidden=(8,),
                                      ensemble_size=2))
    with torch.no_grad():
        module.pair_min_distance.copy_(torch.tensor([[2.0, 2.3], [2.3, 2.45]]))  # Ni-Ni, Ni-Cu / Cu-Ni, Cu-Cu
    model = save_model(module, tmp_path / "nicu.pt")
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(3)
    j = int(np.argmin(np.linalg.norm(atoms.positions - [1.8075, 1.8075, 0.0], axis=1)))  # a neighbour of atom 0
    symbols = np.array(atoms.get_chemical_symbols())
    symbols[::3] = "Ni"
    symbols[j] = "Cu"
    atoms.set_chemical_symbols(symbols)
    # Cu-Cu at 2.556 Å (ratio 1.04) and Ni-Cu at 2.556 (1.11) are fine; pull the Ni 0 - Cu j pair to 2.2 Å
    bond = atoms.positions[j] - atoms.positions[0]
    atoms.positions[j] = atoms.positions[0] + 2.2 * bond / np.linalg.norm(bond)
    atoms.calc = MLIPCalculator(model)
    with pytest.warns(CloseContactWarning) as caught:
        atoms.get_potential_energy()
    (expected,) = [str(w.message) for w in caught if w.category is CloseContactWarning]
    assert f"atoms 0 and {j} are 2.200 A apart, 0.96 of the closest Ni-Cu distance in training (2.300 A)" in expected
    proc, log = run_lmp(tmp_path / "lmp", lammps_input(plugin, atoms, 0, model=model), ranks)
    assert proc.returncode == 0, log[-3000:]
    # IDs are ASE indices + 1
    assert warned(log, "close contact") == [expected.replace(f"atoms 0 and {j} ", f"atoms 1 and {j + 1} ")], log[-3000:]


def test_lammps_bad_safety_keywords_give_clear_errors(plugin):
    lammps = import_lammps()
    cases = {"close_contact explode": "close_contact must be warn, halt or ignore, got 'explode'",
             "ood_every -1": "ood_every must be >= 0",
             "ood_warnings maybe": "Expected boolean parameter instead of 'maybe'"}
    for keywords, expected in cases.items():
        lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
        try:
            lmp.commands_list(["units metal", "atom_style atomic", "region box block 0 5 0 5 0 5", "create_box 1 box",
                               f"plugin load {plugin}"])
            with pytest.raises(Exception, match=re.escape(expected)):
                lmp.command(f"pair_style mlip {MODEL} {keywords}")
        finally:
            lmp.close()
