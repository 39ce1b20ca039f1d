"""The batch intake (stream/faust/intake.py) against a stand-in for Faust's consumer: order, current event, acks."""

from __future__ import annotations

import asyncio
import weakref
from collections import defaultdict
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiokafka.structs import ConsumerRecord
from faust.transport.utils import DefaultSchedulingStrategy
from faust.types import TP

from stream.faust.intake import BatchIntake

from .fakes import FakeFaustConsumer

ORDERS, CHANGELOG = TP("orders", 0), TP("app-customers-changelog", 0)


def record(tp: TP, offset: int, value: bytes = b"{}", key: bytes | None = b"c1") -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(tp.topic, tp.partition, offset, 1_000_000 + offset, 0, key, value, None, 2, 2, ())


class FakeConsumer(FakeFaustConsumer):
    """What the intake uses of Faust's ``Consumer``, with Faust's own bookkeeping types."""

    def __init__(self, fetches: list[dict[TP, list[Any]]], highwater: int = 0) -> None:
        super().__init__({})
        self.fetches = fetches
        self._highwater = highwater
        self._read_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)  # type: ignore[assignment]
        self._stopped = asyncio.Event()
        self.should_stop = False
        self.flow_active = True
        self.scheduler = DefaultSchedulingStrategy()  # type: ignore[abstract]
        self._unacked_messages: weakref.WeakSet[Any] = weakref.WeakSet()
        self._commit_every: int | None = None
        self._n_acked = 0
        self._waiting_for_ack: asyncio.Future[None] | None = None
        self.faust_path: list[tuple[str, int]] = []
        self.commits = 0
        self.suspend_flow = asyncio.Event()
        self.consumer_stopped_errors = (ConnectionError,)
        self.active: set[TP] | None = None  # what Faust's _wait_next_records returns: unpaused partitions
        self.calls: list[Any] = []  # perform_seek and fetch_again, in order
        self.timeouts: list[float] = []  # of each _wait_next_records

    async def _wait_next_records(self, timeout: float) -> tuple[dict[TP, list[Any]] | None, set[TP] | None]:
        self.timeouts.append(timeout)
        if not self.fetches:
            self._stopped.set()
            return {}, None
        return self.fetches.pop(0), self.active

    def highwater(self, tp: TP) -> int:
        return self._highwater

    def _to_message(self, tp: TP, rec: Any) -> Any:
        return SimpleNamespace(topic=rec.topic, offset=rec.offset)

    async def callback(self, message: Any) -> None:
        self.faust_path.append((message.topic, message.offset))

    async def wait_first(self, *coros: Awaitable[Any]) -> None:
        await coros[0]
        for other in coros[1:]:
            other.close()  # type: ignore[attr-defined]

    async def perform_seek(self) -> None:
        self.calls.append("perform_seek")

    async def commit(self) -> None:
        self.commits += 1


def app_for(consumer: FakeConsumer) -> Any:
    return SimpleNamespace(consumer=consumer, consumer_generation_id=1, should_stop=False,
                           flow_control=SimpleNamespace(is_active=lambda: True),
                           monitor=SimpleNamespace(stream_inbound_time={}))


Seen = list[tuple[str, int, int, int, bool]]
"""Per record handled: topic, partition, offset, ``more``, and whether a marker held the fetch as unacked."""


@pytest.fixture(autouse=True)
def fetch_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guard 9 (tested on aiokafka's state in test_guards.py): recorded in the consumer's calls."""

    async def record_call(consumer: FakeConsumer, skipped: dict[TP, tuple[int, int]]) -> None:
        consumer.calls.append(dict(skipped))

    monkeypatch.setattr("stream.faust.intake.fetch_again", record_call)


async def drain(consumer: FakeConsumer, seen: Seen, then: Callable[[Any], None] = lambda rec: None,
                urgent: Callable[[Any], bool] | None = None, ahead: list[int] | None = None) -> BatchIntake:
    """Run the intake's drain loop over the consumer's fetches, recording what the handler saw (and in
    ``ahead`` the offsets it was told were ahead of earlier ones)."""

    async def handle(rec: Any, more: int, is_ahead: bool) -> None:
        event = faust.current_event()  # what a table write reads for its changelog partition
        assert event is not None and event.message is rec
        seen.append((rec.topic, rec.partition, rec.offset, more, bool(list(consumer._unacked_messages))))
        if is_ahead and ahead is not None:
            ahead.append(rec.offset)
        then(rec)

    intake = BatchIntake(app_for(consumer), {"orders", "logins"}, handle, urgent)
    await intake.drain(consumer, SimpleNamespace(_stopped=asyncio.Event()))
    return intake


async def test_each_record_is_handled_in_order_within_its_own_event_then_acked() -> None:
    logins = TP("logins", 3)
    consumer = FakeConsumer([{ORDERS: [record(ORDERS, 5), record(ORDERS, 6)], logins: [record(logins, 9)]}],
                            highwater=7)
    seen: Seen = []
    await drain(consumer, seen)
    # Faust's scheduler alternates topics; ``more``: the rest of the fetch and the records below the
    # highwaters not fetched yet (none: both partitions were fetched to the end); a fetch in hand holds a
    # marker in the unacked set (a rebalance waits for it), gone once the fetch is done
    assert seen == [("orders", 0, 5, 2, True), ("logins", 3, 9, 1, True), ("orders", 0, 6, 0, True)]
    assert consumer._acked == {ORDERS: [5, 6], logins: [9]} and consumer._n_acked == 3
    assert not list(consumer._unacked_messages)
    assert faust.current_event() is None
    assert consumer._read_offset[ORDERS] == 6


async def test_the_last_record_has_more_behind_it_while_the_highwater_is_ahead() -> None:
    consumer = FakeConsumer([{ORDERS: [record(ORDERS, 0)]}], highwater=10)
    seen: Seen = []
    await drain(consumer, seen)
    assert [more for *_, more, _ in seen] == [9]


async def test_more_counts_what_other_partitions_have_not_fetched_yet() -> None:
    """A fetch that takes one partition to its end is not the end of the backlog: the worker is
    still behind on the partitions it read before (a small topic used to end it, and with it every
    waiting evaluation ran)."""
    consumer = FakeConsumer([{ORDERS: [record(ORDERS, 9)]}], highwater=10)
    consumer._read_offset[TP("logins", 2)] = 3  # read up to 3 before: 6 more below the highwater
    consumer._read_offset[CHANGELOG] = 0  # a table's changelog (recovery): not ours, not counted
    seen: Seen = []
    await drain(consumer, seen)
    assert [more for *_, more, _ in seen] == [6]


async def test_a_rebalance_in_the_middle_of_a_fetch_leaves_the_rest_unhandled_and_unacked() -> None:
    consumer = FakeConsumer([{ORDERS: [record(ORDERS, n) for n in range(5)]}])

    def rebalance_at_1(rec: Any) -> None:
        if rec.offset == 1:
            consumer.flow_active = False  # Faust's on_partitions_revoked: stop_flow()

    seen: Seen = []
    intake = await drain(consumer, seen, rebalance_at_1)
    assert [offset for _, _, offset, *_ in seen] == [0, 1]
    assert consumer._acked[ORDERS] == [0]  # offset 1 finished after the flow stopped: not acked (guard 1)
    assert intake.left == 3 and not list(consumer._unacked_messages)


async def test_records_of_a_partition_paused_since_the_fetch_are_fetched_again() -> None:
    """An assignment pauses every partition for the table's recovery: a fetch under way returns records
    of partitions paused meanwhile. Faust drops them; its seek after the recovery moves only partitions
    with a committed offset, so a partition never committed skipped them for good (guard 9)."""
    logins = TP("logins", 3)
    consumer = FakeConsumer([{ORDERS: [record(ORDERS, n) for n in (0, 1, 2)], logins: [record(logins, 9)]}])
    consumer.active = {logins}
    seen: Seen = []
    await drain(consumer, seen)
    assert [(topic, offset) for topic, _, offset, *_ in seen] == [("logins", 9)]
    assert consumer.calls == [{ORDERS: (0, 2)}] and ORDERS not in consumer._acked
    assert consumer._read_offset[ORDERS] is None  # not read: the records come again


async def test_records_fetched_while_the_flow_stopped_are_fetched_again_after_fausts_seek() -> None:
    """A fetch that began before a rebalance can return records of the new assignment."""
    logins = TP("logins", 3)
    consumer = FakeConsumer([{ORDERS: [record(ORDERS, n) for n in (0, 1)], logins: [record(logins, 9)]}])
    consumer.flow_active = False
    seen: Seen = []
    await drain(consumer, seen)
    assert seen == [] and consumer.calls == ["perform_seek", {ORDERS: (0, 1), logins: (9, 9)}]


async def test_offsets_below_the_committed_one_or_acked_already_are_not_acked_again() -> None:
    consumer = FakeConsumer([{ORDERS: [record(ORDERS, n) for n in range(4)]}])
    consumer._committed_offset[ORDERS] = 2
    consumer._acked_index[ORDERS].add(3)
    seen: Seen = []
    await drain(consumer, seen)
    assert len(seen) == 4 and consumer._acked[ORDERS] == [2]


async def test_records_read_already_are_skipped_and_other_topics_take_fausts_path() -> None:
    consumer = FakeConsumer([{ORDERS: [record(ORDERS, 3), record(ORDERS, 4)],
                              CHANGELOG: [record(CHANGELOG, 0), record(CHANGELOG, 1)]}])
    consumer._read_offset[ORDERS] = 4
    seen: Seen = []
    await drain(consumer, seen)
    assert [offset for _, _, offset, *_ in seen] == [4]
    assert consumer.faust_path == [(CHANGELOG.topic, 0), (CHANGELOG.topic, 1)]


async def test_commit_every_commits_beside_the_intake_one_at_a_time() -> None:
    """Faust's drain loop commits inline every commit_every records: the intake waited for the changelog
    writes and the broker's acknowledgements, 0.1-0.25 s every ~2 s at 80% load."""
    consumer = FakeConsumer([{ORDERS: [record(ORDERS, n) for n in range(5)]}])
    consumer._commit_every = 2
    release = asyncio.Event()

    async def slow_commit() -> None:
        consumer.commits += 1
        await release.wait()

    consumer.commit = slow_commit  # type: ignore[method-assign]
    seen: Seen = []
    await drain(consumer, seen)
    assert len(seen) == 5 and consumer.commits == 1 and consumer._n_acked == 1  # the second came while one ran
    release.set()
    await asyncio.sleep(0)


async def test_a_cancelled_fetcher_does_not_cut_the_record_in_hand() -> None:
    """Faust cancels the fetcher at shutdown; the fetch is shielded and ends after the record in hand."""
    consumer = FakeConsumer([{ORDERS: [record(ORDERS, n) for n in range(3)]}])
    started, release = asyncio.Event(), asyncio.Event()
    finished: list[int] = []

    async def slow(rec: Any, more: int, ahead: bool) -> None:
        started.set()
        await release.wait()
        finished.append(rec.offset)
        consumer.flow_active = False  # the stop that cancelled the fetcher also stopped the flow

    intake = BatchIntake(app_for(consumer), {"orders"}, slow)
    task = asyncio.ensure_future(intake.drain(consumer, SimpleNamespace(_stopped=asyncio.Event())))
    await started.wait()
    task.cancel()
    await asyncio.sleep(0)
    assert list(consumer._unacked_messages)  # Consumer.wait_empty would wait for it
    release.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert finished == [0] and not list(consumer._unacked_messages) and task.cancelled()


async def test_a_stopped_consumer_ends_the_intake_quietly_only_while_the_app_stops() -> None:
    consumer = FakeConsumer([])

    async def stopped(timeout: float) -> Any:
        raise ConnectionError("consumer stopped")

    consumer._wait_next_records = stopped  # type: ignore[method-assign]
    app = app_for(consumer)
    intake = BatchIntake(app, {"orders"}, lambda rec, more, ahead: asyncio.sleep(0))
    app.should_stop = True
    await intake.drain(consumer, SimpleNamespace(_stopped=asyncio.Event()))  # returns
    app.should_stop = False
    with pytest.raises(ConnectionError):
        await intake.drain(consumer, SimpleNamespace(_stopped=asyncio.Event()))


def in_hand_and_fetched_meanwhile() -> list[dict[TP, list[Any]]]:
    """150 records of orders[0] (keys k0..k149), then what aiokafka fetched while the first 100 were handled:
    urgent records of a new customer (150) and of k120 (152, still in hand), and one of orders[1] (7)."""
    p1 = TP("orders", 1)
    first = {ORDERS: [record(ORDERS, n, key=f"k{n}".encode()) for n in range(150)]}
    meanwhile = {ORDERS: [record(ORDERS, 150, b"urgent", b"vip"), record(ORDERS, 151, key=b"k151"),
                          record(ORDERS, 152, b"urgent", b"k120")],
                 p1: [record(p1, 7, b"urgent", b"x")]}
    return [first, meanwhile]


def is_urgent(rec: Any) -> bool:
    return bool(rec.value == b"urgent")


@pytest.fixture
def top_up_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("stream.faust.intake.TOP_UP_EVERY", 0.0)  # after each record: the first takes the second fetch


async def test_urgent_records_fetched_meanwhile_go_before_those_in_hand_but_after_their_customers(
        top_up_at_once: None) -> None:
    """aiokafka fetches a partition again only once its records are taken: records that came while a fetch
    was handled waited for all of it before even being fetched (a big order's tag change took ~1 s at 80%
    load). Every TOP_UP_EVERY s the intake takes them; an urgent one goes first, unless one in hand of
    its partition may be its customer's (k120 at 152), and is handled ``ahead`` when records of its
    partition were before it (150; orders[1]'s 7 had none)."""
    consumer = FakeConsumer(in_hand_and_fetched_meanwhile())
    seen: Seen = []
    ahead: list[int] = []
    await drain(consumer, seen, urgent=is_urgent, ahead=ahead)
    order = [(partition, offset) for _, partition, offset, *_ in seen]
    assert order[0] == (0, 0) and sorted(order[1:3]) == [(0, 150), (1, 7)]
    assert order[3:] == [(0, n) for n in range(1, 150)] + [(0, 151), (0, 152)]
    assert ahead == [150] and consumer.timeouts[:2] == [1.0, 0]
    assert sorted(consumer._acked[ORDERS]) == list(range(153)) and consumer._acked[TP("orders", 1)] == [7]


async def test_each_handled_record_is_let_go_at_once(top_up_at_once: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Top-ups make the list in hand as long as the traffic lasts: a handled record (a value of up to
    max_event_bytes) is not kept until all of it is done (hostile input: 80 MB higher RSS, once over budget)."""
    consumer = FakeConsumer(in_hand_and_fetched_meanwhile())
    lists: list[list[Any]] = []
    handle_fetch = BatchIntake.handle_fetch

    async def keep_list(self: BatchIntake, consumer: Any, generation: int, records: list[Any]) -> None:
        lists.append(records)
        await handle_fetch(self, consumer, generation, records)

    def earlier_ones_gone(rec: Any) -> None:
        records = lists[-1]
        position = next(i for i, (_, other) in enumerate(records) if other is rec)
        assert all(other is None for _, other in records[:position])

    monkeypatch.setattr(BatchIntake, "handle_fetch", keep_list)
    seen: Seen = []
    await drain(consumer, seen, then=earlier_ones_gone, urgent=is_urgent)
    assert len(seen) == len(lists[0]) == 154 and all(entry == (None, None) for entry in lists[0])


async def test_without_an_urgent_test_while_the_flow_stops_or_in_a_backlog_nothing_is_taken_in_the_middle(
        top_up_at_once: None) -> None:
    consumer = FakeConsumer(in_hand_and_fetched_meanwhile())
    seen: Seen = []
    await drain(consumer, seen)
    assert 0 not in consumer.timeouts and [offset for _, _, offset, *_ in seen][150:] == [150, 7, 151, 152]

    consumer = FakeConsumer(in_hand_and_fetched_meanwhile())

    def rebalance_at_0(rec: Any) -> None:
        if rec.offset == 0:
            consumer.flow_active = False  # Faust's _wait_next_records would wait for the flow to resume

    intake = await drain(consumer, [], rebalance_at_0, urgent=is_urgent)
    assert 0 not in consumer.timeouts and intake.left == 149

    # nor in a backlog (TOP_UP_BELOW records behind, here below the highwater): a test of every record for
    # urgency cost more than it could gain
    consumer = FakeConsumer(in_hand_and_fetched_meanwhile(), highwater=100_000)
    await drain(consumer, [], urgent=is_urgent)
    assert 0 not in consumer.timeouts


async def test_a_backlog_fetched_meanwhile_goes_after_the_records_in_hand_untested(
        top_up_at_once: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Testing 154,123 records taken at once for urgency stopped the intake for 0.76 s (traced in a drain)."""
    monkeypatch.setattr("stream.faust.intake.TOP_UP_BELOW", 4)
    consumer = FakeConsumer([{ORDERS: [record(ORDERS, 0)]}, in_hand_and_fetched_meanwhile()[1]])
    tested: list[int] = []

    def urgent(rec: Any) -> bool:
        tested.append(rec.offset)
        return is_urgent(rec)

    seen: Seen = []
    await drain(consumer, seen, urgent=urgent)
    assert [offset for _, _, offset, *_ in seen] == [0, 150, 7, 151, 152] and tested == []


async def test_a_top_up_does_not_hold_a_rebalance_and_leaves_the_next_assignments_records_to_it(
        top_up_at_once: None) -> None:
    """Once a rebalance has begun, aiokafka's getmany waits for the next assignment, which waits for the
    revocation, whose ``wait_empty`` waited for the marker of the fetch in hand: a worker hung for the
    whole rebalance time-out (the fault suite, 3 brokers). No record is in hand during a top-up, so the
    marker is out of the set meanwhile; what the top-up brings once the generation has passed belongs to
    the next assignment and is fetched again (guard 9), not handled."""
    fetches = in_hand_and_fetched_meanwhile()
    consumer = FakeConsumer(fetches[:1])
    app = None
    held_during_top_up: list[bool] = []

    async def next_records(timeout: float) -> tuple[dict[TP, list[Any]] | None, set[TP] | None]:
        if timeout == 0:  # the top-up: the rebalance begins and completes while it waits
            held_during_top_up.append(bool(list(consumer._unacked_messages)))
            app.consumer_generation_id += 1
            return fetches[1], None
        return await FakeConsumer._wait_next_records(consumer, timeout)

    consumer._wait_next_records = next_records  # type: ignore[method-assign]
    seen: Seen = []

    async def handle(rec: Any, more: int, is_ahead: bool) -> None:
        seen.append((rec.topic, rec.partition, rec.offset, more, bool(list(consumer._unacked_messages))))

    intake = BatchIntake(app_for(consumer), {"orders", "logins"}, handle, is_urgent)
    app = intake.app
    await intake.drain(consumer, SimpleNamespace(_stopped=asyncio.Event()))
    assert held_during_top_up == [False] and all(held for *_, held in seen)
    assert [offset for _, _, offset, *_ in seen] == [0] and intake.left == 149
    assert consumer.calls == [{ORDERS: (150, 152), TP("orders", 1): (7, 7)}]
    assert not list(consumer._unacked_messages)
