"""Running a real ``i-pi`` server next to the driver: input files and process lifetime.

Used by ``mlip-md demo``, the integration tests and the benchmarks. Templates live in
``mlip_md/data/ipi/`` and use ``$name`` placeholders (i-PI's own syntax uses braces).
"""
from __future__ import annotations

import os
import shutil
import signal
import string
import subprocess
import time
from pathlib import Path
from typing import Optional

import ase
import numpy as np

TEMPLATES = Path(__file__).resolve().parents[2] / "data" / "ipi"


def write_ipi_xyz(path, atoms: ase.Atoms) -> None:
    """i-PI's native xyz (positions in Å, cell as CELL(abcABC) on the comment line), written
    with full double precision. i-PI rotates the cell to its upper-triangular frame."""
    a, b, c, alpha, beta, gamma = atoms.cell.cellpar()
    lines = [str(len(atoms)),
             f"# CELL(abcABC): {a:.15f} {b:.15f} {c:.15f} {alpha:.15f} {beta:.15f} {gamma:.15f} "
             "positions{angstrom} cell{angstrom}"]
    for symbol, (x, y, z) in zip(atoms.get_chemical_symbols(), atoms.positions):
        lines.append(f"{symbol} {x:.17g} {y:.17g} {z:.17g}")
    Path(path).write_text("\n".join(lines) + "\n")


def render(template: str, **values) -> str:
    """Fill ``$name`` placeholders of a template in mlip_md/data/ipi (KeyError if one is missing)."""
    text = (TEMPLATES / template).read_text()
    return string.Template(text).substitute({k: str(v) for k, v in values.items()})


def ipi_executable() -> str:
    exe = shutil.which("i-pi")
    if exe is None:
        raise FileNotFoundError("the `i-pi` command is not on PATH; install i-PI (`pip install ipi`)")
    return exe


class IPIServer:
    """An ``i-pi`` process running ``input_xml`` in ``workdir`` (stdout/stderr to ``ipi.log``).

    >>> with IPIServer(workdir, "input.xml") as server: ...   # stopped and reaped on exit
    """

    def __init__(self, workdir, input_xml: str = "input.xml", socket_path: Optional[str] = None):
        self.workdir = Path(workdir)
        self.input_xml = input_xml
        self.socket_path = socket_path
        self.process: Optional[subprocess.Popen] = None
        self.log_path = self.workdir / "ipi.log"

    def start(self) -> "IPIServer":
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen([ipi_executable(), self.input_xml], cwd=self.workdir, stdout=self._log,
                                        stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self

    def wait_for_socket(self, timeout: float = 60.0) -> None:
        """Block until the server's unix socket exists (or the server died)."""
        deadline = time.monotonic() + timeout
        while self.socket_path and not os.path.exists(self.socket_path):
            if self.process.poll() is not None:
                raise RuntimeError(f"i-pi exited with code {self.process.returncode} before opening its "
                                   f"socket; see {self.log_path}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"i-pi did not open {self.socket_path} within {timeout} s")
            time.sleep(0.05)

    def wait(self, timeout: float = 120.0) -> int:
        """Wait for the server to finish on its own; returns its exit code."""
        return self.process.wait(timeout=timeout)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the server (its soft exit), then SIGKILL after ``grace`` seconds."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
        if self.socket_path and os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> "IPIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def read_properties(path) -> dict:
    """Columns of an i-PI properties file (``<properties>`` output) as arrays by name."""
    names, rows = [], []
    for line in Path(path).read_text().splitlines():
        if line.startswith("#"):
            # "# column   3     --> conserved{electronvolt} : ..."
            if "-->" in line:
                names.append(line.split("-->")[1].split(":")[0].strip())
            continue
        if line.strip():
            rows.append([float(x) for x in line.split()])
    data = np.array(rows) if rows else np.zeros((0, len(names)))
    return {name: data[:, k] for k, name in enumerate(names)}
