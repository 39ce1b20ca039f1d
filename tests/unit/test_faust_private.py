"""The private attributes of Faust, mode and aiokafka we rely on (stream/faust/private.py) are all there.

An upgrade of any of the three fails here, naming the package or the attribute and the module of
ours that uses it, rather than somewhere in a worker at run time.
"""

from __future__ import annotations

import importlib
import inspect
import re
from importlib.metadata import version
from types import ModuleType
from typing import Any

import pytest

from stream.faust import private
from stream.faust.private import Private

UPGRADE = "check every entry of stream/faust/private.py against the new version, then update TESTED_*"


def _owner(entry: Private) -> Any:
    """The class (or module) ``entry.owner`` names."""
    if entry.kind == "module":
        return importlib.import_module(entry.owner)
    module, _, name = entry.owner.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _assigned_in_source(cls: type, name: str) -> bool:
    """Whether the source of ``cls`` or of a base class assigns ``self.<name>``."""
    assignment = re.compile(rf"\bself\.{re.escape(name)}\s*(?::[^=\n]+)?(?:=(?!=)|[-+|]=)")
    for klass in inspect.getmro(cls):
        if klass is object:
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):  # a builtin or C base: no source
            continue
        if assignment.search(source):
            return True
    return False


def _present(entry: Private) -> bool:
    owner = _owner(entry)
    if entry.kind == "instance":
        return _assigned_in_source(owner, entry.name)
    return hasattr(owner, entry.name)


def _describe(entry: Private) -> str:
    where = "module global" if entry.kind == "module" else f"{entry.kind} attribute"
    return f"{entry.owner}.{entry.name} ({where}, used by {', '.join(entry.used_by)}: {entry.use})"


def test_installed_versions_are_the_tested_ones() -> None:
    wrong = [f"{package}: {version(package)} installed, {tested} tested"
             for package, tested in private.TESTED if version(package) != tested]
    assert not wrong, f"{'; '.join(wrong)}: {UPGRADE}"


@pytest.mark.parametrize("entry", [*private.PRIVATE, *private.PUBLIC_REPLACED],
                         ids=lambda e: f"{e.owner}.{e.name}")
def test_each_attribute_we_use_exists_on_its_owner(entry: Private) -> None:
    assert _present(entry), f"{_describe(entry)}: not found in the installed version; {UPGRADE}"


@pytest.mark.parametrize("entry", private.OURS_ON_FAUST, ids=lambda e: f"{e.owner}.{e.name}")
def test_our_attributes_on_fausts_objects_are_not_fausts(entry: Private) -> None:
    owner = _owner(entry)
    assert not hasattr(owner, entry.name) and not _assigned_in_source(owner, entry.name), (
        f"{_describe(entry)}: the installed version has an attribute of that name too; {UPGRADE}")


@pytest.mark.parametrize("entry", [*private.PRIVATE, *private.PUBLIC_REPLACED, *private.OURS_ON_FAUST],
                         ids=lambda e: f"{e.owner}.{e.name}")
def test_each_entry_names_a_module_that_uses_it(entry: Private) -> None:
    """The table lists no attribute a module of ours no longer uses (a stale entry hides a real one)."""
    for name in entry.used_by:
        module: ModuleType = importlib.import_module(name)
        assert re.search(rf"\b{re.escape(entry.name)}\b", inspect.getsource(module)), (
            f"{name} no longer uses {entry.owner}.{entry.name}: drop it from stream/faust/private.py")
