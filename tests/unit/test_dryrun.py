"""The pure dry-run comparison (rules/dryrun.py) and reading a stored view back into facts."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest

from agents.cli.rules_cli import view_facts
from agents.engine.evaluate import Cutoffs, Evaluator, facts_schema
from rules import Ruleset, default_rules_dir, load_ruleset
from rules.dryrun import Customer, dry_run, render_text
from rules.testing import neutral_facts
from stream.domain.events import parse_event
from stream.domain.state import AGGREGATE_FIELDS, CustomerState

DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z

CANDIDATE = """
rules:
  - tag: big_spender
    description: Spent at least 5,000 in the last 365 days.
    owner: revenue
    when: spend_365d >= 5000
    exit: spend_365d < 4000
  - tag: frequent_buyer
    description: Placed at least 6 orders in the last 90 days.
    owner: revenue
    when: orders_90d >= 6
    exit: orders_90d < 4
  - tag: fragile
    description: Divides by zero for customers with exactly 7 orders (the load-time samples miss it).
    owner: qa
    when: 100 / (orders_total - 7) > 1
tiers:
  a_top_fraction: 0.05
  b_top_fraction: 0.20
"""


@pytest.fixture(scope="module")
def candidate(tmp_path_factory: pytest.TempPathFactory) -> Ruleset:
    directory = tmp_path_factory.mktemp("candidate")
    (directory / "rules.yaml").write_text(textwrap.dedent(CANDIDATE))
    return load_ruleset(directory, facts_schema())


def facts(**overrides: Any) -> dict[str, Any]:
    return neutral_facts(facts_schema()) | {"days_since_first_seen": 400.0, "orders_total": 1} | overrides


def test_gains_losses_and_examples(candidate: Ruleset) -> None:
    customers: list[Customer] = [
        ("c1", facts(spend_365d=6000.0), ["frequent_buyer"], "B"),  # gains big_spender, loses frequent_buyer
        ("c2", facts(spend_365d=7000.0), [], "C"),  # gains big_spender
        ("c3", facts(spend_365d=12000.0), ["big_spender"], "A"),  # keeps it
        ("c4", facts(spend_365d=4500.0), ["big_spender"], "B"),  # held by the candidate's exit
        ("c5", facts(spend_365d=3000.0), ["big_spender", "new_customer"], "D"),  # loses both
        ("c6", facts(spend_365d=5000.0), [], "D"),
        ("c7", facts(spend_365d=5500.0), [], "D"),
    ]
    report = dry_run(customers, candidate, a_cut=12000.0, b_cut=6000.0)
    assert report.evaluated == 7
    big = report.tags["big_spender"]
    assert (big.before, big.after, big.gained, big.lost) == (3, 6, 4, 1)
    assert big.gain_examples == [("c1", "spend_365d=6000.00 >= 5000"), ("c2", "spend_365d=7000.00 >= 5000"),
                                 ("c6", "spend_365d=5000.00 >= 5000")]  # at most 3
    assert big.loss_examples == ["c5"]
    assert report.tags["frequent_buyer"].lost == 1 and report.tags["frequent_buyer"].loss_examples == ["c1"]
    # a tag the candidate does not define is lost by everyone who holds it
    assert report.undefined_tags == ["new_customer"]
    assert report.tags["new_customer"].lost == 1
    assert report.changed_tags() == ["big_spender", "frequent_buyer", "new_customer"]


def test_tier_moves_counted_with_examples(candidate: Ruleset) -> None:
    customers: list[Customer] = [
        ("a1", facts(spend_365d=20000.0), [], "B"),
        ("a2", facts(spend_365d=15000.0), [], "B"),
        ("b1", facts(spend_365d=6000.0), [], "B"),
        ("d1", facts(spend_365d=100.0), [], "C"),
        ("n1", facts(), [], None),  # a view without a tier yet
    ]
    report = dry_run(customers, candidate, a_cut=15000.0, b_cut=6000.0)
    moves = {k: (m.count, m.examples) for k, m in report.tier_moves.items()}
    assert moves == {("B", "A"): (2, ["a1", "a2"]), ("C", "D"): (1, ["d1"]), ("-", "D"): (1, ["n1"])}
    assert report.tiers_before == {"B": 3, "C": 1, "-": 1}
    assert report.tiers_after == {"A": 2, "B": 1, "D": 2}


def test_rule_errors_are_grouped_per_rule(candidate: Ruleset) -> None:
    customers: list[Customer] = [(f"z{i}", facts(spend_365d=10.0, orders_total=7), [], "D") for i in range(5)]
    report = dry_run(customers, candidate, None, None)
    [(where, errors)] = report.errors.items()
    assert where == "rule 'fragile'" and errors.count == 5
    assert [e.split(":")[0] for e in errors.examples] == ["z0", "z1", "z2"]


def test_json_and_text_output(candidate: Ruleset) -> None:
    report = dry_run([("c1", facts(spend_365d=6000.0), ["vip"], "B")], candidate, None, None)
    report.skip("bad", "not JSON")
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["evaluated"] == 1 and doc["ruleset_version"] == candidate.version
    gain = {"customer_id": "c1", "reason": "spend_365d=6000.00 >= 5000"}
    assert doc["tags"]["big_spender"]["gain_examples"] == [gain]
    assert doc["tags"]["vip"] == {"before": 1, "after": 0, "gained": 0, "lost": 1, "gain_examples": [],
                                  "loss_examples": ["c1"], "defined": False}
    assert doc["tier_moves"] == [{"from": "B", "to": "D", "count": 1, "examples": ["c1"]}]
    assert doc["skipped"] == {"not JSON": {"count": 1, "examples": ["bad"]}}
    text = render_text(report)
    assert "1 customers evaluated" in text and "nothing was changed" in text
    assert "    + c1: spend_365d=6000.00 >= 5000" in text
    assert "(not defined by the candidate)" in text and "B -> D" in text
    assert "frequent_buyer" in text  # defined tags are listed even if nobody holds them


def test_manual_tags_are_kept(candidate: Ruleset) -> None:
    report = dry_run([], candidate, None, None)
    report.add("m1", facts(), ["vip_watch"], "D", manual_tags=["vip_watch"])
    assert report.tags["vip_watch"].lost == 0 and report.tags["vip_watch"].after == 1
    assert report.changed_tags() == []


def test_view_facts_round_trips_the_workers_view() -> None:
    """The view the worker writes to Redis reads back as the very facts it evaluated."""
    ruleset = load_ruleset(default_rules_dir(), facts_schema())
    state = CustomerState()
    for i, (day, amount) in enumerate([(1, "6000"), (3, "5000.5")]):
        raw = orjson.dumps({"event_id": f"e{i}", "customer_id": "c", "ts": T0 + day * DAY,
                            "order_id": f"o{i}", "amount": amount})
        state.apply(parse_event("order", raw, currency="USD", max_bytes=1 << 20), "orders:0", i, f"order:e{i}")
    state.profile = {"customer_id": "c", "company_size": "51-200", "industry": "retail", "region": "emea",
                     "strategic_account": True, "customer_since": T0 - 100 * DAY, "attributes": {"plan": "gold"}}
    state.manual = {"tags": {"vip_watch": {"author": "jane", "note": "", "at": T0}}}
    evaluator = Evaluator(ruleset)
    now = T0 + 10 * DAY + 1234
    evaluated, _ = evaluator.evaluate("c", state, now, Cutoffs(), {"kind": "event"})
    got, tags, tier, manual = view_facts(orjson.dumps(evaluator.view_document("c", state, evaluated)), facts_schema())
    assert got == {k: v for k, v in evaluated.items() if k != "tags"}
    assert tags == ["big_spender", "new_customer", "vip_watch"] and tier == "C" and manual == ["vip_watch"]
    assert got["last_order_at"] == T0 + 3 * DAY and got["customer_since_days"] == pytest.approx(110.0, abs=0.01)


def test_view_facts_defaults_fields_an_older_view_lacks() -> None:
    schema = facts_schema()
    aggregates = {n: 0 if t.kind == "int" else 0.0 for n, t in schema.items() if not t.nullable}
    aggregates = {n: v for n, v in aggregates.items() if n in AGGREGATE_FIELDS}
    raw = json.dumps({"tags": ["big_spender"], "tier": "B", "aggregates": aggregates})
    got, tags, tier, manual = view_facts(raw, schema)
    assert got["last_order_at"] is None and got["company_size"] == "" and got["strategic_account"] is False
    assert (tags, tier, manual) == (["big_spender"], "B", [])


@pytest.mark.parametrize(("raw", "why"), [
    (b"{", "not JSON"),
    (b'{"tags": []}', "not a customer view (no tags or aggregates)"),
    (b'{"tags": [], "aggregates": {}}', "view lacks aggregate"),
])
def test_view_facts_rejects_unusable_views(raw: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("(", r"\(").replace(")", r"\)")):
        view_facts(raw, facts_schema())


def test_shipped_ruleset_on_itself_changes_nothing() -> None:
    ruleset = load_ruleset(default_rules_dir(), facts_schema())
    customers = [("c1", facts(spend_365d=12000.0), ["big_spender"], "D"),
                 ("c2", facts(spend_365d=9000.0), ["big_spender"], "D")]
    report = dry_run(customers, ruleset, None, None)
    assert report.changed_tags() == [] and not report.tier_moves and not report.errors
    assert Path(ruleset.source_files[0]).parent == default_rules_dir()
