"""Batch intake: fetched records of the tagger's source topics go straight to one handler.

Faust hands every fetched record to an agent through a per-message path: a
``ConsumerMessage``, two futures raced in ``wait_first``, the conductor's lock and
callback, an ``Event``, the stream's flow-control queue, the stream's iteration,
sensors and an ack. Measured here that path alone costs ~100 µs per message (a
do-nothing agent drains ~10,000 single-event messages/s on one core), more than
the tagger's own work. With the intake installed, the consumer's drain loop (run
by Faust's fetcher service) keeps Faust's fetch (active and paused partitions,
flow control, the seek after a rebalance) and its offset bookkeeping, and calls
the handler once per record of our topics in the fetch's own round-robin order:

- each record runs within a *current event* of its own, so a table write takes
  its changelog partition (and RocksDB its partition database) from the record,
  as it would from a stream's event (:func:`stream.app.within_event`);
- after the handler returns, the offset is acked into the same lists Faust's
  ``Consumer.ack`` fills, so Faust's commit timer (and guards 3-5 in
  :mod:`stream.guards`) commit exactly the offsets handled;
- a rebalance or a stop stops the flow: the rest of the fetch is left unacked
  (fetched again from the committed offset, wherever the partition goes), and
  acks of a record whose generation has passed are refused, as guard 1 does.
  While a fetch is being handled a marker sits in Faust's set of unacked
  messages, so ``Consumer.wait_empty`` (before the commit of a rebalance or
  stop) waits for the record in hand;
- a fetch is handled in a shielded task, so cancelling the fetcher at shutdown
  does not cut a record in half: the handling sees the flow stopped and ends
  after the record in hand.

Records of other topics (table changelogs during recovery) take Faust's own path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from faust.types.tuples import ack_lock

from .app import within_event
from .guards import fetch_again

log = logging.getLogger(__name__)

Handler = Callable[[Any, int], Awaitable[None]]
"""Called with an aiokafka ``ConsumerRecord`` and ``more``: how many records wait behind it (the rest of
the fetch, plus :func:`unfetched`)."""


def later_in_partition(consumer: Any, tp: Any, offset: int) -> int:
    """Records of ``tp`` after ``offset``, below its highwater as of the last fetch (0 if unknown)."""
    return max(0, (consumer.highwater(tp) or 0) - offset - 1)


def unfetched(consumer: Any, topics: Collection[str]) -> int:
    """Records of ``topics`` not fetched yet, below each partition's highwater, over the partitions read so far.

    Every partition counts, not only the one in hand: with one partition's end in sight
    (a small topic, a fetch that took all of it) the worker is still behind on the others,
    and "nothing behind" ran every waiting evaluation at each such fetch (~2.5 evaluations
    per customer in a drain of 300k envelope events over 20,000 customers).
    """
    return sum(later_in_partition(consumer, tp, offset) for tp, offset in list(consumer._read_offset.items())
               if offset is not None and tp.topic in topics)

YIELD_EVERY = 100  # records handled between two yields to the event loop (as Faust's drain loop)

_installed = False


class _Current:
    """The current event of one record, as Faust's tables and stores read it (``event.message``)."""

    __slots__ = ("message", "__weakref__")

    def __init__(self, record: Any) -> None:
        self.message = record


class _InHand:
    """Stands in Faust's unacked-message set while a fetch is handled (``Consumer.wait_empty`` waits)."""

    __slots__ = ("acked", "refcount", "__weakref__")

    def __init__(self) -> None:
        self.acked = False
        self.refcount = 1


class BatchIntake:
    """The drain loop of ``app``'s consumer for ``topics``: see the module docstring."""

    def __init__(self, app: Any, topics: Collection[str], handle: Handler) -> None:
        self.app = app
        self.topics = frozenset(topics)
        self.handle = handle
        self.left = 0  # fetched records left unhandled (read again) because a rebalance or stop came first

    def install(self) -> None:
        """Make this the drain loop of the app's consumer (Faust's own one for other apps)."""
        _install_dispatch()
        self.app._tagger_intake = self

    async def drain(self, consumer: Any, fetcher: Any) -> None:
        """Faust's ``Consumer._drain_messages`` for our topics (run by the fetcher service)."""
        try:
            await self._drain(consumer, fetcher)
        except (*consumer.consumer_stopped_errors, asyncio.CancelledError):
            if self.app.should_stop:  # stopping: as Faust's own drain loop, end quietly
                log.info("consumer stopped; the intake ends")
                return
            raise

    async def _drain(self, consumer: Any, fetcher: Any) -> None:
        read_offset = consumer._read_offset
        buffered = consumer._buffered_partitions
        while not (consumer._stopped.is_set() or fetcher._stopped.is_set()):
            await asyncio.sleep(0)
            records, active = await consumer._wait_next_records(1.0)
            if not records or consumer.should_stop:
                continue
            if not consumer.flow_active:  # as Faust's getmany: a rebalance is under way
                await consumer.perform_seek()  # moves only the partitions with a committed offset: guard 9
                await fetch_again(consumer, {tp: (rs[0].offset, rs[-1].offset) for tp, rs in records.items() if rs})
                continue
            generation = self.app.consumer_generation_id
            ours: list[tuple[Any, Any]] = []
            skipped: dict[Any, tuple[int, int]] = {}  # paused since the fetch: first and last offset
            for tp, record in consumer.scheduler.iterate(records):
                if active is not None and tp not in active and tp not in buffered:
                    skipped[tp] = (skipped.get(tp, (record.offset,))[0], record.offset)
                    continue
                seen = read_offset[tp]
                if seen is not None and record.offset < seen:
                    continue  # read already (Faust drops these too)
                if tp.topic in self.topics:
                    ours.append((tp, record))
                else:  # a table's changelog: Faust's own path
                    await consumer.wait_first(consumer.callback(consumer._to_message(tp, record)),
                                              consumer.suspend_flow.wait())
                read_offset[tp] = record.offset
            if skipped:
                await fetch_again(consumer, skipped)
            if ours:
                await asyncio.shield(self.handle_fetch(consumer, generation, ours))

    def _current(self, consumer: Any, generation: int) -> bool:
        return (consumer.flow_active and self.app.flow_control.is_active()
                and self.app.consumer_generation_id == generation)

    async def handle_fetch(self, consumer: Any, generation: int, records: list[tuple[Any, Any]]) -> None:
        """Hand each record to the handler in order and ack it; stop at a rebalance or stop."""
        in_hand = _InHand()
        consumer._unacked_messages.add(in_hand)
        acked, index, committed = consumer._acked, consumer._acked_index, consumer._committed_offset
        commit_every = consumer._commit_every
        handle = self.handle
        inbound = self.app.monitor.stream_inbound_time  # Faust's "stream is idle" check reads it
        last = len(records) - 1
        behind = unfetched(consumer, self.topics)
        try:
            for n, (tp, record) in enumerate(records):
                if not self._current(consumer, generation):
                    self.left += last + 1 - n
                    log.info("rebalance or stop: %d fetched records left to be read again", last + 1 - n)
                    return
                more = last - n + behind
                inbound[tp] = time.monotonic()
                with within_event(_Current(record)):
                    await handle(record, more)
                offset = record.offset
                with ack_lock:  # Consumer.ack's bookkeeping, refused once the generation passed (guard 1)
                    if self._current(consumer, generation):
                        start = committed[tp]
                        done = index[tp]
                        if (start is None or offset >= start) and offset not in done:
                            done.add(offset)
                            acked[tp].append(offset)
                            consumer._n_acked += 1
                if commit_every is not None and consumer._n_acked >= commit_every:
                    consumer._n_acked = 0
                    await consumer.commit()
                if n % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)
        finally:
            in_hand.acked = True
            consumer._unacked_messages.discard(in_hand)
            waiter = consumer._waiting_for_ack
            if waiter is not None and not waiter.done():
                waiter.set_result(None)


def _install_dispatch() -> None:
    """Route ``Consumer._drain_messages`` to an app's :class:`BatchIntake` when it has one."""
    global _installed
    if _installed:
        return
    from faust.transport.consumer import Consumer

    faust_drain = Consumer._drain_messages

    async def _drain_messages(self: Any, fetcher: Any) -> None:
        intake: BatchIntake | None = getattr(self.app, "_tagger_intake", None)
        if intake is None:
            await faust_drain(self, fetcher)
        else:
            await intake.drain(self, fetcher)

    Consumer._drain_messages = _drain_messages  # type: ignore[method-assign]
    _installed = True
