"""The package layout's rules, read from the source with ast (nothing is imported).

- ``stream/`` and ``rules/`` never import ``agents/``, and ``rules/`` imports neither of the others;
- the module-level import graph of the three packages has no cycle;
- every module basename means one thing across the three packages;
- the stages of ``agents/**/pipeline/`` only import the stages after them.

The tests know no module by its path, so they hold for any arrangement of folders.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("stream", "agents", "rules")
# Names whose meaning is the same wherever they are: a package's own parts, not a second concept.
CONVENTIONAL = frozenset({"__init__", "__main__", "exceptions"})
# The first stage to the last; `commands` is the side entrance that starts at `apply`.
STAGES = ("route", "apply", "coalesce", "emit")
COMMANDS_MAY_IMPORT = frozenset({"apply", "coalesce", "emit"})


@dataclass(frozen=True)
class Imp:
    source: str
    target: str
    top_level: bool  # at module level (not in a function, not under `if TYPE_CHECKING:`)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for top in PACKAGES for path in sorted((ROOT / top).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, top_level: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, top_level
        nested = top_level and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        if isinstance(child, ast.If) and _is_type_checking(child):
            nested = False
        yield from _walk(child, nested)


def imports(modules: dict[str, Path]) -> list[Imp]:
    """Every import of a project module by a project module, resolved to the module it loads."""
    found = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node, top_level in _walk(ast.parse(path.read_text()), True):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
            found += [Imp(name, t, top_level) for t in dict.fromkeys(targets) if t in modules and t != name]
    return found


def cycles(edges: list[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, list[str]] = defaultdict(list)
    for a, b in edges:
        graph[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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

    for node in list(graph):
        if node not in index:
            visit(node)
    return sorted(found)


MODULES = project_modules()
IMPORTS = imports(MODULES)


@pytest.mark.parametrize(("package", "forbidden"), [("stream", {"agents"}), ("rules", {"agents", "stream"})])
def test_one_way_imports(package: str, forbidden: set[str]) -> None:
    wrong = sorted(f"{i.source} imports {i.target}" for i in IMPORTS
                   if i.source.split(".")[0] == package and i.target.split(".")[0] in forbidden)
    assert wrong == []


def test_no_module_level_import_cycle() -> None:
    assert cycles([(i.source, i.target) for i in IMPORTS if i.top_level]) == []


def duplicate_basenames() -> dict[str, list[str]]:
    by_name: dict[str, list[str]] = defaultdict(list)
    for name, path in MODULES.items():
        if path.stem not in CONVENTIONAL:
            by_name[path.stem].append(name)
    return {stem: names for stem, names in sorted(by_name.items()) if len(names) > 1}


def test_no_new_duplicate_basename() -> None:
    """Holds on either layout: the four names the layout move renames are the only ones in two places."""
    assert set(duplicate_basenames()) <= {"dashboard", "evaluate", "replay", "webhooks"}


def test_every_basename_unique() -> None:
    assert duplicate_basenames() == {}


def test_pipeline_stages_import_only_later_stages() -> None:
    packages = sorted({path.parent for path in MODULES.values()
                       if path.parent.name == "pipeline" and path.parent.parts[len(ROOT.parts)] == "agents"})
    if not packages:
        pytest.skip("no agents/**/pipeline/ package in this tree")
    wrong = []
    for folder in packages:
        package = module_name(folder / "__init__.py")
        for i in IMPORTS:
            source, target = i.source.rpartition(".")[2], i.target.rpartition(".")[2]
            if not (i.source.startswith(package + ".") and i.target.startswith(package + ".")) or target not in STAGES:
                continue
            if source in STAGES:
                allowed = set(STAGES[STAGES.index(source) + 1:])
            elif source == "commands":
                allowed = set(COMMANDS_MAY_IMPORT)
            else:
                continue
            if target not in allowed:
                wrong.append(f"{i.source} imports {i.target}")
    assert wrong == []
