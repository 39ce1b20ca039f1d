"""Churn alerts on a live worker: silence caught by timers in stream time, escalations at once, no repeats."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from stream.domain.events import parse_ts

from .conftest import Namespace, wait_for
from .test_pipeline import DAY, T0, login, order, view_of

pytestmark = pytest.mark.integration


def alerts_for(ns: Namespace, cid: str, until: Any, timeout: float = 60) -> list[dict[str, Any]]:
    def mine(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r["value"] for r in records if r["key"] == cid]
    records = ns.read(ns.settings.churn_alerts_topic, lambda rs: until(mine(rs)), timeout=timeout)
    return mine(records)


def test_silence_escalation_and_restart(namespace: Namespace) -> None:
    ns = namespace
    worker = ns.worker(sweep_interval=2)

    # a weekly buyer for ten weeks, then silence; stream time moves on through another customer's logins
    for week in range(10):
        ns.produce("order", order("w-1", f"w{week}", week * 7, 40))
    view_of(ns, "w-1", lambda v: v["aggregates"]["orders_total"] == 10)  # before stream time jumps
    last = 9 * 7
    ns.produce("login", login("f-1", "f1", last + 13.5))
    # a sweep re-evaluates w-1 when its 13th whole day of silence starts: below 2 usual gaps, no alert
    view_of(ns, "w-1", lambda v: v["aggregates"]["days_since_last_order"] == 13.0)
    assert alerts_for(ns, "w-1", lambda a: True, timeout=3) == []
    ns.produce("login", login("f-1", "f2", last + 14.5))  # two usual gaps: recency 0.5, risk 0.25 = low
    low = alerts_for(ns, "w-1", lambda a: len(a) >= 1)
    assert [(x["level"], x["previous_level"], x["trigger"]["kind"]) for x in low] == [("low", "none", "timer")]
    assert "no paid order for 14 days; usual gap 7 days" in low[0]["reasons"]
    ns.produce("login", login("f-1", "f3", last + 35))  # five weeks: recency 1, risk 0.5 = medium
    silent = alerts_for(ns, "w-1", lambda a: len(a) >= 2)
    alert = silent[1]
    assert (alert["level"], alert["previous_level"], alert["trigger"]["kind"]) == ("medium", "low", "timer")
    assert "no paid order for 35 days; usual gap 7 days" in alert["reasons"]
    assert set(alert) >= {"customer_id", "risk", "level", "previous_level", "reasons", "last_activity_at",
                          "trigger", "emitted_at"}

    # an escalated complaint is evaluated and alerted at once
    ns.produce("order", order("e-1", "e1", 9 * 7 + 34, 80))
    ticket = {"event_id": "t1", "customer_id": "e-1", "ts": T0 + (9 * 7 + 35) * DAY, "ticket_id": "T-1",
              "action": "opened", "category": "complaint", "severity": "high"}
    ns.produce("ticket", ticket)
    sent = time.time()
    ns.produce("ticket", {**ticket, "event_id": "t2", "action": "escalated"})
    escalated = alerts_for(ns, "e-1", lambda a: any(x["level"] != "none" for x in a))
    first = next(x for x in escalated if x["level"] != "none")
    assert first["trigger"]["kind"] == "event" and first["trigger"]["priority"] == "complaint"
    assert parse_ts(first["emitted_at"]) / 1000 - sent < 1.0

    # a restart neither repeats nor loses alerts
    before = len(alerts_for(ns, "w-1", lambda a: True, timeout=5))
    worker.signal(signal.SIGTERM)
    again = ns.worker(sweep_interval=2)
    # per partition: the first sweep builds the due index (1 message) then looks for due customers (1 more)
    wait_for(lambda: again.get("/stats")[1]["outcomes"].get("command", 0) >= 12, 60, "two sweeps after restart")
    assert len(alerts_for(ns, "w-1", lambda a: True, timeout=5)) == before
