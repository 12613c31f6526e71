"""The layout shows the design: imports go one way, down the layers, with no circle.

Read from the source with ``ast``, not by importing it, so every import counts: those
inside functions and under ``TYPE_CHECKING`` too, which a circle would hide behind.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("space", "search")
MAX_LINES = 600
# Each layer imports only layers of a lower rank (and itself). The longest matching
# prefix of a module's name is its layer.
RANKS = {
    "space": 0,
    "search.errors": 0,
    "search.engine": 1,
    "search.study": 2,
    "search.results": 3,
    "search.own_model": 3,
    "search.bench": 4,
    "search.cli": 5,
    "search.api": 5,
    "search": 5,  # the package itself: its docstring and nothing else
}


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the project, by dotted name (a package by its own name)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the project's modules it imports, anywhere in its source."""
    known = modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.add(submodule if submodule in known else base)
        graph[name] = {target for target in targets if target in known and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module
    (Tarjan's algorithm), each as a sorted list of its modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
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
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer(module: str) -> str:
    """The layer a module belongs to: the longest prefix of its name in RANKS."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in RANKS:
            return prefix
    raise KeyError(f"{module} belongs to no layer; give its package a rank in RANKS")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a layer into one of the same or a higher rank."""
    wrong = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            here, there = layer(module), layer(target)
            if here != there and RANKS[there] >= RANKS[here]:
                wrong.append(
                    f"{module} ({here}, rank {RANKS[here]}) imports {target} "
                    f"({there}, rank {RANKS[there]})"
                )
    return wrong


def test_no_module_imports_in_a_circle() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_circle_through_a_type_checking_import(tmp_path: Path) -> None:
    """The circle the old flat layout had: study -> estimate -> results -> objective ->
    study, the last one only under TYPE_CHECKING."""
    (tmp_path / "space").mkdir()
    (tmp_path / "space" / "__init__.py").write_text("")
    flat = tmp_path / "search"
    flat.mkdir()
    (flat / "__init__.py").write_text("")
    (flat / "study.py").write_text("from search.estimate import estimate_cost\n")
    (flat / "estimate.py").write_text("from search import results\n")
    (flat / "results.py").write_text("def f():\n    from search.objective import FINISHED\n")
    (flat / "objective.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from search.study import SearchConfig\n"
    )
    assert cycles(import_graph(tmp_path)) == [
        ["search.estimate", "search.objective", "search.results", "search.study"]
    ]


def test_imports_go_down_the_layers() -> None:
    """cli/api -> bench -> results, own_model -> study -> engine -> errors, space: so
    space imports nothing from search, and only the CLI and the API import the benchmarks."""
    graph = import_graph()
    assert all(layer(module) for module in graph)  # every module has a layer
    assert upward_imports(graph) == []


def test_the_layer_rule_rejects_an_upward_import() -> None:
    graph = {
        "search.study.objective": {"search.results.tables"},
        "search.results.tables": {"search.bench.fidelity"},
        "search.engine.memory": {"search.errors"},
        "space.spec": {"search.errors"},
    }
    assert [line.split(" (")[0] for line in upward_imports(graph)] == [
        "search.results.tables",
        "search.study.objective",
        "space.spec",
    ]


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_over_600_lines(name: str) -> None:
    lines = modules()[name].read_text().count("\n")
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by role"


def test_every_package_says_what_it_owns_and_may_import() -> None:
    packages = [path for path in modules().values() if path.name == "__init__.py"]
    assert len(packages) >= 8  # space, search and its six subpackages
    missing = [
        str(path.relative_to(ROOT))
        for path in packages
        if not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert missing == []
