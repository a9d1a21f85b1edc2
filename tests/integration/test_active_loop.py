"""The active-learning loop end to end with the EMT oracle (real oracle calls, real
retraining), killed with SIGKILL at chosen points (after a committed label, inside an oracle
call, in the middle of training) and resumed by re-running the same command: nothing lost,
no completed oracle call repeated."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import ase.db
import numpy as np
from conftest import MLIP_MD  # noqa: E402

CONFIG = """
[run]
directory = "run"
seed = 0
[system]
structures = ["bulk", "surface111"]
slab_size = [2, 2, 3]
[initial]
n = 3
[model]
ensemble_size = 2
hidden = [8]
[train]
epochs = 4
patience = 10
[explore]
sample_every = 5
schedule = [{temperature_K = 600, steps = 5}, {temperature_K = 1200, steps = 10}]
[query]
strategy = "STRATEGY"
batch_size = 2
[test]
temperatures_K = [900]
snapshots = 1
md_steps = 5
[stop]
max_labels = 7
max_iterations = 4
"""


def run_cli(cfg, kill_env=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLIP_MD_TEST_KILL")}
    env["OMP_NUM_THREADS"] = "1"
    env.update(kill_env or {})
    return subprocess.run([MLIP_MD, "active", "run", str(cfg), "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300, cwd=cfg.parent)


def events(log):
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_loop_survives_kill_minus_9_anywhere(tmp_path):
    cfg = tmp_path / "active.toml"
    cfg.write_text(CONFIG.replace("STRATEGY", "max-variance"))
    run_dir = tmp_path / "run"
    db_path = run_dir / "labels.db"

    # 1: killed right after the 4th label is committed (3 initial + 1 of iteration 1)
    p = run_cli(cfg, {"MLIP_MD_TEST_KILL_AFTER_LABELS": "4"})
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert ase.db.connect(str(db_path)).count(kind="train", status="done") == 4
    # 2: killed inside its 2nd oracle call (started, result not stored)
    p = run_cli(cfg, {"MLIP_MD_TEST_KILL_IN_LABEL": "2"})
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    # 3: killed in the middle of training (after 3 checkpointed epochs)
    p = run_cli(cfg, {"MLIP_MD_TEST_KILL_AFTER_EPOCHS": "3"})
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    state = json.loads((run_dir / "state.json").read_text())
    assert state["step"] == "train" and any(state_file.name == "member_0.pt" for state_file in
                                            run_dir.joinpath("models").rglob("member_0.pt"))
    # 4: runs to the end
    p = run_cli(cfg)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "label budget of 7 reached" in p.stdout and "repeated labels: 0" in p.stdout
    assert "| labels    7 | test F-RMSE" in p.stdout  # log line per iteration

    db = ase.db.connect(str(db_path))
    done = sorted(r.id for r in db.select(kind="train", status="done"))
    assert len(done) == 7 and db.count(kind="train") == 7
    log = events(run_dir / "oracle_calls.log")
    ends = [e["row"] for e in log if e["event"] == "end" and e["status"] == "done"]
    starts = [e["row"] for e in log if e["event"] == "start"]
    assert sorted(ends) == done  # every label exactly once, none lost
    repeated = sorted(r for r in set(starts) if starts.count(r) > 1)
    assert len(repeated) == 1  # only the call interrupted by the kill was made again
    assert starts.count(repeated[0]) == 2 and ends.count(repeated[0]) == 1

    # provenance: iteration, strategy, trigger values, oracle, wall time
    for row in db.select(kind="train", status="done"):
        assert row.oracle == "emt" and row.wall_time > 0 and row.attempts >= 1
        assert row.energy is not None and row.forces.shape == (row.natoms, 3)
        if row.iteration > 0:
            assert row.strategy == "max-variance" and row.t2_max > 0 and row.force_sigma_max > 0
    state = json.loads((run_dir / "state.json").read_text())
    iterations = [h["iteration"] for h in state["history"]]
    assert iterations == list(range(len(iterations))) and len(iterations) >= 3
    assert all((run_dir / "models" / f"iter_{i:03d}.pt").exists() for i in iterations)
    assert (run_dir / "report.md").exists() and (run_dir / "learning_curve.png").stat().st_size > 1000
    report = json.loads((run_dir / "report.json").read_text())
    assert report["oracle"]["repeated"] == [] and report["labels"] == 7

    # a finished run re-run is a no-op: no oracle call
    n_lines = len(log)
    p = run_cli(cfg)
    assert p.returncode == 0 and len(events(run_dir / "oracle_calls.log")) == n_lines


def test_invalid_config_names_the_key(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(CONFIG.replace("STRATEGY", "max-variance").replace("batch_size = 2", "batch_sise = 2"))
    p = run_cli(cfg)
    assert p.returncode == 2 and "unknown key 'batch_sise' in [query]" in p.stderr


def test_lammps_exploration_engine(plugin, trained_model_path, tmp_path):
    """Exploration MD in LAMMPS (pair_style mlip): LAMMPS' energy of each frame equals the
    Python model's, and explore() turns the frames into scored candidates."""
    from mlip_md.active.config import Stage, config_from_dict
    from mlip_md.active.explore import explore
    from mlip_md.active.lammps_md import LammpsTrajectory
    from mlip_md.active.systems import start_structures
    from mlip_md.runtime.factory import load_model
    from mlip_md.runtime.predictor import Predictor

    cfg = config_from_dict({"system": {"structures": ["surface111", "vacancy"], "slab_size": [2, 2, 3]},
                            "explore": {"engine": "lammps", "sample_every": 4, "schedule": [
                                {"temperature_K": 600, "steps": 8},
                                {"temperature_K": 1200, "steps": 8, "pressure_GPa": 1.0}]}}, base_dir=tmp_path)
    starts = start_structures(cfg.system)
    predictor = Predictor(load_model(trained_model_path))
    traj = LammpsTrajectory(starts["surface111"], trained_model_path, Stage(900.0, 10), 2.0, 0.02, seed=5)
    for _ in range(2):
        traj.run(5)
        frame = traj.frame()
        assert abs(traj.potential_energy() - predictor.predict_atoms(frame).energy) < 1e-6
    moved = np.linalg.norm(frame.positions - frame.positions.mean(0), axis=1)
    assert np.isfinite(moved).all() and len(frame) == len(starts["surface111"])
    traj.close()

    starts.pop("surface111")  # the NPT stage applies to the bulk vacancy cell
    result = explore(load_model(trained_model_path), starts, cfg, iteration=1)
    assert result.md_steps >= 4 and result.n_frames >= 1
    for c in result.pool:
        assert c.features.shape[0] == len(c.atoms) and np.isfinite(c.t2).all() and c.t2_ratio > 1.0


def test_ipi_exploration_engine(trained_model_path, tmp_path):
    """Exploration MD served to a real i-PI server: frames every sample_every steps, scored."""
    from mlip_md.active.config import config_from_dict
    from mlip_md.active.explore import explore
    from mlip_md.active.systems import start_structures
    from mlip_md.runtime.factory import load_model

    cfg = config_from_dict({"system": {"structures": ["vacancy"]},
                            "explore": {"engine": "ipi", "sample_every": 5, "abort_ratio": 1e9,
                                        "min_distance_ratio": 0.0,
                                        "schedule": [{"temperature_K": 900, "steps": 10}]},
                            "trigger": {"energy_sigma": 1e-12}}, base_dir=tmp_path)  # every frame a candidate
    starts = start_structures(cfg.system)
    result = explore(load_model(trained_model_path), starts, cfg, iteration=1)
    assert result.n_frames == 2 and result.n_restarts == 0 and len(result.pool) == 2
    for c in result.pool:
        start = starts["vacancy"]
        assert len(c.atoms) == len(start) and np.isfinite(c.t2).all()
        # i-PI's frame is a rotation of the input cell: the same lattice, displaced atoms
        np.testing.assert_allclose(c.atoms.cell.cellpar(), start.cell.cellpar(), atol=1e-8)
        d = c.atoms.get_all_distances(mic=True) + np.diag(np.full(len(start), np.inf))
        moved = np.linalg.norm(c.atoms.get_all_distances(mic=True) - start.get_all_distances(mic=True))
        assert d.min() > 1.8 and moved > 0.01  # thermal motion, no collapsed pairs
