"""The shape of the package: no import cycles between mlip_md modules, engine glue kept small.

The import graph is read from the source with ``ast`` (nothing is imported): an edge A -> B for
every ``import`` / ``from ... import`` in module A, at module level or inside a function, that
names mlip_md module B (``from P import name`` counts as P.name when that is a module, else as
P), and A -> each package that contains B but not A (Python runs those packages' ``__init__``
first). The one exception: a package ``__init__``'s imports of its own submodules inside a
function (lazy re-exports through ``__getattr__``), which run only after the package has loaded.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

PACKAGE = Path(__file__).resolve().parents[2] / "mlip_md"
#: the engines adapt units and I/O only: longer files hold logic that belongs in the library
ENGINE_MAX_LINES = 300
#: a command module is argument parsing, a call into the library and printing
CLI_MAX_LINES = 300


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> Dict[str, Path]:
    found = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: path for name, path in found.items() if "__pycache__" not in path.parts}


def _imports(tree: ast.Module):
    """(node, inside a function) for every import statement of a module."""
    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from visit(child, nested)

    yield from visit(tree, False)


def import_graph() -> Dict[str, Set[str]]:
    """{module: the mlip_md modules it imports}, see the module docstring."""
    known = modules()
    graph: Dict[str, Set[str]] = {name: set() for name in known}
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        for node, in_function in _imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                           for alias in node.names]
            for target in targets:
                if target not in known or target == name:
                    continue
                if is_package and in_function and target.startswith(name + "."):
                    continue  # lazy re-export of the package's own submodule
                graph[name].add(target)
                parts = target.split(".")
                for k in range(1, len(parts)):  # the packages that contain the target but not this module
                    outer = ".".join(parts[:k])
                    if outer in known and outer != name and not name.startswith(outer + "."):
                        graph[name].add(outer)
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle of ``graph`` as [a, b, ..., a], or None (iterative depth-first search)."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_graph_sees_module_and_function_level_imports():
    graph = import_graph()
    assert "mlip_md.runtime.model_info" in graph["mlip_md.runtime.predictor"]  # module level
    assert "mlip_md.engines.ipi.launch" in graph["mlip_md.cli.md"]  # inside a function
    assert "mlip_md.engines.ase" not in graph["mlip_md"]  # the package's lazy re-export
    assert "mlip_md.model" in graph["mlip_md.runtime.backend"]  # importing model.io runs model/__init__ first
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _longer_than(folder: str, limit: int) -> Dict[str, int]:
    """{path: lines} of the modules under mlip_md/FOLDER with more than ``limit`` lines."""
    return {str(p.relative_to(PACKAGE.parent)): n for p in (PACKAGE / folder).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > limit}


def test_engine_modules_stay_small():
    long = _longer_than("engines", ENGINE_MAX_LINES)
    assert not long, f"engine modules over {ENGINE_MAX_LINES} lines (move the logic into the library): {long}"


def test_cli_modules_stay_small():
    assert (PACKAGE / "cli" / "__init__.py").exists() and len(list((PACKAGE / "cli").glob("*.py"))) > 2
    long = _longer_than("cli", CLI_MAX_LINES)
    assert not long, f"command modules over {CLI_MAX_LINES} lines (move the logic into the library): {long}"
