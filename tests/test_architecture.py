"""The import graph of gateway/, read from the source: no cycles, the pure core imports no plumbing,
and only the entry points import the composition root (docs/architecture.md).

Every import counts, wherever it is: inside functions and under `if TYPE_CHECKING:` as well, since a
cycle hidden behind TYPE_CHECKING is still two modules that cannot be understood apart.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "gateway"
# The pure core, and what it must never import.
CORE = ("gateway.opamp", "gateway.fleet")
PLUMBING = (
    "gateway.store",
    "gateway.bus",
    "gateway.transport",
    "gateway.node",
    "gateway.api",
    "gateway.services",
    "gateway.app",
    "gateway.server",
    "gateway.cli",
)
COMPOSITION_ROOT = "gateway.services"
ENTRY_POINTS = frozenset({"gateway.app", "gateway.server", "gateway.cli"})

Graph = Mapping[str, frozenset[str]]


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _within(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def imports_of(source: str, module: str, is_package: bool, known: frozenset[str]) -> frozenset[str]:
    """The modules in `known` that `source` (the text of `module`) imports, wherever the import is."""
    found: set[str] = set()
    # What a relative import is relative to: the package itself for an __init__, else its parent.
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            # `from pkg import name`: name is a submodule, or something defined in pkg.
            names = [
                f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            # `import a.b.c` of a module that is not known (a typo would fail elsewhere): its nearest
            # known ancestor is what it loads.
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return frozenset(found)


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, frozenset[str]]:
    paths = sorted((root / package).rglob("*.py"))
    names = {path: _module_name(path, root) for path in paths}
    known = frozenset(names.values())
    return {
        name: imports_of(path.read_text(), name, path.name == "__init__.py", known)
        for path, name in names.items()
    }


def find_cycle(graph: Graph) -> list[str] | None:
    """One import cycle (its modules in order, the first repeated at the end), or None."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        # Iterative depth-first search: the path from `start`, and each step's remaining successors.
        path = [start]
        on_path = {start}
        pending = [iter(sorted(graph.get(start, ())))]
        while pending:
            successor = next(pending[-1], None)
            if successor is None:
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                pending.pop()
                continue
            if successor in on_path:
                return [*path[path.index(successor) :], successor]
            if successor in done:
                continue
            path.append(successor)
            on_path.add(successor)
            pending.append(iter(sorted(graph.get(successor, ()))))
    return None


@pytest.fixture(scope="module")
def graph() -> dict[str, frozenset[str]]:
    return import_graph()


def test_the_graph_sees_every_module_and_type_checking_imports(graph: Graph) -> None:
    assert "gateway.opamp.engine" in graph["gateway.transport.pipeline"]
    assert "gateway.services" in graph["gateway.app"]  # under TYPE_CHECKING only
    assert len(graph) > 50


def test_no_import_cycles(graph: Graph) -> None:
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_pure_core_imports_no_plumbing(graph: Graph) -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if _within(module, CORE)
        for target in targets
        if _within(target, PLUMBING)
    )
    assert wrong == []


def test_only_the_entry_points_import_the_composition_root(graph: Graph) -> None:
    importers = sorted(module for module, targets in graph.items() if COMPOSITION_ROOT in targets)
    assert set(importers) <= ENTRY_POINTS, importers


# -- the checks themselves, on graphs made up for them ---------------------------------------------


def test_find_cycle_finds_a_cycle_and_names_it() -> None:
    graph = {
        "a": frozenset({"b"}),
        "b": frozenset({"c"}),
        "c": frozenset({"d", "b"}),
        "d": frozenset(),
    }
    assert find_cycle(graph) == ["b", "c", "b"]


def test_find_cycle_accepts_a_diamond() -> None:
    graph = {
        "a": frozenset({"b", "c"}),
        "b": frozenset({"d"}),
        "c": frozenset({"d"}),
        "d": frozenset(),
    }
    assert find_cycle(graph) is None


def test_find_cycle_finds_a_cycle_reached_late() -> None:
    graph = {"a": frozenset({"b"}), "b": frozenset(), "x": frozenset({"y"}), "y": frozenset({"x"})}
    assert find_cycle(graph) == ["x", "y", "x"]


def test_imports_under_type_checking_and_in_functions_count() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import b\n"
        "if TYPE_CHECKING:\n"
        "    from gateway.services import Services\n"
        "def f() -> None:\n"
        "    import gateway.store.sqlite\n"
        "    from ..fleet import agent\n"
    )
    known = frozenset(
        {"gateway.transport.a", "gateway.transport.b", "gateway.services", "gateway.store.sqlite"}
        | {"gateway.fleet", "gateway.fleet.agent", "gateway.store", "gateway"}
    )
    assert imports_of(source, "gateway.transport.a", False, known) == {
        "gateway.transport.b",
        "gateway.services",
        "gateway.store.sqlite",
        "gateway.fleet.agent",
    }
