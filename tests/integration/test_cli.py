"""The ``mlip-md`` command as a user runs it: real subprocesses, real files."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time

import pytest
import torch
from ase.io import write

from mlip_md.model.io import load_potential

from conftest import MLIP_MD, emt_cu_frames

TINY_ARGS = ["--cutoff", "4.5", "--n-max", "4", "--l-max", "2", "--hidden", "16,16", "--batch-size", "4"]


def mlip_md(*args, check=True, timeout=600, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([MLIP_MD, *map(str, args)], capture_output=True,
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
    proc = subprocess.Popen([MLIP_MD, *map(str, args), "-o", str(out)],
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


def error_line(proc, command: str) -> str:
    """The one 'mlip-md COMMAND: error: ...' line of a command that exited 2 without a traceback."""
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith(f"mlip-md {command}: error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_train_refuses_nonfinite_labels_or_drops_them(tmp_path):
    from mlip_md import MLIPCalculator

    frames = emt_cu_frames(8, seed=9)
    frames[5].calc.results["energy"] = float("nan")
    data, out = tmp_path / "nan.extxyz", tmp_path / "m.pt"
    write(data, frames)
    args = ["train", data, "-o", out, "--ensemble", "2", "--epochs", "2", "--no-progress", "--val-fraction", "0.25",
            *TINY_ARGS]
    line = error_line(mlip_md(*args, check=False), "train")
    assert f"{data}: non-finite values in 1 of 8 frames (frame 5: energy is nan" in line
    assert "remove frame 5 or pass --drop-nonfinite" in line
    assert not out.exists()
    kept = mlip_md(*args, "--drop-nonfinite")
    assert f"mlip-md train: warning: {data}: left out 1 of 8 frames with non-finite values: frame 5" in kept.stderr
    assert "on 5 structures (validation 2)" in kept.stdout
    atoms = frames[0].copy()
    atoms.calc = MLIPCalculator(out)
    assert abs(atoms.get_potential_energy()) < 1e3


def test_train_with_two_workers_and_no_progress(tmp_path, small_data_file):
    """Issue 18: --workers 2 --no-progress ended in a TypeError after training and wrote no model."""
    out = tmp_path / "m.pt"
    proc = mlip_md("train", small_data_file, "-o", out, "--ensemble", "2", "--epochs", "2", "--workers", "2",
                   "--no-progress", *TINY_ARGS)
    assert f"wrote {out}" in proc.stdout and "Traceback" not in proc.stderr
    assert json.loads(out.with_suffix(".json").read_text())["epochs_per_member"] == [2, 2]


def test_diverged_training_fails_and_keeps_the_checkpoints(tmp_path, small_data_file):
    out = tmp_path / "m.pt"
    line = error_line(mlip_md("train", small_data_file, "-o", out, "--ensemble", "1", "--epochs", "3", "--lr", "1e30",
                              "--no-progress", *TINY_ARGS, check=False), "train")
    assert "training diverged" in line and "--lr" in line and f"{out}.ckpt are kept for inspection" in line
    assert not out.exists() and (tmp_path / "m.pt.ckpt" / "member_0.pt").exists()


class _Payload:
    """Unpickling this creates ``marker``: stands in for code a crafted checkpoint would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_refuses_truncated_and_pickled_checkpoints(tmp_path, small_data_file):
    out = tmp_path / "m.pt"
    args = ["train", small_data_file, "-o", out, "--ensemble", "1", "--epochs", "1", "--no-progress", *TINY_ARGS]
    mlip_md(*args)
    member = tmp_path / "m.pt.ckpt" / "member_0.pt"
    good = member.read_bytes()
    member.write_bytes(good[: len(good) // 2])
    line = error_line(mlip_md(*args, "--resume", check=False), "train")
    assert f"checkpoint {member} is unreadable (truncated or corrupt" in line
    assert f"delete {member}" in line and "without --resume" in line

    marker = tmp_path / "payload_ran"
    state = torch.load(io.BytesIO(good), weights_only=True)
    state["history"] = [_Payload(marker)]
    torch.save(state, member)
    line = error_line(mlip_md(*args, "--resume", check=False), "train")
    assert f"checkpoint {member} holds objects other than tensors and plain data" in line and "refused" in line
    assert not marker.exists()


def test_calibrate_needs_enough_structures(tmp_path, trained_model_path):
    frames = emt_cu_frames(8, seed=12)
    for n in (2, 8):
        write(tmp_path / f"cal{n}.extxyz", frames[:n])
    line = error_line(mlip_md("calibrate", trained_model_path, tmp_path / "cal2.extxyz", "-o", tmp_path / "c2.pt",
                              check=False), "calibrate")
    assert "too few samples to fit the energy variance scale alpha: 2 structures, at least 8 needed" in line
    assert not (tmp_path / "c2.pt").exists()
    proc = mlip_md("calibrate", trained_model_path, tmp_path / "cal8.extxyz", "-o", tmp_path / "c8.pt")
    assert "energy: variance floor not tried: 8 structures, at least 20 needed" in proc.stdout
    assert (tmp_path / "c8.pt").exists()


def test_check_refuses_a_foreign_module_with_copied_metadata(tmp_path, trained_model_path):
    from mlip_md.model.io import METADATA_NAME, read_metadata

    foreign = tmp_path / "foreign.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 1)), str(foreign),
                   _extra_files={METADATA_NAME: json.dumps(read_metadata(trained_model_path))})
    line = error_line(mlip_md("check", foreign, check=False), "check")
    assert f"model file {foreign} carries mlip_md metadata but its TorchScript module has no evaluate method" in line
    assert "re-export" in line


def test_upgrade_reexports_an_older_model_file(tmp_path):
    """`mlip-md upgrade` gives a file written before the descriptor block and the repulsion
    existed both, with the same in-domain predictions; it refuses to overwrite its input."""
    from ase.build import bulk

    from mlip_md import MLIPCalculator
    from mlip_md.model.io import default_model_path, read_metadata, reexport
    from mlip_md.runtime.factory import load_model
    from mlip_md.runtime.fused import FusedBackend

    bare = reexport(default_model_path(), tmp_path / "bare.pt", repulsion=False)
    model = load_model(bare)
    del model.metadata["descriptor"]
    old = model.save(tmp_path / "old.pt")
    proc = mlip_md("upgrade", old, "-o", tmp_path / "new.pt")
    assert "added: descriptor, repulsion" in proc.stdout
    meta = read_metadata(tmp_path / "new.pt")
    assert meta["descriptor"]["kind"] == "power_spectrum" and meta["repulsion"]["kind"] == "zbl"
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=3)
    energies = []
    for path, fused in ((old, False), (tmp_path / "new.pt", True)):
        calc = MLIPCalculator(path, fused=fused)
        assert isinstance(calc.model, FusedBackend) is fused
        energies.append(calc.get_potential_energy(atoms))
    assert abs(energies[0] - energies[1]) < 1e-9
    refused = mlip_md("upgrade", old, "-o", old, check=False)
    assert refused.returncode == 2 and "is the input file" in refused.stderr


def test_train_channels_writes_a_compressed_model_that_passes_check(tmp_path):
    """--channels Q < n_species x n_max: a version-2 descriptor (metadata with the fitted mixing)
    whose forces, stress and invariances pass `mlip-md check`; an impossible Q is one clear error."""
    from conftest import labelled

    frames = []
    for atoms in emt_cu_frames(10, seed=11):
        alloy = atoms.copy()
        alloy.numbers[::3] = 28
        frames.append(labelled(alloy))
    data, out = tmp_path / "cuni.extxyz", tmp_path / "q3.pt"
    write(data, frames)
    args = ["train", data, "--ensemble", "1", "--epochs", "1", "--no-progress", *TINY_ARGS]
    mlip_md(*args, "-o", out, "--channels", "3")
    info = json.loads(mlip_md("info", out).stdout)
    assert info["descriptor"]["version"] == 2 and info["descriptor"]["channels"] == 3
    assert len(info["descriptor"]["radial_mixing"]) == 2 and info["n_features"] == 3 + 6 * 3
    assert "all checks passed" in mlip_md("check", out).stdout
    line = error_line(mlip_md(*args, "-o", tmp_path / "bad.pt", "--channels", "9", check=False), "train")
    assert "channels must be an integer in 1..n_species x n_max = 8 (2 x 4), got 9" in line
