"""Where the LAMMPS plugin build finds the C++ core it compiles in (the fused descriptor kernel),
and that the plugin cache key follows exactly the sources the plugin is built from, in a source
checkout (csrc/ next to lammps_interface/) and in an installed package (csrc/ inside it)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mlip_md.engines import lammps as engine

ROOT = Path(__file__).resolve().parents[2]


def _key() -> str:
    return engine._build_key(engine._build_inputs())


@pytest.fixture()
def layouts(tmp_path, monkeypatch):
    """Copies of the plugin sources in the checkout layout and the installed layout (what
    setup.py's BuildPyWithPluginSources writes)."""
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "lammps_interface", checkout / "lammps_interface")
    shutil.copytree(ROOT / "csrc", checkout / "csrc")
    installed = tmp_path / "site" / "mlip_md" / "lammps_interface"
    shutil.copytree(ROOT / "lammps_interface", installed)
    for part in ("include", "src"):
        shutil.copytree(ROOT / "csrc" / part, installed / "csrc" / part)
    return checkout / "lammps_interface", installed, monkeypatch


def test_core_found_in_both_layouts(layouts):
    checkout, installed, _ = layouts
    assert engine.csrc_dir(checkout) == checkout.parent / "csrc"
    assert engine.csrc_dir(installed) == installed / "csrc"
    cmake = (ROOT / "lammps_interface" / "CMakeLists.txt").read_text()
    for name in engine.PLUGIN_CORE_SOURCES:  # what the cache key hashes is what CMake compiles
        assert "${MLIP_CSRC_DIR}/src/" + name in cmake


def test_missing_core_is_a_clear_error(tmp_path):
    bare = tmp_path / "lammps_interface"
    shutil.copytree(ROOT / "lammps_interface", bare)
    with pytest.raises(engine.PluginBuildError, match="C\\+\\+ core .* was not found .* MLIP_MD_LAMMPS_SOURCE"):
        engine.csrc_dir(bare)


def test_cache_key_follows_the_compiled_core(layouts):
    checkout, installed, monkeypatch = layouts
    monkeypatch.setenv("MLIP_MD_LAMMPS_SOURCE", str(checkout))
    first = _key()
    monkeypatch.setenv("MLIP_MD_LAMMPS_SOURCE", str(installed))
    assert _key() == first  # same sources, either layout: the same cached plugin

    monkeypatch.setenv("MLIP_MD_LAMMPS_SOURCE", str(checkout))
    core = checkout.parent / "csrc"
    (core / "src" / "neighbors.cpp").write_text("// not compiled into the plugin\n")
    assert _key() == first
    kernel = core / "src" / "power_spectrum.cpp"
    kernel.write_text(kernel.read_text() + "\n// changed\n")
    changed = _key()
    assert changed != first
    header = core / "include" / "mlip_md.h"
    header.write_text(header.read_text() + "\n/* changed */\n")
    assert _key() not in (first, changed)
    plugin_source = checkout / "src" / "mlip_fused.cpp"
    before = _key()
    plugin_source.write_text(plugin_source.read_text() + "\n// changed\n")
    assert _key() != before
