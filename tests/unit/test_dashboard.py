"""Dashboard pure logic: feed items filtered by role, tier counts, monthly spend from day buckets."""

from __future__ import annotations

from stream.access.auth import Principal
from stream.domain.events import AMOUNT_SCALE, parse_ts
from stream.view.dashboard_feed import feed_item, spend_series, tier_counts

RULES = {"big_spender": ("public", "revenue"), "margin_watch": ("restricted", "finance_team"),
         "frequent_buyer": ("team", "revenue")}
CHANGE = {"customer_id": "c1", "tags": ["big_spender", "frequent_buyer", "margin_watch"],
          "added": ["big_spender", "margin_watch"], "removed": ["frequent_buyer"], "tier": "A", "previous_tier": "B",
          "score": 80.0, "reasons": {"big_spender": "spend_365d=12840.00 >= 10000", "margin_watch": "x"},
          "event_time": "2026-11-22T10:15:00.000Z"}
ALERT = {"customer_id": "c1", "level": "high", "previous_level": "medium", "risk": 0.8,
         "reasons": ["spend_90d=10.00 fell", "no paid order for 41 days"], "event_time": "2026-11-22T10:15:00.000Z"}


def who(role: str, teams: frozenset[str] = frozenset()) -> Principal:
    return Principal(name=role, role=role, teams=teams)  # type: ignore[arg-type]


def test_viewer_sees_tiers_and_public_tags_only_and_no_churn() -> None:
    item = feed_item("tag_change", CHANGE, who("viewer"), RULES)
    assert item is not None
    assert item["tags"] == ["big_spender"] and item["added"] == ["big_spender"] and item["removed"] == []
    assert item["tier"] == "A" and "reasons" not in item and "score" not in item
    assert feed_item("churn_alert", ALERT, who("viewer"), RULES) is None


def test_sales_see_reasons_with_money_masked_finance_sees_money() -> None:
    sales = feed_item("tag_change", CHANGE, who("sales"), RULES)
    assert sales is not None and sales["removed"] == ["frequent_buyer"] and "margin_watch" not in sales["added"]
    assert "12840" not in sales["reasons"]["big_spender"] and sales["reasons"]["big_spender"].startswith("spend_365d=")
    finance = feed_item("tag_change", CHANGE, who("finance", frozenset({"finance_team"})), RULES)
    assert finance is not None and finance["reasons"] == {"big_spender": "spend_365d=12840.00 >= 10000",
                                                          "margin_watch": "x"}
    alert = feed_item("churn_alert", ALERT, who("sales"), RULES)
    assert alert is not None and alert["level"] == "high" and "10.00" not in alert["reasons"][0]
    assert alert["reasons"][1] == "no paid order for 41 days"


def test_tier_counts() -> None:
    assert tier_counts([{"tier": "A"}, {"tier": "A"}, {"tier": None}, None, {"tier": "C"}]) == {
        "A": 2, "B": 0, "C": 1, "D": 0, "none": 1}


def test_spend_series_sums_day_buckets_per_month() -> None:
    day = parse_ts("2026-11-02T00:00:00Z") // 86_400_000
    days = {day: [int(12.5 * AMOUNT_SCALE), 1, 0, 0, 0], day - 2: [int(2.5 * AMOUNT_SCALE), 1, 0, 0, 0],
            day - 40: [int(7 * AMOUNT_SCALE), 1, 0, 0, 0], day - 400: [AMOUNT_SCALE, 1, 0, 0, 0]}
    series = spend_series(days, parse_ts("2026-11-02T10:00:00Z"))
    assert [p["month"] for p in series][:2] == ["2025-12", "2026-01"] and series[-1]["month"] == "2026-11"
    assert series[-1]["spend"] == 12.5 and series[-2]["spend"] == 2.5 and series[-3]["spend"] == 7.0
    assert sum(p["spend"] for p in series) == 22.0  # the 400-day-old bucket is outside the 12 months
