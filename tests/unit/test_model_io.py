"""The one-file model format: round trip, metadata, and clear errors for bad files."""
from __future__ import annotations

import json
import zipfile
from typing import Dict

import pytest
import torch
from ase.calculators.calculator import CalculatorSetupError

from mlip_md.errors import ModelFileError
from mlip_md.model.io import FORMAT_VERSION, METADATA_NAME, load_potential, read_metadata, reexport, save_model
from mlip_md.runtime.factory import load_model


@pytest.fixture()
def saved(tmp_path, random_potential):
    path = tmp_path / "m.pt"
    save_model(random_potential, path, metadata={"provenance": {"reference": "emt"}})
    return path


def test_round_trip_metadata_and_values(saved, random_potential):
    meta = read_metadata(saved)
    assert meta["format"] == "mlip_md.model" and meta["format_version"] == FORMAT_VERSION
    assert meta["atomic_numbers"] == [29] and meta["elements"] == ["Cu"]
    assert meta["cutoff"] == pytest.approx(random_potential.cutoff)
    assert meta["dtype"] == "float64" and meta["ensemble_size"] == 3
    assert meta["units"]["energy"] == "eV" and meta["provenance"]["reference"] == "emt"
    assert "calibration" in meta and "monitors" in meta
    model = load_model(saved)
    species = torch.tensor([29, 29])
    ei = torch.tensor([[0, 1], [1, 0]])
    vec = torch.tensor([[2.5, 0.1, 0.0], [-2.5, -0.1, 0.0]], dtype=torch.float64)
    a = model(species, ei, vec, 2)
    with torch.enable_grad():
        b = random_potential.evaluate(species, ei, vec, 2, True, False)
    torch.testing.assert_close(a["atomic_energy"], b["atomic_energy"].detach())
    torch.testing.assert_close(a["edge_grad"], b["edge_grad"].detach())


def test_metadata_is_readable_by_torch_extra_files(saved):
    # the same route libtorch's torch::jit::load(path, device, extra_files) takes in C++
    extra = {METADATA_NAME: ""}
    torch.jit.load(str(saved), _extra_files=extra)
    assert json.loads(extra[METADATA_NAME])["cutoff"] > 0


def test_float32_export(tmp_path, random_potential):
    path = save_model(random_potential, tmp_path / "m32.pt", dtype="float32")
    model = load_model(path)
    assert model.dtype == torch.float32
    assert random_potential.feature_mean.dtype == torch.float64  # caller's module untouched
    out = model(torch.tensor([29, 29]), torch.tensor([[0, 1], [1, 0]]),
                torch.tensor([[2.5, 0.0, 0.0], [-2.5, 0.0, 0.0]]), 2)
    assert out["atomic_energy"].dtype == torch.float32


def test_load_potential_rebuilds_trainable_module(saved, random_potential):
    """Bit for bit: a warm start or a re-export must not pass the weights through float32."""
    module = load_potential(saved)
    for (name, a), b in zip(module.state_dict().items(), random_potential.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name, rtol=0, atol=0)


def test_reexport_keeps_weights_and_metadata(tmp_path, saved):
    from mlip_md.uq.calibration import apply_scales

    path = tmp_path / "old.pt"
    model = load_model(saved)
    apply_scales(model, 2.5, 1.5, energy_floor=1e-6)  # as `mlip-md calibrate` leaves it
    model.save(path)
    out = reexport(path, tmp_path / "new.pt")
    new = read_metadata(out)
    assert new["calibration"]["energy_variance_scale"] == 2.5 and new["calibration"]["energy_variance_floor"] == 1e-6
    assert new["provenance"] == read_metadata(saved)["provenance"]
    assert float(load_model(out).module.energy_variance_floor) == 1e-6
    a, b = load_model(path).module.state_dict(), load_model(out).module.state_dict()
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, msg=name, rtol=0, atol=0)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nope.pt")


def test_truncated_file(tmp_path, saved):
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(saved.read_bytes()[:2000])
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        load_model(bad)


def test_garbage_file(tmp_path):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"this is not a model" * 100)
    with pytest.raises(ModelFileError, match="not a TorchScript archive"):
        load_model(bad)


def test_torchscript_without_metadata_is_not_an_mlip_md_model(tmp_path):
    path = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(ModelFileError, match="not an mlip_md model"):
        load_model(path)


def test_newer_format_version_asks_to_upgrade(tmp_path, saved):
    newer = tmp_path / "newer.pt"
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(newer, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith(METADATA_NAME):
                meta = json.loads(data)
                meta["format_version"] = FORMAT_VERSION + 1
                data = json.dumps(meta).encode()
            dst.writestr(item, data)
    with pytest.raises(ModelFileError, match="newer than this mlip_md .* upgrade mlip_md"):
        load_model(newer)


def test_model_file_errors_are_ase_setup_errors():
    assert issubclass(ModelFileError, CalculatorSetupError)


def test_save_is_atomic(tmp_path, random_potential, monkeypatch):
    path = tmp_path / "m.pt"
    save_model(random_potential, path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch.jit, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_model(random_potential, path)
    assert path.read_bytes() == before  # the old file survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary left behind


class _NotAPotential(torch.nn.Module):
    """A foreign module with a contract-shaped ``evaluate`` but no ``evaluate_features``."""

    @torch.jit.export
    def evaluate(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_local: int,
                 compute_monitors: bool, compute_force_sigma: bool) -> Dict[str, torch.Tensor]:
        return {"atomic_energy": torch.zeros(n_local, dtype=edge_vectors.dtype)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def foreign_model(path, saved, module: torch.nn.Module):
    """``module`` scripted and saved with the metadata of the real model file ``saved``."""
    torch.jit.save(torch.jit.script(module), str(path), _extra_files={METADATA_NAME: json.dumps(read_metadata(saved))})
    return path


def test_foreign_module_with_copied_metadata_is_refused_at_load(tmp_path, saved):
    from mlip_md import MLIPCalculator

    linear = foreign_model(tmp_path / "linear.pt", saved, torch.nn.Linear(3, 1))
    for load in (load_model, MLIPCalculator):
        with pytest.raises(ModelFileError, match=f"model file {linear} .* no evaluate method.* re-export"):
            load(linear)
    # evaluate alone is not enough: the metadata's descriptor block promises evaluate_features
    partial = foreign_model(tmp_path / "partial.pt", saved, _NotAPotential())
    with pytest.raises(ModelFileError, match=f"model file {partial} .* no evaluate_features method"):
        load_model(partial)


def test_contract_method_with_another_signature_is_refused(tmp_path, saved):
    class WrongSignature(torch.nn.Module):
        @torch.jit.export
        def evaluate(self, species: torch.Tensor, n_local: int) -> torch.Tensor:
            return species

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    path = foreign_model(tmp_path / "wrong.pt", saved, WrongSignature())
    with pytest.raises(ModelFileError, match=r"evaluate method has the signature \(Tensor, int\) -> Tensor, not"):
        load_model(path)
