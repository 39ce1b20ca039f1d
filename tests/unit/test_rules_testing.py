"""The rule test-case runner (rules/testing.py) and the `tagger rules validate/test` commands."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from agents.cli.main import main
from agents.engine.evaluate import facts_schema
from rules import Ruleset, default_rules_dir, load_ruleset
from rules.testing import CaseFileError, load_cases, neutral_facts, run_cases

EXAMPLES = Path(__file__).resolve().parents[2] / "rules" / "examples"


@pytest.fixture(scope="module")
def ruleset() -> Ruleset:
    return load_ruleset(default_rules_dir(), facts_schema())


def write(tmp_path: Path, text: str, name: str = "cases.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def run(tmp_path: Path, ruleset: Ruleset, text: str) -> list[str]:
    return [r.describe() for r in run_cases(ruleset, load_cases(write(tmp_path, text), facts_schema()))]


def test_neutral_facts_cover_the_schema() -> None:
    facts = neutral_facts(facts_schema())
    assert set(facts) == set(facts_schema())
    assert facts["orders_90d"] == 0 and facts["spend_365d"] == 0.0 and facts["last_order_at"] is None


def test_passing_case_with_int_for_float_and_reasons(tmp_path: Path, ruleset: Ruleset) -> None:
    lines = run(tmp_path, ruleset, """
        cases:
          - name: big and frequent
            facts: {spend_365d: 12840, orders_90d: 7, days_since_first_seen: 400}
            cutoffs: {a: 20000, b: 5000}
            expect:
              tags: [big_spender, frequent_buyer]
              tier: B
              reasons: {big_spender: "spend_365d=12840.00 >= 10000"}
        """)
    assert lines == ["PASS  big and frequent"]


def test_failing_case_names_every_difference(tmp_path: Path, ruleset: Ruleset) -> None:
    [line] = run(tmp_path, ruleset, """
        defaults:
          facts: {days_since_first_seen: 400}
        cases:
          - name: wrong on purpose
            facts: {spend_365d: 9400}
            tags: [big_spender]
            expect:
              tags: [frequent_buyer]
              tier: A
              reasons: {big_spender: "spend_365d=9400.00 >= 10000"}
        """)
    assert line.startswith("FAIL  wrong on purpose: ")
    assert "tags: expected [frequent_buyer], got [big_spender]" in line
    assert "missing [frequent_buyer]" in line
    assert "unexpected big_spender (held: not yet spend_365d=9400.00 < 8000)" in line
    assert "tier: expected A, got D (no cutoffs: nobody is in A or B)" in line
    assert "reason for big_spender: expected 'spend_365d=9400.00 >= 10000', " \
           "got 'held: not yet spend_365d=9400.00 < 8000'" in line


def test_has_and_lacks(tmp_path: Path, ruleset: Ruleset) -> None:
    lines = run(tmp_path, ruleset, """
        cases:
          - name: new and complaining
            facts: {open_complaints: 1}
            expect: {has: [new_customer, has_open_complaint], lacks: [big_spender]}
          - name: wrong
            facts: {open_complaints: 1}
            expect: {has: [big_spender], lacks: [has_open_complaint]}
        """)
    assert lines[0] == "PASS  new and complaining"
    assert lines[1] == ("FAIL  wrong: missing tag big_spender; "
                        "unexpected tag has_open_complaint (open_complaints=1 > 0)")


def test_unknown_fact_suggests_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, """
        cases:
          - name: fine
            expect: {tags: [new_customer]}
          - name: typo
            facts: {spend_356d: 1}
            expect: {tags: []}
        """)
    with pytest.raises(CaseFileError) as info:
        load_cases(path, facts_schema())
    assert str(info.value) == f"{path}:6 case 'typo': unknown fact 'spend_356d' — did you mean 'spend_365d'?"


@pytest.mark.parametrize(("body", "problem"), [
    ("facts: {orders_90d: 1.5}\n    expect: {tags: []}", "fact 'orders_90d' must be a whole number"),
    ("facts: {spend_365d: null}\n    expect: {tags: []}", "fact 'spend_365d' cannot be null"),
    ("facts: {tags: [a]}\n    expect: {tags: []}", "current tags go in the case's 'tags:'"),
    ("expect: {tier: E}", "tier must be one of A, B, C, D"),
    ("tier: AA\n    expect: {tier: A}", "tier must be one of A, B, C, D, got 'AA'"),
    ("cutoffs: {a_exit: many}\n    expect: {tier: A}", "cut-off 'a_exit' must be a number or null"),
    ("expct: {tags: []}", "unknown key 'expct' in a case"),
    ("facts: {}", "missing 'expect'"),
])
def test_bad_case_is_named(tmp_path: Path, body: str, problem: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"cases:\n  - name: the bad one\n    {body}\n")
    with pytest.raises(CaseFileError) as info:
        load_cases(path, facts_schema())
    assert f"{path}:" in str(info.value) and "case 'the bad one'" in str(info.value)
    assert problem in str(info.value)


def test_unknown_expected_tag_suggests_a_rule(tmp_path: Path, ruleset: Ruleset) -> None:
    with pytest.raises(CaseFileError, match="case 'x': expects tag 'big_spendr'.*did you mean 'big_spender'"):
        run(tmp_path, ruleset, "cases:\n  - name: x\n    expect: {has: [big_spendr]}\n")


def test_invalid_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "cases:\n  - name: x\n    expect: {has: [a]\n")
    with pytest.raises(CaseFileError, match=rf"^{path}:\d+: invalid YAML"):
        load_cases(path, facts_schema())


def test_shipped_examples_pass_via_the_cli() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert files, "rules/examples/*.yaml is missing"
    result = CliRunner().invoke(main, ["rules", "test", *map(str, files)])
    assert result.exit_code == 0, result.output
    assert " 0 failed" in result.output and "FAIL" not in result.output
    assert int(result.output.strip().splitlines()[-1].split()[0]) >= 8


def test_worked_examples_pass_via_the_cli() -> None:
    worked = EXAMPLES / "worked"
    validate = CliRunner().invoke(main, ["rules", "validate", str(worked / "rules")])
    assert validate.exit_code == 0, validate.output
    result = CliRunner().invoke(main, ["rules", "test", str(worked / "rules"), str(worked / "cases.yaml")])
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output


def test_cli_test_exits_1_on_failure_and_on_invalid_file(tmp_path: Path) -> None:
    failing = write(tmp_path, "cases:\n  - name: nope\n    expect: {tier: A}\n", "failing.yaml")
    broken = write(tmp_path, "cases:\n  - name: typo\n    facts: {ordres_90d: 1}\n    expect: {tier: D}\n",
                   "broken.yaml")
    result = CliRunner().invoke(main, ["rules", "test", str(failing), str(broken)])
    assert result.exit_code == 1
    assert "FAIL  nope: tier: expected A, got D" in result.output
    assert f"{broken}:3 case 'typo': unknown fact 'ordres_90d'" in result.output
    assert "0 passed, 1 failed, 1 invalid case file" in result.output


def test_validate_shipped_rules_exits_0() -> None:
    ruleset = load_ruleset(default_rules_dir(), facts_schema())
    result = CliRunner().invoke(main, ["rules", "validate"])
    assert result.exit_code == 0, result.output
    assert result.output == f"ok: {len(ruleset.rules)} rules, version {ruleset.version}\n"


def test_validate_broken_copy_exits_1_with_file_line_rule(tmp_path: Path) -> None:
    shutil.copytree(default_rules_dir(), tmp_path / "rules")
    tags = tmp_path / "rules" / "tags.yaml"
    text = tags.read_text()
    assert "when: orders_90d >= 6" in text
    tags.write_text(text.replace("when: orders_90d >= 6", "when: orders_9d >= 6"))
    line = tags.read_text().splitlines().index("    when: orders_9d >= 6") + 1
    result = CliRunner().invoke(main, ["rules", "validate", str(tmp_path / "rules")])
    assert result.exit_code == 1
    assert f"{tags}:{line} rule 'frequent_buyer': when: unknown field 'orders_9d'" in result.output
    assert "did you mean 'orders_90d'?" in result.output


def test_rules_readme_documents_every_fact_field() -> None:
    text = (EXAMPLES.parent / "README.md").read_text()
    assert [name for name in facts_schema() if f"`{name}`" not in text] == []
