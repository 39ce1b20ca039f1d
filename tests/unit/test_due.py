"""Due times (when time alone changes a customer) and the due index (no broker)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.engine.runtime import Runtime
from stream.domain.clock import Clock
from stream.domain.due import DueIndex, due_after_restore, next_due
from stream.domain.events import dedupe_key
from stream.domain.manual import apply_command
from stream.domain.state import DAY_MS, CustomerState
from stream.settings import Settings

from .fakes import FakeSender, FakeView, make_runtime
from .test_state import NOW, SOURCE, event_lists, login, order

HOUR = 3_600_000


def state_of(events: list[Any]) -> CustomerState:
    s = CustomerState()
    for offset, e in enumerate(events):
        s.apply(e, SOURCE[type(e)], offset, dedupe_key(e))
    return s


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_lists(ticket_min_age=0), st.integers(0, 900 * DAY_MS), st.integers(0, 10**6))
def test_nothing_changes_before_the_due_time(events: list[Any], offset_ms: int, probe: int) -> None:
    """Soundness: aggregates at any t in [now, due) equal those at now; so a sweep may skip the customer."""
    s = state_of(events)
    now = NOW - 400 * DAY_MS + offset_ms
    due = s.next_change_at(now)
    before = s.aggregates(now)
    if due is None:
        assert not events
        assert s.aggregates(now + 1000 * DAY_MS) == before
        return
    assert due > now
    for t in (now + 1, due - 1, now + probe % (due - now)):
        assert s.aggregates(t) == before, (t - now, due - now)


def test_due_times_of_a_simple_customer() -> None:
    s = state_of([order(NOW - 10 * DAY_MS)])  # one paid order 10 days ago, at noon
    # next whole day since the order: tomorrow noon; windows: the 30-day window drops it in 20 days
    assert s.next_change_at(NOW) == NOW + DAY_MS
    assert s.aggregates(NOW + DAY_MS)["days_since_last_order"] == 11.0
    assert s.aggregates(NOW + DAY_MS - 1)["days_since_last_order"] == 10.0
    assert CustomerState().next_change_at(NOW) is None


def test_next_due_takes_manual_expiry_and_profile_age_into_account() -> None:
    s = state_of([login(NOW)])
    cmd = {"action": "add_tag", "tag": "vip", "author": "ana", "note": "", "expires_at": NOW + 2 * HOUR}
    s.manual = apply_command(None, cmd, NOW)
    assert next_due(s, NOW) == NOW + 2 * HOUR
    s.manual = None
    s.profile = {"customer_since": NOW - 5 * DAY_MS - HOUR}
    assert next_due(s, NOW) == NOW + DAY_MS - HOUR
    s.view = {"evaluated_at": NOW - 3 * DAY_MS}  # last looked at 3 days ago: overdue now
    assert due_after_restore(s) <= NOW
    assert due_after_restore(CustomerState()) == 0  # never evaluated: due at once


def test_index_pops_due_customers_in_order_and_ignores_superseded_entries() -> None:
    index = DueIndex()
    index.set(0, "ignored", 5)  # partition not tracked: nothing recorded
    index.track(0, [("a", 30), ("b", 10), ("c", -1)])
    assert index.size(0) == 2 and not index.tracked(1)
    index.set(0, "b", 50)  # superseded: b's old entry (10) must not pop
    index.mark(0, "a", 40)  # later than a's due: a stays at 30
    index.mark(0, "c")  # c was never due: now due at once
    assert index.pop_due(0, 20, 10) == ["c"]
    assert index.pop_due(0, 100, 1) == ["a"]
    assert index.pop_due(0, 100, 10) == ["b"] and index.size(0) == 0
    index.drop(0)
    assert index.partitions() == [] and index.pop_due(0, 100, 10) == []


def test_index_compacts_superseded_entries() -> None:
    index = DueIndex()
    index.track(3)
    for due in range(5000):
        index.set(3, "x", due)
    assert len(index._heaps[3]) < 2000 and index.pop_due(3, 10**9, 10) == ["x"]


async def run_sweep(runtime: Runtime, sender: FakeSender) -> int:
    """Run one sweep of partition 0 to the end; the number of command messages it took."""
    cmd: dict[str, Any] = {"cmd": "sweep"}
    runs = 0
    while True:
        runs += 1
        await runtime.command(0, cmd)
        if not sender.sent:
            return runs
        cmd = orjson.loads(sender.sent.pop()[1])


async def test_sweeps_look_only_at_due_customers() -> None:
    clock = Clock("stream")
    clock.observe(NOW)
    settings_ = Settings(partitions=1, sweep_chunk=3, clock="stream")  # type: ignore[call-arg]
    view = FakeView()
    table: dict[str, CustomerState] = {}
    runtime, senders = make_runtime(settings_, table, clock, view)
    for i in range(7):  # customers evaluated an hour apart, before the worker's index existed
        table[f"c{i}"] = state_of([order(NOW - 40 * DAY_MS + i * HOUR)])
    # first sweep: builds the index in chunks of 3 (3 messages), then evaluates all 7 (never evaluated)
    assert await run_sweep(runtime, senders["commands"]) == 3 + 3
    assert sorted(view.staged) == sorted(table) and runtime.due.size(0) == 7
    view.staged.clear()
    assert await run_sweep(runtime, senders["commands"]) == 1 and view.staged == []  # nothing due
    clock.observe(NOW + 2 * HOUR)  # c1 and c2 reach 40 whole days since their order (c0 did at NOW)
    await run_sweep(runtime, senders["commands"])
    assert view.staged == ["c1", "c2"]
    view.staged.clear()
    # a restart rebuilds the index from the table: nothing is due twice, nothing is lost
    fresh = Runtime(settings_, table, runtime.evaluator, view, clock, senders)  # type: ignore[arg-type]
    await run_sweep(fresh, senders["commands"])
    assert view.staged == []
    clock.observe(NOW + 3 * HOUR)
    await run_sweep(fresh, senders["commands"])
    assert view.staged == ["c3"]


def test_big_orders_and_complaints_are_priority() -> None:
    from stream.domain.events import TicketEvent
    from stream.domain.priority import priority_of

    def before() -> tuple[float, int]:
        return 400.0, 4  # average order 100

    assert priority_of(order(NOW, 299.0), before, 3.0, 10000.0) is None
    assert priority_of(order(NOW, 300.0), before, 3.0, 10000.0) == (
        "big_order", "order 300.00 >= 3 x average order 100.00")
    assert priority_of(order(NOW, 300.0, status="refunded"), before, 3.0, 10000.0) is None

    def first() -> tuple[float, int]:
        return 0.0, 0  # no average yet: only the absolute amount counts

    assert priority_of(order(NOW, 9999.0), first, 3.0, 10000.0) is None
    assert priority_of(order(NOW, 10000.0), first, 3.0, 10000.0)[0] == "big_order"  # type: ignore[index]
    assert priority_of(order(NOW, 10000.0), first, 3.0, 0.0) is None  # absolute test off

    def ticket(action: str, category: str) -> TicketEvent:
        return TicketEvent("t1", "c", NOW, "T-9", action, category, "high")

    assert priority_of(ticket("escalated", "billing"), before, 3, 0) == ("complaint", "ticket T-9 escalated")
    assert priority_of(ticket("opened", "Complaint"), before, 3, 0) == ("complaint", "complaint ticket T-9 opened")
    assert priority_of(ticket("opened", "billing"), before, 3, 0) is None
    assert priority_of(login(NOW), before, 3, 0) is None


async def test_sweep_metrics_count_whole_sweeps() -> None:
    clock = Clock("stream")
    clock.observe(NOW)
    table = {f"c{i}": state_of([order(NOW - 3 * DAY_MS)]) for i in range(5)}
    runtime, senders = make_runtime(Settings(partitions=1, sweep_chunk=2), table, clock)  # type: ignore[call-arg]
    await run_sweep(runtime, senders["commands"])  # 3 chunks build the index, 3 evaluate 2 + 2 + 1
    text = runtime.metrics.render().decode()
    assert "tagger_sweep_customers_count 1.0" in text and "tagger_sweep_customers_sum 5.0" in text
    assert "tagger_sweep_duration_seconds_count 1.0" in text
