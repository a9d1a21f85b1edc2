"""The plugin's ModelInfo (lammps_interface/src/mlip_model_info.cpp, parsed with the JSON reader
LAMMPS ships): metadata as Python writes it (NaN / Infinity included) loads and gives the same
thresholds as mlip_md.runtime.model_info; bad metadata is refused with a message naming the
problem."""
from __future__ import annotations

import json
import math

import pytest

import torch  # noqa: E402

from test_lammps import CU_MODEL  # noqa: E402  (tests/integration is on sys.path)

from mlip_md.engines.lammps_module import import_lammps  # noqa: E402
from mlip_md.runtime.model_info import ModelInfo  # noqa: E402

SETUP = ["units metal", "atom_style atomic", "lattice fcc 3.615", "region box block 0 2 0 2 0 2",
         "create_box 1 box", "create_atoms 1 box", "mass 1 63.546"]


def _with_metadata(tmp_path, name: str, edit) -> str:
    """The shipped model with its metadata text replaced by edit(metadata dict) (a str)."""
    files = {"mlip_md.json": ""}
    module = torch.jit.load(str(CU_MODEL), _extra_files=files)
    path = tmp_path / name
    torch.jit.save(module, str(path), _extra_files={"mlip_md.json": edit(json.loads(files["mlip_md.json"]))})
    return str(path)


def _edited(change):
    def edit(meta):
        change(meta)
        return json.dumps(meta)
    return edit


def test_non_finite_numbers_load_and_thresholds_match_python(plugin, tmp_path):
    def change(meta):
        meta["training"] = {"validation_mean": {"stress_rmse": math.nan}}  # no stress data: Python writes NaN
        meta["monitors"]["mahalanobis"]["per_element"]["29"]["training_max"] = math.inf

    path = _with_metadata(tmp_path, "nonfinite.pt", _edited(change))
    files = {"mlip_md.json": ""}
    torch.jit.load(path, _extra_files=files)
    text = files["mlip_md.json"].decode() if isinstance(files["mlip_md.json"], bytes) else files["mlip_md.json"]
    assert "NaN" in text and "Infinity" in text  # what JSON itself lacks
    domain = ModelInfo.from_metadata(json.loads(text), path).domain
    assert math.isinf(domain.mahalanobis_threshold()) and math.isfinite(domain.d_min_threshold())
    log = tmp_path / "log.lammps"
    lmp = import_lammps().lammps(cmdargs=["-log", str(log), "-screen", "none", "-nocite"])
    try:
        lmp.commands_list(SETUP + [f"plugin load {plugin}", f"pair_style mlip {path}", "pair_coeff * * Cu",
                                   "run 0"])
    finally:
        lmp.close()
    text = log.read_text()
    assert f"out-of-domain atoms (d_min > {domain.d_min_threshold():.4g}) warned about" in text, text[-3000:]


BAD_METADATA = {
    "invalid JSON": (lambda meta: json.dumps(meta)[:-5], "invalid JSON metadata"),
    "newer format": (_edited(lambda m: m.update(format_version=99)),
                     "uses model format 99, newer than this plugin reads (1)"),
    "no cutoff": (_edited(lambda m: m.pop("cutoff")), "metadata lacks 'cutoff'; re-export the model"),
    "bad dtype": (_edited(lambda m: m.update(dtype="float16")), "metadata dtype must be float64 or float32, got 'float16'"),
    "bad element": (_edited(lambda m: m.update(atomic_numbers=[29, 200])), "atomic_numbers holds an invalid entry"),
    "other units": (_edited(lambda m: m["units"].update(length="bohr")), "model units are not angstrom/eV"),
    "not mlip_md": (_edited(lambda m: m.update(format="other")), "is not an mlip_md model"),
}


@pytest.mark.parametrize("case", sorted(BAD_METADATA))
def test_bad_metadata_is_refused_with_the_problem_named(plugin, tmp_path, case):
    edit, expected = BAD_METADATA[case]
    path = _with_metadata(tmp_path, "bad.pt", edit)
    lmp = import_lammps().lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        lmp.commands_list(SETUP + [f"plugin load {plugin}"])
        with pytest.raises(Exception) as info:
            lmp.command(f"pair_style mlip {path}")
        assert expected in str(info.value) and path in str(info.value)
    finally:
        lmp.close()
