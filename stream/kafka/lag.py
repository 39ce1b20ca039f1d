"""Consumer lag and the age of the oldest unprocessed message.

Lag per partition is the high watermark the consumer saw in its last Fetch
response minus the next offset the worker has to process. The high
watermark comes from Fetch, not ListOffsets, so it is right on the Tansu
development broker too (whose ListOffsets(LATEST) is wrong; see
``stream/faust/tansu.py``).

The age of the oldest unprocessed message needs that message's Kafka
timestamp: :class:`PartitionProbe` reads it with a side consumer (no group)
for lagging partitions, and also reads the high watermark of partitions the
worker's consumer has not fetched yet (they stay paused during changelog
recovery, which is exactly when a backlog builds up).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from stream.metrics import PartitionLag

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]


def next_offset(last_processed: int | None, committed: int | None) -> int | None:
    """The next offset to process: after the last one handled, else the committed one (None: unknown)."""
    if last_processed is not None:
        return last_processed + 1
    return committed


def partition_lag(highwater: int | None, next_to_process: int | None) -> int | None:
    """Messages between the next offset to process and the high watermark (None: unknown).

    An empty partition (high watermark 0) has no lag even before anything was processed.
    """
    if highwater == 0:
        return 0
    if highwater is None or next_to_process is None:
        return None
    return max(0, highwater - next_to_process)


def oldest_ages(lags: Iterable[PartitionLag], timestamps: Mapping[TopicPartition, float],
                now: float) -> dict[str, float]:
    """Per topic, the age in seconds of the oldest unprocessed message.

    ``timestamps``: Kafka timestamp (seconds) of the next message to process of lagging
    partitions. A topic whose partitions are all caught up is 0. A topic with a lagging
    partition whose timestamp is not known yet is left out (unknown, never a false 0).
    """
    ages: dict[str, float] = {}
    unknown: set[str] = set()
    for item in lags:
        age = 0.0
        if item.lag > 0:
            ts = timestamps.get((item.topic, item.partition))
            if ts is None:
                unknown.add(item.topic)
                continue
            age = max(0.0, now - ts)
        ages[item.topic] = max(ages.get(item.topic, 0.0), age)
    return {topic: age for topic, age in ages.items() if topic not in unknown}


class StallWatch:
    """Notices partitions whose committed offset stopped moving although messages wait.

    Whatever the cause (a fetch that never resumed, an ack Faust dropped so its
    commits wait forever), the symptom is the same: the group's committed offset
    of a partition with messages beyond it does not move. :meth:`check` names the
    partitions stuck for ``after`` seconds, again every ``after`` seconds while
    they stay stuck. Nothing counts while the worker is rebalancing or recovering.
    """

    def __init__(self, after: float) -> None:
        self.after = after
        self._since: dict[TopicPartition, tuple[int, float]] = {}  # committed offset, seen unchanged since

    def check(self, rows: Iterable[tuple[TopicPartition, int | None, int | None]], now: float,
              busy: bool = False) -> list[TopicPartition]:
        """``rows``: (partition, committed offset, high watermark) of every owned partition."""
        if busy:
            self._since.clear()
            return []
        stalled, since = [], {}
        for key, committed, highwater in rows:
            if committed is None or highwater is None or highwater <= committed:
                continue  # nothing waits (or unknown): not stuck
            mark = self._since.get(key)
            if mark is None or mark[0] != committed:
                mark = (committed, now)
            elif now - mark[1] >= self.after:
                stalled.append(key)
                mark = (committed, now)
            since[key] = mark
        self._since = since
        return stalled


async def group_starts(consumer: Any, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
    """Where the group of ``consumer`` (an aiokafka consumer with the workers' ``group_id``, assigned by
    hand) resumes each of ``partitions``: its committed offset, the next to process; for a partition the
    group never committed, the partition's first offset (the workers read from the earliest)."""
    from aiokafka.structs import TopicPartition as TP

    found, never = {}, []
    for topic, partition in partitions:
        offset = await consumer.committed(TP(topic, partition))
        if offset is not None and offset >= 0:
            found[(topic, partition)] = int(offset)
        else:
            never.append(TP(topic, partition))
    if never:
        starts = await consumer.beginning_offsets(never)
        found.update({(tp.topic, tp.partition): int(offset) for tp, offset in starts.items()})
    return found


@dataclass(frozen=True)
class Probed:
    """What a side read of one partition found."""

    highwater: int | None  # from the Fetch response (right on Tansu too)
    timestamp: float | None  # Kafka timestamp (s) of the first message at or after the offset read


class PartitionProbe:
    """Reads partitions from given offsets with its own consumer (assigned by hand, nothing committed).

    Used for partitions whose lag the worker's consumer cannot tell (paused during
    recovery, so never fetched) and for lagging partitions, whose next message's
    timestamp gives the age of the oldest unprocessed message.
    """

    def __init__(self, bootstrap: str, group_id: str | None = None, options: Mapping[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        # The workers' group, only to read its committed offsets: partitions are assigned by
        # hand, so this consumer never joins the group, and it never commits.
        self.group_id = group_id
        self.options = dict(options or {})  # e.g. security settings for AIOKafkaConsumer
        self._consumer: Any = None

    async def committed(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Where the group resumes each of ``partitions`` (:func:`group_starts`); {} on failure.

        The worker's consumer learns the committed offsets only when its changelog recovery ends, and
        never learns a start for a partition not committed yet: without this its lag was unknown and
        a stall there went unnoticed.
        """
        wanted = list(partitions)
        if not wanted or self.group_id is None:
            return {}
        try:
            return await group_starts(await self._started(), wanted)
        except Exception as exc:  # noqa: BLE001 - only a metric: try again next time
            log.warning("could not read committed offsets for lag: %r", exc)
            await self.stop()
            return {}

    async def _started(self) -> Any:
        from aiokafka import AIOKafkaConsumer

        if self._consumer is None:
            self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group_id,
                                              enable_auto_commit=False, max_partition_fetch_bytes=64 << 10,
                                              **self.options)
            await self._consumer.start()
        return self._consumer

    async def probe(self, wanted: Mapping[TopicPartition, int], timeout: float = 3.0) -> dict[TopicPartition, Probed]:
        """High watermark and next message timestamp of each wanted (partition, offset); {} on failure."""
        if not wanted:
            return {}
        try:
            return await self._probe(wanted, timeout)
        except Exception as exc:  # noqa: BLE001 - only a metric: try again next time
            log.warning("could not probe partitions for lag: %r", exc)
            await self.stop()
            return {}

    async def _probe(self, wanted: Mapping[TopicPartition, int], timeout: float) -> dict[TopicPartition, Probed]:
        from aiokafka.structs import TopicPartition as TP

        consumer = await self._started()
        tps = {TP(topic, partition): (topic, partition) for topic, partition in wanted}
        consumer.assign(list(tps))
        for tp, key in tps.items():
            consumer.seek(tp, wanted[key])
        stamps: dict[TopicPartition, float] = {}
        missing = set(tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while missing and loop.time() < deadline:
            batch = await consumer.getmany(*missing, timeout_ms=200)
            for tp, records in batch.items():
                first = next((r for r in records if r.offset >= wanted[tps[tp]]), None)
                if first is not None:
                    stamps[tps[tp]] = first.timestamp / 1000.0
                    missing.discard(tp)
            for tp in list(missing):
                highwater = consumer.highwater(tp)
                if highwater is not None and highwater <= wanted[tps[tp]]:
                    missing.discard(tp)  # nothing to read there: caught up
        return {key: Probed(consumer.highwater(tp), stamps.get(key)) for tp, key in tps.items()}

    async def stop(self) -> None:
        """Close the side consumer."""
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()
