"""Structural rules of the code base (issue 28): one error root per package, one reader of the
environment, one-way imports among the command modules, rule evaluation errors as objects."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

from rules import RuleErrors, RuleEvaluationError, RulesError, assign_tier, evaluate_tags
from rules.model import Rule, Ruleset, ScoreWeights, TierPolicy
from stream.exceptions import TaggerError

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"stream": TaggerError, "rules": RulesError}


def _modules(package: str) -> list[str]:
    found = pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}.")
    return [package] + [m.name for m in found]


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_error_derives_from_its_package_root(package: str) -> None:
    strays = []
    for name in _modules(package):
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, BaseException) and not issubclass(cls, PACKAGES[package]):
                strays.append(f"{name}.{cls.__name__}")
    assert strays == []


def _sources(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def test_only_the_settings_read_the_environment() -> None:
    readers = []
    for path in _sources("agents", "stream", "rules"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os"
                    and node.attr in ("environ", "getenv", "environb")):
                readers.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert all(r.startswith("stream/settings.py:") for r in readers), readers


def _agents_imports() -> dict[str, set[str]]:
    names = {p.stem for p in (ROOT / "agents").glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in (ROOT / "agents").glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("agents."):
                deps.add((node.module or "").split(".")[1])
        graph[path.stem] = {d for d in deps if d in names and d != path.stem}
    return graph


def test_agents_modules_import_one_way() -> None:
    graph = _agents_imports()
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join((*path, name))
        if name not in done:
            for dep in sorted(graph[name]):
                visit(dep, (*path, name))
            done.add(name)

    for name in sorted(graph):
        visit(name, ())
    assert "cli" not in graph["bench"]


def _ruleset(when: str, c_when: str = "false") -> Ruleset:
    rule = Rule(tag="fragile", description="d", owner="o", visibility="public", when=when, file="tags.yaml", line=3)
    return Ruleset(version="v", rules=(rule,), tiers=TierPolicy(c_when=c_when), weights=ScoreWeights(),
                   source_files=("tags.yaml",))


def test_rule_evaluation_errors_are_objects_with_the_former_text() -> None:
    ruleset = _ruleset("size(tags) > 1 && tags[5] == 'x'", c_when="tags[7] == 'x'")
    facts = {"tags": ["a", "b"], "spend_365d": 0.0}
    errors = RuleErrors()
    assert evaluate_tags(ruleset, facts, [], errors=errors) == {}
    assert assign_tier(ruleset, facts, None, None, errors=errors) == "D"
    rule_error, tier_error = errors
    assert isinstance(rule_error, RuleEvaluationError) and isinstance(rule_error, RulesError)
    assert (rule_error.rule, rule_error.condition, rule_error.file, rule_error.line) == ("fragile", "when",
                                                                                        "tags.yaml", 3)
    assert str(rule_error) == f"rule 'fragile': {rule_error.detail}" and rule_error.where == "rule 'fragile'"
    assert tier_error.rule is None and str(tier_error) == f"tiers.c_when: {tier_error.detail}"
    texts: list[str] = []  # the older form: the same text
    evaluate_tags(ruleset, facts, [], errors=texts)
    assign_tier(ruleset, facts, None, None, errors=texts)
    assert texts == [str(rule_error), str(tier_error)]
