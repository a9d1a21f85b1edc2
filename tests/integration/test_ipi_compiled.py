"""`mlip-md ipi` serving a compiled package (.pt2) to a real i-PI server: the forces i-PI
receives equal those of the TorchScript model (float64, 1e-10 eV/Å), with the Verlet skin on,
and the console command restarts itself with the glibc malloc settings."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from ase.build import bulk

from mlip_md.engines.ipi import wire
from mlip_md.engines.ipi.server import IPIServer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_ipi import binary_frames, prepare, simulation_xml  # noqa: E402

MLIP_MD = Path(sys.prefix) / "bin" / "mlip-md"


def alloy():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    atoms.rattle(0.05, seed=5)
    atoms.numbers = np.random.default_rng(5).choice([28, 29], size=len(atoms))
    return atoms


def serve_run(workdir: Path, atoms, *options):
    workdir.mkdir()
    atoms.write(workdir / "structure.extxyz")
    address = prepare(workdir, atoms, lambda a: simulation_xml(a, 8, temperature=1200), workdir.name)
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["OMP_NUM_THREADS"] = "1"
    with IPIServer(workdir, socket_path=f"/tmp/ipi_{address}") as server:
        server.wait_for_socket()
        proc = subprocess.run([str(MLIP_MD), "ipi", "--address", address, "--unix", "--structure",
                               str(workdir / "structure.extxyz"), "--committee", "off", *map(str, options)],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert server.wait(timeout=60) == 0
    return [f for _, f in binary_frames(workdir / "sim.for_0.bin")], proc.stderr


def test_compiled_driver_forces_equal_torchscript(tmp_path, compiled_package):
    pt, pt2 = compiled_package
    atoms = alloy()
    reference, _ = serve_run(tmp_path / "pt", atoms, "--model", pt, "--skin", 0)
    compiled, log = serve_run(tmp_path / "pt2", atoms, "--model", pt, "--compiled", pt2, "--skin", 0.3)
    assert "(compiled), neighbour-list skin 0.3" in log
    assert "1 torch thread (OMP_NUM_THREADS), malloc keeps freed memory" in log  # set in-process, no restart
    assert len(reference) == len(compiled) >= 8
    tol = 1e-10 * wire.HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM
    for f_pt, f_pt2 in zip(reference, compiled):
        assert np.abs(f_pt - f_pt2).max() < tol
    assert np.abs(reference[-1]).max() > 1e-4
