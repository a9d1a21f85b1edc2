"""`mlip-md ipi` with the fused descriptor kernel (the default on the CPU) against a real i-PI
server: the same NVE trajectory as `--no-fused` (TorchScript descriptor), forces equal to
1e-10 eV/Å per step (full-precision trajectory), potential energies to i-PI's 8 printed digits,
and the start-up line says which path served it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from ase.build import bulk

from mlip_md.engines.ipi import wire
from mlip_md.engines.ipi.server import IPIServer, read_properties

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_ipi import binary_frames, prepare, simulation_xml  # noqa: E402
from conftest import MLIP_MD  # noqa: E402


def serve_run(workdir: Path, atoms, *options):
    workdir.mkdir()
    address = prepare(workdir, atoms, lambda a: simulation_xml(a, 8, temperature=1200), workdir.name)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with IPIServer(workdir, socket_path=f"/tmp/ipi_{address}") as server:
        server.wait_for_socket()
        proc = subprocess.run([MLIP_MD, "ipi", "--address", address, "--unix",
                               "--committee", "off", *map(str, options)],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert server.wait(timeout=60) == 0
    forces = [f for _, f in binary_frames(workdir / "sim.for_0.bin")]
    return forces, read_properties(workdir / "sim.out")["potential{electronvolt}"], proc.stderr


def test_fused_driver_trajectory_equals_torchscript(tmp_path):
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(3)
    atoms.rattle(0.05, seed=11)
    f_plain, e_plain, log_plain = serve_run(tmp_path / "plain", atoms, "--no-fused")
    f_fused, e_fused, log_fused = serve_run(tmp_path / "fused", atoms)  # default: fused on the CPU
    assert "(fused descriptor)" in log_fused and "(fused descriptor)" not in log_plain
    assert len(f_plain) == len(f_fused) >= 8 and len(e_plain) == len(e_fused) >= 8
    np.testing.assert_allclose(e_fused, e_plain, rtol=1e-7, atol=0)  # eV, i-PI prints 8 digits
    tol = 1e-10 * wire.HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM
    for a, b in zip(f_plain, f_fused):
        assert np.abs(a - b).max() < tol
    assert np.abs(f_fused[-1]).max() > 1e-4 and np.ptp(e_fused) > 1e-4  # the atoms moved
