"""The short-range repulsion of model files (mlip_md.model.repulsion, csrc/src/repulsion.cpp):
the universal ZBL formula against a hand-computed value and LAMMPS' pair_style zbl, the C^2
switch, the radii from training (covalent fallback), the C core against TorchScript to 1e-10,
forces and stress against finite differences inside and below the switch, the shipped model's
close contact in ASE, in-domain energies unchanged bit for bit, and files without the block."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ase.build import bulk

from mlip_md import MLIPCalculator
from mlip_md._native import core
from mlip_md.errors import ModelFileError
from mlip_md.model.assemble import forces_and_virial
from mlip_md.model.io import default_model_path, load_potential, read_metadata, reexport, save_model
from mlip_md.model.potential import MLIPotential, ModelConfig
from mlip_md.runtime.factory import load_model
from mlip_md.runtime.fused import FusedBackend
from mlip_md.model.repulsion import (
    COVALENT_FRACTION,
    INNER_FRACTION,
    repulsion_atomic_energy,
    repulsion_atomic_energy_dense,
    repulsion_radii,
    switched_zbl,
)
from mlip_md.model.conformance import validate_model
from mlip_md.neighbors import neighbor_list
from mlip_md.runtime.predictor import Predictor
from mlip_md.train.data import to_graph
from mlip_md.train.fit import fit_domain_statistics

#: closest Cu-Cu distance in the shipped model's training data (its r_outer), Å
SHIPPED_CLOSEST = 1.9717890410861696


@pytest.fixture(autouse=True)
def _quiet_close_contacts():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # close-contact warnings are the point of these structures
        yield


def pushed_pair(r: float, repeat: int = 3, rattle: float = 0.0, seed: int = 0):
    """fcc Cu (a = 3.615 Å), atom 0 moved towards its neighbour at (a/2, a/2, 0) until they are
    ``r`` Å apart (the issue's close contact)."""
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(repeat)
    if rattle:
        atoms.rattle(rattle, seed=seed)
    j = int(np.argmin(np.linalg.norm(atoms.positions - [1.8075, 1.8075, 0.0], axis=1)))
    u = atoms.positions[j] - atoms.positions[0]
    atoms.positions[0] = atoms.positions[j] - r * u / np.linalg.norm(u)
    return atoms


# ----------------------------------------------------------------------------- the formula
def test_zbl_equals_hand_computed_universal_formula():
    """Cu-Cu at 1 Å: Z^0.23 = 2.169459, a = 0.46850 / (2 x 2.169459) = 0.1079762 Å, x = 9.261300,
    phi = 0.18175 e^-29.634 + 0.50986 e^-8.7269 + 0.28022 e^-3.7313 + 0.02817 e^-1.8673
        = 2.45e-14 + 8.2687e-5 + 6.71402e-3 + 4.35356e-3 = 0.01115027,
    E = 14.399645 x 29 x 29 / 1 x phi = 135.03084 eV. Ni-Cu at 0.7 Å: a = 0.1084119 Å,
    x = 6.456853, phi = 0.02960735, E = 494.54905 eV."""
    for (za, zb, r, expected) in ((29, 29, 1.0, 135.03084), (28, 29, 0.7, 494.54905)):
        energy, _ = core.zbl(za, zb, [r])
        assert energy[0] == pytest.approx(expected, rel=1e-7)
        z = torch.tensor([float(za)], dtype=torch.float64), torch.tensor([float(zb)], dtype=torch.float64)
        far = torch.tensor([5.0], dtype=torch.float64)  # r below r_inner: the bare ZBL
        torch_value = switched_zbl(z[0], z[1], torch.tensor([r], dtype=torch.float64), far, far + 1)
        assert float(torch_value) == pytest.approx(expected, rel=1e-7)


def test_zbl_equals_lammps_pair_zbl():
    """LAMMPS' own ZBL (pair_style zbl, its switch beyond 3 Å): the same forces and, up to the
    constant its switch adds below the inner radius, the same energies for Cu-Cu and Ni-Cu."""
    from mlip_md.engines.lammps_module import import_lammps

    distances = np.array([0.3, 0.7, 1.1, 1.6, 2.2])
    for za, zb in ((29, 29), (28, 29)):
        lmp = import_lammps().lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
        try:
            lmp.commands_list(["units metal", "atom_style atomic", "boundary f f f",
                               "region box block -10 10 -10 10 -10 10", "create_box 2 box",
                               "create_atoms 1 single 0 0 0", "create_atoms 2 single 1 0 0",
                               "mass * 60.0", "pair_style zbl 3.0 4.0", f"pair_coeff 1 1 {za} {za}",
                               f"pair_coeff 2 2 {zb} {zb}", f"pair_coeff 1 2 {za} {zb}",
                               "thermo_style custom pe", "thermo_modify format float %.17g"])
            energies, forces = [], []
            for r in distances:
                lmp.command(f"set atom 2 x {float(r)!r}")
                lmp.command("run 0")
                energies.append(lmp.get_thermo("pe"))
                forces.append(lmp.numpy.extract_atom("f")[1, 0])
        finally:
            lmp.close()
        ours, derivative = core.zbl(za, zb, distances)
        np.testing.assert_allclose(-derivative, forces, rtol=1e-8)
        np.testing.assert_allclose(ours - ours[0], np.array(energies) - energies[0], rtol=1e-8, atol=1e-7)


def test_switch_is_smootherstep_c2_and_exactly_zero_from_r_outer():
    r_in, r_out = 1.0, 2.0
    r = np.linspace(0.5, 2.5, 401)
    energy, derivative = core.repulsion_pair(29, 29, r_in, r_out, r)
    bare, bare_derivative = core.zbl(29, 29, r)
    s, ds = core.switch_evaluate(0, r_in, r_out, r)[:2]  # MLIP_SWITCH_SMOOTHERSTEP
    np.testing.assert_allclose(energy, s * bare, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(derivative, ds * bare + s * bare_derivative, rtol=1e-12, atol=1e-12)
    assert np.all(energy[r >= r_out] == 0.0) and np.all(derivative[r >= r_out] == 0.0)
    assert np.all(energy[r <= r_in] == bare[r <= r_in])
    # C^2 at r_out: V ~ delta^3, V' ~ delta^2
    (v1, v2), (d1, d2) = core.repulsion_pair(29, 29, r_in, r_out, [r_out - 1e-2, r_out - 1e-3])
    assert 0 < v2 < 2e-3 * v1 and abs(d2) < 2e-2 * abs(d1)
    # forces = -dV/dr by central differences, in the switch and below it
    for x in (0.8, 1.3, 1.9):
        h = 1e-6
        (vp, vm), _ = core.repulsion_pair(29, 29, r_in, r_out, [x + h, x - h])
        fd = (vp - vm) / (2 * h)
        assert fd == pytest.approx(core.repulsion_pair(29, 29, r_in, r_out, [x])[1][0], rel=1e-7)


# ----------------------------------------------------------------------------- radii
def test_radii_from_training_with_covalent_fallback():
    """Ni-Cu never seen: 0.75 x (1.24 + 1.32) Å; seen pairs: the smaller of both orders."""
    closest = np.array([[2.1, 0.0], [0.0, 1.95]])
    closest[0, 0] = 2.1
    inner, outer, source = repulsion_radii([28, 29], closest)
    assert outer[0, 0] == 2.1 and outer[1, 1] == 1.95
    assert outer[0, 1] == outer[1, 0] == pytest.approx(COVALENT_FRACTION * (1.24 + 1.32))
    np.testing.assert_array_equal(inner, INNER_FRACTION * outer)
    assert source == [["training", "covalent radii"], ["covalent radii", "training"]]
    _, outer, _ = repulsion_radii([28, 29], [[2.1, 2.3], [2.2, 1.95]])
    assert outer[0, 1] == outer[1, 0] == 2.2


def test_training_statistics_set_the_radii_and_the_metadata(tmp_path, emt_frames, random_potential):
    """fit_domain_statistics: r_outer = closest training distance, r_inner = half of it; the
    file carries both as buffers and as the metadata block; repulsion=False gives none."""
    model = random_potential
    closest = float(model.pair_min_distance[0, 0])
    assert 2.0 < closest < 2.5
    assert float(model.repulsion_outer[0, 0]) == closest
    assert float(model.repulsion_inner[0, 0]) == 0.5 * closest
    meta = read_metadata(save_model(model, tmp_path / "m.pt"))
    block = meta["repulsion"]
    assert (block["kind"], block["version"], block["switch"]) == ("zbl", 1, "smootherstep")
    assert block["atomic_numbers"] == [29] and block["r_outer"] == [[closest]] and block["r_inner"] == [[0.5 * closest]]
    assert block["outer_source"] == [["training"]]
    assert meta["model_config"]["repulsion"] is True

    off = MLIPotential(ModelConfig(atomic_numbers=[29], repulsion=False, **_tiny())).double()
    fit_domain_statistics(off, [to_graph(a, off.cutoff) for a in emt_frames[:4]])
    assert float(off.repulsion_outer.abs().max()) == 0.0
    assert read_metadata(save_model(off, tmp_path / "off.pt"))["repulsion"] == {"kind": "none"}


def test_training_adds_the_repulsion_by_default(trained_model_path):
    """train_ensemble (what `mlip-md train` runs) writes the block; --no-repulsion turns it off."""
    from mlip_md.cli import build_parser

    meta = read_metadata(trained_model_path)
    assert meta["repulsion"]["kind"] == "zbl"
    assert meta["repulsion"]["r_outer"] == [[meta["monitors"]["pair_min_distance"]["29-29"]]]
    assert float(load_model(trained_model_path).module.repulsion_outer.max()) > 0
    assert build_parser().parse_args(["train", "d.extxyz", "-o", "m.pt", "--no-repulsion"]).no_repulsion
    assert not build_parser().parse_args(["train", "d.extxyz", "-o", "m.pt"]).no_repulsion


def _tiny() -> dict:
    from conftest import TINY

    return dict(TINY)


def test_training_data_energies_unchanged(emt_frames, random_potential, tmp_path):
    """Every training pair is at least r_outer apart: the repulsion adds exactly zero there."""
    with_repulsion = save_model(random_potential, tmp_path / "with.pt")
    without = reexport(with_repulsion, tmp_path / "without.pt", repulsion=False)
    a, b = Predictor(with_repulsion, fused=False), Predictor(without, fused=False)
    for atoms in emt_frames[:6]:
        pa, pb = a.predict_atoms(atoms), b.predict_atoms(atoms)
        np.testing.assert_array_equal(pa.energies, pb.energies)
        np.testing.assert_array_equal(pa.forces, pb.forces)


# ----------------------------------------------------------------------------- C core == TorchScript
def _alloy_with_contacts(seed: int = 3):
    """Ni/Cu fcc (32 atoms) with one pair in the switch region and one below it."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    rng = np.random.default_rng(seed)
    atoms.numbers = rng.choice([28, 29], size=len(atoms))
    atoms.rattle(0.05, seed=seed)
    atoms.positions[0] = atoms.positions[1] + [1.1, 0.4, -0.3]     # |r| = 1.21 Å
    atoms.positions[5] = atoms.positions[6] + [0.5, -0.4, 0.2]     # |r| = 0.67 Å
    return atoms


def test_c_core_equals_torchscript_to_1e10():
    """Per-centre energies, edge gradients, forces and virial of csrc/src/repulsion.cpp against
    the TorchScript functions (selected and dense), with ghost atoms (n_local < N)."""
    atoms = _alloy_with_contacts()
    numbers = [28, 29]
    inner = np.array([[0.9, 0.95], [0.95, 1.0]])
    outer = np.array([[1.8, 1.9], [1.9, 2.0]])
    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.0, vectors=True)
    n_local = 20
    keep = nl.i < n_local
    index = np.searchsorted(numbers, atoms.numbers)
    edge_index = np.ascontiguousarray(np.stack([nl.i[keep], nl.j[keep]]))
    vectors = np.ascontiguousarray(nl.vectors[keep])
    kernel = core.Repulsion(numbers, inner, outer)
    assert kernel.max_radius == 2.0
    grad = np.zeros_like(vectors)
    forces = np.zeros((len(atoms), 3))
    virial = np.zeros((3, 3))
    energy, active = kernel.evaluate(index, edge_index, vectors, n_local, grad, forces, virial)
    r = np.linalg.norm(vectors, axis=1)
    assert active == int((r < outer[index[edge_index[0]], index[edge_index[1]]]).sum()) >= 2
    assert energy.max() > 50.0  # the pair below r_inner

    charges = torch.tensor(numbers, dtype=torch.float64)
    args = (charges, torch.from_numpy(inner), torch.from_numpy(outer), torch.from_numpy(index),
            torch.from_numpy(edge_index))
    for dense in (False, True):
        v = torch.from_numpy(vectors).clone().requires_grad_(True)
        if dense:
            e = repulsion_atomic_energy_dense(*args, v, n_local)
        else:
            e = torch.jit.script(repulsion_atomic_energy)(*args, v, n_local, 2.0)
        g = torch.autograd.grad(e.sum(), v)[0]
        np.testing.assert_allclose(e.detach().numpy(), energy, rtol=1e-12, atol=1e-10)
        np.testing.assert_allclose(g.numpy(), grad, rtol=1e-12, atol=1e-10)
    f_ref, w_ref = forces_and_virial(torch.from_numpy(grad), torch.from_numpy(edge_index), torch.from_numpy(vectors),
                                     len(atoms))
    np.testing.assert_allclose(forces, f_ref.numpy(), rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(virial, w_ref.numpy(), rtol=1e-12, atol=1e-10)
    # float32 vectors: computed in double from the rounded vectors
    e32, _ = kernel.evaluate(index, edge_index, vectors.astype(np.float32), n_local)
    np.testing.assert_allclose(e32, energy, rtol=1e-5)


def test_c_core_rejects_bad_input():
    with pytest.raises(ValueError, match="symmetric"):
        core.Repulsion([28, 29], [[0.9, 0.9], [1.0, 1.0]], [[1.8, 1.9], [1.9, 2.0]])
    with pytest.raises(ValueError, match="r_inner < r_outer"):
        core.Repulsion([29], [[2.0]], [[1.5]])
    with pytest.raises(ValueError, match="1..118"):
        core.Repulsion([0], [[1.0]], [[2.0]])
    kernel = core.Repulsion([29], [[1.0]], [[2.0]])
    with pytest.raises(ValueError, match="coincide"):
        kernel.evaluate([0, 0], [[0], [1]], [[0.0, 0.0, 0.0]], 1)
    with pytest.raises(ValueError, match="outside"):
        kernel.evaluate([0, 0], [[0], [5]], [[1.0, 0.0, 0.0]], 1)
    # edges beyond every r_outer are skipped before their indices are read
    energy, active = kernel.evaluate([0, 0], [[0], [5]], [[3.0, 0.0, 0.0]], 1)
    assert active == 0 and energy[0] == 0.0


# ----------------------------------------------------------------------------- physics of the engines
@pytest.mark.parametrize("fused", [True, False])
def test_forces_and_stress_equal_derivatives_in_and_below_the_switch(fused):
    """The shipped model, atom 0 at 1.4 Å (switch region) then 0.7 Å (below r_inner) from a
    neighbour: forces = -dE/dx and stress = dE/dstrain / V by central differences, through the
    Predictor (fused: descriptor kernel + C readout + C repulsion; else TorchScript)."""
    predictor = Predictor(default_model_path(), fused=fused)
    assert isinstance(predictor.model, FusedBackend) == fused
    for r in (1.4, 0.7):
        atoms = pushed_pair(r, repeat=2, rattle=0.02, seed=4)
        pred = predictor.predict_atoms(atoms, monitors=False)
        assert np.abs(pred.forces).max() > 20.0  # the wall
        scale = np.abs(pred.forces).max()
        h = 1e-5
        for atom in (0, 7, 13):
            for axis in range(3):
                plus, minus = atoms.copy(), atoms.copy()
                plus.positions[atom, axis] += h
                minus.positions[atom, axis] -= h
                fd = -(predictor.predict_atoms(plus, monitors=False).energy
                       - predictor.predict_atoms(minus, monitors=False).energy) / (2 * h)
                assert abs(fd - pred.forces[atom, axis]) < 1e-8 * scale, (r, atom, axis)
        stress_scale = np.abs(pred.stress).max()
        for a, b in ((0, 0), (1, 2), (2, 1)):
            energies = []
            for sign in (1, -1):
                strain = np.eye(3)
                strain[a, b] += sign * h
                strained = atoms.copy()
                strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
                energies.append(predictor.predict_atoms(strained, monitors=False).energy)
            derivative = (energies[0] - energies[1]) / (2 * h) / atoms.get_volume()
            assert abs(derivative - 0.5 * (pred.stress[a, b] + pred.stress[b, a])) < 1e-8 * stress_scale


@pytest.fixture(scope="module")
def no_repulsion(tmp_path_factory):
    """The shipped model with its repulsion removed (reexport(..., repulsion=False))."""
    return reexport(default_model_path(), tmp_path_factory.mktemp("plain") / "no_repulsion.pt", repulsion=False)


def test_engines_agree_to_1e10_in_and_below_the_switch(no_repulsion):
    """TorchScript evaluate, fused kernel + evaluate_features (monitors, force sigma), fused
    kernel + C readout + edge gradients, and the one-pass C energy_and_forces: same energies,
    members, forces and virial in float64."""
    model = load_model(default_model_path())
    fused = FusedBackend(load_model(default_model_path()))
    assert fused.repulsion is not None
    for r in (1.4, 0.7):
        atoms = pushed_pair(r, rattle=0.02, seed=1)
        nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, model.cutoff, vectors=True)
        species = torch.from_numpy(atoms.numbers.astype(np.int64))
        edge_index = torch.from_numpy(np.stack([nl.i, nl.j]))
        vectors = torch.from_numpy(nl.vectors)
        n = len(atoms)
        ref = model(species, edge_index, vectors, n, monitors=True, force_sigma=True)
        f_ref, w_ref = forces_and_virial(ref["edge_grad"], edge_index, vectors, n)
        assert float(ref["energy"]) - float(load_model(no_repulsion)(species, edge_index, vectors, n)["energy"]) > 5
        runs = {
            "evaluate_features": fused(species, edge_index, vectors, n, monitors=True, force_sigma=True),
            "C readout": fused(species, edge_index, vectors, n, monitors=False),
            "one pass": fused.energy_and_forces(species, edge_index, vectors, n),
        }
        for name, out in runs.items():
            out = {k: v.detach() for k, v in out.items()}
            assert float(out["energy"]) == pytest.approx(float(ref["energy"]), rel=0, abs=1e-10), name
            np.testing.assert_allclose(out["atomic_energy"], ref["atomic_energy"], rtol=0, atol=1e-10, err_msg=name)
            np.testing.assert_allclose(out["energy_members"], ref["energy_members"], rtol=0, atol=1e-10, err_msg=name)
            if "forces" in out:
                forces, virial = out["forces"], out["virial"]
            else:
                forces, virial = forces_and_virial(out["edge_grad"], edge_index, vectors, n)
            np.testing.assert_allclose(forces, f_ref, rtol=0, atol=1e-10, err_msg=name)
            np.testing.assert_allclose(virial, w_ref, rtol=0, atol=1e-10, err_msg=name)
            if name == "evaluate_features":
                np.testing.assert_allclose(out["member_edge_grad"], ref["member_edge_grad"], rtol=0, atol=1e-10)




def test_float32_engines_include_the_repulsion():
    """`dtype float32` (the C core reads float vectors; the float32 edge gradients of the fused
    kernel get the repulsion's float64 gradient rounded): every path within float32 precision of
    the float64 TorchScript model, for the close contact and inside the switch."""
    for r in (0.05, 1.4):
        atoms = pushed_pair(r)
        ref = Predictor(fused=False).predict_atoms(atoms)
        for fused in (True, False):
            predictor = Predictor(fused=fused, dtype="float32")
            for monitors in (False, True):
                got = predictor.predict_atoms(atoms, monitors=monitors, force_sigma=monitors)
                assert got.energy == pytest.approx(ref.energy, rel=1e-6, abs=1e-3), (r, fused, monitors)
                np.testing.assert_allclose(got.forces, ref.forces, rtol=0, atol=1e-6 * np.abs(ref.forces).max())


@pytest.mark.parametrize("fused", [True, False])
def test_model_continuous_at_r_outer(no_repulsion, fused):
    """Energy and force of the shipped model minus the same model without repulsion, as a
    neighbour crosses r_outer: exactly 0 outside, ~delta^3 (energy) and ~delta^2 (force) inside."""
    with_, without = Predictor(default_model_path(), fused=fused), Predictor(no_repulsion, fused=fused)

    def gap(r):
        atoms = pushed_pair(r, repeat=2)
        a, b = with_.predict_atoms(atoms, monitors=False), without.predict_atoms(atoms, monitors=False)
        return a.energy - b.energy, np.abs(a.forces - b.forces).max()

    outside = gap(SHIPPED_CLOSEST + 1e-3)
    assert outside == (0.0, 0.0)
    (e2, f2), (e3, f3) = gap(SHIPPED_CLOSEST - 1e-2), gap(SHIPPED_CLOSEST - 1e-3)
    assert 0 < e3 < 2e-3 * e2 and 0 < f3 < 2e-2 * f2
    assert e3 < 1e-7 and f3 < 5e-4  # eV, eV/Å (ZBL there: 5.5 eV, 15 eV/Å)


def test_shipped_model_close_contact_is_a_wall_in_ase():
    """The issue's repro: two Cu atoms 0.05 Å apart in a 108-atom crystal. The reference EAM the
    model was trained on gives +20 000 eV; the model without repulsion gave -378 eV. Now the
    energy is large and positive (ZBL: +152 000 eV), and at 0.5 Å within 10 % of the EAM."""
    from mlip_md.reference import make_reference

    eam = make_reference("lammps:eam/alloy:Cu_mishin1.eam.alloy")
    for fused in (None, False):
        calc = MLIPCalculator(fused=fused)
        atoms = pushed_pair(0.05)
        atoms.calc = calc
        energy = atoms.get_potential_energy()
        atoms.calc = eam
        reference = atoms.get_potential_energy()
        assert reference > 1e4 and energy > 1e4  # same sign and order as the EAM
        assert energy == pytest.approx(151981.5, rel=1e-5)
        atoms = pushed_pair(0.5)
        atoms.calc = calc
        energy = atoms.get_potential_energy()
        atoms.calc = eam
        assert energy == pytest.approx(atoms.get_potential_energy(), rel=0.1)


def test_shipped_model_in_domain_energies_unchanged_bit_for_bit(no_repulsion):
    """A thermal (rattled, 0.1 Å) crystal and the held-out set's closest frame: every pair beyond
    the closest training distance, so the shipped model's energies and forces equal those of the
    same model without repulsion exactly, in every engine (freshly loaded models on both sides:
    TorchScript's profiling executor optimises a module after its first calls, which may move
    the last bit of any model's forces)."""
    from ase.io import read

    frames = read(str(default_model_path().parent / "cu_test.extxyz.gz"), ":")
    closest_frame = min(frames, key=lambda a: neighbor_list(a.positions, a.cell.array, a.pbc, 3.0,
                                                              distances=True).distances.min())
    thermal = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(3)
    thermal.rattle(0.1, seed=2)
    assert read_metadata(default_model_path())["repulsion"]["kind"] == "zbl"
    for atoms in (thermal, closest_frame):
        d = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 3.0, distances=True).distances.min()
        assert d > SHIPPED_CLOSEST
        for fused in (True, False):
            a = Predictor(default_model_path(), fused=fused).predict_atoms(atoms, monitors=False)
            b = Predictor(no_repulsion, fused=fused).predict_atoms(atoms, monitors=False)
            np.testing.assert_array_equal(a.energies, b.energies)
            np.testing.assert_array_equal(a.forces, b.forces)
            np.testing.assert_array_equal(a.stress, b.stress)


# ----------------------------------------------------------------------------- older files
class _PreRepulsionPotential(MLIPotential):
    """MLIPotential as it was before the repulsion: no repulsion buffers, no pair term."""

    def __init__(self, config):
        super().__init__(config)
        del self._buffers["repulsion_inner"], self._buffers["repulsion_outer"]

    def repulsion_energy(self, species_index: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                         n_local: int) -> torch.Tensor:
        return torch.zeros((n_local,), dtype=edge_vectors.dtype, device=edge_vectors.device)


def old_shipped_model(tmp_path):
    """The shipped model's weights in a file as mlip_md wrote them before the repulsion (no
    buffers, no metadata block)."""
    source = load_potential(default_model_path())
    old = _PreRepulsionPotential(source.config).double()
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("repulsion_")}
    old.load_state_dict(state)
    path = save_model(old, tmp_path / "old.pt")
    model = load_model(path)
    del model.metadata["repulsion"], model.metadata["model_config"]["repulsion"]
    return model.save(path)


def test_files_without_the_block_keep_their_numbers_and_reexport_adds_it(tmp_path):
    old = old_shipped_model(tmp_path)
    meta = read_metadata(old)
    assert "repulsion" not in meta
    assert "repulsion_outer" not in dict(load_model(old).module.named_buffers())
    contact = pushed_pair(0.05)
    for fused in (True, False):
        predictor = Predictor(old, fused=fused)
        if fused:
            assert predictor.model.repulsion is None
        assert predictor.predict_atoms(contact).energy == pytest.approx(-378.1, abs=0.1)  # the old numbers
    assert load_potential(old).repulsion_outer.abs().max() == 0  # loads, without repulsion
    new = reexport(old, tmp_path / "new.pt")
    assert read_metadata(new)["repulsion"]["r_outer"] == [[SHIPPED_CLOSEST]]
    assert Predictor(new).predict_atoms(contact).energy == pytest.approx(151981.5, rel=1e-5)
    thermal = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(2)
    thermal.rattle(0.08, seed=5)
    for fused in (True, False):
        a = Predictor(old, fused=fused).predict_atoms(thermal, monitors=False)
        b = Predictor(new, fused=fused).predict_atoms(thermal, monitors=False)
        np.testing.assert_array_equal(a.energies, b.energies)
        np.testing.assert_array_equal(a.forces, b.forces)


def test_fused_host_refuses_block_and_buffers_that_disagree(tmp_path):
    model = load_model(default_model_path())
    model.metadata["repulsion"]["r_outer"] = [[2.5]]
    path = model.save(tmp_path / "edited.pt")
    with pytest.raises(ModelFileError, match="r_outer.*differs from the module"):
        Predictor(path, fused=True)
    model.metadata["repulsion"] = {"kind": "morse", "version": 1}
    path = model.save(tmp_path / "unknown.pt")
    assert not isinstance(Predictor(path).model, FusedBackend)  # auto: the TorchScript module evaluates it
    with pytest.raises(ModelFileError, match="'morse'"):
        Predictor(path, fused=True)


# ----------------------------------------------------------------------------- conformance check
def test_conformance_check_covers_the_repulsion_region():
    report = validate_model(default_model_path())
    assert report.passed, report.table()
    names = {c.name: c for c in report.checks}
    assert names["repulsion: forces = -dE/dr (FD)"].value < 1e-7
    assert "repulsion: wall E(r_in/2) > E(r_out)" in names
