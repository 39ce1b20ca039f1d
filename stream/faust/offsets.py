"""Offset continuity: each source partition's offsets handled in order, none lost to a Faust "gap".

Faust's consumer drops a message now and then around recoveries and rebalances, and commits
the offsets it never delivered as if processed (guards 3 and 4 in :mod:`stream.faust.guards`).
:class:`Offsets` notices the jump in a partition's offsets, has :class:`GapFiller` read the
records in between straight from Kafka, and, once the agent has processed them, tells Faust
they are done (:meth:`GapFiller.mark_done`) so commits can move past them.

The batch intake may hand a message over *ahead* of earlier ones of its partition (a big order
or a complaint, :mod:`stream.faust.intake`): its offset is kept, so it is neither a gap's end nor
processed twice when the gap is filled.

This module knows nothing of what a record means: the agent routes the records it is given.
It reads and writes Faust's consumer's ``_committed_offset``, ``_acked`` and ``_acked_index``
(registered in :mod:`stream.faust.private`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Gaps(Protocol):
    """What :class:`Offsets` needs of a gap filler (:class:`GapFiller`, or a test's stand-in)."""

    def start_of(self, topic: str, partition: int) -> int | None: ...

    async def fetch(self, topic: str, partition: int, start: int, end: int) -> list[Any]: ...

    def mark_done(self, topic: str, partition: int, start: int, end: int) -> None: ...


class Gap:
    """Offsets ``start..end-1`` of a partition, never delivered: the records read for them.

    Iterate :meth:`records` (each handled ahead is passed over), process them, then
    :meth:`Offsets.gap_done` the gap."""

    __slots__ = ("topic", "partition", "start", "end", "_read", "_ahead")

    def __init__(self, topic: str, partition: int, start: int, end: int, read: list[Any], ahead: set[int]) -> None:
        self.topic, self.partition, self.start, self.end = topic, partition, start, end
        self._read, self._ahead = read, ahead

    def records(self) -> Iterator[Any]:
        """The records read, in offset order, but those already handled ahead (forgotten as passed)."""
        for record in self._read:
            if record.offset in self._ahead:
                self._ahead.discard(record.offset)
                continue
            yield record


class Offsets:
    """The last offset handled on each partition, the offsets handled ahead, and the gap filler.

    One per worker, held by the agent's runtime. ``gaps`` is None where no broker is read
    directly (unit tests, benchmarks): then no gap is filled.
    """

    __slots__ = ("gaps", "last_offset", "_ahead")

    def __init__(self, gaps: Gaps | None = None) -> None:
        self.gaps = gaps
        self.last_offset: dict[tuple[str, int], int] = {}  # the last offset handled in order, per partition
        self._ahead: dict[tuple[str, int], set[int]] = {}  # offsets handled before earlier ones came

    @property
    def filled(self) -> int:
        """Records read directly so far (/stats, metrics)."""
        return getattr(self.gaps, "filled", 0)

    def handled_ahead(self, topic: str, partition: int, offset: int) -> None:
        """``offset`` is handled before earlier offsets of its partition: pass over it when they come."""
        self._ahead.setdefault((topic, partition), set()).add(offset)

    def arrived(self, topic: str, partition: int, offset: int) -> tuple[int, int] | None:
        """``offset`` comes in order: the offsets before it never delivered, ``(start, end)``, to
        :meth:`read` and process first; or None: none, and ``offset`` is the partition's last now.

        Synchronous, as every message passes here. After a gap is processed, :meth:`gap_done`
        records it (a failure on the way leaves the partition's last offset where it was, so the
        next message reads the gap again)."""
        key = (topic, partition)
        last = self.last_offset.get(key)
        gaps = self.gaps
        if last is None and gaps is not None:  # first message since an assignment: from the committed offset
            start = gaps.start_of(topic, partition)
            last = None if start is None else start - 1
            log.info("%s[%s]: first message since the assignment at offset %s (committed: %s)",
                     topic, partition, offset, start)
        done_ahead = self._ahead.get(key)
        if done_ahead:
            while last is not None and last + 1 in done_ahead:
                done_ahead.discard(last + 1)
                last += 1
        if last is None or offset <= last + 1 or gaps is None:
            self.last_offset[key] = offset
            return None
        return last + 1, offset

    async def read(self, topic: str, partition: int, start: int, end: int) -> Gap:
        """The records of offsets ``start..end-1``, read straight from Kafka (see :meth:`arrived`)."""
        missed = [] if self.gaps is None else await self.gaps.fetch(topic, partition, start, end)
        log.warning("%s[%s]: offsets %s..%s were never delivered; processing %d records read directly",
                    topic, partition, start, end - 1, len(missed))
        return Gap(topic, partition, start, end, missed, self._ahead.setdefault((topic, partition), set()))

    def gap_done(self, gap: Gap) -> None:
        """The records of ``gap`` were processed: Faust may commit past them; its end is the last offset."""
        if self.gaps is not None:
            self.gaps.mark_done(gap.topic, gap.partition, gap.start, gap.end)
        self.last_offset[(gap.topic, gap.partition)] = gap.end

    def forget(self, key: tuple[str, int] | None = None) -> None:
        """After a rebalance every partition restarts from its committed offset (``key`` None), or
        one (topic, partition) does, read again from there: no gap to see before its next message."""
        if key is not None:
            self.last_offset.pop(key, None)
            return
        self.last_offset.clear()
        self._ahead.clear()


class GapFiller:
    """Reads messages Faust skipped, so the agent can process them in order.

    Faust's consumer drops a message now and then around recoveries and
    rebalances (its flow control cancels the hand-over after the read offset
    moved on) and then treats the offsets it never delivered as a "gap" that
    it commits as if processed. The agent notices a jump in a partition's
    offsets and asks this class for the messages in between, which it
    processes before the current one. Offsets that hold no record (a real
    gap, such as a transaction marker) simply return nothing.
    """

    def __init__(self, bootstrap: str, *, max_fetch_bytes: int = 16 << 20,
                 options: dict[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        self.options = options or {}  # security: stream.security.aiokafka_options
        self.max_fetch_bytes = max_fetch_bytes
        self._consumer: Any = None
        self.filled = 0
        self.faust_consumer: Any = None  # the app's consumer (set by the agent wiring) for the two methods below

    def start_of(self, topic: str, partition: int) -> int | None:
        """The committed offset of ``topic[partition]`` (the next Faust should deliver), if known."""
        if self.faust_consumer is None:
            return None
        from faust.types import TP

        committed: int | None = self.faust_consumer._committed_offset.get(TP(topic, partition))
        return committed

    def mark_done(self, topic: str, partition: int, start: int, end: int) -> None:
        """Tell Faust that offsets ``start..end-1`` were processed here, so commits can move past them."""
        if self.faust_consumer is None:
            return
        from faust.types import TP

        tp = TP(topic, partition)
        acked, index = self.faust_consumer._acked[tp], self.faust_consumer._acked_index[tp]
        for offset in range(start, end):
            if offset not in index:
                acked.append(offset)
                index.add(offset)

    async def fetch(self, topic: str, partition: int, start: int, end: int,
                    timeout: float = 15.0) -> list[Any]:
        """Records of ``topic[partition]`` with start <= offset < end."""
        from aiokafka import AIOKafkaConsumer
        from aiokafka.structs import TopicPartition

        if self._consumer is None:
            self._consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                max_partition_fetch_bytes=self.max_fetch_bytes, **self.options)
            await self._consumer.start()
        consumer, tp = self._consumer, TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, start)
        records: list[Any] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await consumer.position(tp) < end and loop.time() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=200)
            records += [r for r in batch.get(tp, []) if start <= r.offset < end]
        self.filled += len(records)
        return records

    async def stop(self) -> None:
        """Close the side consumer."""
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
