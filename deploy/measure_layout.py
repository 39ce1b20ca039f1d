"""Measure the code's layout: the largest module and class, long functions, import cycles, modules per folder.

    python3 deploy/measure_layout.py [REPO]     (default: this repository)

Reads the source of ``stream/``, ``agents/`` and ``rules/`` with ast (nothing is imported), so it
runs on any checkout, e.g. ``git worktree add /tmp/before <commit>`` for a before/after table.
Lines are physical lines; a class or function counts from its ``def``/``class`` line to its last
line. An import cycle is a strongly connected component of more than one module in the graph of
module-level imports (imports inside functions and under ``if TYPE_CHECKING:`` left out).
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("stream", "agents", "rules")
LONG_MODULE = 300
LONG_FUNCTION = 60


def module_name(repo: Path, path: Path) -> str:
    parts = list(path.relative_to(repo).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(repo: Path) -> dict[str, Path]:
    return {module_name(repo, path): path for top in PACKAGES for path in sorted((repo / top).rglob("*.py"))}


def span(node: ast.stmt) -> int:
    return (node.end_lineno or node.lineno) - node.lineno + 1


def definitions(tree: ast.AST, prefix: str) -> Iterator[tuple[str, ast.stmt]]:
    """Every class and function (methods and nested ones too), with its qualified name."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            name = f"{prefix}.{node.name}"
            yield name, node
            yield from definitions(node, name)
        else:
            yield from definitions(node, prefix)


@dataclass(frozen=True)
class Imp:
    source: str
    target: str
    top_level: bool  # at module level (not in a function, not under `if TYPE_CHECKING:`)


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


def imports(found: dict[str, Path]) -> list[Imp]:
    """Every import of a project module by a project module, resolved to the module it loads."""
    out = []
    for name, path in found.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node, top_level in _walk(ast.parse(path.read_text()), True):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in found else module for a in node.names]
            out += [Imp(name, t, top_level) for t in dict.fromkeys(targets) if t in found and t != name]
    return out


def components(graph_edges: list[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative enough for ~100 modules)."""
    graph: dict[str, list[str]] = defaultdict(list)
    for a, b in graph_edges:
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
            while (member := stack.pop()) != node:
                on_stack.discard(member)
                component.append(member)
            on_stack.discard(node)
            component.append(node)
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def revision(repo: Path) -> str:
    done = subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%h %s"], capture_output=True, text=True,
                          check=False)
    return done.stdout.strip() or "(not a git checkout)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", nargs="?", type=Path, default=Path(__file__).resolve().parents[1])
    repo = parser.parse_args().repo.resolve()
    found = modules(repo)
    if not found:
        sys.exit(f"{repo}: no stream/, agents/ or rules/ modules")
    texts = {name: path.read_text() for name, path in found.items()}
    trees = {name: ast.parse(text) for name, text in texts.items()}
    lines = {name: len(text.splitlines()) for name, text in texts.items()}
    defs = [(f"{name}{qual}", node) for name, tree in trees.items() for qual, node in definitions(tree, "")]
    classes = [(qual, span(node)) for qual, node in defs if isinstance(node, ast.ClassDef)]
    functions = sorted(((qual, span(node)) for qual, node in defs if not isinstance(node, ast.ClassDef)),
                       key=lambda item: -item[1])
    long_functions = [(qual, n) for qual, n in functions if n > LONG_FUNCTION]
    biggest_module = max(lines.items(), key=lambda item: item[1])
    biggest_class = max(classes, key=lambda item: item[1])
    cycles = components([(i.source, i.target) for i in imports(found) if i.top_level])
    per_folder = Counter(str(path.relative_to(repo).parent) for path in found.values())

    rows = [
        ("tree", f"{repo} @ {revision(repo)}"),
        ("modules (.py files)", str(len(found))),
        ("largest module", f"{biggest_module[0]}: {biggest_module[1]} lines"),
        ("largest class", f"{biggest_class[0]}: {biggest_class[1]} lines"),
        (f"modules over {LONG_MODULE} lines", str(sum(n > LONG_MODULE for n in lines.values()))),
        (f"functions over {LONG_FUNCTION} lines", str(len(long_functions))),
        ("import cycles (module level)", str(len(cycles))),
    ]
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(f"\nmodules over {LONG_MODULE} lines:")
    for name, n in sorted(lines.items(), key=lambda item: -item[1]):
        if n > LONG_MODULE:
            print(f"  {n:>5}  {name}")
    print(f"\nfunctions over {LONG_FUNCTION} lines:")
    for qual, n in long_functions:
        print(f"  {n:>5}  {qual}")
    print("\nimport cycles:" + ("" if cycles else " none"))
    for cycle in cycles:
        print("  " + " <-> ".join(cycle))
    print("\nmodules per folder:")
    for folder, count in sorted(per_folder.items()):
        print(f"  {count:>5}  {folder}/")
    print("\nmodules per top folder:")
    for top in PACKAGES:
        print(f"  {sum(n for f, n in per_folder.items() if Path(f).parts[0] == top):>5}  {top}/")


if __name__ == "__main__":
    main()
