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
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol, TypeVar

from stream.exceptions import TaggerError
from stream.kafka.lag import group_starts
from stream.tuning import GAP_READ_ATTEMPT

log = logging.getLogger(__name__)

T = TypeVar("T")


class Gaps(Protocol):
    """What :class:`Offsets` needs of a gap filler (:class:`GapFiller`, or a test's stand-in)."""

    async def start_of(self, topic: str, partition: int) -> int | None: ...

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

    async def handled_ahead(self, topic: str, partition: int, offset: int) -> None:
        """``offset`` is handled before earlier offsets of its partition: pass over it when they come.
        The first of its partition since an assignment learns where the partition resumes first, as
        :meth:`missed` does: its acknowledgement must not let Faust commit past those earlier ones."""
        key = (topic, partition)
        if key not in self.last_offset and self.gaps is not None:
            await self._resume_point(topic, partition, offset)
        self._ahead.setdefault(key, set()).add(offset)

    def in_order(self, topic: str, partition: int, offset: int) -> bool:
        """Whether ``offset`` follows the last one handled of its partition (or no gap is filled here):
        it is the partition's last now. Synchronous, as every message passes here; False: ask
        :meth:`missed` what came before it."""
        key = (topic, partition)
        last = self.last_offset.get(key)
        if self.gaps is None or (last is not None and offset <= last + 1 and not self._ahead.get(key)):
            self.last_offset[key] = offset
            return True
        return False

    async def missed(self, topic: str, partition: int, offset: int) -> Gap | None:
        """After :meth:`in_order` said False: the offsets before ``offset`` never delivered, read straight
        from Kafka, to process first and then :meth:`gap_done`; or None: none, and ``offset`` is the
        partition's last now. A failure on the way leaves the partition's last offset where it was, so
        the next message reads the gap again."""
        key = (topic, partition)
        gaps = self.gaps
        assert gaps is not None  # in_order says True without one
        last = self.last_offset.get(key)
        if last is None:  # the first message since an assignment
            last = await self._resume_point(topic, partition, offset)
            if last is None:
                self.last_offset[key] = offset
                return None
        done_ahead = self._ahead.get(key)
        if done_ahead:
            while last + 1 in done_ahead:
                done_ahead.discard(last + 1)
                last += 1
        if offset <= last + 1:
            self.last_offset[key] = offset
            return None
        records = await gaps.fetch(topic, partition, last + 1, offset)
        log.warning("%s[%s]: offsets %s..%s were never delivered; processing the %d records read directly",
                    topic, partition, last + 1, offset - 1, len(records))
        return Gap(topic, partition, last + 1, offset, records, self._ahead.setdefault(key, set()))

    async def _resume_point(self, topic: str, partition: int, offset: int) -> int | None:
        """The offset before the one the group resumes ``topic[partition]`` from (None: not known), kept as the
        partition's last: the first message since the assignment, at ``offset``, is checked against it."""
        assert self.gaps is not None
        start = await self.gaps.start_of(topic, partition)
        log.info("%s[%s]: first message since the assignment at offset %s (the group resumes at %s)",
                 topic, partition, offset, start)
        if start is None:
            return None
        self.last_offset[(topic, partition)] = start - 1
        return start - 1

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


class GapUnfilled(TaggerError):
    """Where a partition resumes, or a gap's records, could not be read before the consumer group moved
    on to a new generation. The record in hand is not processed and not acknowledged: it is read again
    from the committed offset, wherever its partition went."""


class GapFiller:
    """Reads messages Faust skipped, so the agent can process them in order.

    Faust's consumer drops a message now and then around recoveries and
    rebalances (its flow control cancels the hand-over after the read offset
    moved on) and then treats the offsets it never delivered as a "gap" that
    it commits as if processed. The agent notices a jump in a partition's
    offsets and asks this class for the messages in between, which it
    processes before the current one. Offsets that hold no record (a real
    gap, such as a transaction marker, or records retention deleted) simply
    return nothing.

    Its side consumer is assigned by hand and never commits; with the workers'
    ``group_id`` it reads the group's committed offsets (:meth:`start_of`).
    A read that does not finish within ``attempt_s`` seconds is tried again,
    from where it stopped, until it does, or until the group's generation has
    passed (:class:`GapUnfilled`): a gap is never marked done unread.
    """

    def __init__(self, bootstrap: str, *, group_id: str | None = None, max_fetch_bytes: int = 16 << 20,
                 options: dict[str, Any] | None = None, attempt_s: float = GAP_READ_ATTEMPT) -> None:
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.options = options or {}  # security: stream.security.aiokafka_options
        self.max_fetch_bytes = max_fetch_bytes
        self.attempt_s = attempt_s
        self._consumer: Any = None
        self.filled = 0
        self.faust_consumer: Any = None  # the app's consumer (set by the agent wiring) for the methods below

    async def start_of(self, topic: str, partition: int) -> int | None:
        """The offset ``topic[partition]`` resumes from since its assignment, the next Faust should deliver
        (None only before the first assignment, or with no group to ask).

        Faust forgets a partition's committed offset when it is revoked and learns it again only when
        the next assignment's recovery seeks to it, which it does *after* resuming the partitions: the
        first records were handled meanwhile (the fault suite's worker logs, after a SIGKILL and after a
        SIGTERM, showed "committed: None" for partitions the group had committed), so a record dropped
        before them went unseen, and Faust's commit, whose head check (guard 3) needs the committed
        offset, could pass it. The group's offset is then asked of the broker (never committed: the
        partition's first), and given to Faust's consumer too, so its head check holds from the first
        record on."""
        consumer = self.faust_consumer
        if consumer is None:
            return None
        from faust.types import TP

        tp = TP(topic, partition)
        committed: int | None = consumer._committed_offset.get(tp)
        if committed is not None or self.group_id is None:
            return committed
        starts = await self._persist(f"{topic}[{partition}]'s committed offset",
                                     lambda: self._group_start(topic, partition))
        start = starts[(topic, partition)]
        if consumer._committed_offset.get(tp) is None:  # not learnt meanwhile (the recovery's seek)
            consumer._committed_offset[tp] = start
        return start

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

    async def fetch(self, topic: str, partition: int, start: int, end: int) -> list[Any]:
        """Every record of ``topic[partition]`` with start <= offset < end."""
        records: list[Any] = []
        await self._persist(f"reading {topic}[{partition}] {start}..{end - 1}",
                            lambda: self._read(topic, partition, start, end, records))
        self.filled += len(records)
        return records

    async def _group_start(self, topic: str, partition: int) -> dict[tuple[str, int], int]:
        return await group_starts(await self._started(), [(topic, partition)])

    async def _read(self, topic: str, partition: int, start: int, end: int, into: list[Any]) -> None:
        """Append the records of ``start..end-1`` to ``into``, from the one after the last there (a try
        again goes on where the one before stopped), until the consumer's position reaches ``end``."""
        from aiokafka.structs import TopicPartition

        first = into[-1].offset + 1 if into else start
        consumer, tp = await self._started(), TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, first)
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=200)
            into += [r for r in batch.get(tp, []) if first <= r.offset < end]

    async def _persist(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()`` again each time it fails or does not end within ``attempt_s`` s, until it does;
        GapUnfilled once the group's generation has passed (the record in hand is then read again
        wherever its partition went)."""
        generation = self._generation()
        tries = 0
        while True:
            try:
                return await asyncio.wait_for(attempt(), self.attempt_s)
            except TimeoutError:
                failure = f"not done after {self.attempt_s:.0f} s"
            except Exception as exc:  # noqa: BLE001 - a broker or connection error: tried again
                failure = f"failed: {exc!r}"
                await asyncio.sleep(min(1.0, self.attempt_s))
            # on a new side consumer: a connection gone silent held every try on the old one (the fault
            # suite's silent-connection scenario, which then drained for 508 s instead of 25)
            consumer, self._consumer = self._consumer, None
            if consumer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(consumer.stop(), self.attempt_s)
            tries += 1
            if self._generation() != generation:
                raise GapUnfilled(f"{what}: {failure} ({tries} tries), and the consumer group has rebalanced "
                                  "since: left to be read again from the committed offset")
            log.warning("%s: %s; trying again", what, failure)

    def _generation(self) -> int | None:
        consumer = self.faust_consumer
        return None if consumer is None else consumer.app.consumer_generation_id

    async def _started(self) -> Any:
        from aiokafka import AIOKafkaConsumer

        if self._consumer is None:
            self._consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap, group_id=self.group_id, enable_auto_commit=False,
                max_partition_fetch_bytes=self.max_fetch_bytes, **self.options)
            await self._consumer.start()
        return self._consumer

    async def stop(self) -> None:
        """Close the side consumer."""
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
