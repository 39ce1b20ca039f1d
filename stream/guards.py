"""Guards that make Faust's at-least-once delivery hold under rebalances and kills.

Found by our SIGKILL test (tests/integration/test_pipeline.py), which compares
every aggregate with an independent recomputation:

1. During a rebalance Faust's stream *skips* messages fetched under the old
   consumer generation (or while flow control is paused) and still acks them.
   A later commit can then move the committed offset past a message nobody
   processed, and it is lost. :func:`install_ack_guard` refuses those acks;
   the message is fetched again after the rebalance, and the per-customer
   offset bookkeeping in :class:`~stream.state.CustomerState` makes the
   second application a no-op if it had in fact been applied.
2. Faust's pre-commit producer flush gives up after 0.1 s and can miss a
   changelog write in flight (see :class:`~stream.app.CustomerTable`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)

_installed = False


def install_ack_guard() -> None:
    """Patch Faust's consumer to ack only messages of the current generation."""
    global _installed
    if _installed:
        return
    from faust.transport.consumer import Consumer

    original = Consumer.ack

    def ack(self: Consumer, message: Any) -> bool:
        app = self.app
        if message.generation_id != app.consumer_generation_id or not app.flow_control.is_active():
            log.info("not acking %s@%s: skipped by a rebalance (generation %s, now %s)",
                     message.tp, message.offset, message.generation_id, app.consumer_generation_id)
            self._unacked_messages.discard(message)  # don't hold up the rebalance either
            return False
        return bool(original(self, message))

    Consumer.ack = ack  # type: ignore[method-assign]
    _installed = True


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
