"""Under backlog (late messages with more behind) a customer's events are evaluated once, after the backlog."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from agents.engine.runtime import Message, Runtime
from stream.domain.due import due_after_restore
from stream.domain.state import CustomerState
from stream.settings import Settings

from .fakes import FakeSender, make_runtime

T = 1_767_225_600_000


def order(i: int, cid: str, amount: float) -> bytes:
    return orjson.dumps({"event_id": f"e{i}", "customer_id": cid, "ts": T + i * 1000, "order_id": f"o{i}",
                         "amount": amount})


def runtime(**settings: Any) -> tuple[Runtime, dict[str, CustomerState], dict[str, FakeSender]]:
    table: dict[str, CustomerState] = {}
    rt, senders = make_runtime(Settings(partitions=1, **settings), table)  # type: ignore[call-arg]
    return rt, table, senders


async def late(rt: Runtime, topic: str, offset: int, key: bytes, value: bytes) -> str:
    """A message handled a second after its Kafka timestamp, with more behind it."""
    return await rt.handle(Message(topic, 0, offset, key, value, time.time() - 1), more=True)


def changes(sender: FakeSender) -> list[dict[str, Any]]:
    return [orjson.loads(value) for _, value, _ in sender.sent]


async def test_a_customers_events_in_a_backlog_are_evaluated_once_when_it_ends() -> None:
    rt, table, senders = runtime()
    await rt.handle(Message("orders", 0, 0, b"c1", order(0, "c1", 2000)))  # evaluated: c1 has a view
    before = len(senders["tag_changes"].sent)
    for i, amount in enumerate((3000, 3500, 4000), start=1):  # 12,500 in all: big_spender, none of them big
        assert await late(rt, "orders", i, b"c1", order(i, "c1", amount)) == "ok"
    assert await late(rt, "orders", 4, b"c2", order(4, "c2", 20)) == "ok"
    assert len(senders["tag_changes"].sent) == before  # nothing evaluated yet
    assert rt.events_waiting == 4
    assert table["c1"].orders_total == 4 and table["c1"].view is not None and table["c1"].view["stale"]
    assert due_after_restore(table["c1"]) == 0  # a restart now would evaluate c1 at its first sweep
    login = orjson.dumps({"event_id": "l1", "customer_id": "c3", "ts": T + 9000})
    await rt.handle(Message("logins", 0, 0, b"c3", login))
    c1 = [c for c in changes(senders["tag_changes"])[before:] if c["customer_id"] == "c1"]
    assert len(c1) == 1 and "big_spender" in c1[0]["added"]
    assert c1[0]["trigger"] == {"kind": "event", "topic": "orders", "event_id": "e3", "events": 3}
    assert c1[0]["event_time"].startswith("2026-01-01T00:00:03")
    assert "stale" not in table["c1"].view and due_after_restore(table["c1"]) != 0 and rt.events_waiting == 0
    assert rt.outcomes["ok"] == 6


async def test_messages_on_time_are_evaluated_at_once_even_with_more_behind() -> None:
    rt, _, _ = runtime()
    await rt.handle(Message("orders", 0, 0, b"c1", order(0, "c1", 20), time.time() - 0.05), more=True)  # 50 ms old
    await rt.handle(Message("orders", 0, 1, b"c2", order(1, "c2", 20), None), more=True)  # no timestamp
    assert rt.view.staged == ["c1", "c2"]  # type: ignore[attr-defined]
    await late(rt, "orders", 2, b"c3", order(2, "c3", 20))
    await rt.handle(Message("orders", 0, 3, b"c4", order(3, "c4", 20), time.time()), more=True)  # caught up: c3 too
    assert rt.view.staged == ["c1", "c2", "c4", "c3"]  # type: ignore[attr-defined]


async def test_a_big_order_is_evaluated_at_once_and_covers_the_waiting_evaluation() -> None:
    rt, table, senders = runtime()
    await late(rt, "orders", 0, b"c1", order(0, "c1", 100))
    await late(rt, "orders", 1, b"c1", order(1, "c1", 12_000))
    sent = changes(senders["tag_changes"])
    assert [c["trigger"].get("priority") for c in sent] == ["big_order"]
    assert sent[0]["trigger"]["event_id"] == "e1" and table["c1"].orders_total == 2
    assert await rt.evaluate_deferred() == 0  # the big order's evaluation covered the first order
    await asyncio.sleep(0)  # the write runs beside the intake (Runtime.flush_soon)
    assert rt.view.flushed == [["c1"]]  # type: ignore[attr-defined]  # its view at once, only its own


async def test_a_big_order_does_not_wait_for_redis_and_later_ones_share_the_next_write() -> None:
    rt, _, _ = runtime()
    release, calls = asyncio.Event(), []

    async def slow_flush(batch: int = 200, only: Any = None) -> int:
        calls.append(list(only))
        await release.wait()
        return len(only)

    rt.view.flush = slow_flush  # type: ignore[method-assign]
    await rt.handle(Message("orders", 0, 0, b"c1", order(0, "c1", 12_000)))  # returns though Redis does not answer
    await asyncio.sleep(0)
    for offset, cid in ((1, "c2"), (2, "c3")):
        await rt.handle(Message("orders", 0, offset, cid.encode(), order(offset, cid, 12_000)))
    await asyncio.sleep(0)
    assert calls == [["c1"]]  # one write at a time
    release.set()
    for _ in range(3):
        await asyncio.sleep(0)
    assert calls == [["c1"], ["c2", "c3"]]


async def test_waiting_evaluations_run_when_a_limit_is_reached() -> None:
    rt, _, senders = runtime(coalesce_customers=2)
    await late(rt, "orders", 0, b"c1", order(0, "c1", 20))
    await late(rt, "orders", 1, b"c2", order(1, "c2", 20))  # two customers wait: the limit
    assert not senders["tag_changes"].sent and not rt.view.staged  # type: ignore[attr-defined]
    await late(rt, "orders", 2, b"c3", order(2, "c3", 20))  # one more: the oldest runs
    assert rt.view.staged == ["c1"]  # type: ignore[attr-defined]
    rt, _, _ = runtime(coalesce_window=0, coalesce_window_max=0)
    await late(rt, "orders", 0, b"c1", order(0, "c1", 20))
    assert rt.view.staged == ["c1"]  # type: ignore[attr-defined]
    rt, _, _ = runtime(coalesce_customers=0)  # off: every message evaluated at once
    await late(rt, "orders", 0, b"c1", order(0, "c1", 20))
    assert rt.view.staged == ["c1"]  # type: ignore[attr-defined]


async def test_the_timer_runs_waiting_evaluations_only_after_the_window_and_between_messages() -> None:
    rt, _, _ = runtime(coalesce_window=60)
    await late(rt, "orders", 0, b"c1", order(0, "c1", 20))
    assert await rt.evaluate_overdue() == 0  # within the window
    rt._coalesce.deferred["c1"].due -= 61
    rt._coalesce.handling = True
    assert await rt.evaluate_overdue() == 0  # the agent is in the middle of a message
    rt._coalesce.handling = False
    assert await rt.evaluate_overdue() == 1 and rt.view.staged == ["c1"]  # type: ignore[attr-defined]


async def test_the_wait_grows_with_how_late_the_message_was_up_to_the_maximum() -> None:
    rt, _, _ = runtime(coalesce_window=0.5, coalesce_window_max=5)
    for i, (cid, late_s) in enumerate((("c1", 0.2), ("c2", 4.0), ("c3", 60.0))):
        await rt.handle(Message("orders", 0, i, cid.encode(), order(i, cid, 20), time.time() - late_s), more=True)
    began = time.monotonic()
    waits = {cid: round(entry.due - began) for cid, entry in rt._coalesce.deferred.items()}
    assert waits == {"c1": 0, "c2": 2, "c3": 5}  # the window; half of 4 s late; the maximum
    assert rt._coalesce.wait_for((100.0, 99.0), 0.0) == 0.5 and rt._coalesce.wait_for((100.0, None), 0.0) == 0.5


async def test_the_wait_grows_with_the_backlog_behind_a_message_that_is_not_late_yet() -> None:
    """A backlog that appears at once (a bulk load): its first messages are barely late, but the worker
    will take a while to read the rest, so their evaluations wait half that long."""
    rt, _, _ = runtime(coalesce_window=0.5, coalesce_window_max=5)
    assert rt._coalesce.wait_for((100.0, 99.8), 3.0) == 1.5 and rt._coalesce.wait_for((100.0, 99.8), 60.0) == 5
    await rt.handle(Message("orders", 0, 0, b"c0", order(0, "c0", 20)))  # on time: learns how long a message takes
    assert rt._coalesce.per_message > 0
    rt._coalesce.per_message = 0.002  # say 2 ms a message
    for i, (cid, behind) in enumerate((("c1", 10), ("c2", 2_000), ("c3", 100_000)), start=1):
        await rt.handle(Message("orders", 0, i, cid.encode(), order(i, cid, 20), time.time() - 0.2), more=behind)
    began = time.monotonic()
    waits = {cid: round(entry.due - began, 1) for cid, entry in rt._coalesce.deferred.items()}
    assert waits == {"c1": 0.5, "c2": 2.0, "c3": 5.0}  # the window; 2,000 x ~2 ms / 2; the maximum


async def test_while_the_backlog_goes_on_only_evaluations_whose_wait_is_over_run_oldest_first() -> None:
    rt, _, senders = runtime(coalesce_customers=3)
    for i, cid in enumerate(("c1", "c2", "c3")):
        await late(rt, "orders", i, cid.encode(), order(i, cid, 20))
    rt._coalesce.deferred["c2"].due -= 60  # c2's wait is over, but c1 (older) still waits: c2 waits behind it
    await late(rt, "orders", 3, b"c1", order(3, "c1", 20))
    assert not rt.view.staged  # type: ignore[attr-defined]
    rt._coalesce.deferred["c1"].due -= 60
    await late(rt, "orders", 4, b"c3", order(4, "c3", 20))
    assert rt.view.staged == ["c1", "c2"] and list(rt._coalesce.deferred) == ["c3"]  # type: ignore[attr-defined]
    assert rt.events_waiting == 2
    for i, cid in enumerate(("c4", "c5", "c6"), start=5):  # four waiting: the oldest runs
        await late(rt, "orders", i, cid.encode(), order(i, cid, 20))
    assert rt.view.staged[2:] == ["c3"] and list(rt._coalesce.deferred) == ["c4", "c5", "c6"]  # type: ignore[attr-defined]
    assert rt.events_waiting == 3 and len(senders["tag_changes"].sent) == 3


async def test_an_erased_or_foreign_customer_is_not_evaluated_later() -> None:
    rt, table, senders = runtime()
    await late(rt, "orders", 0, b"c1", order(0, "c1", 20))
    await late(rt, "orders", 1, b"c2", order(1, "c2", 20))
    request = {"request_id": "r1", "customer_id": "c1", "type": "erase", "ts": T}
    await late(rt, rt.settings.privacy_requests_topic, 0, b"c1", orjson.dumps(request))
    rt._partitions._of["c2"] = 5  # as if c2's partition went to another worker in a rebalance
    rt.keep_partitions({0})
    assert await rt.evaluate_deferred() == 0
    assert "c1" not in table and table["c2"].orders_total == 1
    assert [c["trigger"]["kind"] for c in changes(senders["tag_changes"])] == ["erase"]


async def test_events_are_waiting_until_their_own_evaluation_has_run() -> None:
    seen: list[int] = []

    class Watching(FakeSender):
        async def send(self, *, key: bytes, value: bytes, partition: int | None = None) -> Any:
            seen.append(rt.events_waiting)  # what /stats would say while the evaluations run
            return await super().send(key=key, value=value, partition=partition)

    rt, _ = make_runtime(Settings(partitions=1), {}, senders={"tag_changes": Watching()})  # type: ignore[call-arg]
    for i, cid in enumerate(("c1", "c2", "c3")):
        await late(rt, "orders", i, cid.encode(), order(i, cid, 20))
    assert await rt.evaluate_deferred() == 3
    assert seen == [2, 1, 0]  # each new customer gets a tier: one change each


async def test_each_deferred_evaluation_runs_within_its_customers_latest_message() -> None:
    """Faust's tables take the changelog partition from the current message: a customer deferred by a
    message of its own partition must not be written while another partition's message is current."""
    current: list[Any] = [None]
    writes: list[tuple[str, Any]] = []

    class Table(dict[str, CustomerState]):
        def __setitem__(self, key: str, value: CustomerState) -> None:
            writes.append((key, current[0]))
            super().__setitem__(key, value)

    @contextmanager
    def within(context: Any) -> Iterator[None]:
        previous, current[0] = current[0], context
        try:
            yield
        finally:
            current[0] = previous

    rt, _ = make_runtime(Settings(partitions=1), Table(), message_context=lambda: current[0],  # type: ignore[call-arg]
                         within=within)
    for i, cid in enumerate(("c1", "c2", "c1")):
        current[0] = f"m{i}"
        await late(rt, "orders", i, cid.encode(), order(i, cid, 20))
    current[0] = "m3"  # on time: runs the waiting evaluations
    await rt.handle(Message("orders", 0, 3, b"c3", order(3, "c3", 20), time.time()), more=True)
    assert [w for w in writes if w[0] != "c3"] == [("c1", "m0"), ("c2", "m1"), ("c1", "m2"), ("c1", "m2"), ("c2", "m1")]
    assert current[0] == "m3"


async def test_waiting_evaluations_run_a_slice_per_message_and_the_rest_from_the_timer() -> None:
    """At the end of a backlog thousands of evaluations were due at once, and ran in one message's
    handling: 0.1-0.9 s in which no other message, not even a big order, was read."""
    from agents.engine.pipeline.coalesce import DEFERRED_SLICE

    rt, table, _ = runtime()
    customers = 2 * DEFERRED_SLICE + 10
    for i in range(customers):
        await late(rt, "orders", i, f"c{i}".encode(), order(i, f"c{i}", 20))
    assert len(rt._coalesce.deferred) == customers
    on_time = orjson.dumps({"event_id": "l1", "customer_id": "x", "ts": T})
    await rt.handle(Message("logins", 0, 0, b"x", on_time))  # nothing behind it: every evaluation is due now
    assert len(rt._coalesce.deferred) == customers - DEFERRED_SLICE
    assert list(rt._coalesce.deferred)[0] == f"c{DEFERRED_SLICE}"  # oldest first
    assert await rt.evaluate_overdue() == customers - DEFERRED_SLICE  # the timer: the rest, a slice at a time
    assert not rt._coalesce.deferred and all("stale" not in table[f"c{i}"].view for i in range(customers))  # type: ignore[operator]
    # a late message with more behind: only those whose wait is over
    await late(rt, "orders", customers, b"c0", order(customers, "c0", 20))
    assert await rt.evaluate_overdue() == 0 and list(rt._coalesce.deferred) == ["c0"]
