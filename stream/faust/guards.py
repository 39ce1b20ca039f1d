"""Guards that make Faust's at-least-once delivery hold under rebalances and kills.

Found by our SIGKILL test (tests/integration/test_pipeline.py), which compares
every aggregate with an independent recomputation, and the fault suite, all on
Tansu. Re-checked against real Apache Kafka (issue 27): each one fixes Faust's
(or aiokafka's) own code, which gives the same wrong result whatever the broker;
the tests named below run the library's original method (:func:`faust_original`)
and show the loss or stall. None is Tansu-only, so all stay on every broker; the
Tansu-only workarounds are in :mod:`stream.faust.tansu` (switched on only by
``TAGGER_TANSU_COMPAT``) and the dev/test session timeouts.

1. During a rebalance Faust's stream *skips* messages fetched under the old
   consumer generation (or while flow control is paused) and still acks them.
   A later commit can then move the committed offset past a message nobody
   processed, and it is lost. :func:`install_ack_guard` refuses those acks;
   the message is fetched again after the rebalance, and the per-customer
   offset bookkeeping in :class:`~stream.domain.state.CustomerState` makes the
   second application a no-op if it had in fact been applied.
   Faust bug (any broker): tests/unit/test_faust_bugs.py::test_guard1_*.
2. Faust's pre-commit producer flush gives up after 0.1 s and can miss a
   changelog write in flight (see :class:`~stream.faust.app.CustomerTable`).
   Faust bug (any broker): tests/unit/test_faust_bugs.py::test_guard2_*.
3. Faust commits past an offset nobody acked when it is the *first* after the
   committed position: its check is ``min(acked) - committed > 1`` where
   ``committed`` is already the next offset to read (and it skips the check
   when that is 0). Found by the 3-worker fault test (tests/fault): a message
   dropped right after an assignment was committed unprocessed. The guard
   replaces ``Consumer._new_offset`` with the same code and the check
   ``min(acked) > committed``; the agent fills such holes itself
   (:class:`stream.faust.offsets.GapFiller`: it reads them from the committed
   offset on) and marks them done with :meth:`~stream.faust.offsets.GapFiller.mark_done`.
   Both need the committed offset, which Faust forgets at a revocation and learns
   again only after it has resumed the newly assigned partitions: the first
   records of an assignment were handled without it, and neither check held.
   :meth:`~stream.faust.offsets.GapFiller.start_of` asks the broker then.
   Faust bug (any broker): tests/unit/test_faust_bugs.py::test_guard3_*, and on
   Kafka tests/integration/test_kafka_not_tansu.py::
   test_fausts_head_check_commits_past_an_unprocessed_first_offset.
4. Faust also counts offsets it never delivered (its "gap") as done, so a
   commit could pass a dropped message before the agent had read it: a
   SIGKILL then lost it. The replacement ignores Faust's gap; only offsets
   the agent processed (acked, or marked done after a gap fill) are committed.
   Faust bug (any broker): tests/unit/test_faust_bugs.py::test_guard4_*.
5. Faust records offsets as committed when the commit failed (a rebalance
   overtook it). The partition then resumed below Faust's committed offset,
   Faust ignored the acks of what it read again and the head check (3) held
   commits forever: :func:`keep_committed_on_failure` undoes that record
   (with :func:`note_failed_commit`).
   Faust bug (any broker): tests/unit/test_faust_bugs.py::test_guard5_*.
6. Whatever else leaves a partition stuck (its committed offset stands still
   while messages wait: :class:`stream.kafka.lag.StallWatch`), the worker reads it
   again from the group's committed offset, as a new assignment would:
   :func:`restart_partition`; if it is still stuck at the same offset one
   period later, the worker asks the group for a new assignment
   (:func:`rejoin_group`). In CI two broker-cut runs stalled for good; here
   three partitions once got no message for 34 s after the cut. The warning
   logged carries :func:`partition_report`.
   Needed on Kafka too (the cause inside Faust or aiokafka is not found): with it
   switched off, the fault suite's silent-connection scenario on the 3-broker
   cluster left a partition of the commands topic unread for good after the silence. It
   acts only on a partition already stuck, so it costs nothing where none is.
7. A rebalance (and a stop) waits for Faust's producer flush, which is our
   changelog write-and-wait (:class:`stream.faust.app.CustomerTable`). In a CI run a
   worker hung there for good after the broker cut, and the whole group with
   it. :func:`bounded_flush` gives up after ``FLUSH_TIMEOUT`` seconds: nothing
   is committed on that path, so the messages are applied again (idempotently)
   wherever the partitions go; the commit path keeps its unbounded wait.
   Faust bug (any broker; a broker cut is not Tansu's): Faust's
   ``App._producer_flush`` has no bound: tests/unit/test_faust_bugs.py::test_guard7_*.
8. Faust gives its producer a request timeout of 1,200 s, and aiokafka uses it
   for every wait of the producer's client: a connection's set-up and each
   request's response. A request whose connection went silent (no response, no
   close: a peer gone without a reset, a NAT that dropped the flow) held the
   partition's batches, and the commit's flush behind them, for 20 minutes.
   :func:`bounded_producer_requests` gives those waits ``REQUEST_TIMEOUT``
   seconds: the connection is dropped and the batch retried on a new one.
   Delivery itself keeps Faust's horizon (batches are retried until 1,200 s
   old, and a send waits that long for room), so a long broker outage still
   loses nothing.
   Faust bug (any broker): tests/unit/test_faust_bugs.py::test_guard8_* (a silent
   peer, no broker at all).
9. A fetch can return records that are then not handled: the partition was
   paused meanwhile (an assignment pauses every partition for the table's
   recovery), or the flow stopped (a fetch that began before a rebalance and
   returned records of the new assignment). Faust drops them and relies on
   its seek to the committed offsets, which moves only partitions *with* a
   committed offset: a partition the group never committed stayed past the
   dropped records for good. Seen in CI: after a restart, the first record
   ever of a partition was never processed. :func:`fetch_again` puts such a
   partition back to the first record not handled.
   aiokafka/Faust bug (any broker: ``seek_to_committed`` skips a committed offset
   of None or 0): on Kafka, tests/integration/test_kafka_not_tansu.py::
   test_seek_to_committed_leaves_partitions_without_a_commit_past_dropped_records.
10. Faust's ``table_route`` finds a key's owner from its *producer's*
   metadata, which on Kafka holds only the topics that producer has asked
   about (Tansu answers every metadata request with every topic). Until the
   worker's first changelog write, ``GET /customers/{id}`` answered 500
   (aiokafka's ``_partition``: ``TypeError: 'NoneType' object is not
   iterable``). Found on real Kafka by tests/integration/test_erasure.py.
   :func:`learn_partitions` has the producer fetch the changelog's metadata at
   start. Faust bug, shown on Kafka only.

The batch intake (:mod:`stream.faust.intake`) is not a workaround of either kind: it
replaces Faust's per-message path for speed (its cost is Faust's, on any
broker) and keeps guards 1 and 9 for its own records.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..tuning import FLUSH_TIMEOUT, REQUEST_TIMEOUT

log = logging.getLogger(__name__)


_installed = False
_ORIGINALS: dict[tuple[type, str], Any] = {}  # Faust's own methods the guards replaced (tests show their bugs)


def faust_original(cls: type, name: str) -> Any:
    """Faust's own ``cls.name``, as it was before :func:`install_ack_guard` replaced it."""
    return _ORIGINALS.get((cls, name), getattr(cls, name))


def _replace(cls: type, name: str, new: Any) -> None:
    _ORIGINALS.setdefault((cls, name), getattr(cls, name))
    setattr(cls, name, new)


def install_ack_guard() -> None:
    """Patch Faust's consumer to ack only messages of the current generation."""
    global _installed
    if _installed:
        return
    from faust.app.base import App
    from faust.transport.consumer import Consumer
    from faust.transport.drivers.aiokafka import Consumer as DriverConsumer
    from faust.transport.drivers.aiokafka import Producer

    original = Consumer.ack

    def ack(self: Consumer, message: Any) -> bool:
        app = self.app
        if message.generation_id != app.consumer_generation_id or not app.flow_control.is_active():
            log.info("not acking %s@%s: skipped by a rebalance (generation %s, now %s)",
                     message.tp, message.offset, message.generation_id, app.consumer_generation_id)
            self._unacked_messages.discard(message)  # don't hold up the rebalance either
            return False
        return bool(original(self, message))

    _replace(Consumer, "ack", ack)  # guard 1
    _replace(Consumer, "_new_offset", new_offset)  # guards 3 and 4
    _replace(Consumer, "_commit_offsets", keep_committed_on_failure(Consumer._commit_offsets))  # guard 5
    _replace(DriverConsumer, "_commit", note_failed_commit(DriverConsumer._commit))  # guard 5
    _replace(App, "_producer_flush", bounded_flush(App._producer_flush))  # guard 7
    _replace(Producer, "_new_producer", bounded_producer_requests(Producer._new_producer))  # guard 8
    _installed = True


def new_offset(self: Any, tp: Any) -> int | None:
    """Faust's ``Consumer._new_offset`` with its head-of-queue check corrected (see above)."""
    from faust.utils.functional import consecutive_numbers

    acked = self._acked[tp]
    if not acked:
        return None
    gap_for_tp = self._gap[tp]
    if gap_for_tp:  # Faust's own "gaps" are not trusted: the agent reads and marks them (offsets.GapFiller)
        gap_for_tp.chop(0, max(acked) + 1)
    acked.sort()
    committed = self._committed_offset[tp]  # the next offset to read
    if committed is not None and acked[0] > committed:
        return None  # the message at `committed` is not done yet: commit nothing
    batch = next(consecutive_numbers(acked))
    acked[: len(batch)] = []
    self._acked_index[tp].difference_update(batch)
    return int(batch[-1]) + 1


def bounded_flush(flush: Callable[..., Awaitable[None]],
                  timeout: float | None = None) -> Callable[..., Awaitable[None]]:
    """Wrap Faust's ``App._producer_flush`` (rebalance and stop only) so it gives up after ``timeout`` s."""

    async def wrapper(self: Any, logger: Any) -> None:
        limit = FLUSH_TIMEOUT if timeout is None else timeout
        try:
            await asyncio.wait_for(flush(self, logger), limit)
        except TimeoutError:
            log.warning("producer flush not done after %.0f s during a rebalance or stop; going on without it "
                        "(nothing is committed there: the messages are applied again)", limit)

    return wrapper


def bounded_producer_requests(new_producer: Callable[..., Any],
                              timeout: float = REQUEST_TIMEOUT) -> Callable[..., Any]:
    """Wrap Faust's ``Producer._new_producer``: the aiokafka producer's requests give up after ``timeout`` s.

    Set on the client (each connection's connect, version lookup and response wait) and the
    sender (the wait a produce request asks of the broker, so the broker answers before the
    client gives up); the batch expiry and a send's wait for room keep Faust's setting.
    """

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        producer = new_producer(self, *args, **kwargs)
        producer.client._request_timeout_ms = producer._sender._request_timeout_ms = int(timeout * 1000)
        return producer

    return wrapper


def note_failed_commit(commit: Callable[..., Awaitable[bool]]) -> Callable[..., Awaitable[bool]]:
    """Wrap the consumer's ``_commit``: when it fails, keep the committed offsets of that moment.

    That is right before Faust records the offsets it tried (see
    :func:`keep_committed_on_failure`), and after any seek a rebalance did while
    the commit was in flight.
    """

    async def wrapper(self: Any, offsets: Mapping[Any, int]) -> bool:
        did_commit = await commit(self, offsets)
        if not did_commit:
            self._tagger_failed_commit = {tp: (tried, self._committed_offset.get(tp)) for tp, tried in offsets.items()}
        return did_commit

    return wrapper


def keep_committed_on_failure(commit_offsets: Callable[..., Awaitable[bool]]) -> Callable[..., Awaitable[bool]]:
    """Wrap Faust's ``Consumer._commit_offsets`` so a failed commit leaves the committed offsets as they were.

    Faust records the offsets it tried as committed even when the broker refused
    them (a commit that ends in a rebalance returns False). The next assignment then
    resumed below Faust's idea of "committed": Faust dropped the acks of the messages
    read again, and our head check (guard 3) waited forever for an offset it had
    thrown away. Seen in the broker-cut fault test: partitions stopped committing.
    The offsets put back are the ones :func:`note_failed_commit` saw, so a seek made
    by a rebalance during the commit is kept.
    """

    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> bool:
        self._tagger_failed_commit = {}
        did_commit = await commit_offsets(self, *args, **kwargs)
        failed, self._tagger_failed_commit = self._tagger_failed_commit, {}
        for tp, (tried, before) in failed.items():
            if self._committed_offset.get(tp) == tried:  # recorded although not committed
                if before is None:
                    self._committed_offset.pop(tp, None)
                else:
                    self._committed_offset[tp] = before
        return did_commit

    return wrapper


async def restart_partition(consumer: Any, tp: Any, offset: int) -> None:
    """Read ``tp`` again from ``offset`` (the group's committed offset), as a fresh assignment would.

    Faust's bookkeeping of the partition (acks, gaps, read offset) is dropped,
    its committed offset set, the partition fetched again and the consumer moved
    back. Messages read twice are duplicates to the per-customer offsets.
    """
    for book in (consumer._acked, consumer._acked_index, consumer._gap, consumer._read_offset):
        book.pop(tp, None)
    consumer._committed_offset[tp] = offset
    consumer._paused_partitions.discard(tp)
    consumer._buffered_partitions.discard(tp)
    consumer._get_active_partitions().add(tp)
    await consumer.seek_wait({tp: offset})  # on the consumer's thread, like Faust's own seeks


async def fetch_again(consumer: Any, skipped: Mapping[Any, tuple[int, int]]) -> None:
    """Move each partition of ``skipped`` (first, last offset of records fetched and not handled) back to
    the first, unless something moved it already (a seek, a new assignment): guard 9.

    Runs on the consumer's thread, like Faust's own seeks.
    """
    moved = await consumer._thread.call_thread(_fetch_again, consumer._thread._ensure_consumer(), dict(skipped))
    for tp, (first, last) in moved.items():
        log.info("%s[%s]: %d fetched records not handled (partition paused or flow stopped); reading them again "
                 "from offset %s", tp.topic, tp.partition, last - first + 1, first)


async def _fetch_again(client: Any, skipped: dict[Any, tuple[int, int]]) -> dict[Any, tuple[int, int]]:
    subscription = client._subscription.subscription
    assignment = None if subscription is None else subscription.assignment
    moved = {}
    for tp, (first, last) in skipped.items():
        state = None if assignment is None else assignment.state_value(tp)
        if state is not None and state.has_valid_position and state.position > last:  # still past them
            client.seek(tp, first)
            moved[tp] = (first, last)
    return moved


def rejoin_group(consumer: Any) -> None:
    """Ask the group coordinator for a rebalance, from the consumer's own thread (a full reset of every partition)."""
    thread = consumer._thread
    thread.thread_loop.call_soon_threadsafe(thread._ensure_consumer()._coordinator.request_rejoin)


def committed_offsets(consumer: Any) -> Mapping[Any, int | None]:
    """Faust's committed offset of each partition (the next to read), as it stands; {} before it has any."""
    committed: Mapping[Any, int | None] = getattr(consumer, "_committed_offset", {})
    return committed


def partition_report(consumer: Any, last_seen: Mapping[tuple[str, int], int]) -> dict[str, dict[str, Any]]:
    """Where each assigned partition stands: what the fetcher, Faust's offset bookkeeping and the agent saw.

    For /stats: a partition that stops moving shows here why (paused, not fetched,
    or acked but not committable). ``consumer`` is the Faust app's consumer;
    ``last_seen`` the agent's last offset per (topic, partition).
    """
    client = getattr(getattr(consumer, "_thread", None), "_consumer", None)
    if client is None:
        return {}
    subscription = client._subscription.subscription
    assignment = None if subscription is None else subscription.assignment
    if assignment is None:
        return {}
    active = consumer._active_partitions or set()
    report: dict[str, dict[str, Any]] = {}
    for tp in sorted(assignment.tps):
        state = assignment.state_value(tp)
        acked = consumer._acked.get(tp) or []
        report[f"{tp.topic}[{tp.partition}]"] = {
            "position": state.position if state.has_valid_position else None,
            "highwater": client.highwater(tp), "committed": consumer._committed_offset.get(tp),
            "acked": len(acked), "acked_min": min(acked) if acked else None,
            "last_seen": last_seen.get((tp.topic, tp.partition)),
            "paused": state.paused, "active": tp in active, "buffered": tp in consumer._buffered_partitions,
        }
    return report


async def learn_partitions(app: Any, topic: str) -> None:
    """Guard 10: have Faust's producer hold ``topic``'s partitions, which ``table_route`` reads from it."""
    await app.producer._ensure_producer().partitions_for(topic)
