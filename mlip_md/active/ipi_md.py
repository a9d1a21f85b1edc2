"""Exploration MD in i-PI: a real ``i-pi`` server (Langevin NVT, the shipped input template)
driven over its unix socket by mlip_md's driver with the current model. i-PI runs a stage's
whole trajectory; the frame every ``sample_every`` steps is recorded on the driver side (in
i-PI's upper-triangular cell orientation, a rotation of the input) and handed to the trigger.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import List

import ase
import numpy as np

from ..runtime.backend import WrappedEvaluator


class _Recorder(WrappedEvaluator):
    """An :class:`~mlip_md.runtime.backend.Evaluator` that evaluates with ``predictor`` and keeps
    the last (positions [N, 3], cell [3, 3], Å) the driver evaluated."""

    def __init__(self, predictor):
        super().__init__(predictor)
        self.positions = None
        self.cell = None

    def predict(self, numbers, positions, cell, pbc, monitors: bool = True, force_sigma: bool = False):
        self.positions = np.array(positions, dtype=float)
        self.cell = np.array(cell, dtype=float)
        return self.predictor.predict(numbers, positions, cell, pbc, monitors=monitors, force_sigma=force_sigma)


def ipi_frames(start: ase.Atoms, predictor, temperature_K: float, steps: int, sample_every: int,
               timestep_fs: float, seed: int) -> List[ase.Atoms]:
    """Run ``steps`` of i-PI NVT from ``start``; the configuration every ``sample_every`` steps."""
    from ..engines.ipi.client import Driver, serve
    from ..engines.ipi.connection import SocketClient
    from ..engines.ipi.server import IPIServer, render, write_ipi_xyz

    workdir = Path(tempfile.mkdtemp(prefix="mlip_md_active_ipi_"))
    address = f"mlip_md_active_{os.getpid()}_{seed}"
    frames: List[ase.Atoms] = []
    recorder = _Recorder(predictor)

    def on_step(step: int, pred) -> None:
        # i-PI evaluates the initial configuration as step 0: step k is after k MD steps
        if step > 0 and step % sample_every == 0:
            atoms = ase.Atoms(numbers=start.numbers, positions=recorder.positions, cell=recorder.cell, pbc=True)
            atoms.info.update(start.info)
            frames.append(atoms)

    try:
        write_ipi_xyz(workdir / "init.xyz", start)
        (workdir / "input.xml").write_text(render(
            "demo_nvt.xml", steps=steps, seed=seed, address=address, temperature=temperature_K,
            timestep=timestep_fs, stride=max(1, steps), traj_stride=max(1, steps)))
        client = SocketClient(address, unix=True, connect_timeout=60.0)
        driver = Driver(recorder, client, numbers=start.numbers, on_step=on_step, committee="off", monitor_every=0)
        with IPIServer(workdir, socket_path=client.target) as server:
            server.wait_for_socket()
            code = serve(driver)
            if code != 0:
                raise RuntimeError(f"the i-PI driver stopped with exit code {code}; i-PI log:\n{server.log_tail()}")
            server.wait(timeout=60)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return frames


class IPITrajectory:
    """run(steps)/frame() over the frames of one i-PI stage (run once, replayed block by block)."""

    def __init__(self, atoms: ase.Atoms, predictor, stage, timestep_fs: float, sample_every: int, seed: int):
        if stage.pressure_GPa is not None:
            raise ValueError("[explore] schedule: the i-PI engine runs NVT; remove pressure_GPa or use engine "
                             "'ase' or 'lammps'")
        blocks = max(1, stage.steps // sample_every)
        self.frames = ipi_frames(atoms, predictor, stage.temperature_K, blocks * sample_every, sample_every,
                                 timestep_fs, seed)
        self.index = -1

    def run(self, steps: int) -> None:
        self.index += 1
        if self.index >= len(self.frames):
            raise ValueError("i-PI returned fewer frames than the schedule asks for")

    def frame(self) -> ase.Atoms:
        return self.frames[self.index]
