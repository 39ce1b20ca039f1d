"""The package layout's rules, read from the source with ast (deploy/measure_layout.py; nothing is imported).

- ``stream/`` and ``rules/`` never import ``agents/``, and ``rules/`` imports neither of the others;
- the module-level import graph of the three packages has no cycle;
- every module basename means one thing across the three packages;
- the stages of ``agents/**/pipeline/`` only import the stages after them.

The tests know no module by its path, so they hold for any arrangement of folders.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import defaultdict
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Names whose meaning is the same wherever they are: a package's own parts, not a second concept.
CONVENTIONAL = frozenset({"__init__", "__main__", "exceptions"})
# The first stage to the last; `commands` is the side entrance that starts at `apply`.
STAGES = ("route", "apply", "coalesce", "emit")
COMMANDS_MAY_IMPORT = frozenset({"apply", "coalesce", "emit"})


def _measure_layout() -> ModuleType:
    """deploy/measure_layout.py, the one implementation of the import graph (a script, not a package)."""
    spec = importlib.util.spec_from_file_location("measure_layout", ROOT / "deploy" / "measure_layout.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


layout = _measure_layout()
cycles, imports = layout.components, layout.imports


def module_name(path: Path) -> str:
    return str(layout.module_name(ROOT, path))


def project_modules() -> dict[str, Path]:
    return dict(layout.modules(ROOT))


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


def test_every_basename_unique() -> None:
    assert duplicate_basenames() == {}


def test_pipeline_stages_import_only_later_stages() -> None:
    packages = sorted({path.parent for path in MODULES.values()
                       if path.parent.name == "pipeline" and path.parent.parts[len(ROOT.parts)] == "agents"})
    assert packages, "no agents/**/pipeline/ package"
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
