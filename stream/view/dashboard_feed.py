"""The web dashboard's pure part: feed items filtered by role, tier counts, a customer's monthly spend.

The HTTP side (agents/dashboard.py) authenticates the caller and calls these;
the same access rules as the customer API apply (stream/access/visibility.py): viewers see
tiers and the tags their role may see, no reasons, scores or churn; sales see
reasons with money masked; finance and admin see money.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from stream.access.auth import Principal
from stream.access.visibility import TagRules, can_see_tag, mask_money, sees_money
from stream.domain.events import AMOUNT_SCALE

TIERS = ("A", "B", "C", "D")


def feed_item(kind: str, message: Mapping[str, Any], principal: Principal, rules: TagRules) -> dict[str, Any] | None:
    """A ``tag-changes`` or ``churn-alerts`` message as ``principal`` may see it; None: not for this role."""
    money = sees_money(principal)

    def show(text: str) -> str:
        return text if money else mask_money(text)

    base = {"type": kind, "customer_id": message.get("customer_id"), "event_time": message.get("event_time")}
    if kind == "churn_alert":
        if principal.role == "viewer":
            return None
        return {**base, "level": message.get("level"), "previous_level": message.get("previous_level"),
                "risk": message.get("risk"), "reasons": [show(str(r)) for r in message.get("reasons") or []]}
    visible = [t for t in message.get("tags") or [] if can_see_tag(principal, t, rules)]
    added = [t for t in message.get("added") or [] if can_see_tag(principal, t, rules)]
    item = {**base, "tier": message.get("tier"), "previous_tier": message.get("previous_tier"), "tags": visible,
            "added": added, "removed": [t for t in message.get("removed") or [] if can_see_tag(principal, t, rules)],
            "erased": bool(message.get("erased"))}
    if principal.role != "viewer":
        reasons = message.get("reasons") or {}
        item["score"] = message.get("score")
        item["reasons"] = {t: show(str(reasons[t])) for t in added if t in reasons}
    return item


def tier_counts(views: Iterable[Mapping[str, Any] | None]) -> dict[str, int]:
    """Customers per tier (every tier present, 0 when empty) and ``none`` for customers without one."""
    counts: Counter[str] = Counter({t: 0 for t in TIERS})
    for view in views:
        if view is not None:
            counts[str(view.get("tier") or "none")] += 1
    return dict(counts)


def spend_series(days: Mapping[int, list[int]], now_ms: int, months: int = 12) -> list[dict[str, Any]]:
    """Net spend per calendar month (UTC) for the last ``months`` months, oldest first, from day buckets."""
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    keys = []
    year, month = now.year, now.month
    for _ in range(months):
        keys.append(f"{year:04d}-{month:02d}")
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    totals = dict.fromkeys(keys, 0)
    for day, bucket in days.items():
        key = datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m")
        if key in totals:
            totals[key] += bucket[0]
    return [{"month": k, "spend": totals[k] / AMOUNT_SCALE} for k in reversed(keys)]
