"""Process settings for MD runs (mlip_md.process): torch threads and glibc's malloc behaviour."""
from __future__ import annotations

import statistics
import subprocess
import sys

import pytest
import torch

from mlip_md.process import configure_for_md, default_threads, keep_freed_memory


def test_threads_default_to_one_per_process(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_threads() == (1, "default: one per process; --threads or OMP_NUM_THREADS for more")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == (3, "OMP_NUM_THREADS")
    assert default_threads(2) == (2, "--threads")


@pytest.mark.parametrize("value", ["two", "0", "-1", "1.5"])
def test_malformed_omp_num_threads_is_named(monkeypatch, value):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
        default_threads()


def test_configure_for_md_sets_torch_threads_and_says_so(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        settings = configure_for_md(2)
        assert torch.get_num_threads() == 2
        assert settings.describe().startswith("2 torch threads (--threads), malloc ")
    finally:
        torch.set_num_threads(before)


def test_malloc_mode_respects_the_environment(monkeypatch):
    monkeypatch.setenv("MLIP_MD_MALLOC", "system")
    assert keep_freed_memory().startswith("glibc defaults")
    monkeypatch.delenv("MLIP_MD_MALLOC")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")
    assert keep_freed_memory() == "GLIBC_TUNABLES=glibc.malloc.trim_threshold=1"


def test_calculator_threads(monkeypatch):
    from mlip_md import MLIPCalculator

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert MLIPCalculator().threads == 1  # the engines' default
        torch.set_num_threads(2)
        assert MLIPCalculator(threads=0).threads == 2  # left as it was
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        torch.set_num_threads(1)
        assert MLIPCalculator().threads == 2
    finally:
        torch.set_num_threads(before)


FAULTS = r"""
import resource
from mlip_md.process import keep_freed_memory
mode = keep_freed_memory()
from ase.build import bulk
from mlip_md.runtime.predictor import Predictor
import torch
torch.set_num_threads(1)
predictor = Predictor(None, skin=0.5)
atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(8)
atoms.rattle(0.05, seed=1)
predictor.predict_atoms(atoms)
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    atoms.positions += 0.001
    predictor.predict_atoms(atoms)
print(mode, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 5)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_keeping_freed_memory_saves_page_faults():
    """The monitored model call frees and re-allocates large blocks every step: with glibc's
    defaults part of them go back to the kernel and are faulted in again on the next step.
    Fault counts vary between runs (Python's own arenas fault too): medians of three
    interleaved runs of 2048 atoms, where the ratio measured 1.4-2.0."""
    def faults(malloc: str) -> float:
        env = {"MLIP_MD_MALLOC": malloc, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", FAULTS], env=env, capture_output=True, text=True, timeout=300,
                             cwd="/")
        assert out.returncode == 0, out.stderr[-2000:]
        return float(out.stdout.split()[-1])

    runs = [(faults("system"), faults("mlip_md")) for _ in range(3)]
    system, kept = (statistics.median(column) for column in zip(*runs))
    assert system > 1.25 * kept, runs
