"""No import circles, between modules or between packages (a package's own modules count as
one node, so a package and its subpackage may not import each other either), counting the
imports inside functions too. import-linter's contracts (pyproject.toml) check the layers."""

from __future__ import annotations

import grimp

ROOTS = ("atlas", "ingest", "query")


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _graph() -> tuple[grimp.ImportGraph, set[str]]:
    graph = grimp.build_graph(*ROOTS)
    packages = {m for m in graph.modules if graph.find_children(m)}
    return graph, packages


def test_no_module_imports_itself_through_others() -> None:
    graph, _ = _graph()
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    assert _cycles(edges) == []


def test_no_two_packages_import_each_other() -> None:
    graph, packages = _graph()

    def package_of(module: str) -> str:
        return module if module in packages else module.rpartition(".")[0]

    edges: dict[str, set[str]] = {}
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            a, b = package_of(module), package_of(imported)
            if a != b:
                edges.setdefault(a, set()).add(b)
    assert _cycles(edges) == []
