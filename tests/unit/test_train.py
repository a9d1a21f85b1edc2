"""Training: data handling, normalisation, reports, warm starts, checkpoints."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase.build import molecule

from mlip_md.model.io import load_potential, read_metadata
from mlip_md.model.potential import ModelConfig
from mlip_md.runtime.factory import load_model
from mlip_md.train.data import collate, dataset_hash, read_structures, to_graph
from mlip_md.train.fit import evaluate_errors, fit_normalisation
from mlip_md.train.loss import loss_terms, predict_batch
from mlip_md.train.trainer import TrainConfig, split_train_val, train_ensemble

from conftest import TINY, labelled


def test_reference_energies_by_least_squares(emt_frames):
    from mlip_md.model.potential import MLIPotential

    model = MLIPotential(ModelConfig([29], **TINY)).double()
    summary = fit_normalisation(model, [to_graph(a, 4.5) for a in emt_frames])
    per_atom = np.mean([a.get_potential_energy() / len(a) for a in emt_frames])
    assert summary["atomic_reference_energy"][29] == pytest.approx(per_atom, abs=5e-3)
    forces = np.concatenate([a.get_forces() for a in emt_frames])
    assert summary["energy_scale"] == pytest.approx(np.sqrt((forces**2).mean()))


def test_batch_predictions_match_single_structures(random_potential, emt_frames):
    graphs = [to_graph(a, random_potential.cutoff) for a in emt_frames[:3]]
    batch = collate(graphs)
    pred = predict_batch(random_potential, batch)
    offset = 0
    for k, atoms in enumerate(emt_frames[:3]):
        single = predict_batch(random_potential, collate([graphs[k]]))
        n = len(atoms)
        assert float(pred["energy"][k]) == pytest.approx(float(single["energy"][0]), abs=1e-10)
        np.testing.assert_allclose(pred["forces"][offset:offset + n].detach(), single["forces"].detach(), atol=1e-10)
        np.testing.assert_allclose(pred["stress"][k].detach(), single["stress"][0].detach(), atol=1e-12)
        offset += n
    terms = loss_terms(pred, batch)
    assert set(terms) == {"energy", "forces", "stress"} and all(float(t) >= 0 for t in terms.values())


def test_trained_model_report_and_metadata(trained_model_path):
    meta = read_metadata(trained_model_path)
    assert meta["ensemble_size"] == 2
    assert meta["provenance"]["reference"] == "emt"
    assert len(meta["provenance"]["train_sha256"]) == 64
    thresholds = meta["monitors"]["mahalanobis"]["per_element"]["29"]
    assert thresholds["chi2"] > 0 and thresholds["empirical"] > 0
    assert 1.5 < meta["monitors"]["pair_min_distance"]["29-29"] < 2.6
    assert meta["training"]["validation_mean"]["force_rmse"] < 1.0


def test_training_reduces_errors(tmp_path, emt_frames):
    train, val = split_train_val(emt_frames, 0.2, seed=1)
    config = ModelConfig([29], ensemble_size=1, **TINY)
    report = train_ensemble(train, val, config, TrainConfig(epochs=12, batch_size=4), tmp_path / "m.pt")
    trained = report["validation"]
    from mlip_md.model.potential import MLIPotential

    # the same normalisation with random weights is much worse than the trained model
    baseline = MLIPotential(config).double()
    fit_normalisation(baseline, [to_graph(a, 4.5) for a in train])
    baseline.readout.reset(seed=123)
    before = evaluate_errors(baseline, [to_graph(a, 4.5) for a in val])
    assert trained["mean"]["force_rmse"] < 0.5 * before["mean"]["force_rmse"]
    assert report["epochs_per_member"] == [12]


def test_non_periodic_and_energy_only_data(tmp_path):
    frames = []
    for k in range(8):
        atoms = molecule("CH4")
        atoms.numbers[:] = 29
        atoms.positions *= 2.3
        atoms.rattle(0.1, seed=k)
        frames.append(labelled(atoms))
    train, val = split_train_val(frames, 0.25, seed=0)
    report = train_ensemble(train, val, ModelConfig([29], ensemble_size=2, **TINY),
                            TrainConfig(epochs=2, batch_size=2), tmp_path / "mol.pt")
    assert "stress_rmse" not in report["validation"]["mean"]
    assert load_model(tmp_path / "mol.pt").ensemble_size == 2


def test_unknown_element_in_data_is_rejected(tmp_path, emt_frames):
    with pytest.raises(ValueError, match=r"atomic numbers \[29\] not in the model config"):
        train_ensemble(emt_frames[:4], emt_frames[4:6], ModelConfig([13], **TINY), TrainConfig(epochs=1),
                       tmp_path / "m.pt")


def test_warm_start_from_a_model(tmp_path, trained_model_path, emt_frames):
    init = load_potential(trained_model_path)
    train, val = split_train_val(emt_frames, 0.2, seed=0)
    config = ModelConfig([29], ensemble_size=2, **TINY)
    report = train_ensemble(train, val, config, TrainConfig(epochs=1, batch_size=4, learning_rate=1e-6),
                            tmp_path / "warm.pt", init_from=init)
    # with a tiny learning rate one epoch barely moves the weights: errors stay those of the init
    before = json.loads(trained_model_path.with_suffix(".report").read_text().replace("'", '"'))
    assert report["validation"]["mean"]["force_rmse"] == pytest.approx(before["force_rmse"], rel=0.05)


def test_parallel_members_equal_serial(tmp_path, emt_frames):
    train, val = split_train_val(emt_frames[:12], 0.25, seed=0)
    config = ModelConfig([29], ensemble_size=2, **TINY)
    settings = TrainConfig(epochs=2, batch_size=4, dtype="float64")
    train_ensemble(train, val, config, settings, tmp_path / "serial.pt")
    train_ensemble(train, val, config, settings, tmp_path / "parallel.pt", workers=2)
    a, b = load_potential(tmp_path / "serial.pt"), load_potential(tmp_path / "parallel.pt")
    for (name, x), y in zip(a.readout.state_dict().items(), b.readout.state_dict().values()):
        torch.testing.assert_close(x, y, atol=1e-9, rtol=1e-9, msg=name)


def test_checkpoint_directory_guards_against_mixing_runs(tmp_path, emt_frames):
    train, val = split_train_val(emt_frames[:10], 0.2, seed=0)
    config = ModelConfig([29], ensemble_size=1, **TINY)
    ckpt = tmp_path / "ckpt"
    train_ensemble(train, val, config, TrainConfig(epochs=1), tmp_path / "a.pt", checkpoint_dir=ckpt)
    with pytest.raises(FileExistsError, match="--resume"):
        train_ensemble(train, val, config, TrainConfig(epochs=1), tmp_path / "a.pt", checkpoint_dir=ckpt)
    with pytest.raises(ValueError, match="other data or settings"):
        train_ensemble(train, val, config, TrainConfig(epochs=2), tmp_path / "a.pt", checkpoint_dir=ckpt, resume=True)


def test_read_structures_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_structures(tmp_path / "missing.extxyz")
    from ase.io import write

    atoms = molecule("H2O")
    write(tmp_path / "unlabelled.extxyz", atoms)
    with pytest.raises(ValueError, match="no energy/forces labels|lacks energy or forces"):
        read_structures(tmp_path / "unlabelled.extxyz")


def test_dataset_hash_changes_with_labels(emt_frames):
    a = dataset_hash(emt_frames[:3])
    assert a == dataset_hash(emt_frames[:3])
    assert a != dataset_hash(emt_frames[1:4])


# ----------------------------------------------------------------------------- labels must be finite
def _with_nonfinite_labels(frames):
    """Copies of ``frames`` with a NaN energy in frame 1, an inf force on atom 5 of frame 3 and a
    NaN stress in frame 4 (all periodic, so the stress is a training target)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    out = []
    for k, atoms in enumerate(frames):
        results = {key: np.array(value, copy=True) if key != "energy" else value
                   for key, value in atoms.calc.results.items()}
        if k == 1:
            results["energy"] = float("nan")
        if k == 3:
            results["forces"][5, 1] = np.inf
        if k == 4:
            results["stress"][2] = np.nan
        copy = atoms.copy()
        copy.calc = SinglePointCalculator(copy, **results)
        out.append(copy)
    return out


def test_nonfinite_labels_are_refused_naming_frame_label_and_atom(tmp_path, emt_frames):
    from ase.io import write

    from mlip_md.errors import LabelledDataError, NonFiniteLabelsWarning

    path = tmp_path / "bad.extxyz"
    write(path, _with_nonfinite_labels(emt_frames[:8]))
    with pytest.raises(LabelledDataError) as refused:
        read_structures(path)
    message = str(refused.value)
    assert str(path) in message and "3 of 8 frames" in message
    assert "frame 1: energy is nan" in message
    assert "frame 3: forces of atom 5 are not finite" in message
    assert "frame 4: stress is not finite" in message
    assert "remove frames 1, 3, 4 or pass --drop-nonfinite" in message
    with pytest.warns(NonFiniteLabelsWarning, match=r"left out 3 of 8 frames .*frames 1, 3, 4") as caught:
        kept = read_structures(path, drop_nonfinite=True)
    assert len(caught) == 1
    assert len(kept) == 5 and all(np.isfinite(a.get_potential_energy()) for a in kept)
    # the Python entry point checks too, whatever the frames' origin
    with pytest.raises(LabelledDataError, match="training structures: non-finite values in 1 of 4 frames"):
        train_ensemble(_with_nonfinite_labels(emt_frames[:4])[:2] + emt_frames[4:6], emt_frames[6:8],
                       ModelConfig([29], **TINY), TrainConfig(epochs=1), tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def test_frames_without_energy_or_forces_are_refused(tmp_path, emt_frames):
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from mlip_md.errors import LabelledDataError

    forces_only = emt_frames[1].copy()
    forces_only.calc = SinglePointCalculator(forces_only, forces=emt_frames[1].get_forces())
    write(tmp_path / "no_energy.extxyz", [emt_frames[0], forces_only])
    with pytest.raises(LabelledDataError, match=r"no_energy.extxyz: frame 1 \(counted from 0\) has no energy label"):
        read_structures(tmp_path / "no_energy.extxyz", drop_nonfinite=True)  # missing labels are never dropped


def test_diverged_training_writes_no_model_and_keeps_the_checkpoints(tmp_path, emt_frames):
    from mlip_md.errors import TrainingError

    train, val = split_train_val(emt_frames[:8], 0.25, seed=0)
    out, ckpt = tmp_path / "m.pt", tmp_path / "ckpt"
    with pytest.raises(TrainingError, match=r"diverged: member 0 never reached a finite validation loss.*--lr.*"
                                            f"{ckpt} are kept for inspection"):
        train_ensemble(train, val, ModelConfig([29], ensemble_size=1, **TINY),
                       TrainConfig(epochs=3, batch_size=4, learning_rate=1e30), out, checkpoint_dir=ckpt)
    assert not out.exists()
    assert (ckpt / "member_0.pt").exists()


# ----------------------------------------------------------------------------- checkpoints are data
class _Payload:
    """Unpickling this runs open(marker, "w"): a code-execution stand-in."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_refuses_pickled_code_and_truncated_checkpoints(tmp_path, emt_frames):
    from mlip_md.errors import CheckpointError

    train, val = split_train_val(emt_frames[:8], 0.25, seed=0)
    config, settings = ModelConfig([29], ensemble_size=1, **TINY), TrainConfig(epochs=1, batch_size=4)
    ckpt = tmp_path / "ckpt"
    train_ensemble(train, val, config, settings, tmp_path / "m.pt", checkpoint_dir=ckpt)
    member = ckpt / "member_0.pt"
    good = member.read_bytes()
    assert set(torch.load(member, weights_only=True)) >= {"readout", "optimizer", "history"}  # plain data

    marker = tmp_path / "payload_ran"
    state = torch.load(member, weights_only=True)
    state["history"] = [_Payload(marker)]
    torch.save(state, member)
    with pytest.raises(CheckpointError, match=f"checkpoint {member} holds objects other than tensors.*refused"):
        train_ensemble(train, val, config, settings, tmp_path / "m.pt", checkpoint_dir=ckpt, resume=True)
    assert not marker.exists()

    member.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=f"checkpoint {member} is unreadable .*delete {member}"):
        train_ensemble(train, val, config, settings, tmp_path / "m.pt", checkpoint_dir=ckpt, resume=True)


def test_parallel_members_without_progress_callbacks(tmp_path, emt_frames):
    """A progress factory may return None (mlip-md train --no-progress): issue 18."""
    train, val = split_train_val(emt_frames[:8], 0.25, seed=0)
    report = train_ensemble(train, val, ModelConfig([29], ensemble_size=2, **TINY), TrainConfig(epochs=2, batch_size=4),
                            tmp_path / "m.pt", workers=2, progress_factory=lambda k, total: None)
    assert report["epochs_per_member"] == [2, 2] and load_model(tmp_path / "m.pt").ensemble_size == 2


def test_member_diverging_after_finite_epochs_keeps_its_best_epoch_and_warns():
    from mlip_md.errors import TrainingError
    from mlip_md.train.trainer import _check_member_histories

    def record(epoch, val_loss):
        return {"epoch": epoch, "train_loss": val_loss, "val_loss": val_loss}

    finite = [record(1, 2.0), record(2, 1.0)]
    with pytest.warns(RuntimeWarning, match="member 1 diverged at epoch 3 .* keeps its best epoch 2"):
        assert _check_member_histories([finite, finite + [record(3, float("nan"))]], None) == {1: 3}
    with pytest.raises(TrainingError, match="member 0 never reached a finite validation loss"):
        _check_member_histories([[record(1, float("inf"))], finite], None)
