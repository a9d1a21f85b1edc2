"""Where the LAMMPS plugin build finds the C++ core it compiles in (the fused descriptor kernel),
and that the plugin cache key follows exactly the sources the plugin is built from, in a source
checkout (csrc/ next to lammps_interface/) and in an installed package (csrc/ inside it)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mlip_md.engines import lammps_plugin as engine

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


# ----------------------------------------------------------------------------- shape of the C++ plugin
PLUGIN_SRC = ROOT / "lammps_interface" / "src"

# Functions allowed over MAX_FUNCTION_LINES, and why.
LONG_FUNCTIONS = {
    # build_batch's edge loop: vectors and tests of four pairs, then their writes, in one body so
    # the compiler keeps them in registers (1.5x faster on 312 000 pairs); splitting it costs that
    "collect_edges": "the edge builder's hot loop, unrolled by 4",
}
MAX_FUNCTION_LINES = 60


def _strip_comments_and_strings(text: str) -> str:
    """C++ text with comments, string and character literals and preprocessor lines blanked
    (newlines kept)."""
    import re

    text = re.sub(r"^[ \t]*#.*$", "", text, flags=re.M)
    out, i, n = [], 0, len(text)
    while i < n:
        two = text[i:i + 2]
        if two == "//":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif two == "/*":
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif text[i] in "\"'":
            quote, j = text[i], i + 1
            while j < n and text[j] != quote:
                j += 2 if text[j] == "\\" else 1
            out.append(quote + quote + "\n" * text.count("\n", i, j))
            i = j + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


_SCOPE_KEYWORDS = ("namespace", "class", "struct", "enum", "union", "extern")
_BODY_AFTER = ("const", "override", "final", "noexcept", "mutable")


def _function_lengths(path: Path) -> dict:
    """{name: lines from the signature to the closing brace} of the functions defined in a C++
    file (free functions, methods, inline methods in class bodies; lambdas count with the
    function around them)."""
    text = _strip_comments_and_strings(path.read_text())
    lengths, start, i = {}, 0, 0
    while i < len(text):
        c = text[i]
        if c == ";" or c == "}":
            start = i + 1
        elif c == "{":
            head = text[start:i].strip()
            words = head.replace("template", " ").split()
            close = _matching_brace(text, i)
            if head.endswith(")") or (words and words[-1] in _BODY_AFTER):
                if not any(w in _SCOPE_KEYWORDS for w in words):
                    name = head[:head.index("(")].split()[-1].lstrip("*&~") if "(" in head else head
                    first = start + len(text[start:i]) - len(text[start:i].lstrip())
                    lengths[name] = max(lengths.get(name, 0), text.count("\n", first, close) + 1)
                i, start = close + 1, close + 1
                continue
            if not any(w in _SCOPE_KEYWORDS for w in words):  # brace initialiser: skip it
                i = close + 1
                continue
            start = i + 1  # namespace / class body: its members follow
        i += 1
    return lengths


def _matching_brace(text: str, at: int) -> int:
    depth = 0
    for k in range(at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[k], 0)
        if depth == 0:
            return k
    raise AssertionError("unbalanced braces")


def _include_graph() -> dict:
    """Module -> modules it includes, a module being a header and its .cpp (pair_mlip.h and
    pair_mlip.cpp are one node), over the plugin's own files."""
    import re

    files = sorted(PLUGIN_SRC.glob("*.h")) + sorted(PLUGIN_SRC.glob("*.cpp"))
    modules = {f.stem for f in files}
    graph = {m: set() for m in modules}
    for f in files:
        for name in re.findall(r'^\s*#\s*include\s+"([^"]+)"', f.read_text(), flags=re.M):
            target = Path(name).stem
            if target in modules and target != f.stem:
                graph[f.stem].add(target)
    return graph


def test_plugin_include_graph_has_no_cycle():
    graph = _include_graph()
    assert "compute_mlip_atom" not in graph["pair_mlip"]  # computes announce themselves (MLIPMonitorReader)
    state, cycles = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, f"include cycles in lammps_interface/src: {cycles}"


def test_plugin_functions_are_short():
    lengths = {}
    for f in sorted(PLUGIN_SRC.glob("*.cpp")) + sorted(PLUGIN_SRC.glob("*.h")):
        for name, n in _function_lengths(f).items():
            lengths[f"{f.name}:{name}"] = n
    assert lengths["mlip_model.cpp:Model::evaluate"] < 15  # delegates to the chosen backend
    assert any(k.endswith(":PairMLIP::compute") for k in lengths) and len(lengths) > 100  # the scan sees them
    long = {k: n for k, n in lengths.items() if n > MAX_FUNCTION_LINES and k.split(":", 1)[1] not in LONG_FUNCTIONS}
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them, or justify in LONG_FUNCTIONS): {long}"
    stale = set(LONG_FUNCTIONS) - {k.split(":", 1)[1] for k, n in lengths.items() if n > MAX_FUNCTION_LINES}
    assert not stale, f"LONG_FUNCTIONS lists functions that are short now: {stale}"
