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
  as it would from a stream's event (:func:`stream.faust.app.within_event`);
- after the handler returns, the offset is acked into the same lists Faust's
  ``Consumer.ack`` fills, so Faust's commit timer (and guards 3-5 in
  :mod:`stream.faust.guards`) commit exactly the offsets handled; the commit every
  ``commit_every`` records runs beside the intake, not in it;
- a rebalance or a stop stops the flow: the rest of the fetch is left unacked
  (fetched again from the committed offset, wherever the partition goes), and
  acks of a record whose generation has passed are refused, as guard 1 does.
  While a record is being handled a marker sits in Faust's set of unacked
  messages, so ``Consumer.wait_empty`` (before the commit of a rebalance or
  stop) waits for the record in hand, and only for it;
- a fetch is handled in a shielded task, so cancelling the fetcher at shutdown
  does not cut a record in half: the handling sees the flow stopped and ends
  after the record in hand.

Records of other topics (table changelogs during recovery) take Faust's own path.

aiokafka fetches a partition again only once the records fetched before are taken, so records
arriving while a fetch is handled waited for the whole fetch before being even fetched. With an
``urgent`` test (big orders and complaints: agents.engine.runtime), the intake takes what was fetched
meanwhile every :data:`TOP_UP_EVERY` seconds (unless it is in a backlog), and puts each urgent
record before those still in hand, unless one of its partition there may be of its customer
(per-customer order is kept).
Such a record is handled ``ahead``: the handler is told that earlier offsets of its partition
are still to come (not missed), and its ack leaves a gap that Faust's commit does not pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from faust.types.tuples import ack_lock

from ..tuning import TOP_UP_BELOW, TOP_UP_EVERY
from .app import within_event
from .guards import fetch_again

log = logging.getLogger(__name__)

Handler = Callable[[Any, int, bool], Awaitable[None]]
"""Called with an aiokafka ``ConsumerRecord``, ``more``: how many records wait behind it (the rest of
the fetch, plus :func:`unfetched`), and ``ahead``: whether earlier records of its partition are still
to come (an urgent record handled first: :meth:`BatchIntake._top_up`)."""

Urgent = Callable[[Any], bool]
"""Whether a record's event must not wait behind the others in hand (a big order, a complaint): a hint
for the order of handling only, from the record alone."""


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


_HANDLED: tuple[Any, Any] = (None, None)  # in place of a handled record in the list of records in hand
YIELD_EVERY = 100  # records handled between two yields to the event loop (as Faust's drain loop)

_installed = False


_ANY = object()  # a record that may hold events of any customer


def _holder(record: Any) -> Any:
    """Whose events ``record`` may hold: its key, or :data:`_ANY` if it has none or is a batch envelope
    (an object with ``events``: its events may be of several customers)."""
    return _ANY if record.key is None or b'"events"' in (record.value or b"") else record.key


def _commit_done(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:  # the commit timer tries again
        log.warning("commit every commit_every records failed: %r", fut.exception())


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

    def hold(self, consumer: Any) -> None:
        self.acked = False
        consumer._unacked_messages.add(self)

    def release(self, consumer: Any) -> None:
        """Out of the set, and ``wait_empty`` woken: no record is in hand."""
        self.acked = True
        consumer._unacked_messages.discard(self)
        waiter = consumer._waiting_for_ack
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class BatchIntake:
    """The drain loop of ``app``'s consumer for ``topics``: see the module docstring."""

    def __init__(self, app: Any, topics: Collection[str], handle: Handler, urgent: Urgent | None = None) -> None:
        self.app = app
        self.topics = frozenset(topics)
        self.handle = handle
        self.urgent = urgent
        self.left = 0  # fetched records left unhandled (read again) because a rebalance or stop came first
        self._committing: asyncio.Future[Any] | None = None  # the commit every commit_every records, if running

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
        while not (consumer._stopped.is_set() or fetcher._stopped.is_set()):
            await asyncio.sleep(0)
            records, active = await consumer._wait_next_records(1.0)
            if not records or consumer.should_stop:
                continue
            generation = self.app.consumer_generation_id
            ours = await self._take(consumer, records, active)
            if ours:
                await asyncio.shield(self.handle_fetch(consumer, generation, ours))

    async def _take(self, consumer: Any, records: Any, active: Any) -> list[tuple[Any, Any]]:
        """The fetched records of our topics to handle, in the fetch's round-robin order; the others as Faust's
        drain loop does (a table's changelog to Faust's path, a record read already dropped), and those of a
        partition paused since the fetch, or all of them if the flow stopped, fetched again (guard 9)."""
        if not consumer.flow_active:  # as Faust's getmany: a rebalance is under way
            await consumer.perform_seek()  # moves only the partitions with a committed offset: guard 9
            await fetch_again(consumer, {tp: (rs[0].offset, rs[-1].offset) for tp, rs in records.items() if rs})
            return []
        read_offset = consumer._read_offset
        buffered = consumer._buffered_partitions
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
        return ours

    async def _top_up(self, consumer: Any, generation: int, in_hand: _InHand, urgent: Urgent,
                      records: list[tuple[Any, Any]], start: int, ahead: set[int]) -> None:
        """Take what aiokafka fetched meanwhile, so that it fetches the next records now rather than after
        the fetch in hand. They go after the records in hand (from ``start``), except that an urgent one
        goes before them, unless one of its partition there may be of its customer (:func:`_holder`) or
        :data:`TOP_UP_BELOW` or more came at once (a backlog: none is tested). ``ahead`` gets the ``id``
        of each one put before a record of its own partition.

        No record is in hand during the fetch, so ``in_hand`` is released meanwhile: once a rebalance has
        begun, aiokafka's ``getmany`` waits for the next assignment, which waits for the revocation, which
        waits (``wait_empty``) for the fetch in hand. Records fetched once the generation has passed
        belong to the next assignment: they are fetched again (guard 9), not handled by this fetch."""
        in_hand.release(consumer)
        try:
            fetched, active = await consumer._wait_next_records(0)
        finally:
            in_hand.hold(consumer)
        if not fetched:
            return
        if not self._current(consumer, generation):
            await fetch_again(consumer, {tp: (rs[0].offset, rs[-1].offset) for tp, rs in fetched.items() if rs})
            return
        taken = await self._take(consumer, fetched, active)
        if len(taken) >= TOP_UP_BELOW:  # a backlog came: testing each record would stop the intake for long
            records.extend(taken)
            return
        first: list[tuple[Any, Any]] = []
        held: dict[Any, set[Any]] | None = None  # per partition, the holders in hand (once an urgent one came)
        for tp, record in taken:
            if urgent(record):
                if held is None:
                    held = {}
                    for other_tp, other in records[start:]:
                        held.setdefault(other_tp, set()).add(_holder(other))
                holders = held.get(tp, ())
                if _ANY not in holders and record.key not in holders:
                    first.append((tp, record))
                    if holders:
                        ahead.add(id(record))
                    continue
            records.append((tp, record))
            if held is not None:
                held.setdefault(tp, set()).add(_holder(record))
        records[start:start] = first

    def _commit_beside(self, consumer: Any) -> None:
        """A commit every ``commit_every`` records, as Faust's drain loop, but beside the intake rather than
        in it: inline, the intake waited for the changelog writes and their acknowledgements (0.1-0.25 s
        every ~2 s at 80% load, and a big order with it). Faust takes the offsets before the changelog
        writes it waits for, so records handled meanwhile are not committed early. One at a time."""
        if self._committing is None or self._committing.done():
            self._committing = asyncio.ensure_future(consumer.commit())
            self._committing.add_done_callback(_commit_done)

    def _current(self, consumer: Any, generation: int) -> bool:
        return (consumer.flow_active and self.app.flow_control.is_active()
                and self.app.consumer_generation_id == generation)

    async def handle_fetch(self, consumer: Any, generation: int, records: list[tuple[Any, Any]]) -> None:
        """Hand each record to the handler in order and ack it; stop at a rebalance or stop."""
        in_hand = _InHand()
        in_hand.hold(consumer)
        acked, index, committed = consumer._acked, consumer._acked_index, consumer._committed_offset
        commit_every = consumer._commit_every
        handle, urgent = self.handle, self.urgent
        inbound = self.app.monitor.stream_inbound_time  # Faust's "stream is idle" check reads it
        last = len(records) - 1
        behind = unfetched(consumer, self.topics)
        ahead: set[int] = set()  # ids of urgent records put before others of their partition (_top_up)
        topped = time.monotonic()
        try:
            for n, (tp, record) in enumerate(records):  # a list iterator sees what _top_up adds past n
                if not self._current(consumer, generation):
                    self.left += last + 1 - n
                    log.info("rebalance or stop: %d fetched records left to be read again", last + 1 - n)
                    return
                more = last - n + behind
                inbound[tp] = time.monotonic()
                with within_event(_Current(record)):
                    await handle(record, more, id(record) in ahead)
                offset = record.offset
                with ack_lock:  # Consumer.ack's bookkeeping, refused once the generation passed (guard 1)
                    if self._current(consumer, generation):
                        start = committed[tp]
                        done = index[tp]
                        if (start is None or offset >= start) and offset not in done:
                            done.add(offset)
                            acked[tp].append(offset)
                            consumer._n_acked += 1
                records[n] = _HANDLED  # top-ups make the list as long as the traffic lasts: free each record now
                if commit_every is not None and consumer._n_acked >= commit_every:
                    consumer._n_acked = 0
                    self._commit_beside(consumer)
                if n % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)
                # no _wait_next_records while the flow is stopped: it would wait for the flow to resume, and
                # the rebalance waits for this fetch
                if (urgent is not None and more < TOP_UP_BELOW and time.monotonic() - topped >= TOP_UP_EVERY
                        and self._current(consumer, generation)):
                    await self._top_up(consumer, generation, in_hand, urgent, records, n + 1, ahead)
                    last, behind, topped = len(records) - 1, unfetched(consumer, self.topics), time.monotonic()
        finally:
            in_hand.release(consumer)


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
