"""The gap filler: where a partition resumes after an assignment, and reading every record of a gap."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from agents.engine.runtime import Message
from agents.tagger import Receiver
from stream.domain.state import CustomerState
from stream.faust.guards import new_offset
from stream.faust.offsets import GapFiller, GapUnfilled
from stream.settings import Settings

from .fakes import FakeFaustConsumer, make_runtime

TP = ("orders", 0)
T = 1_767_225_600_000


def order(n: int) -> bytes:
    return orjson.dumps({"event_id": f"e{n}", "customer_id": f"c{n}", "ts": T + n, "order_id": f"o{n}",
                         "amount": 5.0})


def record(n: int) -> Any:
    return SimpleNamespace(offset=n, key=f"c{n}".encode(), value=order(n))


class Filler(GapFiller):
    """A GapFiller whose broker is a dict: the group's committed offsets and each partition's records.
    ``stall``: reads that hang (once each) after handing over this many records."""

    def __init__(self, consumer: Any, committed: dict[Any, int], records: dict[int, Any],
                 stall: list[int] | None = None) -> None:
        super().__init__("unused:9092", group_id="tagger", attempt_s=0.05)
        self.faust_consumer = consumer
        self.group, self.records, self.stall = committed, records, list(stall or [])
        self.asked: list[Any] = []
        self.consumers_dropped = 0

    async def _started(self) -> Any:  # a side consumer that is never connected
        if self._consumer is None:
            filler = self

            class Side:
                async def stop(self) -> None:
                    filler.consumers_dropped += 1

            self._consumer = Side()
        return self._consumer

    async def _group_start(self, topic: str, partition: int) -> dict[tuple[str, int], int]:
        self.asked.append((topic, partition))
        return {(topic, partition): self.group[(topic, partition)]}

    async def _read(self, topic: str, partition: int, start: int, end: int, into: list[Any]) -> None:
        await self._started()
        for n in range(into[-1].offset + 1 if into else start, end):  # on from the last try's last record
            if self.stall and len(into) == self.stall[0]:
                self.stall.pop(0)
                await asyncio.sleep(3600)  # a fetch that never answers: cancelled by the attempt's bound
            into.append(self.records[n])


def faust_consumer(committed: int | None, generation: int = 1) -> Any:
    c: Any = FakeFaustConsumer({} if committed is None else {TP: committed})
    c.app = SimpleNamespace(consumer_generation_id=generation)
    return c


async def test_the_committed_offset_faust_knows_is_used_as_it_is() -> None:
    gaps = Filler(faust_consumer(31), {TP: 99}, {})
    assert await gaps.start_of(*TP) == 31 and gaps.asked == []


async def test_a_partition_faust_has_no_committed_offset_for_yet_is_asked_of_the_broker() -> None:
    # Faust forgot it at the revocation and learns it again after resuming the partition (test_faust_bugs)
    c = faust_consumer(None)
    gaps = Filler(c, {TP: 31}, {})
    assert await gaps.start_of(*TP) == 31 and gaps.asked == [TP]
    assert c._committed_offset[TP] == 31  # Faust's head check holds from the first record on
    c._acked[TP], c._acked_index[TP] = [33, 34], {33, 34}  # 31 and 32 not processed
    assert new_offset(c, TP) is None  # with None there, Faust's commit went to 35


async def test_a_first_record_after_an_assignment_past_the_committed_offset_has_the_gap_read_first() -> None:
    c = faust_consumer(None)
    gaps = Filler(c, {TP: 31}, {n: record(n) for n in range(31, 34)})
    table: dict[str, CustomerState] = {}
    rt, _ = make_runtime(Settings(partitions=1), table, gaps=gaps)  # type: ignore[call-arg]
    assert await rt.handle(Message("orders", 0, 33, b"c33", order(33))) == "ok"
    assert {"c31", "c32", "c33"} <= set(table) and rt.outcomes["ok"] == 3  # 31, 32 read directly, then 33
    assert sorted(c._acked[TP]) == [31, 32] and rt.last_offset[TP] == 33  # 33 is acked by the intake


async def test_a_first_record_handled_ahead_of_its_partition_does_not_let_faust_commit_past_the_rest() -> None:
    c = faust_consumer(None)
    rt, _ = make_runtime(Settings(partitions=1), {}, gaps=Filler(c, {TP: 31}, {}))  # type: ignore[call-arg]
    assert await rt.handle(Message("orders", 0, 35, b"c35", order(35)), ahead=True) == "ok"  # 31..34 in hand
    c._acked[TP], c._acked_index[TP] = [35], {35}  # the intake's ack
    assert new_offset(c, TP) is None  # with Faust's None, 36: a rebalance now lost 31..34


async def test_a_gap_read_that_stalls_or_fails_is_tried_again_from_where_it_stopped() -> None:
    gaps = Filler(faust_consumer(10), {}, {n: record(n) for n in range(10, 30)}, stall=[3, 7])
    got = await gaps.fetch("orders", 0, 10, 20)
    assert [r.offset for r in got] == list(range(10, 20)) and gaps.filled == 10  # all of them, once each
    gaps.records = Flaky(gaps.records, at=25)  # a broker error on the way, once
    assert [r.offset for r in await gaps.fetch("orders", 0, 20, 30)] == list(range(20, 30))
    assert gaps.consumers_dropped == 3  # each failed try drops its side consumer: the next one connects anew


class Flaky(dict[int, Any]):
    """Records whose ``at`` fails to read the first time (as a broker error would)."""

    def __init__(self, records: dict[int, Any], at: int) -> None:
        super().__init__(records)
        self.at: int | None = at

    def __getitem__(self, n: int) -> Any:
        if n == self.at:
            self.at = None
            raise ConnectionError("the broker went away")
        return super().__getitem__(n)


async def test_a_gap_left_unread_when_the_group_rebalanced_is_not_processed_nor_dead_lettered() -> None:
    c = faust_consumer(31)
    gaps = Filler(c, {}, {n: record(n) for n in range(31, 34)}, stall=[1])

    async def rebalance() -> None:
        await asyncio.sleep(0.02)
        c.app.consumer_generation_id = 2

    table: dict[str, CustomerState] = {}
    rt, senders = make_runtime(Settings(partitions=1), table, gaps=gaps)  # type: ignore[call-arg]
    receiver = Receiver(rt)
    await asyncio.gather(rebalance(), receiver.receive(Message("orders", 0, 33, b"c33", order(33)), 0))
    assert "c33" not in table and senders["dead_letters"].sent == []  # read again wherever 0 went
    assert c._acked[TP] == [] and rt.last_offset[TP] == 30  # nothing marked done: 31.. read again
    with pytest.raises(GapUnfilled, match="rebalanced"):
        c.app.consumer_generation_id = 1
        gaps.stall = [0]
        await asyncio.gather(rebalance(), gaps.fetch("orders", 0, 31, 33))
