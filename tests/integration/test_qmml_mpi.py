"""QM/ML hybrid across processes: high and low level on separate MPI ranks (real mpiexec) equal
the serial hybrid to 1e-10, and ``mlip-md ipi --hybrid hybrid.toml`` drives a real i-PI server
(serially and under mpiexec -n 2) with the forces of HybridCalculator."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read

from mlip_md.engines.ipi import wire
from mlip_md.engines.ipi.server import IPIServer, write_ipi_xyz
from mlip_md.qmml import HybridModel
from mlip_md.qmml.config import load_hybrid_config

from conftest import MLIP_MD  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
MPIEXEC = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")
ANGSTROM_PER_BOHR = 1.0 / wire.BOHR_PER_ANGSTROM

RANK_SCRIPT = r"""
import json, sys
import numpy as np
from ase.io import read
from mpi4py import MPI
from mlip_md.qmml import HybridCalculator
comm = MPI.COMM_WORLD
atoms = read(sys.argv[1])
calc = HybridCalculator("mlip", "emt", 5, (2.5, 4.5), energy_shift="auto", comm=comm, high_ranks=int(sys.argv[3]))
if comm.Get_rank() > 0:
    calc.serve()
    sys.exit(0)
out = []
for step in range(2):
    frame = atoms.copy()
    frame.positions += 0.03 * step
    frame.calc = calc
    out.append({"energy": frame.get_potential_energy(), "forces": frame.get_forces().tolist(),
                "stress": frame.get_stress().tolist(), "timings": calc.runner.timings})
calc.shutdown()
json.dump(out, open(sys.argv[2], "w"))
"""


def crystal():
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(3)
    del atoms[0]
    atoms.rattle(0.05, seed=4)
    return atoms


@pytest.mark.parametrize("ranks,high_ranks", [(2, 1), (4, 2)])
def test_mpi_split_equals_serial(tmp_path, ranks, high_ranks):
    crystal().write(tmp_path / "in.extxyz")
    atoms = read(tmp_path / "in.extxyz")  # what the ranks see (extxyz rounds positions)
    (tmp_path / "run.py").write_text(RANK_SCRIPT)
    proc = subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, str(tmp_path / "run.py"), str(tmp_path / "in.extxyz"),
                           str(tmp_path / "out.json"), str(high_ranks)], env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "out.json").read_text())
    model = HybridModel("mlip", "emt", 5, (2.5, 4.5), energy_shift="auto")
    for step, got in enumerate(results):
        frame = atoms.copy()
        frame.positions += 0.03 * step
        serial = model.evaluate(frame.numbers, frame.positions, frame.cell.array, frame.pbc)
        assert got["energy"] == pytest.approx(serial.energy, abs=1e-10)
        assert np.abs(np.array(got["forces"]) - serial.forces).max() < 1e-10
        assert got["timings"]["high"] > 0 and got["timings"]["low"] > 0  # both groups worked


HYBRID_TOML = """high = "emt"
low = "mlip"
energy_shift = {Cu = -3.5347}
[region]
atom = 5
[switch]
r_inner = 2.5
r_outer = 4.5
[mpi]
high_ranks = 1
"""


def simulation_xml(address, steps):
    return f"""<simulation verbosity='low' safe_stride='100000'>
  <output prefix='sim'>
    <properties stride='1' filename='out'> [ step, time{{picosecond}}, conserved{{electronvolt}},
      potential{{electronvolt}} ] </properties>
    <trajectory filename='pos' stride='1' format='bin'> positions </trajectory>
    <trajectory filename='for' stride='1' format='bin'> forces </trajectory>
  </output>
  <total_steps> {steps} </total_steps>
  <prng> <seed> 4242 </seed> </prng>
  <ffsocket name='mlip_md' mode='unix'> <address> {address} </address> <latency> 1e-4 </latency> </ffsocket>
  <system>
    <initialize nbeads='1'>
      <file mode='xyz' units='angstrom'> init.xyz </file>
      <velocities mode='thermal' units='kelvin'> 900 </velocities>
    </initialize>
    <forces> <force forcefield='mlip_md'> </force> </forces>
    <motion mode='dynamics'> <dynamics mode='nve'> <timestep units='femtosecond'> 1.0 </timestep> </dynamics> </motion>
  </system>
</simulation>"""


def binary_frames(path):
    """(h [3, 3] Bohr, values [N, 3]) per frame of an i-PI 'bin' trajectory (fixed cell)."""
    data = Path(path).read_bytes()
    head, starts, at = data[:72], [], 0
    while (at := data.find(head, at)) >= 0:
        starts.append(at)
        at += 72
    frames = []
    for start in starts:
        nat = int(np.frombuffer(data, np.int64, 1, start + 72)[0])
        frames.append((np.frombuffer(data, float, 9, start).reshape(3, 3).copy(),
                       np.frombuffer(data, float, 3 * nat, start + 80).reshape(nat, 3).copy()))
    return frames


def test_ipi_hybrid_driver_serial_and_two_ranks(tmp_path):
    atoms = crystal()
    config = tmp_path / "hybrid.toml"
    config.write_text(HYBRID_TOML)
    forces = {}
    for ranks in (1, 2):
        workdir = tmp_path / f"ranks{ranks}"
        workdir.mkdir()
        address = f"qmml_{os.getpid()}_{ranks}_{time.monotonic_ns() % 10**8}"
        write_ipi_xyz(workdir / "init.xyz", atoms)
        (workdir / "input.xml").write_text(simulation_xml(address, 4))
        command = [MLIP_MD, "ipi", "--hybrid", str(config), "--address", address, "--unix"]
        if ranks > 1:
            command = [MPIEXEC, "-n", str(ranks)] + command
        with IPIServer(workdir, socket_path=f"/tmp/ipi_{address}") as server:
            server.wait_for_socket()
            proc = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr
            assert server.wait(timeout=60) == 0, server.log_tail()
        forces[ranks] = binary_frames(workdir / "sim.for_0.bin")
        positions = binary_frames(workdir / "sim.pos_0.bin")
        assert len(positions) == len(forces[ranks]) >= 4
    model, _ = load_hybrid_config(config)
    for (h, q), (_, f_ipi) in zip(positions, forces[1]):
        frame = atoms.copy()
        frame.set_cell(h.T * ANGSTROM_PER_BOHR)
        frame.positions = q * ANGSTROM_PER_BOHR
        ref = model.evaluate(frame.numbers, frame.positions, frame.cell.array, True)
        f_ref = ref.forces * wire.HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM
        assert np.abs(f_ref - f_ipi).max() < 1e-8 * max(1.0, np.abs(f_ipi).max())
    for (_, f1), (_, f2) in zip(forces[1], forces[2]):
        assert np.abs(f1 - f2).max() < 1e-10 * wire.HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM
