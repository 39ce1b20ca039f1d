"""Compatibility shims for the Tansu development broker: its wrong "latest offset", its fetch wait.

Tansu 0.6 answers ListOffsets(LATEST) with the base offset of the last record
batch + 1 instead of the log-end offset. Faust uses that value as the
changelog highwater during table recovery, so it stops reading before the
tail of the last batch and silently loses those table updates.

Fetch responses carry the correct high watermark. :func:`install` replaces
the highwater lookup Faust's consumer uses (only used at recovery and lag
checks, never per message) with one that reads the high watermark from a
Fetch of each partition's last batch. On a broker whose ListOffsets is right
the result equals ListOffsets, so the shim is exact everywhere; it is off by
default and enabled with ``TAGGER_TANSU_COMPAT=true``.

Tansu also holds a Fetch that finds no new records for the whole
``fetch_max_wait_ms``, even when records arrive meanwhile (Kafka answers as soon
as ``fetch_min_bytes`` are there). Faust asks for 1.5 s, so events waited up to
half a second or more before the worker even saw them (measured with aiokafka:
p50 526 ms with the default wait, 10 ms with 50 ms). The shim lowers the wait of
Faust's consumer to :data:`FETCH_MAX_WAIT_MS`.

Both are Tansu-only: :func:`stream.faust.app.create_app` installs this module only with
``TAGGER_TANSU_COMPAT=true``, which the integration fixtures set only on Tansu.
On real Apache Kafka, tests/integration/test_kafka_not_tansu.py shows neither is
needed: ListOffsets(LATEST) equals the Fetch high watermark after multi-record
batches (and :func:`fetch_highwaters` changes nothing), a worker without the shim
recovers its table exactly from a changelog whose last batches hold several
records, and a Fetch with Faust's 1.5 s wait answers as soon as a record arrives
(median ~11 ms measured).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

log = logging.getLogger(__name__)
_installed = False
FETCH_MAX_WAIT_MS = 50


async def fetch_highwaters(
    bootstrap: str, listed: Mapping[Any, int], *, timeout: float = 15.0,
    options: Mapping[str, Any] | None = None,
) -> dict[Any, int]:
    """Correct ``listed`` end offsets with the high watermark of a real Fetch."""
    result = {tp: off for tp, off in listed.items()}
    todo = {TopicPartition(tp.topic, tp.partition): tp for tp, off in listed.items() if off > 0}
    if not todo:
        return result
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, **(options or {})
    )
    await consumer.start()
    try:
        consumer.assign(list(todo))
        for atp, tp in todo.items():
            consumer.seek(atp, max(listed[tp] - 1, 0))
        deadline = asyncio.get_running_loop().time() + timeout
        missing = set(todo)
        while missing and asyncio.get_running_loop().time() < deadline:
            await consumer.getmany(*missing, timeout_ms=200, max_records=1)
            missing = {atp for atp in missing if consumer.highwater(atp) is None}
        for atp, tp in todo.items():
            hw = consumer.highwater(atp)
            if hw is None:
                log.warning("tansu-compat: no high watermark for %s; using %s", atp, listed[tp])
            else:
                result[tp] = max(hw, listed[tp])
    finally:
        await consumer.stop()
    return result


def install(bootstrap: str, options: Mapping[str, Any] | None = None) -> None:
    """Patch Faust's aiokafka consumer: highwaters from Fetch responses, a short fetch wait."""
    global _installed
    if _installed:
        return
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    original = AIOKafkaConsumerThread._highwaters

    async def _highwaters(self: AIOKafkaConsumerThread, partitions: list[Any]) -> Mapping[Any, int]:
        listed = await original(self, partitions)
        fixed = await fetch_highwaters(bootstrap, listed, options=options)
        if fixed != dict(listed):
            log.info("tansu-compat: corrected highwaters %s -> %s", dict(listed), fixed)
        return fixed

    create = AIOKafkaConsumerThread._create_worker_consumer

    def _create_worker_consumer(self: AIOKafkaConsumerThread, *args: Any, **kwargs: Any) -> Any:
        consumer = create(self, *args, **kwargs)
        consumer._fetch_max_wait_ms = min(consumer._fetch_max_wait_ms, FETCH_MAX_WAIT_MS)  # read at start()
        return consumer

    AIOKafkaConsumerThread._highwaters = _highwaters  # type: ignore[method-assign]
    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]
    _installed = True
