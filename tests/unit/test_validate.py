"""The conformance check passes on correct models and catches broken ones."""
from __future__ import annotations

import json
from typing import Dict

import torch

from mlip_md.model.conformance import validate_model
from mlip_md.model.io import METADATA_NAME, build_metadata, save_model
from mlip_md.model.potential import MLIPotential


def test_random_potential_passes(tmp_path, random_potential):
    path = save_model(random_potential, tmp_path / "m.pt")
    report = validate_model(path)
    assert report.passed, report.table()
    names = {c.name for c in report.checks}
    for expected in ("forces = -dE/dr (central FD)", "stress = dE/dstrain / V (FD)", "supercell: E(2x2x2) = 8 E",
                     "rotation: energy invariant", "permutation: atoms relabelled", "ghost atoms give periodic result",
                     "cutoff: smooth (dE ~ delta^3)"):
        assert expected in names


def test_trained_model_passes(trained_model_path):
    report = validate_model(trained_model_path)
    assert report.passed, report.table()


def test_float32_model_passes_with_float32_tolerances(tmp_path, random_potential):
    path = save_model(random_potential, tmp_path / "m32.pt", dtype="float32")
    report = validate_model(path)
    assert report.passed, report.table()


class _WrongForces(torch.nn.Module):
    """Contract-shaped model whose edge gradients are 3% off: the FD check must catch it."""

    def __init__(self, inner: MLIPotential):
        super().__init__()
        self.inner = inner

    @torch.jit.export
    def evaluate(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                 n_local: int, compute_monitors: bool, compute_force_sigma: bool) -> Dict[str, torch.Tensor]:
        out = self.inner.evaluate(species, edge_index, edge_vectors, n_local, compute_monitors, compute_force_sigma)
        out["edge_grad"] = out["edge_grad"] * 1.03
        return out

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                n_local: int) -> Dict[str, torch.Tensor]:
        return self.evaluate(species, edge_index, edge_vectors, n_local, True, False)


def test_wrong_forces_are_caught(tmp_path, random_potential):
    path = tmp_path / "wrong.pt"
    meta = build_metadata(random_potential, "float64")
    del meta["descriptor"]  # the wrapper has evaluate only: no descriptor for a host to run
    torch.jit.save(torch.jit.script(_WrongForces(random_potential)), str(path),
                   _extra_files={METADATA_NAME: json.dumps(meta)})
    report = validate_model(path)
    assert not report.passed
    failed = {c.name for c in report.failures()}
    assert "forces = -dE/dr (central FD)" in failed
    assert "stress = dE/dstrain / V (FD)" in failed
    assert "FAIL" in report.table()


def test_non_smooth_cutoff_is_caught(tmp_path, random_potential):
    # an (almost) zero-width switch is a hard truncation of the radial basis at r_c
    import copy

    broken = copy.deepcopy(random_potential)
    broken.descriptor.radial.switch_width = 1e-9  # a hard step at r_c
    path = save_model(broken, tmp_path / "step.pt")
    report = validate_model(path)
    failed = {c.name for c in report.failures()}
    assert "cutoff: E continuous at r_c" in failed or "cutoff: smooth (dE ~ delta^3)" in failed
