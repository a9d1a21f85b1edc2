"""The ``mlip-md`` command as a user runs it: real subprocesses, real files."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from ase.io import write

from mlip_md.model.io import load_potential

from conftest import emt_cu_frames

TINY_ARGS = ["--cutoff", "4.5", "--n-max", "4", "--l-max", "2", "--hidden", "16,16", "--batch-size", "4"]


def mlip_md(*args, check=True, timeout=600, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "mlip_md.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"mlip-md {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "cu.extxyz"
    write(path, emt_cu_frames(24, seed=7))
    return path


@pytest.fixture(scope="module")
def small_data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "cu_small.extxyz"
    write(path, emt_cu_frames(10, seed=8))
    return path


def test_console_script_is_installed():
    proc = subprocess.run(["mlip-md", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "mlip_md" in proc.stdout


def test_train_check_evaluate_info(tmp_path, data_file):
    out = tmp_path / "m.pt"
    proc = mlip_md("train", data_file, "-o", out, "--ensemble", "2", "--epochs", "3", "--reference", "emt",
                   "--test", data_file, "--no-progress", *TINY_ARGS)
    assert "validation: energy RMSE" in proc.stdout and "test: energy RMSE" in proc.stdout
    report = json.loads(out.with_suffix(".json").read_text())
    assert {"validation", "test", "normalisation", "epochs_per_member"} <= set(report)
    assert len(report["validation"]["members"]) == 2
    check = mlip_md("check", out, "--json", tmp_path / "check.json")
    assert "all checks passed" in check.stdout
    assert json.loads((tmp_path / "check.json").read_text())["passed"] is True
    ev = mlip_md("evaluate", out, data_file)
    assert "force RMSE" in ev.stdout
    info = json.loads(mlip_md("info", out).stdout)
    assert info["provenance"]["reference"] == "emt" and info["ensemble_size"] == 2


def test_train_resumes_after_kill_minus_9(tmp_path, small_data_file):
    """Kill the trainer mid-run; re-running with --resume gives the same model as an
    uninterrupted run, epoch for epoch."""
    args = ["train", small_data_file, "--ensemble", "2", "--epochs", "8", "--no-progress", "--dtype", "float64",
            "--val-fraction", "0.2", *TINY_ARGS]
    reference = tmp_path / "reference.pt"
    mlip_md(*args, "-o", reference)

    out = tmp_path / "resumed.pt"
    ckpt = out.with_suffix(".pt.ckpt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mlip_md.cli", *map(str, args), "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        member = ckpt / "member_0.pt"
        if member.exists():
            try:
                epoch = torch.load(member, weights_only=False)["epoch"]
            except Exception:
                epoch = 0
            if epoch >= 3:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed_at = epoch
                break
        time.sleep(0.05)
    assert killed_at is not None, "training finished before it could be interrupted"
    assert not out.exists()
    refused = mlip_md(*args, "-o", out, check=False)  # without --resume the old run is protected
    assert refused.returncode == 2 and "--resume" in refused.stderr
    mlip_md(*args, "-o", out, "--resume")
    a, b = load_potential(reference), load_potential(out)
    for (name, x), y in zip(a.readout.state_dict().items(), b.readout.state_dict().values()):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-12, msg=name)


def test_errors_are_one_line_with_exit_code_2(tmp_path):
    proc = mlip_md("check", tmp_path / "missing.pt", check=False)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
