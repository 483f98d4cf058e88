"""The import structure: no import cycle between modules, and the layers point downwards only.

Every ``import`` statement of ``pipeline/``, ``schemas/`` and ``sysid/`` is read with ``ast`` —
at module level and inside functions alike, so a deferred import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "schemas", "sysid")
#: what each layer may not import (the layers: sysid -> schemas -> pipeline)
FORBIDDEN = {
    "pipeline": ("datajoint", "schemas", "sysid"),
    "schemas": ("sysid",),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _imported_names(
    name: str, path: Path, known: set[str] | frozenset = frozenset()
) -> list[tuple[str, int]]:
    """Every module name an import statement of the module names (absolute), with its line.

    ``known``: the modules of the tree, to tell ``from package import module`` from
    ``from module import name``.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from package import module` imports that module; `from module import name` the module
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                found.append((submodule if submodule in known else module, node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, _ in _imported_names(name, path, set(modules)):
            if target in modules and target != name:
                graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_import_reader_sees_deferred_and_relative_imports(tmp_path):
    # the checker itself: an import inside a function and a relative one are both edges
    graph = {"a": {"b"}, "b": {"a"}, "c": set()}
    assert _cycles(graph) == [["a", "b"]]
    module = ROOT / "schemas" / "binding.py"
    names = {target for target, _ in _imported_names("schemas.binding", module, set(_modules()))}
    assert {"schemas.connection", "schemas.views", "schemas._dj_compat"} <= names
    inside = tmp_path / "inside.py"
    inside.write_text("def f():\n    from . import sibling\n    import json\n")
    assert {t for t, _ in _imported_names("pkg.inside", inside, {"pkg.sibling"})} == {"pkg.sibling", "json"}


def test_no_import_cycle_between_modules():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downwards(layer):
    modules = _modules()
    offending = []
    for name, path in modules.items():
        if name.split(".")[0] != layer:
            continue
        for target, line in _imported_names(name, path, set(modules)):
            if target.split(".")[0] in FORBIDDEN[layer]:
                offending.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not offending, "\n".join(offending)


def test_schemas_binding_is_the_only_module_that_imports_every_table():
    table_modules = {
        "schemas.configs",
        "schemas.data_info",
        "schemas.progress",
        "schemas.trained_model",
        "schemas.neuron_scores",
        "schemas.readout_parameters",
    }
    graph = _graph()
    importing_all = [name for name, targets in graph.items() if table_modules <= targets]
    assert importing_all == ["schemas.binding"]
    # and the connection module imports none
    assert not graph["schemas.connection"] & table_modules
