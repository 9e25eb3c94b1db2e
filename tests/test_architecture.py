"""The package's shape (issue 16): no import circle, ``lib/`` stands alone, files stay readable.

Imports are read from the source with :mod:`ast`, function-local ones included: a circle held
together by an import inside a function is still a circle (it only moves the failure to run time).
Imports under ``if TYPE_CHECKING:`` are left out; they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib"
#: Top-level folders of the checkout that the library must never import.
OUTSIDE_LIB = ("training", "tests", "benchmarks", "monailabel_app", "scripts")
MAX_LINES = 600


def _modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is package __init__)}`` for every ``.py`` under ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return skipped


def imported_names(module: str, is_package: bool, tree: ast.AST) -> list[str]:
    """Absolute dotted names ``tree`` imports: ``from a import b`` gives ``a.b`` (a submodule, or a
    name the graph resolves back to ``a``)."""
    skipped = _type_checking_nodes(tree)
    names: list[str] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.extend(f"{target}.{alias.name}" for alias in node.names)
    return names


def import_graph(root: Path = LIB) -> dict[str, set[str]]:
    """``{module: modules of the same tree it imports}``; ``a.b.c`` counts as its nearest module."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {}
    for module, (path, is_package) in modules.items():
        deps = set()
        for name in imported_names(module, is_package, ast.parse(path.read_text(), str(path))):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                deps.add(name)
        graph[module] = deps
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_the_checker_sees_a_circle_made_of_function_local_imports(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import thing\n")
    (package / "b.py").write_text("def thing():\n    from .a import other\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n"
    )
    graph = import_graph(tmp_path)
    assert graph["pkg.c"] == set()
    assert import_circles(graph) == [["pkg.a", "pkg.b"]]


def test_lib_has_no_import_circle():
    circles = import_circles(import_graph())
    assert not circles, "import circles in lib/: " + "; ".join(" <-> ".join(c) for c in circles)


def test_lib_imports_nothing_outside_it():
    modules = _modules(LIB)
    offenders = []
    for module, (path, is_package) in modules.items():
        for name in imported_names(module, is_package, ast.parse(path.read_text())):
            if name.split(".")[0] in OUTSIDE_LIB:
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, "\n".join(sorted(set(offenders)))


def test_scripts_do_not_import_tests():
    offenders = []
    for path in sorted((ROOT / "scripts").rglob("*.py")):
        for name in imported_names(path.stem, False, ast.parse(path.read_text())):
            if name.split(".")[0] == "tests":
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("path", sorted(LIB.rglob("*.py")), ids=lambda p: str(p.relative_to(LIB)))
def test_lib_file_stays_under_the_line_limit(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines (limit {MAX_LINES}): split it"
