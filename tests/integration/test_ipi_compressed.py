"""`mlip-md ipi` serving a species-compressed two-element (O, H) model to a real i-PI server
running path-integral MD: the elements come from --structure in i-PI's atom order (O first, not
the model's sorted H, O), every bead is evaluated with the fused kernel on the version-2
descriptor, and the forces i-PI received for each bead equal MLIPCalculator on the TorchScript
descriptor to 1e-8 eV/Å."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
from ase import Atoms

from conftest import MLIP_MD, fitted_potential, labelled  # noqa: E402
from md_programs import ENV  # noqa: E402
from test_ipi import ANGSTROM_PER_BOHR, binary_frames, prepare, simulation_xml  # noqa: E402

from mlip_md import MLIPCalculator
from mlip_md.engines.ipi import wire
from mlip_md.engines.ipi.server import IPIServer

pytestmark = pytest.mark.slow


def water_box(seed: int, molecules_per_side: int = 2, spacing: float = 3.1) -> Atoms:
    """(H2O)_8 on a jittered 2x2x2 grid with random orientations, periodic, atoms O H H per
    molecule (i-PI's order, not the model's sorted element order)."""
    rng = np.random.default_rng(seed)
    symbols, positions = [], []
    bond, half_angle = 0.96, np.radians(104.5) / 2
    for ijk in np.ndindex(*(molecules_per_side,) * 3):
        centre = (np.array(ijk) + 0.5) * spacing + rng.normal(0.0, 0.1, 3)
        frame = np.linalg.qr(rng.normal(size=(3, 3)))[0]  # a random rotation
        local = np.array([[0.0, 0.0, 0.0], [np.sin(half_angle), np.cos(half_angle), 0.0],
                          [-np.sin(half_angle), np.cos(half_angle), 0.0]]) * [bond, bond, 1.0]
        symbols += ["O", "H", "H"]
        positions += list(centre + local @ frame.T)
    length = molecules_per_side * spacing
    return Atoms(symbols, positions=positions, cell=[length] * 3, pbc=True)


@pytest.fixture(scope="module")
def water_model(tmp_path_factory):
    """An untrained (H, O) ensemble (K = 2) with a compressed descriptor (Q = 3 < 2 x n_max = 8),
    normalisation and monitors fitted to EMT-labelled boxes (physically meaningless labels)."""
    from mlip_md.model.io import read_metadata, save_model

    model = fitted_potential([labelled(water_box(seed)) for seed in range(4)], ensemble_size=2, channels=3)
    path = save_model(model, tmp_path_factory.mktemp("water_model") / "water.pt")
    block = read_metadata(path)["descriptor"]
    assert block["version"] == 2 and block["channels"] == 3 and model.atomic_numbers.tolist() == [1, 8]
    return str(path)


def test_pimd_beads_of_a_compressed_water_model_equal_ase(water_model, tmp_path):
    atoms = water_box(seed=10)
    atoms.write(tmp_path / "structure.extxyz")
    thermostat = "<thermostat mode='pile_l'> <tau units='femtosecond'> 100 </tau> </thermostat>"
    address = prepare(tmp_path, atoms, lambda a: simulation_xml(a, 3, dynamics="nvt", temperature=300, nbeads=2,
                                                                  thermostat=thermostat), "water")
    with IPIServer(tmp_path, socket_path=f"/tmp/ipi_{address}") as server:
        server.wait_for_socket()
        proc = subprocess.run([MLIP_MD, "ipi", "--model", water_model, "--address", address, "--unix",
                               "--structure", str(tmp_path / "structure.extxyz"), "--no-ood-warnings"],
                              env=ENV, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert server.wait(timeout=60) == 0, server.log_tail()
    assert "(fused descriptor)" in proc.stderr, proc.stderr
    calc = MLIPCalculator(water_model, fused=False, close_contact="ignore", ood_warnings=False)
    compared = 0
    for bead in (0, 1):
        positions = binary_frames(tmp_path / f"sim.pos_{bead}.bin")
        forces = binary_frames(tmp_path / f"sim.for_{bead}.bin")
        assert len(positions) == len(forces) >= 3
        for (h, q), (_, f_ipi) in (zip(positions, forces)):
            frame = atoms.copy()
            frame.set_cell(h.T * ANGSTROM_PER_BOHR)
            frame.positions = q * ANGSTROM_PER_BOHR
            frame.calc = calc
            f_ase = frame.get_forces() * wire.HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM
            assert np.abs(f_ipi).max() > 1e-4  # real forces
            assert np.abs(f_ase - f_ipi).max() < 1e-8 * max(1.0, np.abs(f_ipi).max())
            compared += 1
    # the two beads are different structures (the ring polymer is not collapsed)
    assert np.abs(binary_frames(tmp_path / "sim.pos_0.bin")[-1][1] - binary_frames(tmp_path / "sim.pos_1.bin")[-1][1]).max() > 1e-3
    assert compared >= 6
