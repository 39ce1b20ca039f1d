"""The corrected commit bookkeeping: never commit past an offset nobody processed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.structs import TopicPartition

from stream.faust.guards import (
    bounded_flush,
    fetch_again,
    keep_committed_on_failure,
    new_offset,
    note_failed_commit,
    partition_report,
    rejoin_group,
    restart_partition,
)
from stream.faust.offsets import GapFiller

from .fakes import FakeFaustConsumer

TP = ("orders", 0)


def consumer(committed: int | None, acked: list[int]) -> Any:
    return FakeFaustConsumer({TP: committed}, {TP: acked})


def test_a_hole_at_the_committed_offset_blocks_the_commit() -> None:
    # Faust's own check (min(acked) - committed > 1) lets this one through and loses offset 31
    assert new_offset(consumer(31, [32, 33, 34]), TP) is None
    assert new_offset(consumer(0, [1, 2]), TP) is None  # and skips the check altogether at 0
    assert new_offset(consumer(31, [31, 32, 34]), TP) == 33  # consecutive from the head, up to the next hole
    assert new_offset(consumer(None, [5, 6]), TP) == 7  # nothing committed yet: Faust starts where it starts


def test_offsets_filled_by_the_agent_let_the_commit_through() -> None:
    c = consumer(31, [33, 34])
    gaps = GapFiller("unused:9092")
    gaps.faust_consumer = c
    gaps.mark_done("orders", 0, 31, 33)
    assert new_offset(c, TP) == 35 and c._acked[TP] == []


async def test_a_failed_commit_leaves_the_committed_offsets_as_they_were() -> None:
    other = ("orders", 1)
    c = consumer(31, [])  # partition 0 committed up to 31 before; partition 1 never
    seek_during_commit: dict[Any, int] = {}

    async def driver_commit(self: Any, offsets: dict[Any, int]) -> bool:
        self._committed_offset.update(seek_during_commit)  # a rebalance's seek while the commit was in flight
        return outcome

    commit = note_failed_commit(driver_commit)

    async def faust_commit_offsets(self: Any, offsets: dict[Any, int], start_new_transaction: bool = True) -> bool:
        did_commit = await commit(self, offsets)
        self._committed_offset.update(offsets)  # what Faust does whether or not the broker took them
        return did_commit

    wrapped = keep_committed_on_failure(faust_commit_offsets)
    outcome = False  # e.g. CommitFailedError "already rebalanced": the broker still has 31
    assert await wrapped(c, {TP: 40, other: 7}) is False
    assert c._committed_offset[TP] == 31 and other not in c._committed_offset
    seek_during_commit[TP] = 35  # the new assignment resumed at the broker's 35: keep that, not 31
    assert await wrapped(c, {TP: 40}) is False and c._committed_offset[TP] == 35
    outcome = True
    assert await wrapped(c, {TP: 40, other: 7}) is True
    assert c._committed_offset[TP] == 40 and c._committed_offset[other] == 7


async def test_a_restarted_partition_is_read_again_from_the_committed_offset() -> None:
    other = ("orders", 1)
    c = FakeFaustConsumer({TP: 31, other: 5}, {TP: [33, 34], other: [5, 6]})  # 32 was never acked: stuck
    c._paused_partitions.add(TP)
    await restart_partition(c, TP, 30)  # the group's committed offset
    assert c.seeks == [(TP, 30)] and c._committed_offset[TP] == 30 and TP not in c._acked
    assert TP in c._active_partitions and TP not in c._paused_partitions  # fetched again
    assert new_offset(c, other) == 7  # the other partitions keep their bookkeeping
    for offset in (30, 31, 32):  # what the agent acks when it has read them again
        c._acked[TP].append(offset)
    assert new_offset(c, TP) == 33


async def test_records_not_handled_are_fetched_again_unless_something_moved_the_partition() -> None:
    """Guard 9 on aiokafka's own subscription state (its private attributes: an upgrade that renames
    them fails here)."""
    p0, p1, p2, gone = (TopicPartition("orders", n) for n in range(4))
    state = SubscriptionState()
    state.subscribe(topics={"orders"})
    state.assign_from_subscribed({p0, p1, p2})
    for tp, position in ((p0, 6), (p1, 0), (p2, 8)):
        state.seek(tp, position)
    client = SimpleNamespace(_subscription=state, seek=state.seek)

    async def call_thread(fun: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return await fun(*args)

    thread = SimpleNamespace(call_thread=call_thread, _ensure_consumer=lambda: client)
    # p0 stands right after its records 3..5; p1 was moved back since (a new assignment reset it to 0);
    # p2 is not in the list; ``gone`` is no longer assigned
    await fetch_again(SimpleNamespace(_thread=thread), {p0: (3, 5), p1: (7, 9), gone: (0, 0)})
    positions = {tp: state.subscription.assignment.state_value(tp).position for tp in (p0, p1, p2)}
    assert positions == {p0: 3, p1: 0, p2: 8}


def test_partition_report_needs_a_started_consumer() -> None:
    assert partition_report(SimpleNamespace(_thread=SimpleNamespace(_consumer=None)), {}) == {}
    assert partition_report(SimpleNamespace(), {}) == {}


async def test_a_rebalance_is_requested_on_the_consumer_thread_loop() -> None:
    calls: list[str] = []
    coordinator = SimpleNamespace(request_rejoin=lambda: calls.append("rejoin"))
    thread = SimpleNamespace(thread_loop=asyncio.get_running_loop(),
                             _ensure_consumer=lambda: SimpleNamespace(_coordinator=coordinator))
    rejoin_group(SimpleNamespace(_thread=thread))
    assert calls == []  # scheduled on that loop, not called from this thread
    await asyncio.sleep(0)
    assert calls == ["rejoin"]


async def test_a_rebalance_stops_waiting_for_a_flush_that_never_ends(caplog: Any) -> None:
    flushed: list[str] = []

    async def hangs(self: Any, logger: Any) -> None:
        await asyncio.Event().wait()

    async def finishes(self: Any, logger: Any) -> None:
        flushed.append("done")

    await bounded_flush(hangs, timeout=0.05)(None, None)  # returns instead of holding the whole group
    assert "producer flush not done after 0 s" in caplog.text
    await bounded_flush(finishes, timeout=5)(None, None)
    assert flushed == ["done"]


async def test_producer_requests_give_up_after_the_request_timeout_but_delivery_keeps_fausts_horizon() -> None:
    # guard 8: a produce request on a silent connection held the commit's flush for Faust's 1,200 s
    from stream.faust.app import create_app
    from stream.faust.guards import REQUEST_TIMEOUT
    from stream.settings import Settings

    app = create_app(Settings())  # type: ignore[call-arg]
    producer = app.producer._new_producer()  # type: ignore[attr-defined]
    try:
        bounded = int(REQUEST_TIMEOUT * 1000)
        assert producer.client._request_timeout_ms == producer._sender._request_timeout_ms == bounded
        assert producer._message_accumulator._batch_ttl == app.conf.producer_request_timeout == 1200
        assert producer._request_timeout_ms == 1200 * 1000  # a send's wait for room in a full batch
    finally:
        await producer.stop()
