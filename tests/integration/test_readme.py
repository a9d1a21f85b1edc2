"""The README's commands run as printed, from the repository root, as a new user runs them.

The blocks are the ones CI runs (marked ``<!-- ci: NAME -->`` in README.md, read by
``.ci/readme_blocks.py``); CI also runs the install part of the main-job line in a fresh clone.
No PYTHONSAFEPATH, no in-place build: the `mlip-md` of this environment, started in the root of
the source tree that holds a `mlip_md/` package directory without the compiled core.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / ".ci"))
import readme_blocks  # noqa: E402


def user_env() -> dict:
    """The environment of a user who activated the venv: its bin first on PATH, nothing else."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSAFEPATH", "PYTHONPATH")}
    env["PATH"] = str(Path(sys.prefix) / "bin") + os.pathsep + env.get("PATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_from_root(script: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=user_env(),
                          capture_output=True, text=True, timeout=timeout)


def untracked() -> set:
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True,
                         text=True).stdout
    return {line[3:] for line in out.splitlines() if line.startswith("??")}


def test_readme_marks_the_blocks_ci_runs():
    marked = readme_blocks.blocks()
    assert set(marked) >= {"tests", "main-job", "lammps"}
    assert marked["tests"].strip().endswith("pytest")
    assert "pip install" in marked["main-job"] and marked["main-job"].strip().endswith("mlip-md demo")
    ci = (ROOT / ".ci" / "run").read_text()
    for name in ("tests", "main-job", "lammps"):
        assert f"run_block {name} " in ci


def test_main_job_runs_from_the_repository_root(plugin):
    """`mlip-md demo` from the clone root (the last command of the main-job line; CI runs the
    whole line): it must run the installed package, not the source tree in the directory."""
    line = readme_blocks.blocks()["main-job"].strip()
    demo = line.split("&&")[-1].strip()
    assert demo == "mlip-md demo"
    proc = run_from_root(demo + " --steps 20", timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "summary" in proc.stdout and "katom-steps/s" in proc.stdout
    assert "1 torch thread (OMP_NUM_THREADS)" in proc.stdout


def test_lammps_lines_run_from_the_repository_root(plugin):
    before = untracked()
    proc = run_from_root(readme_blocks.blocks()["lammps"], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("Loop time of") == 2  # serial and mpiexec -n 2
    assert "on 2 procs" in proc.stdout
    assert untracked() == before  # no log.lammps (or anything else) left in the clone
