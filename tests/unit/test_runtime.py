"""The runtime contract as types: ModelInfo parsed from the metadata, the factory's choice and
the backends' Capabilities, the EvaluationRequest's meaning for every backend, and the
Evaluator interface the engines rely on (the QM/ML hybrid included)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase.build import bulk

from mlip_md.engines.ipi import wire
from mlip_md.engines.ipi.client import Driver
from mlip_md.engines.ipi.connection import SocketClient
from mlip_md.errors import ModelFileError, UnknownElementError
from mlip_md.model.assemble import forces_and_virial
from mlip_md.model.io import default_model_path, read_metadata
from mlip_md.neighbors import neighbor_list
from mlip_md.qmml import HybridModel
from mlip_md.qmml.config import HybridEvaluator
from mlip_md.runtime.backend import Backend, Evaluator
from mlip_md.runtime.factory import load_model, open_model
from mlip_md.runtime.model_info import ModelInfo
from mlip_md.runtime.monitors import domain_thresholds
from mlip_md.runtime.parallel import ParallelPredictor
from mlip_md.runtime.predictor import Predictor
from mlip_md.runtime.request import EvaluationRequest


def crystal(repeat=2, seed=1):
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(repeat)
    atoms.rattle(0.05, seed=seed)
    return atoms


def edges(atoms, cutoff):
    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    return (torch.from_numpy(atoms.numbers.astype(np.int64)), torch.from_numpy(np.stack([nl.i, nl.j])),
            torch.from_numpy(nl.vectors), len(atoms))


def test_model_info_of_the_shipped_model():
    meta = read_metadata(default_model_path())
    info = ModelInfo.from_metadata(meta, default_model_path())
    assert info.raw is meta and info.elements == ("Cu",) and info.atomic_numbers == (29,)
    assert info.cutoff == meta["cutoff"] and info.ensemble_size == 4 and info.uq == "ensemble"
    assert info.dtype == info.stored_dtype == "float64"
    assert info.descriptor.kernel_params() == (1, 8, 4, 5.5, 1.0)
    assert info.calibration.force_variance_scale == meta["calibration"]["force_variance_scale"]
    t2 = meta["monitors"]["mahalanobis"]["per_element"]["29"]
    assert info.domain.mahalanobis[29].training_max == t2["training_max"] and info.domain.mahalanobis[29].dof == t2["dof"]
    assert info.domain.mahalanobis_threshold() == t2["training_max"]
    assert info.domain.d_min_threshold() == meta["monitors"]["d_min"]["per_element"]["29"]["holdout_max"]
    assert info.domain.pair_min_distance(29, 29) == meta["monitors"]["pair_min_distance"]["29-29"]
    assert info.domain.pair_min_distance(29, 28) == math.inf
    assert info.repulsion.kind == "zbl" and info.compiled is None
    limits = domain_thresholds(info)
    assert (limits.mahalanobis, limits.d_min) == (info.domain.mahalanobis_threshold(), info.domain.d_min_threshold())


def test_model_info_of_a_file_without_the_optional_blocks():
    meta = {k: v for k, v in read_metadata(default_model_path()).items()
            if k not in ("descriptor", "calibration", "monitors", "repulsion", "uq")}
    info = ModelInfo.from_metadata(meta, "old.pt")
    assert info.descriptor is None and info.repulsion is None and info.uq is None
    assert (info.calibration.energy_variance_scale, info.calibration.energy_variance_floor,
            info.calibration.force_variance_scale) == (1.0, 0.0, 1.0)
    assert info.domain.mahalanobis_threshold() == info.domain.d_min_threshold() == math.inf
    assert info.domain.closest_training_distance() is None
    with pytest.raises(ModelFileError, match="old.pt: metadata lacks 'cutoff'"):
        ModelInfo.from_metadata({k: v for k, v in meta.items() if k != "cutoff"}, "old.pt")
    with pytest.raises(UnknownElementError, match="Fe unknown to model old.pt"):
        info.check_elements([29, 26])


def test_factory_choice_and_capabilities():
    fused = open_model(None)
    assert fused.capabilities.kind == "fused" and fused.capabilities.assembles_forces
    assert fused.choice.startswith("fused descriptor kernel: the model has a power_spectrum v1 descriptor block")
    assert fused.capabilities.description == "fused descriptor kernel and C readout"
    plain = open_model(None, fused=False)
    assert plain.capabilities.kind == "torchscript" and not plain.capabilities.assembles_forces
    assert plain.choice == "TorchScript: fused=False" and load_model(None).capabilities.kind == "torchscript"
    again = open_model(fused, fused=False)  # a fused backend given back: unwrapped
    assert again.capabilities.kind == "torchscript" and again.module is fused.module
    float32 = open_model(None, dtype="float32")
    assert float32.info.dtype == "float32" and float32.info.stored_dtype == "float64"
    for backend in (fused, plain):
        assert isinstance(backend, Backend)


@pytest.mark.parametrize("fused", [True, False])
def test_request_edge_gradients_or_assembled_forces(fused):
    """Without edge_gradients an assembling backend returns forces [N, 3] and the virial, equal
    to the host's assembly of its edge gradients; with it, edge_grad [E, 3]; TorchScript always
    returns edge_grad. With every atom a centre (the one-pass C path) and with ghosts."""
    backend = open_model(None, fused=fused)
    species, edge_index, vectors, n = edges(crystal(), backend.cutoff)
    reference = backend(species, edge_index, vectors, n, monitors=False)
    assert reference["edge_grad"].shape == (edge_index.shape[1], 3)
    for monitors in (False, True):
        out = backend.evaluate(species, edge_index, vectors, n, EvaluationRequest(monitors=monitors))
        assert ("energy_sigma" in out) == monitors
        if not backend.capabilities.assembles_forces:
            assert "edge_grad" in out and "forces" not in out
            continue
        forces, virial = forces_and_virial(reference["edge_grad"], edge_index, vectors, n)
        np.testing.assert_allclose(out["forces"].numpy(), forces.numpy(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(out["virial"].numpy(), virial.numpy(), rtol=0, atol=1e-9)
    if backend.capabilities.assembles_forces:  # centres 0..9 of 32 atoms: forces on all 32
        keep = edge_index[0] < 10
        out = backend.evaluate(species, edge_index[:, keep], vectors[keep], 10, EvaluationRequest(monitors=False))
        assert out["forces"].shape == (n, 3) and out["atomic_energy"].shape == (10,)


def test_evaluators_share_one_interface():
    """Predictor, ParallelPredictor (one rank) and the QM/ML hybrid are Evaluators; the hybrid has
    no committee (ensemble_size 0, energy_members None) and the i-PI driver sends its energy as
    the one committee_pot value."""
    from mpi4py import MPI

    atoms = crystal(repeat=3)  # 10.8 Å: the hybrid's r_outer (4.5 Å) below half the cell width
    predictor = Predictor(None)
    hybrid = HybridEvaluator(HybridModel("emt", "mlip", 5, (2.5, 4.5), energy_shift="auto"))
    for evaluator in (predictor, ParallelPredictor(predictor, MPI.COMM_SELF), hybrid):
        assert isinstance(evaluator, Evaluator)
        assert evaluator.info.atomic_numbers == (29,)
        evaluator.check_elements(atoms.numbers)
        with pytest.raises(UnknownElementError, match="Fe"):
            evaluator.check_elements([29, 26])
    assert hybrid.info.ensemble_size == 0 and domain_thresholds(hybrid).mahalanobis == math.inf
    pred = hybrid.predict(atoms.numbers, atoms.positions, atoms.cell.array, True)
    assert pred.energy_members is None and hybrid.model_seconds > 0
    driver = Driver(hybrid, SocketClient("unused"), numbers=atoms.numbers)
    assert driver.extras(pred)["committee_pot"] == [pred.energy * wire.HARTREE_PER_EV]
    members = predictor.predict_atoms(atoms).energy_members
    assert members.shape == (predictor.info.ensemble_size, len(atoms))
