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

from .test_layout import cycles, imports, project_modules

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


def test_agents_modules_import_one_way() -> None:
    """Every import among agents/ modules (in functions too) goes one way; the bench never imports the CLI."""
    edges = [(i.source, i.target) for i in imports(project_modules())
             if i.source.startswith("agents.") and i.target.startswith("agents.")]
    assert cycles(edges) == []
    assert [e for e in edges if e[0].startswith("agents.bench") and e[1].startswith("agents.cli")] == []


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
