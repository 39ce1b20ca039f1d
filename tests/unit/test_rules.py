"""Unit tests for the rules package: loading, checking, evaluation, tiers, score."""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from rules import (
    FieldType,
    Ruleset,
    RulesetError,
    ScoreWeights,
    assign_tier,
    default_rules_dir,
    evaluate_tags,
    load_ruleset,
    tier_cutoffs,
    weighted_score,
)

_INTS = (
    "orders_30d orders_90d orders_365d orders_total logins_7d logins_30d open_tickets "
    "open_complaints complaints_90d escalations_90d"
).split()
_FLOATS = "spend_30d spend_90d spend_365d spend_prev_90d max_order days_since_first_seen".split()
_NULL_FLOATS = (
    "mean_order_gap_days days_since_first_order days_since_last_order days_since_last_login "
    "days_since_last_activity"
).split()
_NULL_INTS = "first_order_at last_order_at last_login_at first_seen_at last_activity_at".split()


@pytest.fixture
def schema() -> dict[str, FieldType]:
    """The facts schema the stream code passes (owned by the stream team)."""
    fields = {n: FieldType("int") for n in _INTS}
    fields |= {n: FieldType("float") for n in _FLOATS}
    fields |= {n: FieldType("float", nullable=True) for n in _NULL_FLOATS}
    fields |= {n: FieldType("int", nullable=True) for n in _NULL_INTS}
    return fields


@pytest.fixture
def facts() -> Callable[..., dict[str, Any]]:
    """Factory for a full facts dict: a quiet, long-standing customer plus overrides."""

    def make(**overrides: Any) -> dict[str, Any]:
        base: dict[str, Any] = {n: 0 for n in _INTS}
        base |= {n: 0.0 for n in _FLOATS}
        base |= {n: None for n in _NULL_FLOATS + _NULL_INTS}
        base |= {"days_since_first_seen": 400.0, "tags": []}
        return base | overrides

    return make


@pytest.fixture
def default_ruleset(schema: dict[str, FieldType]) -> Ruleset:
    return load_ruleset(default_rules_dir(), schema)


@pytest.fixture
def write_rules(tmp_path: Path) -> Callable[..., Path]:
    """Write {file name: YAML text} into a fresh directory and return it."""

    def write(files: Mapping[str, str], name: str = "r") -> Path:
        directory = tmp_path / name
        directory.mkdir()
        for file, text in files.items():
            (directory / file).write_text(textwrap.dedent(text).lstrip("\n"))
        return directory

    return write


def _rule(tag: str = "x", when: str = "spend_365d >= 1", **extra: str) -> str:
    lines = [f"  - tag: {tag}", "    description: d", "    owner: team", f"    when: {when}"]
    lines += [f"    {k}: {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


# --- loading -------------------------------------------------------------------------


def test_default_ruleset_loads(default_ruleset: Ruleset) -> None:
    tags = {r.tag: r for r in default_ruleset.rules}
    assert set(tags) >= {
        "big_spender",
        "frequent_buyer",
        "new_customer",
        "inactive_30d",
        "has_open_complaint",
    }
    assert tags["big_spender"].exit == "spend_365d < 8000"
    assert tags["frequent_buyer"].exit is not None
    assert all(r.description and r.owner for r in default_ruleset.rules)
    assert len(default_ruleset.version) == 12
    int(default_ruleset.version, 16)
    assert default_ruleset.weights == ScoreWeights(0.4, 0.3, 0.2, 0.1)
    assert (default_ruleset.tiers.a_top_fraction, default_ruleset.tiers.b_top_fraction) == (
        0.05,
        0.20,
    )
    assert [Path(f).name for f in default_ruleset.source_files] == ["churn.yaml", "tags.yaml", "tiers.yaml"]


def test_defaults_when_no_tiers_or_score(write_rules: Callable[..., Path], schema: Any) -> None:
    rs = load_ruleset(write_rules({"a.yaml": "rules:\n" + _rule()}), schema)
    assert rs.weights == ScoreWeights()
    assert "orders_90d > 0" in rs.tiers.c_when
    assert rs.rules[0].visibility == "public"


ERROR_CASES = {
    "syntax": (_rule(when="spend_365d >="), 4, "when: CEL syntax error"),
    "unknown_field": (
        _rule(tag="big_spender", when="spend_356d >= 10000"),
        4,
        "rule 'big_spender': when: unknown field 'spend_356d' — did you mean 'spend_365d'?",
    ),
    "type_error": (_rule(when="spend_365d + 1 > 2.0"), 4, "when: type error"),
    "unguarded_null": (
        _rule(when="days_since_last_order > 60.0"),
        4,
        "'days_since_last_order' can be null; guard it: "
        "days_since_last_order != null && days_since_last_order > 60.0",
    ),
    "non_bool": (_rule(when="spend_365d * 2.0"), 4, "must evaluate to true/false"),
    "unknown_function": (_rule(when="foo(spend_365d)"), 4, "unknown function 'foo'"),
    "bad_tag": (_rule(tag="Big-Spender"), 1, "invalid tag name 'Big-Spender'"),
    "unknown_key": (
        _rule(whne="spend_365d > 1.0"),
        5,
        "unknown key 'whne' in a rule — did you mean 'when'?",
    ),
    "bad_visibility": (_rule(visibility="secret"), 5, "invalid visibility 'secret'"),
    "bad_exit": (_rule(exit="orders_9d < 4"), 5, "exit: unknown field 'orders_9d'"),
    "missing_owner": ("  - tag: x\n    description: d\n    when: true\n", 1, "missing required"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_rule_errors_name_file_line_rule(
    case: str, write_rules: Callable[..., Path], schema: Any
) -> None:
    body, line, expected = ERROR_CASES[case]
    directory = write_rules({"tags.yaml": "rules:\n" + _rule(tag="ok") + body})
    with pytest.raises(RulesetError) as info:
        load_ruleset(directory, schema)
    message = str(info.value)
    assert f"tags.yaml:{line + 5} rule '" in message  # 1 header line + 4 lines of rule 'ok'
    assert expected in message
    assert info.value.file is not None and info.value.file.endswith("tags.yaml")
    assert info.value.line == line + 5


def test_duplicate_tag_across_files(write_rules: Callable[..., Path], schema: Any) -> None:
    directory = write_rules({"a.yaml": "rules:\n" + _rule(), "b.yaml": "rules:\n" + _rule()})
    with pytest.raises(RulesetError, match=r"b\.yaml:2 rule 'x': duplicate tag 'x'.*a\.yaml:2"):
        load_ruleset(directory, schema)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "score:\n  weights: {spend: 0.5, engagement: 0.3, growth: 0.1, strategic: 0.0}\n",
            r"t\.yaml:2: score\.weights: score weights sum to 0\.9, not 1",
        ),
        ("score:\n  weights: {spend: 1.2, engagement: -0.2}\n", "must be non-negative"),
        ("score:\n  weights: {spend: 1.0, engagment: 0.0}\n", "did you mean 'engagement'"),
        ("tiers:\n  a_top_fraction: 0.3\n  b_top_fraction: 0.2\n", "larger than b_top"),
        ("tiers:\n  c_when: orders_90d > 0.5 &&\n", r"t\.yaml:2: c_when: CEL syntax error"),
        ("tiers:\n  c_when: days_since_first_order < 90.0\n", "can be null; guard it"),
        ("rulez: []\n", "unknown key 'rulez' in a rules file — did you mean 'rules'?"),
        ("rules: {a: 1}\n", "'rules' must be a list"),
        ("rules:\n  - [1, 2]\n", "a rule must be a mapping"),
        ("rules: [\n", r"t\.yaml:\d+: invalid YAML"),
    ],
)
def test_file_level_errors(
    text: str, expected: str, write_rules: Callable[..., Path], schema: Any
) -> None:
    with pytest.raises(RulesetError, match=expected):
        load_ruleset(write_rules({"t.yaml": text}), schema)


def test_section_defined_twice(write_rules: Callable[..., Path], schema: Any) -> None:
    tiers = "tiers:\n  a_top_fraction: 0.05\n"
    directory = write_rules({"a.yaml": tiers, "b.yaml": tiers})
    with pytest.raises(RulesetError, match=r"b\.yaml:1: 'tiers' is already defined in .*a\.yaml"):
        load_ruleset(directory, schema)


def test_empty_or_missing_directory(tmp_path: Path, schema: Any) -> None:
    with pytest.raises(RulesetError, match="no \\*.yaml files"):
        load_ruleset(tmp_path, schema)
    with pytest.raises(RulesetError, match="does not exist"):
        load_ruleset(tmp_path / "nope", schema)


def test_score_weights_validated_directly() -> None:
    with pytest.raises(RulesetError, match="sum to"):
        ScoreWeights(spend=0.5)
    with pytest.raises(RulesetError, match="non-negative"):
        ScoreWeights(spend=0.5, engagement=0.6, growth=-0.1, strategic=0.0)
    ScoreWeights(spend=0.1, engagement=0.2, growth=0.3, strategic=0.4)  # 1 within 1e-9


def test_version_is_deterministic_and_tracks_edits(
    write_rules: Callable[..., Path], schema: Any, tmp_path: Path
) -> None:
    directory = write_rules({"a.yaml": "rules:\n" + _rule()})
    first = load_ruleset(directory, schema).version
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    assert load_ruleset(copy, schema).version == first  # location does not matter
    (directory / "a.yaml").write_text("rules:\n" + _rule(when="spend_365d >= 2"))
    assert load_ruleset(directory, schema).version != first
    (copy / "a.yaml").rename(copy / "b.yaml")
    assert load_ruleset(copy, schema).version != first  # file names count too


# --- evaluation ----------------------------------------------------------------------


def test_hysteresis_big_spender(default_ruleset: Ruleset, facts: Callable[..., Any]) -> None:
    def step(spend: float, held: list[str]) -> dict[str, str]:
        return evaluate_tags(default_ruleset, facts(spend_365d=spend), held)

    assert "big_spender" not in step(9999.99, [])
    assert step(10000.0, [])["big_spender"] == "spend_365d=10000.00 >= 10000"
    assert step(9000.0, ["big_spender"])["big_spender"] == (
        "held: not yet spend_365d=9000.00 < 8000"
    )
    assert "big_spender" not in step(9000.0, [])  # not held: must reach the entry bar
    assert step(8000.0, ["big_spender"])["big_spender"].startswith("held: not yet")
    assert "big_spender" not in step(7999.99, ["big_spender"])


def test_reasons_for_default_rules(default_ruleset: Ruleset, facts: Callable[..., Any]) -> None:
    f = facts(
        spend_365d=12840.0,
        orders_90d=7,
        days_since_first_seen=3.5,
        days_since_last_activity=45.0,
        open_complaints=2,
    )
    assert evaluate_tags(default_ruleset, f, []) == {
        "big_spender": "spend_365d=12840.00 >= 10000",
        "frequent_buyer": "orders_90d=7 >= 6",
        "new_customer": "days_since_first_seen=3.50 <= 30.0",
        "inactive_30d": "days_since_last_activity=45.00 != null"
        " && days_since_last_activity=45.00 >= 30.0",
        "has_open_complaint": "open_complaints=2 > 0",
    }
    assert evaluate_tags(default_ruleset, facts(), []) == {}


def test_reasons_skip_strings_selections_and_bound_names(
    write_rules: Callable[..., Path], schema: dict[str, FieldType], facts: Callable[..., Any]
) -> None:
    schema = schema | {"prefs": FieldType("map"), "segment": FieldType("string", True)}
    when = (
        "'\"spend_365d\" in tags' != segment && tags.exists(t, t == 'vip') && "
        "has(prefs.spend_365d) && prefs.spend_365d > spend_365d"
    )
    directory = write_rules({"a.yaml": "rules:\n" + _rule(when=json.dumps(when))})  # JSON is YAML
    rs = load_ruleset(directory, schema)
    f = facts(tags=["vip"], segment=None, prefs={"spend_365d": 5.0}, spend_365d=1.5)
    assert evaluate_tags(rs, f, []) == {
        "x": "'\"spend_365d\" in tags' != segment=null && tags=[\"vip\"].exists(t, t == 'vip')"
        ' && has(prefs={"spend_365d": 5.0}.spend_365d)'
        ' && prefs={"spend_365d": 5.0}.spend_365d > spend_365d=1.50'
    }


def test_runtime_error_in_one_rule_does_not_stop_others(
    default_ruleset: Ruleset, facts: Callable[..., Any]
) -> None:
    errors: list[str] = []
    f = facts(orders_90d="seven", spend_365d=20000.0, open_complaints=1)
    fired = evaluate_tags(default_ruleset, f, ["frequent_buyer"], errors)
    assert set(fired) == {"big_spender", "has_open_complaint"}
    assert len(errors) == 1 and errors[0].startswith("rule 'frequent_buyer': TypeError")
    del f["open_complaints"]
    assert set(evaluate_tags(default_ruleset, f, [])) == {"big_spender"}  # no errors list


# --- tiers and score -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, (0, 0)), (1, (1, 1)), (19, (1, 4)), (20, (1, 4)), (21, (2, 5)), (100, (5, 20))],
)
def test_tier_cutoffs_exact(n: int, expected: tuple[int, int]) -> None:
    assert tier_cutoffs(n, 0.05, 0.20) == expected


def test_tier_cutoffs_other_fractions() -> None:
    assert tier_cutoffs(10, 0.1, 0.3) == (1, 3)  # 0.1*10 and 0.3*10 are not > 1 and 3
    assert tier_cutoffs(7, 0.0, 1.0) == (0, 7)
    with pytest.raises(ValueError):
        tier_cutoffs(-1, 0.05, 0.2)


def test_assign_tier_boundaries(default_ruleset: Ruleset, facts: Callable[..., Any]) -> None:
    def tier(a: float | None, b: float | None, **kw: Any) -> str:
        return assign_tier(default_ruleset, facts(**kw), a, b)

    assert tier(5000.0, 1000.0, spend_365d=5000.0) == "A"
    assert tier(5000.0, 1000.0, spend_365d=4999.99) == "B"
    assert tier(5000.0, 1000.0, spend_365d=1000.0) == "B"
    assert tier(5000.0, 1000.0, spend_365d=999.99) == "D"
    assert tier(None, 1000.0, spend_365d=1e9) == "B"
    assert tier(None, None, spend_365d=1e9) == "D"
    assert tier(0.0, 0.0, spend_365d=0.0) == "D"  # no spend never qualifies for A/B
    growing = {"orders_90d": 2, "spend_90d": 300.0, "spend_prev_90d": 100.0}
    assert tier(5000.0, 1000.0, spend_365d=400.0, **growing) == "C"
    shrinking = growing | {"spend_prev_90d": 500.0}
    assert tier(5000.0, 1000.0, spend_365d=800.0, **shrinking) == "D"
    assert tier(5000.0, 1000.0, **shrinking, days_since_first_order=90.0) == "C"
    assert tier(5000.0, 1000.0, **shrinking, days_since_first_order=90.5) == "D"
    assert tier(5000.0, 1000.0, **(growing | {"orders_90d": 0})) == "D"


def test_weighted_score() -> None:
    weights = ScoreWeights()
    full = {"spend": 100, "engagement": 100, "growth": 100, "strategic": 100}
    assert weighted_score(weights, full) == (
        100.0,
        {"spend": 40.0, "engagement": 30.0, "growth": 20.0, "strategic": 10.0},
    )
    score, parts = weighted_score(weights, {"spend": 80.0, "engagement": 55.5})
    assert score == 48.65 and parts == {
        "spend": 32.0,
        "engagement": 16.65,
        "growth": 0.0,
        "strategic": 0.0,
    }
    assert weighted_score(weights, {"spend": 250.0, "growth": -40.0})[0] == 40.0
    assert weighted_score(weights, {})[0] == 0.0
    assert weighted_score(weights, {"spend": float("nan")})[0] == 0.0
