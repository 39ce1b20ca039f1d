"""Field filtering by role (the README matrix), on the document the API serves (no broker)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from agents.engine.evaluate import Cutoffs, Evaluator, facts_schema
from rules import default_rules_dir, load_ruleset
from stream.access.auth import Principal
from stream.access.visibility import MONETARY_AGGREGATES, can_see_tag, filter_customer, mask_money
from stream.domain.events import parse_event
from stream.domain.manual import apply_command
from stream.domain.state import CustomerState

RULES = {"big_spender": ("public", "revenue"), "inactive_30d": ("team", "retention"),
         "has_open_complaint": ("restricted", "support")}
DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01


def principal(role: str, *teams: str) -> Principal:
    return Principal(role, role, frozenset(teams))  # type: ignore[arg-type]


def rich_customer() -> dict[str, Any]:
    """A real view document: big spender (public), inactive (team), open complaint (restricted), a manual tag."""
    ruleset = load_ruleset(default_rules_dir(), facts_schema())
    evaluator, state = Evaluator(ruleset), CustomerState()
    events = [("order", {"order_id": "o1", "amount": "7000.25"}), ("order", {"order_id": "o2", "amount": "5839.75"}),
              ("ticket", {"ticket_id": "t1", "action": "opened", "category": "complaint"})]
    for i, (kind, fields) in enumerate(events):
        raw = {"event_id": f"e{i}", "customer_id": "c1", "ts": T0 + i * DAY, **fields}
        state.apply(parse_event(kind, orjson.dumps(raw), currency="USD", max_bytes=1 << 20), "t:0", i, f"e{i}")
    state.manual = apply_command(None, {"action": "add_tag", "tag": "vip_watch", "author": "sam", "note": "call"},
                                 T0)
    now = T0 + 60 * DAY
    facts, _ = evaluator.evaluate("c1", state, now, Cutoffs(), {"kind": "event"})
    evaluator.churn_alert("c1", state, facts, now, {"kind": "event"})
    return evaluator.view_document("c1", state, evaluator.facts(state, now))


DOC = rich_customer()


def test_the_fixture_document_has_every_kind_of_tag() -> None:
    assert set(DOC["tags"]) >= {"big_spender", "inactive_30d", "has_open_complaint", "vip_watch"}
    assert DOC["aggregates"]["spend_365d"] == 12840.0
    assert DOC["reasons"]["big_spender"] == "spend_365d=12840.00 >= 10000"


def test_viewer_sees_tier_and_public_tags_only() -> None:
    body, disclosed = filter_customer(DOC, principal("viewer"), RULES)
    assert set(body) == {"customer_id", "tier", "tags", "evaluated_at", "ruleset_version"}
    assert body["tags"] == ["big_spender"]
    assert disclosed == ["tier", "tags:public"]
    assert "12840" not in orjson.dumps(body).decode()


def test_sales_sees_team_evidence_without_money_or_restricted_tags() -> None:
    body, disclosed = filter_customer(DOC, principal("sales"), RULES)
    assert set(body["tags"]) == {"big_spender", "inactive_30d", "vip_watch"}
    assert set(body["reasons"]) == set(body["tags"])
    assert body["reasons"]["big_spender"] == "spend_365d=… >= 10000"
    assert set(body["manual"]["tags"]) == {"vip_watch"}
    assert not MONETARY_AGGREGATES & set(body["aggregates"]) and body["aggregates"]["orders_total"] == 2
    assert "aggregates:monetary" not in disclosed and "tags:restricted" not in disclosed
    text = orjson.dumps(body).decode()
    assert "12840" not in text and "7000.25" not in text and "5839.75" not in text
    assert "has_open_complaint" not in text


def test_owning_team_sees_its_restricted_tags() -> None:
    body, disclosed = filter_customer(DOC, principal("sales", "support"), RULES)
    assert "has_open_complaint" in body["tags"] and "has_open_complaint" in body["reasons"]
    assert "tags:restricted" in disclosed
    other, _ = filter_customer(DOC, principal("finance", "revenue"), RULES)
    assert "has_open_complaint" not in other["tags"]


def test_finance_sees_money_but_not_restricted_tags() -> None:
    body, disclosed = filter_customer(DOC, principal("finance"), RULES)
    assert body["aggregates"]["spend_365d"] == 12840.0 and body["aggregates"]["max_order"] == 7000.25
    assert body["reasons"]["big_spender"] == "spend_365d=12840.00 >= 10000"
    assert "has_open_complaint" not in body["tags"] and "aggregates:monetary" in disclosed


def test_admin_sees_the_whole_document() -> None:
    body, disclosed = filter_customer(DOC, principal("admin"), RULES)
    assert body == DOC and disclosed == ["all"]


def test_fields_outside_the_matrix_are_dropped_for_everyone_but_admin() -> None:
    doc = {**DOC, "internal_note": "x"}
    for role in ("viewer", "sales", "finance"):
        assert "internal_note" not in filter_customer(doc, principal(role), RULES)[0]


@pytest.mark.parametrize(("tag", "visible"), [
    ("big_spender", {"viewer", "sales", "finance", "admin", "support"}),
    ("inactive_30d", {"sales", "finance", "admin", "support"}),
    ("vip_watch", {"sales", "finance", "admin", "support"}),  # manual: team
    ("has_open_complaint", {"admin", "support"}),
])
def test_tag_visibility_per_role(tag: str, visible: set[str]) -> None:
    who = {r: principal(r) for r in ("viewer", "sales", "finance", "admin")}
    who["support"] = principal("sales", "support")
    assert {name for name, p in who.items() if can_see_tag(p, tag, RULES)} == visible


def test_masking_hides_amounts_and_keeps_counts_and_thresholds() -> None:
    assert mask_money("spend_90d=1200.00 - spend_prev_90d=300.00 > 500") == "spend_90d=… - spend_prev_90d=… > 500"
    assert mask_money("spend_365d=7200.00 >= 5000 && days_since_last_order=60.00 >= 45.0") == \
        "spend_365d=… >= 5000 && days_since_last_order=60.00 >= 45.0"
    assert mask_money("max_order=1e+20 > 5") == "max_order=… > 5"
    assert mask_money("spend fell from 900.00 to 120.50 (last 90 days vs the 90 before)") == \
        "spend fell from … to … (last 90 days vs the 90 before)"
    assert mask_money("orders fell from 6 to 2 (last 90 days vs the 90 before)") == \
        "orders fell from 6 to 2 (last 90 days vs the 90 before)"
