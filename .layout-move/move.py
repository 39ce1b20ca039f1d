#!/usr/bin/env python3
"""Move the modules of stream/, agents/ and rules/ into folders by role, driven by a mapping file.

Usage:
    python3 move.py REPO [--mapping mapping.txt] [--dry-run] [--no-ruff]

REPO is a git work tree with a clean index. For every module the mapping moves, the script
rewrites every reference in the tracked text files of the repo, then `git mv`s the file and
creates the `__init__.py` of each new package. The references it rewrites:

- absolute imports (`from stream.x import`, `import stream.x`), and `from stream import x` where
  x is a moved module (split into one import per new package, `as x` kept when the name changes);
- relative imports, made absolute, in every moved module and in any module importing a moved one;
- dotted names (`stream.x.Name`) in strings, comments and docstrings (mock.patch and monkeypatch
  targets, logger names, `python -m agents.x`, pyproject entry points, :mod: roles), and in code
  only where the file itself binds the package name with `import stream...`;
- paths `stream/x.py` (and `agents/pkg/` for moved packages) in any tracked text file;
- `Path(__file__).resolve().parent...` / `.parents[N]` chains in moved modules, deepened or
  shortened by how far the module moved, so they still reach the same folder.

Dotted names match on the whole name (`stream.state` never touches `stream.statex` or
`x.stream.state`), in one pass, so a rewritten name is never rewritten again. Modules under the
three packages that no mapping line covers stay in place and are listed at the end, as are any
old names still found afterwards. Stdlib only; `ruff check --select I --fix` (import order) is run
on the touched Python files when REPO/.venv/bin/ruff exists, unless --no-ruff.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import shutil
import subprocess
import sys
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("stream", "agents", "rules")
SKIP_SUFFIXES = {".json", ".png", ".jpg", ".gif", ".svg", ".ico", ".lock", ".jar", ".gz", ".zip", ".whl"}
UNMARK = "# layout-move: remove"
# a path starts the repo-relative text: `stream/x.py`, `./stream/x.py`, `../../stream/x.py`, not `/abs/stream/x.py`
PATH_BEFORE = r"(?<![\w.-])(?<![\w-]/)"


@dataclass
class Mapping:
    entries: dict[str, str] = field(default_factory=dict)  # old module (a file old.py) -> new module
    packages: dict[str, str] = field(default_factory=dict)  # old package -> new package (all under it)
    docstrings: dict[str, str] = field(default_factory=dict)  # new package -> docstring
    unmark: list[str] = field(default_factory=list)  # files whose "# layout-move: remove" lines go


def read_mapping(path: Path) -> Mapping:
    mapping = Mapping()
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("package "):
            name, _, text = line[len("package "):].partition(":")
            mapping.docstrings[name.strip()] = text.strip()
        elif line.startswith("unmark "):
            mapping.unmark.append(line[len("unmark "):].strip())
        elif "->" in line:
            old, _, new = (part.strip() for part in line.partition("->"))
            table = mapping.entries
            if old.endswith(".*") and new.endswith(".*"):
                old, new, table = old[:-2], new[:-2], mapping.packages
            elif old.endswith(".*") or new.endswith(".*"):
                sys.exit(f"{path}:{number}: a package line has .* on both sides")
            if old in table:
                sys.exit(f"{path}:{number}: {old} is mapped twice")
            table[old] = new
        else:
            sys.exit(f"{path}:{number}: cannot read {raw!r}")
    return mapping


def module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_path(name: str, package: bool) -> Path:
    parts = name.split(".")
    return Path(*parts, "__init__.py") if package else Path(*parts[:-1], parts[-1] + ".py")


def project_modules(repo: Path) -> dict[str, Path]:
    """Every module under the three packages: dotted name -> path relative to the repo."""
    found: dict[str, Path] = {}
    for top in PACKAGES:
        for path in sorted((repo / top).rglob("*.py")):
            rel = path.relative_to(repo)
            if "__pycache__" not in rel.parts:
                found[module_name(rel)] = rel
    return found


def target(mapping: Mapping, name: str, is_package: bool) -> str | None:
    """The new name of a module: its own line if it is a module (a file), else its closest package line."""
    if not is_package and name in mapping.entries:
        return mapping.entries[name]
    keys = [key for key in mapping.packages if name == key or name.startswith(key + ".")]
    if not keys:
        return None
    key = max(keys, key=len)
    return mapping.packages[key] + name[len(key):]


def moved_already(mapping: Mapping, name: str) -> bool:
    """A module at a place the mapping moves things to (a second run, on the moved tree)."""
    if name in mapping.entries.values() or name in mapping.docstrings:
        return True
    return any(name == new or name.startswith(new + ".") for new in mapping.packages.values())


def plan(repo: Path, mapping: Mapping) -> tuple[dict[str, str], dict[Path, Path], list[str], list[str]]:
    """Return (renames of dotted names, file moves, unmapped modules, notes)."""
    modules = project_modules(repo)
    renames: dict[str, str] = {}
    moves: dict[Path, Path] = {}
    unmapped: list[str] = []
    notes: list[str] = []
    for name, rel in modules.items():
        new = target(mapping, name, rel.name == "__init__.py")
        if new is None and (name in PACKAGES or moved_already(mapping, name)):  # top packages never move
            continue
        if new is None:
            unmapped.append(str(rel))
            continue
        if new != name:
            renames[name] = new
            moves[rel] = module_path(new, rel.name == "__init__.py")
    for old, new in mapping.entries.items():
        if old != new and module_path(old, False).as_posix() not in {p.as_posix() for p in modules.values()}:
            notes.append(f"absent, skipped: {old} -> {new}")
    for old, new in mapping.packages.items():
        if old != new and old not in modules:
            notes.append(f"absent, skipped: {old}.* -> {new}.*")
    targets: dict[Path, Path] = {}
    for src, dst in moves.items():
        if dst in targets:
            sys.exit(f"both {targets[dst]} and {src} would move to {dst}")
        if (repo / dst).exists() and dst not in moves:
            sys.exit(f"{src} would move to {dst}, which exists and is not moving away")
        targets[dst] = src
    return renames, moves, unmapped, notes


# ---------------------------------------------------------------- rewriting text


def rename_dotted(renames: dict[str, str], name: str) -> str:
    """Apply the longest matching rename to a dotted name (a module or anything under it)."""
    best = None
    for old in renames:
        if (name == old or name.startswith(old + ".")) and (best is None or len(old) > len(best)):
            best = old
    return name if best is None else renames[best] + name[len(best):]


def dotted_pattern(renames: dict[str, str]) -> re.Pattern[str] | None:
    """One regex over every old dotted name, longest first, whole names only, never a call."""
    if not renames:
        return None
    alternatives = []
    for old in sorted(renames, key=len, reverse=True):
        new = renames[old]
        guard = ""
        if new.startswith(old + "."):  # agents.cli -> agents.cli.main: leave a new name alone
            guard = rf"(?!\.{re.escape(new[len(old) + 1:])}(?!\w))"
        alternatives.append(re.escape(old) + guard)
    return re.compile(r"(?<![\w.])(?:" + "|".join(alternatives) + r")(?!\w)(?!\s*\()")


def path_renames(renames: dict[str, str], moves: dict[Path, Path]) -> dict[str, str]:
    """Path text: `stream/x.py` -> `stream/pkg/x.py`, and `agents/pipeline` -> `agents/engine/pipeline`."""
    paths = {str(src): str(dst) for src, dst in moves.items() if src.name != "__init__.py"}
    for src, dst in moves.items():
        if src.name == "__init__.py":
            paths[str(src.parent)] = str(dst.parent)
    return paths


def path_pattern(paths: dict[str, str]) -> re.Pattern[str] | None:
    if not paths:
        return None
    alternatives = []
    for old in sorted(paths, key=len, reverse=True):
        new = paths[old]
        guard = rf"(?!/{re.escape(new[len(old) + 1:])})" if new.startswith(old + "/") else ""
        tail = r"(?!\w|\.\w)" if old.endswith(".py") else r"(?![\w-]|\.\w)"
        alternatives.append(re.escape(old) + guard + tail)
    return re.compile(PATH_BEFORE + "(?:" + "|".join(alternatives) + ")")


def allowed_spans(text: str, tree: ast.Module) -> list[tuple[int, int]] | None:
    """Character spans of a Python file where dotted names may be rewritten (None: everywhere).

    Strings, comments and import statements always; the rest of the code only if the file binds
    a package name itself (`import stream`, `import agents.runtime`), because elsewhere `stream`
    is a local name (a Faust stream: `stream.events()`, the fault suite's `stream.events`).
    """
    binds = any(isinstance(node, ast.Import) and any(a.name.split(".")[0] in PACKAGES and a.asname is None
                                                     for a in node.names)
                for node in ast.walk(tree))
    if binds:
        return None
    starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def offset(row: int, col: int) -> int:
        return starts[row - 1] + col

    spans = []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type in (tokenize.STRING, tokenize.COMMENT) or tokenize.tok_name[token.type].startswith("FSTRING"):
            spans.append((offset(*token.start), offset(*token.end)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            end = node.end_lineno or node.lineno
            spans.append((starts[node.lineno - 1], starts[end] if end < len(starts) else len(text)))
    return spans


def sub_dotted(text: str, pattern: re.Pattern[str], renames: dict[str, str], spans: list[tuple[int, int]] | None
               ) -> str:
    def replace(match: re.Match[str]) -> str:
        if spans is not None and not any(a <= match.start() < b for a, b in spans):
            return match.group(0)
        return renames[match.group(0)]

    return pattern.sub(replace, text)


def absolutize(text: str, tree: ast.Module, module: str, is_package: bool, moving: bool,
               renames: dict[str, str]) -> str:
    """Make relative imports absolute (old names) where the file moves or the target is renamed."""
    package = module if is_package else module.rpartition(".")[0]
    lines = split_lines(text)
    for node in sorted((n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level),
                       key=lambda n: (n.lineno, n.col_offset), reverse=True):
        base = package.split(".")
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
        touched = target != rename_dotted(renames, target) or any(
            f"{target}.{alias.name}" in renames for alias in node.names)
        if not (moving or touched):
            continue
        line = lines[node.lineno - 1]
        head = re.compile(r"from\s+\.+\s*" + (re.escape(node.module) if node.module else "") + r"(?=\s+import\b)")
        found = head.search(line, node.col_offset)
        if not found:
            sys.exit(f"{module}: cannot read the relative import on line {node.lineno}")
        lines[node.lineno - 1] = line[: found.start()] + f"from {target}" + line[found.end():]
    return "".join(lines)


def split_lines(text: str) -> list[str]:
    """Lines with their ends, split on newlines only (as ast and tokenize count them)."""
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


def split_module_imports(text: str, tree: ast.Module, renames: dict[str, str]) -> str:
    """`from stream import kafka_admin` -> `from stream.kafka import kafka_admin` (one line per new parent)."""
    lines = split_lines(text)
    for node in sorted((n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level and n.module),
                       key=lambda n: n.lineno, reverse=True):
        moved = [a for a in node.names if f"{node.module}.{a.name}" in renames]
        if not moved:
            continue
        indent = " " * node.col_offset
        rest = [a for a in node.names if a not in moved]
        out = []
        if rest:
            names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in rest)
            out.append(f"{indent}from {node.module} import {names}\n")
        for alias in moved:
            parent, _, base = renames[f"{node.module}.{alias.name}"].rpartition(".")
            local = alias.asname or alias.name
            out.append(f"{indent}from {parent} import {base}" + (f" as {local}" if local != base else "") + "\n")
        last = lines[(node.end_lineno or node.lineno) - 1]
        comment = last[last.index("#"):].rstrip("\n") if "#" in last else ""
        if comment:
            out[-1] = out[-1].rstrip("\n") + "  " + comment + "\n"
        lines[node.lineno - 1:(node.end_lineno or node.lineno)] = out
    return "".join(lines)


FILE_CHAIN = re.compile(r"Path\(__file__\)(\.resolve\(\))?((?:\.parent)+|\.parents\[(\d+)\])")


def fix_file_paths(text: str, delta: int, where: str, notes: list[str]) -> str:
    """Keep `Path(__file__)...parent` chains pointing at the same folder after moving `delta` levels down."""
    def replace(match: re.Match[str]) -> str:
        ups = int(match.group(3)) + 1 if match.group(3) else match.group(2).count(".parent")
        ups += delta
        if ups < 1:
            sys.exit(f"{where}: {match.group(0)} cannot be kept")
        chain = ".parent" * ups if ups <= 2 else f".parents[{ups - 1}]"
        new = f"Path(__file__){match.group(1) or ''}{chain}"
        notes.append(f"{where}: {match.group(0)} -> {new}")
        return new

    return FILE_CHAIN.sub(replace, text) if delta else text


LIMIT = 120  # ruff's line-length in pyproject.toml


def wrap_long_lines(text: str, old_text: str, where: str, notes: list[str]) -> str:
    """Break the lines a rewrite pushed over LIMIT: comments, docstrings and string literals, at a space.

    A plain string literal is split in two adjacent literals (implicit concatenation), kept only
    if the module's ast is unchanged; a docstring or comment gets a new line at the same indent.
    Anything else is left for the operator and listed.
    """
    old_lines = set(old_text.splitlines())
    for _ in range(20):
        lines = split_lines(text)
        long = [i for i, line in enumerate(lines)
                if len(line.rstrip("\n")) > LIMIT and line.rstrip("\n") not in old_lines]
        if not long:
            return text
        row = long[0]
        line = lines[row].rstrip("\n")
        token = next((t for t in tokenize.generate_tokens(io.StringIO(text).readline)
                      if t.start[0] <= row + 1 <= t.end[0] and t.type in (tokenize.STRING, tokenize.COMMENT)
                      and (t.end[0] > row + 1 or t.end[1] > LIMIT)), None)
        start_col = token.start[1] if token and token.start[0] == row + 1 else 0
        cut = line.rfind(" ", start_col + 4, LIMIT - 1) if token else -1
        if token is None or cut < 0:
            notes.append(f"{where}:{row + 1}: over {LIMIT} characters after the rewrite; shorten it by hand")
            old_lines.add(line)
            continue
        indent = " " * (len(line) - len(line.lstrip()))
        if token.type == tokenize.COMMENT:
            new_lines = [line[:cut], " " * start_col + "# " + line[cut + 1:]]
        elif token.string.lstrip("rRbBuU")[:3] in ('"""', "'''"):
            new_lines = [line[:cut], indent + line[cut + 1:]]
        else:
            quote = token.string.lstrip("rRbBuU")[0]
            prefix = token.string[: len(token.string) - len(token.string.lstrip("rRbBuU"))]
            new_lines = [line[: cut + 1] + quote, " " * start_col + prefix + quote + line[cut + 1:]]
        candidate = "".join(lines[:row]) + "\n".join(new_lines) + "\n" + "".join(lines[row + 1:])
        try:
            same = ast.dump(ast.parse(candidate)) == ast.dump(ast.parse(text))
            valid = True
        except SyntaxError:
            same = valid = False
        if token.type == tokenize.STRING and token.string.lstrip("rRbBuU")[:3] not in ('"""', "'''") and not same:
            valid = False
        if not valid:
            notes.append(f"{where}:{row + 1}: over {LIMIT} characters after the rewrite; shorten it by hand")
            old_lines.add(line)
            continue
        text = candidate
    return text


def is_text(path: Path) -> bool:
    if path.suffix in SKIP_SUFFIXES:
        return False
    try:
        head = path.read_bytes()[:8192]
    except (IsADirectoryError, FileNotFoundError):
        return False
    return b"\0" not in head


def rewrite_file(repo: Path, rel: Path, renames: dict[str, str], moves: dict[Path, Path],
                 dotted: re.Pattern[str] | None, paths: dict[str, str], path_re: re.Pattern[str] | None,
                 notes: list[str]) -> str | None:
    """The new text of one tracked file, or None when it does not change."""
    text = (repo / rel).read_text()
    new = text
    tree = None
    if rel.suffix == ".py":
        try:
            tree = ast.parse(new)
        except SyntaxError as error:
            notes.append(f"not Python, text rules only: {rel}: {error}")
    if tree is not None:
        if rel.parts[0] in PACKAGES:
            new = absolutize(new, tree, module_name(rel), rel.name == "__init__.py", rel in moves, renames)
            tree = ast.parse(new)
        if dotted is not None:
            new = sub_dotted(new, dotted, renames, allowed_spans(new, tree))
        new = split_module_imports(new, ast.parse(new), renames)
        if rel in moves:
            new = fix_file_paths(new, len(moves[rel].parts) - len(rel.parts), str(rel), notes)
    elif dotted is not None:
        new = sub_dotted(new, dotted, renames, None)
    if path_re is not None:
        new = path_re.sub(lambda m: paths[m.group(0)], new)
    if tree is not None and new != text:
        new = wrap_long_lines(new, text, str(moves.get(rel, rel)), notes)
    if str(rel) in UNMARKED:
        new = "".join(line for line in split_lines(new) if not line.rstrip().endswith(UNMARK))
    return None if new == text else new


UNMARKED: set[str] = set()


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def leftovers(repo: Path, renames: dict[str, str], paths: dict[str, str]) -> list[str]:
    """Lines of tracked files that still name an old module or path (should be none)."""
    found = []
    dotted = re.compile(r"(?<![\w.])(?:" + "|".join(re.escape(o) for o in sorted(renames, key=len, reverse=True)
                                                    if not renames[o].startswith(o + ".")) + r")(?!\w)(?!\s*\()")
    old_py = "|".join(re.escape(o) for o in paths if o.endswith(".py"))
    old_paths = re.compile(PATH_BEFORE + "(?:" + old_py + r")(?!\w|\.\w)")
    for rel in git(repo, "ls-files").splitlines():
        path = repo / rel
        if not is_text(path):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if (renames and dotted.search(line)) or (paths and old_paths.search(line)):
                found.append(f"{rel}:{number}: {line.strip()}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path)
    parser.add_argument("--mapping", type=Path, default=Path(__file__).with_name("mapping.txt"))
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument("--no-ruff", action="store_true", help="do not re-sort imports with the repo's ruff")
    args = parser.parse_args()
    repo = args.repo.resolve()
    mapping = read_mapping(args.mapping)
    UNMARKED.update(mapping.unmark)
    renames, moves, unmapped, notes = plan(repo, mapping)

    for src, dst in sorted(moves.items()):
        print(f"move {src} -> {dst}")
    new_packages = sorted({parent for dst in moves.values() for parent in [dst.parent]
                           if not (repo / parent / "__init__.py").exists()
                           and Path(parent, "__init__.py") not in moves.values()})
    for package in new_packages:
        print(f"new package {package}/__init__.py")
    if args.dry_run:
        for note in notes:
            print(note)
        report_unmapped(unmapped)
        return

    if git(repo, "status", "--porcelain", "--untracked-files=no").strip():
        sys.exit(f"{repo}: commit or stash the changes first")
    dotted = dotted_pattern(renames)
    paths = path_renames(renames, moves)
    path_re = path_pattern(paths)
    touched_py = []
    for rel_text in git(repo, "ls-files").splitlines():
        rel = Path(rel_text)
        if not is_text(repo / rel):
            continue
        new = rewrite_file(repo, rel, renames, moves, dotted, paths, path_re, notes)
        if new is not None:
            (repo / rel).write_text(new)
            if rel.suffix == ".py":
                touched_py.append(moves.get(rel, rel))
    for package in new_packages:
        dotted_name = ".".join(package.parts)
        docstring = mapping.docstrings.get(dotted_name)
        if docstring is None:
            sys.exit(f"no `package {dotted_name}:` docstring line in {args.mapping}")
        (repo / package).mkdir(parents=True, exist_ok=True)
        (repo / package / "__init__.py").write_text(f'"""{docstring}"""\n')
    for src, dst in sorted(moves.items()):
        (repo / dst).parent.mkdir(parents=True, exist_ok=True)
        git(repo, "mv", str(src), str(dst))
    if new_packages:
        git(repo, "add", *(str(p / "__init__.py") for p in new_packages))
    for src in moves:  # folders emptied by a package move
        folder = repo / src.parent
        pycache = folder / "__pycache__"
        if folder.is_dir() and not any(p for p in folder.iterdir() if p != pycache):
            shutil.rmtree(folder)
    ruff = repo / ".venv" / "bin" / "ruff"
    if touched_py and ruff.exists() and not args.no_ruff:
        subprocess.run([str(ruff), "check", "--quiet", "--select", "I", "--fix", *map(str, touched_py)], cwd=repo,
                       check=False)
    git(repo, "add", "-u")

    for note in notes:
        print(note)
    left = leftovers(repo, renames, paths)
    print(f"{len(moves)} files moved, {len(new_packages)} packages created; old names still found: {len(left)}")
    for line in left:
        print(f"  {line}")
    report_unmapped(unmapped)


def report_unmapped(unmapped: list[str]) -> None:
    print(f"modules no mapping line covers (left in place): {len(unmapped)}")
    for rel in unmapped:
        print(f"  {rel}")


if __name__ == "__main__":
    main()
