"""The real MD programs as the integration tests run them: the ``mlip-md ipi`` driver (the
console script of this environment) next to an ``i-pi`` server, and ``lmp`` (alone or under
``mpiexec``) with the LAMMPS plugin. One thread per process: the test machine is shared."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import MLIP_MD

BIN = Path(sys.prefix) / "bin"
LMP = BIN / "lmp"
MPIEXEC = BIN / "mpiexec"
#: environment of the subprocesses: one OpenMP / MKL thread each
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def unique_address(tag: str = "t") -> str:
    """An i-PI unix-socket address (/tmp/ipi_ADDRESS) no concurrent test run shares."""
    return f"mlip_{tag}_{os.getpid()}_{time.monotonic_ns() % 10**8}"


def start_ipi_driver(*args, cwd=None) -> subprocess.Popen:
    """``mlip-md ipi ARGS`` in the background, stdout and stderr captured as text."""
    return subprocess.Popen([MLIP_MD, "ipi", *map(str, args)], env=ENV, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def served_steps(stderr: str) -> int:
    """Requests a driver served, from its last log line ("i-PI sent EXIT after N steps; ...")."""
    return int(stderr.split("EXIT after ")[1].split()[0])


def run_lmp(args, cwd, env=None, timeout: float = 300, mpi: int = 0) -> subprocess.CompletedProcess:
    """``lmp ARGS`` in ``cwd`` (under ``mpiexec -n MPI`` when mpi > 0), output captured as text."""
    cmd = ([str(MPIEXEC), "-n", str(mpi)] if mpi else []) + [str(LMP)] + [str(a) for a in args]
    return subprocess.run(cmd, cwd=cwd, env=ENV if env is None else env, capture_output=True, text=True,
                          timeout=timeout)


def thermo_rows(text: str, first_column: str = "Step") -> list:
    """Numeric rows of every thermo table in a LAMMPS log."""
    rows, inside = [], False
    for line in text.splitlines():
        words = line.split()
        if words and words[0] == first_column:
            inside = True
            continue
        if inside:
            try:
                rows.append([float(w) for w in words])
            except ValueError:
                inside = False
    return rows
