"""The write-behind changelog of the customer table (stream.faust.app.CustomerTable): coalesced, batched, never lost."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from stream.domain.state import CustomerState
from stream.faust.app import CustomerTable, create_app, customers_table
from stream.kafka.kafka_admin import expected_partition
from stream.settings import Settings

TOPIC = "customers-changelog"


class Value:
    def __init__(self, text: str) -> None:
        self.text = text

    def to_bytes(self) -> bytes:
        return self.text.encode()


class Batch:
    """aiokafka's BatchBuilder: takes ``room`` records (an empty batch takes any), then answers None."""

    def __init__(self, room: int) -> None:
        self.room, self.records = room, []  # type: list[tuple[bytes, bytes | None]]

    def append(self, *, key: bytes, value: bytes | None, timestamp: None) -> object | None:
        if self.records and len(self.records) >= self.room:
            return None
        self.records.append((key, value))
        return object()


class Producer:
    """aiokafka's batch API. Refuses the ``refuse_at``-th batch (1-based) like aiokafka on a timeout; acks
    each batch with its first offset, or with ``ack_error``."""

    def __init__(self, room: int = 100, refuse_at: int | None = None, on_refuse: Any = None,
                 ack_error: Exception | None = None) -> None:
        self.room, self.refuse_at, self.on_refuse, self.ack_error = room, refuse_at, on_refuse, ack_error
        self.sent: list[tuple[int, list[tuple[bytes, bytes | None]]]] = []  # (partition, records) per batch
        self.next_offset: dict[int, int] = {}
        self.attempts = 0

    def create_batch(self) -> Batch:
        return Batch(self.room)

    async def partitions_for(self, topic: str) -> set[int]:
        assert topic == TOPIC
        return {0, 1, 2, 3}

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        assert topic == TOPIC
        self.attempts += 1
        if self.attempts == self.refuse_at:
            if self.on_refuse:
                self.on_refuse()
            raise TimeoutError("producer refused")
        self.sent.append((partition, batch.records))
        fut = asyncio.get_running_loop().create_future()
        if self.ack_error:
            fut.set_exception(self.ack_error)
        else:
            offset = self.next_offset.get(partition, 0)
            self.next_offset[partition] = offset + len(batch.records)
            fut.set_result(SimpleNamespace(topic_partition=(topic, partition), offset=offset))
        return fut


class Table:
    """The parts of CustomerTable that ``write_dirty`` uses, with its own methods."""

    write_dirty = CustomerTable.write_dirty
    _submit = CustomerTable._submit
    _track = CustomerTable._track
    _on_done = CustomerTable._on_done
    wait_acked = CustomerTable.wait_acked

    def __init__(self, producer: Producer, dirty: dict[str, tuple[int | None, Any]]) -> None:
        self.dirty, self.failed_writes = dict(dirty), 0
        self.unacked: set[asyncio.Future[Any]] = set()
        self.app = SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: producer))
        self.changelog_topic = SimpleNamespace(get_topic_name=lambda: TOPIC)
        self.persisted: dict[Any, int] = {}
        self.data = SimpleNamespace(set_persisted_offset=self.persisted.__setitem__)


async def test_one_record_per_dirty_customer_with_its_latest_state_and_tombstones_in_a_batch_per_partition() -> None:
    producer = Producer()
    t = Table(producer, {"c1": (0, Value("v2")), "c2": (3, None), "c3": (0, Value("x")), "c4": (None, Value("y"))})
    assert await t.write_dirty() == 4
    await t.wait_acked()
    own = expected_partition(b"c4", 4)  # marked with no current event: Kafka's default partition for the key
    batches = {0: [(b"c1", b"v2"), (b"c3", b"x")], 3: [(b"c2", None)]}
    batches.setdefault(own, []).append((b"c4", b"y"))
    assert dict(producer.sent) == batches and len(producer.sent) == len(batches)
    assert t.dirty == {} and not t.unacked
    assert t.persisted == {(TOPIC, p): len(records) - 1 for p, records in batches.items()}  # each batch's last record


async def test_a_full_batch_is_handed_over_and_the_next_one_started() -> None:
    producer = Producer(room=2)
    t = Table(producer, {f"c{i}": (1, Value(str(i))) for i in range(5)})
    assert await t.write_dirty() == 5
    await t.wait_acked()
    assert [[k for k, _ in records] for _, records in producer.sent] == [[b"c0", b"c1"], [b"c2", b"c3"], [b"c4"]]
    assert t.persisted == {(TOPIC, 1): 4}


async def test_a_refused_batch_keeps_its_records_dirty_and_newer_marks_win() -> None:
    newer = Value("c3-newer")
    t: Any = None
    producer = Producer(refuse_at=2, on_refuse=lambda: t.dirty.update({"c3": (1, newer)}))
    t = Table(producer, {"c1": (0, Value("a")), "c2": (1, Value("b")), "c3": (1, Value("c"))})
    with pytest.raises(TimeoutError):
        await t.write_dirty()
    assert producer.sent == [(0, [(b"c1", b"a")])]
    assert set(t.dirty) == {"c2", "c3"} and t.dirty["c3"][1] is newer  # nothing lost, nothing older
    producer.refuse_at = None
    assert await t.write_dirty() == 2
    assert producer.sent[1:] == [(1, [(b"c2", b"b"), (b"c3", b"c3-newer")])]


async def test_a_batch_refused_when_full_keeps_it_and_the_rest_dirty() -> None:
    producer = Producer(room=1, refuse_at=2)
    t = Table(producer, {"c1": (0, Value("a")), "c2": (0, Value("b")), "c3": (0, Value("c")), "c4": (2, Value("d"))})
    with pytest.raises(TimeoutError):
        await t.write_dirty()
    assert producer.sent == [(0, [(b"c1", b"a")])]
    assert {k: (p, v.text) for k, (p, v) in t.dirty.items()} == {"c2": (0, "b"), "c3": (0, "c"), "c4": (2, "d")}


async def test_a_failed_ack_counts_every_record_of_its_batch_and_stops_the_commit() -> None:
    producer = Producer(ack_error=TimeoutError("no ack"))
    t = Table(producer, {"c1": (0, Value("a")), "c2": (0, Value("b")), "c3": (1, Value("c"))})
    assert await t.write_dirty() == 3
    with pytest.raises(RuntimeError, match="3 changelog writes failed"):
        await t.wait_acked()
    assert t.persisted == {}


async def test_a_slow_step_of_the_commit_flush_is_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    from stream.faust.app import warn_if_slow

    with caplog.at_level("WARNING", logger="stream.faust.app"):
        with warn_if_slow("flush: quick", 0.2, lambda: "nothing pending"):
            await asyncio.sleep(0)
        with warn_if_slow("flush: producer flush", 0.01, lambda: "3 changelog batches unacknowledged"):
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # the quick block's timer would have fired by now
    assert [r.getMessage() for r in caplog.records] == [
        "flush: producer flush not done after 0 s (3 changelog batches unacknowledged); still waiting"]


def state(generation: int = 0, **offsets: int) -> CustomerState:
    s = CustomerState()
    s.offsets, s.generation = dict(offsets), generation
    return s


def test_a_state_is_superseded_only_by_one_that_read_every_source_as_far_and_one_further() -> None:
    old = state(orders=10, tickets=4)
    assert old.superseded_by(state(orders=11, tickets=4)) and old.superseded_by(state(orders=10, tickets=4, logins=0))
    assert not old.superseded_by(state(orders=10, tickets=4))  # the same messages: a re-evaluation, say
    assert not old.superseded_by(state(orders=12, tickets=3))  # each has one the other lacks: the later applies
    assert not old.superseded_by(state(orders=9))
    assert state().superseded_by(old) and not old.superseded_by(state())


def test_of_two_states_each_read_further_on_some_source_the_later_generations_supersedes() -> None:
    cut_off = state(generation=7, orders=100, logins=55)  # applied logins 53-55 before its session expired
    successor = state(generation=8, orders=120, logins=52)  # went on from the committed offsets
    assert cut_off.superseded_by(successor) and not successor.superseded_by(cut_off)
    assert state(generation=9, orders=90, logins=50).superseded_by(cut_off)  # a generation never outranks offsets
    assert not state(generation=7, orders=90, logins=60).superseded_by(cut_off)  # the same writer: the later applies


def test_the_writer_generation_travels_with_the_state_and_is_not_part_of_it() -> None:
    s = state(generation=12, orders=3)
    copy = CustomerState.from_bytes(s.to_bytes())
    assert copy.generation == 12 and copy == state(orders=3)
    assert "g" not in orjson.loads(state(orders=3).to_bytes())  # generation 0: left out (and read back as 0)


def test_a_table_write_stamps_the_consumer_generation() -> None:
    settings = Settings()  # type: ignore[call-arg]
    app = create_app(settings)
    table, s = customers_table(app, settings), state(orders=1)
    table.partition_for_key = lambda key: 0  # type: ignore[method-assign]  # the current event's partition
    app.consumer_generation_id = 5
    table.on_key_set("c1", s)
    assert s.generation == 5 and table.dirty["c1"][1] is s


def recovered(records: list[tuple[str, CustomerState | None]]) -> tuple[dict[str, CustomerState], int]:
    """The customers table (memory store) after a recovery that read ``records`` from partition 0, and how
    many records it passed over."""
    settings = Settings()  # type: ignore[call-arg]
    table = customers_table(create_app(settings), settings)
    events = [SimpleNamespace(key=key, value=value, message=SimpleNamespace(
        partition=0, offset=n, value=None if value is None else b"x", tp=(TOPIC, 0)))
        for n, (key, value) in enumerate(records)]
    table.apply_changelog_batch(events[:2])  # two of Faust's recovery batches: the second compares with
    table.apply_changelog_batch(events[2:])  # what the first left in the store
    return dict(table.data.items()), table.stale_records


def test_recovery_passes_over_a_state_that_reached_the_changelog_after_a_newer_one() -> None:
    """A worker cut off from the brokers longer than its session wrote c1 at orders 5; it reached the
    broker after the state the partition's next owner wrote at orders 7 (and at 5, re-reading from the
    committed offset). The recovery keeps 7, as the worker that applied 6 and 7 had it."""
    got, passed_over = recovered([("c1", state(orders=5)), ("c1", state(orders=7)), ("c1", state(orders=5)),
                                  ("c2", state(orders=3)), ("c2", None), ("c2", state(orders=1))])
    assert got["c1"].offsets == {"orders": 7} and passed_over == 1
    assert got["c2"].offsets == {"orders": 1}  # a deletion (an erasure) always applies; after it, anything


def test_recovery_keeps_the_later_generations_state_when_each_read_further_on_some_source() -> None:
    """The fault suite's cut-off worker (generation 7) had applied c1's logins 53-55 and orders to 100 when its
    session expired; its write reached the broker after the next owner's (generation 8: orders to 120, logins
    52, the committed offsets). Keeping the late one lost orders 101-120, committed by then."""
    got, passed_over = recovered([("c1", state(generation=7, orders=80, logins=50)),
                                  ("c1", state(generation=8, orders=120, logins=52)),
                                  ("c1", state(generation=7, orders=100, logins=55))])
    assert got["c1"].offsets == {"orders": 120, "logins": 52} and got["c1"].generation == 8 and passed_over == 1
