"""The short-range repulsion of the model file in every engine, with the real programs: LAMMPS
(`lmp` with the plugin: the fused kernel's one-pass C path, its evaluate_features path with
monitors and force sigma, its C readout with edge gradients for per-atom virials, `fused no`,
and `mpiexec -n 2`), the i-PI driver against a real `i-pi` server, and compiled packages (.pt2)
in Python and in LAMMPS. References: the TorchScript model's evaluate (Predictor, fused=False)."""
from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.io import write

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from md_programs import run_lmp, thermo_rows  # noqa: E402
from test_ipi import run_in_process, simulation_xml  # noqa: E402
from test_lammps import dump_frames  # noqa: E402

from mlip_md.engines.ipi.server import read_properties  # noqa: E402
from mlip_md.model.aot_compile import TOLERANCE, compare  # noqa: E402
from mlip_md.model.io import default_model_path, read_metadata  # noqa: E402
from mlip_md.runtime.factory import load_model  # noqa: E402
from mlip_md.runtime.predictor import Predictor  # noqa: E402

pytestmark = pytest.mark.slow
NKTV2P = 1.6021765e6  # LAMMPS metal units: bar * A^3 -> eV

INPUT = """
units metal
atom_style atomic
atom_modify map array
boundary p p p
read_data cu.data
plugin load {plugin}
pair_style mlip {model} {extra}
pair_coeff * * {elements}
compute pea all pe/atom
{compute}
thermo_style custom step pe vol pxx pyy pzz pxy pxz pyz
thermo_modify format float %.17g
dump d all custom 1 out.dump id fx fy fz c_pea {columns}
dump_modify d format float %.17g sort id
run 0
"""
#: (name, MPI ranks, pair_style keywords, computes and dumped columns): every path of the plugin
CASES = [
    ("one_pass", 1, "", "", ""),                      # fused kernel + C readout, forces in the kernel
    ("two_ranks", 2, "", "", ""),
    ("monitors", 1, "", "compute mon all mlip/atom force_sigma yes", "c_mon[2]"),  # evaluate_features
    ("per_atom_virial", 1, "", "compute sa all stress/atom NULL virial", "c_sa[1]"),  # C readout + edge grads
    ("torchscript", 1, "fused no", "", ""),
]


@pytest.fixture(autouse=True)
def _quiet_close_contacts():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # close-contact warnings are the point of these structures
        yield


def pushed_pair(r: float, rattle: float = 0.0, seed: int = 0):
    """108-atom fcc Cu, atom 0 moved to ``r`` Å from its neighbour at (a/2, a/2, 0)."""
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(3)
    if rattle:
        atoms.rattle(rattle, seed=seed)
    j = int(np.argmin(np.linalg.norm(atoms.positions - [1.8075, 1.8075, 0.0], axis=1)))
    u = atoms.positions[j] - atoms.positions[0]
    atoms.positions[0] = atoms.positions[j] - r * u / np.linalg.norm(u)
    atoms.wrap()
    return atoms


def lammps_runs(plugin, tmp_path, atoms, model, elements=("Cu",), cases=CASES) -> dict:
    """`run 0` of ``atoms`` per case: energy, virial (xx yy zz xy xz yz, eV), forces and per-atom
    energies (ids in ASE order), and the log."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    write(tmp_path / "cu.data", atoms, format="lammps-data", specorder=list(elements), masses=True)
    runs = {}
    for name, ranks, extra, compute, columns in cases:
        work = tmp_path / name
        work.mkdir()
        shutil.copy(tmp_path / "cu.data", work)
        (work / "in.run").write_text(INPUT.format(plugin=plugin, model=model, extra=extra, compute=compute,
                                                  columns=columns, elements=" ".join(elements)))
        proc = run_lmp(["-in", "in.run", "-log", "log.lammps"], work, mpi=ranks if ranks > 1 else 0)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        log = (work / "log.lammps").read_text()
        row = thermo_rows(log)[0]
        frame = dump_frames((work / "out.dump").read_text())[0]
        runs[name] = {"energy": row[1], "virial": np.array(row[3:9]) * row[2] / NKTV2P,
                      "forces": frame[:, 1:4], "energies": frame[:, 4], "log": log}
    return runs


def reference(atoms, model=None) -> dict:
    """The TorchScript model's evaluate through the Predictor (virial as LAMMPS orders it)."""
    pred = Predictor(model if model is not None else default_model_path(), fused=False).predict_atoms(atoms)
    w = pred.virial
    return {"energy": pred.energy, "forces": pred.forces, "energies": pred.energies,
            "virial": np.array([w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]])}


def test_lammps_close_contact_every_path_and_two_ranks(plugin, tmp_path):
    """The issue's repro (two Cu atoms 0.05 Å apart; EAM: +20 483 eV, the model without
    repulsion: -378 eV) in `lmp` and `mpiexec -n 2 lmp`: +151 982 eV on every path of the
    plugin, equal to the TorchScript model (relative 1e-10: forces are 4e6 eV/Å); then a crystal
    with one pair in the switch region (1.4 Å) and one below it (0.7 Å): equal to 1e-10 eV, eV/Å."""
    atoms = pushed_pair(0.05)
    runs = lammps_runs(plugin, tmp_path / "contact", atoms, default_model_path())
    ref = reference(atoms)
    assert ref["energy"] == pytest.approx(151981.5, rel=1e-5)
    assert "fused descriptor kernel and C readout" in runs["one_pass"]["log"]
    assert "fused descriptor kernel" not in runs["torchscript"]["log"]
    assert "on 2 procs" in runs["two_ranks"]["log"]
    for name, got in runs.items():
        assert got["energy"] > 1e4, name
        assert got["energy"] == pytest.approx(ref["energy"], rel=1e-12), name
        scale = np.abs(ref["forces"]).max()
        np.testing.assert_allclose(got["forces"], ref["forces"], rtol=0, atol=1e-10 * scale, err_msg=name)
        np.testing.assert_allclose(got["energies"], ref["energies"], rtol=1e-12, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(got["virial"], ref["virial"], rtol=1e-9, atol=1e-9 * np.abs(ref["virial"]).max(),
                                   err_msg=name)
    np.testing.assert_allclose(runs["two_ranks"]["forces"], runs["one_pass"]["forces"], rtol=0,
                               atol=1e-10 * np.abs(ref["forces"]).max())
    single = lammps_runs(plugin, tmp_path / "contact32", atoms, default_model_path(), cases=[
        ("float32", 1, "dtype float32", "", ""),
        ("float32_monitors", 1, "dtype float32", "compute mon all mlip/atom force_sigma yes", "c_mon[2]")])
    for name, got in single.items():  # float32: the C core reads float vectors
        assert got["energy"] == pytest.approx(ref["energy"], rel=1e-6), name
        np.testing.assert_allclose(got["forces"], ref["forces"], rtol=0, atol=1e-6 * np.abs(ref["forces"]).max())

    atoms = pushed_pair(1.4, rattle=0.03, seed=3)
    k = int(np.argmin(np.linalg.norm(atoms.positions - atoms.positions[50] - [1.8075, 0.0, 1.8075], axis=1)))
    atoms.positions[k] = atoms.positions[50] + np.array([0.7, 0.0, 0.7]) * 0.7 / np.hypot(0.7, 0.7)
    atoms.wrap()
    runs = lammps_runs(plugin, tmp_path / "switch", atoms, default_model_path())
    ref = reference(atoms)
    assert np.abs(ref["forces"]).max() > 100
    for name, got in runs.items():
        assert got["energy"] == pytest.approx(ref["energy"], rel=0, abs=1e-10 * len(atoms)), name
        np.testing.assert_allclose(got["forces"], ref["forces"], rtol=0, atol=1e-10, err_msg=name)
        np.testing.assert_allclose(got["energies"], ref["energies"], rtol=0, atol=1e-10, err_msg=name)
        np.testing.assert_allclose(got["virial"], ref["virial"], rtol=0, atol=1e-8, err_msg=name)


def test_lammps_reads_files_without_the_block_unchanged(plugin, tmp_path):
    """A file as mlip_md wrote it before the repulsion: the plugin runs it (fused and not) with
    the old numbers, -378 eV for the close contact."""
    from test_repulsion import old_shipped_model  # noqa: PLC0415  (tests/unit, on sys.path above)

    old = old_shipped_model(tmp_path)
    assert "repulsion" not in read_metadata(old)
    atoms = pushed_pair(0.05)
    runs = lammps_runs(plugin, tmp_path / "old", atoms, old, cases=[CASES[0], CASES[4]])
    for name, got in runs.items():
        assert got["energy"] == pytest.approx(reference(atoms, old)["energy"], rel=0, abs=1e-9), name
        assert got["energy"] == pytest.approx(-378.1, abs=0.1), name


def test_ipi_driver_close_contact(tmp_path):
    """`mlip-md ipi`'s Driver (the Predictor shared with ASE) against a real i-PI server: the
    close contact's potential energy is the repulsive wall, +151 982 eV, in i-PI's output."""
    atoms = pushed_pair(0.05)
    seen = []
    driver = run_in_process(tmp_path, atoms, lambda a: simulation_xml(a, 1, temperature=10),
                            on_step=lambda step, pred: seen.append(pred.energy))
    assert type(driver.evaluator) is Predictor and driver.steps >= 1
    assert seen[0] == pytest.approx(151981.5, rel=1e-5)
    potential = read_properties(tmp_path / "sim.out")["potential{electronvolt}"]
    assert potential[0] == pytest.approx(seen[0], rel=1e-7)  # i-PI prints 8 digits


def _alloy_contacts(seed: int = 2):
    """Ni/Cu 108 atoms (nearest neighbours 2.6 Å), one Ni-Cu pair in the switch region of the
    two-element test model (1.35 Å; switch 0.95-1.9 Å) and one Cu-Cu pair below it (0.7 Å)."""
    from test_compiled import alloy  # noqa: PLC0415

    atoms = alloy(3, seed=seed)
    atoms.numbers[[0, 1, 2, 3]] = [28, 29, 29, 29]
    atoms.positions[0] = atoms.positions[1] + [1.1, 0.6, 0.5]
    atoms.positions[2] = atoms.positions[3] + [0.4, 0.4, 0.4]
    atoms.wrap()
    return atoms


def test_compiled_package_includes_the_repulsion(plugin, compiled_package, tmp_path):
    """The .pt2 graphs carry the repulsion: equal to the TorchScript model on close contacts in
    Python (with ghost atoms) and in LAMMPS."""
    pt, pt2 = compiled_package
    assert read_metadata(pt)["repulsion"]["r_outer"] == [[2.0, 1.9], [1.9, 1.8]]
    ts, compiled = load_model(pt), load_model(pt2)
    atoms = _alloy_contacts()
    for n_local in (None, 60):
        diffs = compare(compiled, ts, atoms, n_local=n_local, monitors=True)
        assert max(diffs.values()) < TOLERANCE["float64"], diffs
    ref = reference(atoms, pt)
    plain = Predictor(pt, fused=False)
    plain.model.module.repulsion_outer.zero_()  # the same model without its repulsion
    assert ref["energy"] - plain.predict_atoms(atoms).energy > 100
    runs = lammps_runs(plugin, tmp_path, atoms, pt2, elements=("Ni", "Cu"),
                       cases=[("compiled", 1, "", "", ""), ("compiled_monitors", 1, "",
                                                             "compute mon all mlip/atom", "c_mon[1]")])
    for name, got in runs.items():
        assert got["energy"] == pytest.approx(ref["energy"], rel=0, abs=1e-9), name
        np.testing.assert_allclose(got["forces"], ref["forces"], rtol=0, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(got["virial"], ref["virial"], rtol=0, atol=1e-8, err_msg=name)


def test_lammps_refuses_block_and_buffers_that_disagree(plugin, tmp_path):
    """The plugin's fused path reads the radii from the metadata, `fused no` from the module: a
    file where they differ is refused; a repulsion kind its C core does not know needs `fused no`
    (which the default then picks)."""
    from mlip_md.engines.lammps_module import import_lammps

    edited = load_model(default_model_path())
    edited.metadata["repulsion"]["r_outer"] = [[2.5]]
    unknown = load_model(default_model_path())
    unknown.metadata["repulsion"] = {"kind": "morse", "version": 1}
    cases = {
        f"pair_style mlip {edited.save(tmp_path / 'edited.pt')}": "the repulsion radii of module and metadata differ",
        f"pair_style mlip {unknown.save(tmp_path / 'unknown.pt')} fused yes": "its repulsion is 'morse'",
    }
    for command, expected in cases.items():
        lmp = import_lammps().lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
        try:
            lmp.commands_list(["units metal", "atom_style atomic", "lattice fcc 3.615", "region box block 0 2 0 2 0 2",
                               "create_box 1 box", "create_atoms 1 box", "mass 1 63.546", f"plugin load {plugin}"])
            with pytest.raises(Exception, match=expected):
                lmp.command(command)
        finally:
            lmp.close()
    atoms = pushed_pair(0.7)
    runs = lammps_runs(plugin, tmp_path / "unknown", atoms, tmp_path / "unknown.pt", cases=[CASES[0]])
    assert "fused descriptor kernel" not in runs["one_pass"]["log"]
    assert runs["one_pass"]["energy"] == pytest.approx(reference(atoms)["energy"], rel=0, abs=1e-9)
