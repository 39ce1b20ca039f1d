"""Rule files from untrusted users cannot run code, read files, hang the loader or slow the hot path."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from agents.engine.evaluate import facts_schema
from rules import RulesetError, load_ruleset
from rules.check import MAX_MACRO_DEPTH, check_cost
from rules.expr import compile_expr, macro_depth


def load(tmp_path: Path, when: str) -> None:
    (tmp_path / "r.yaml").write_text(textwrap.dedent(f"""\
        rules:
          - tag: evil
            description: untrusted
            owner: nobody
            when: {when!r}
        """))
    load_ruleset(tmp_path, facts_schema())


@pytest.mark.parametrize(("when", "message"), [
    ('open("/etc/passwd") != ""', "unknown function 'open'"),
    ('__import__("os").system("touch PWNED") == 0', "unknown function"),
    ('exec("import os") == null', "unknown function 'exec'"),
    ("size(tags.map(a, tags.map(b, tags.map(c, a + b + c)))) > 0", "nest 3 deep; the limit is 2"),
    ("attributes.all(k, attributes.all(j, attributes.all(i, k != j)))", "nest 3 deep"),
    ("spend_30d > 0.0 || " * 200 + "true", "characters; the limit is 2000"),
])
def test_dangerous_or_costly_rules_are_rejected_quickly(tmp_path: Path, when: str, message: str) -> None:
    pwned = tmp_path / "pwned"
    started = time.perf_counter()
    with pytest.raises(RulesetError, match=message):
        load(tmp_path, when.replace("PWNED", str(pwned)))
    assert time.perf_counter() - started < 5  # rejected statically: the 3-deep map alone would run for minutes
    assert not pwned.exists()


def test_yaml_tags_cannot_construct_python_objects(tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    (tmp_path / "r.yaml").write_text(f"rules: !!python/object/apply:os.system ['touch {pwned}']\n")
    with pytest.raises(RulesetError):
        load_ruleset(tmp_path, facts_schema())
    assert not pwned.exists()


def test_cost_limit_measures_the_largest_facts() -> None:
    schema = facts_schema()
    two_deep = compile_expr("tags.exists(a, tags.exists(b, a + b == 'never'))")
    assert macro_depth(two_deep.source) == 2 == MAX_MACRO_DEPTH
    with pytest.raises(RulesetError, match=r"evaluation takes .* ms on the largest facts; the limit is 0.001 ms"):
        check_cost(two_deep, schema, limit_ms=0.001)
    assert check_cost(compile_expr("spend_365d >= 10000.0"), schema) < 5.0


def test_macro_depth_counts_nesting_not_sequence() -> None:
    assert macro_depth("spend_30d > 0.0") == 0
    assert macro_depth("tags.exists(t, t == 'a') && tags.all(t, t != 'b')") == 1
    assert macro_depth("tags.exists(t, size(t) > 0 && tags.all(u, (u != t)))") == 2
    assert macro_depth("tags.exists(t, \"tags.all(\" == t)") == 1  # inside a string: not a macro
