"""The Faust app factory: every Faust setting comes from :class:`Settings`, or from :mod:`stream.tuning`."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, cast

import faust
from aiokafka.structs import RecordMetadata
from faust import streams
from faust.serializers import codecs

from stream.domain.state import CustomerState
from stream.kafka.kafka_admin import expected_partition

from .. import tuning
from ..exceptions import ChangelogWriteError
from ..security import aiokafka_options, faust_credentials
from ..settings import Settings
from . import guards, tansu

log = logging.getLogger(__name__)

TABLE_NAME = "customers"
WRITE_SLICE = 250  # changelog records written between two yields to the event loop
SLOW_FLUSH_S = 10.0  # a step of the pre-commit flush still running after this long is logged


class CustomerStateCodec(codecs.Codec):
    """Changelog codec for :class:`CustomerState` (compact orjson)."""

    def _dumps(self, obj: CustomerState) -> bytes:
        return obj.to_bytes()

    def _loads(self, s: bytes) -> CustomerState:
        return CustomerState.from_bytes(s)


def tune_gc() -> None:
    """Keep full garbage collections rare and short in a worker process.

    A worker holds hundreds of thousands of long-lived containers (customer states,
    Faust's and aiokafka's own objects); CPython's default thresholds ran a full
    collection of all of them (100-160 ms each, measured) several times a second
    under load, which was most of the tail latency. Freezing what exists after
    start-up takes it out of every later collection, and the higher thresholds make
    young and full collections rarer. Customer state holds no reference cycles, so
    reference counting frees it; the collector is only needed for rare cycles.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def create_app(settings: Settings) -> faust.App:
    """Build the Faust app. Faust reads no environment variables of its own."""
    codecs.register("customer_state", CustomerStateCodec())
    guards.install_ack_guard()
    if settings.tansu_compat:
        tansu.install(settings.kafka_bootstrap_servers, aiokafka_options(settings))
    for name in ("aiokafka", "faust", "mode"):  # debug records cost ~11% CPU when built
        logging.getLogger(name).setLevel(logging.WARNING)
    return faust.App(
        settings.app_id,
        env={},
        broker=settings.broker_url,
        broker_credentials=faust_credentials(settings),  # SASL / TLS (stream.security)
        store=settings.store,
        datadir=str(settings.datadir),
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.topic_replication_factor,  # the changelog's (Faust's default 1)
        # No standby replicas: Faust's memory store deletes standby rows when a recovery
        # completes and later resumes them from the standby offset, losing customers
        # (seen in our SIGKILL test). Recovery reads the changelog instead.
        table_standby_replicas=0,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=settings.heartbeat_interval,
        broker_commit_interval=settings.commit_interval,
        broker_commit_every=settings.commit_every or sys.maxsize,  # Faust has no "off": a count never reached
        producer_linger=tuning.PRODUCER_LINGER,
        producer_max_request_size=tuning.PRODUCER_MAX_REQUEST_SIZE,
        producer_max_batch_size=tuning.PRODUCER_MAX_BATCH_SIZE,  # why 256 KB: stream.tuning
        consumer_max_fetch_size=tuning.CONSUMER_MAX_FETCH_SIZE,
        stream_buffer_maxsize=tuning.STREAM_BUFFER_MAXSIZE,
        web_enabled=True,
        # Faust's own pages are off: /table/{name}/{key}/ served a customer's whole state to anyone without a
        # token, /router/ the cluster's worker URLs, and the statistics and graph pages Faust internals. None of
        # them is API (agents/static/openapi.yaml lists what is). table_route, which forwards a lookup to the
        # owning worker, reads the assignor's metadata in-process and needs none of them. Faust's "/" index,
        # {"status": "OK"}, has no setting and stays (documented).
        web_router_enabled=False,
        web_tables_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_metrics_enabled=False,
        web_host=settings.web_host,
        web_bind=settings.web_bind,
        web_port=settings.web_port,
        canonical_url=f"http://{settings.web_host}:{settings.web_port}",
    )


# a changelog write's batches being filled: partition -> (aiokafka batch, the dirty entries in it)
Filling = dict[int, tuple[Any, dict[Any, Any]]]


class CustomerTable(faust.Table):
    """Table of :class:`CustomerState` keyed by customer_id.

    Keys are raw UTF-8 (not JSON) so that Faust's key routing and Kafka's
    murmur2 partitioner agree on the customer's partition.

    Changelog writes are deferred and coalesced: setting a key only marks the
    customer dirty (the value object is the table's own, mutated in place), and
    :meth:`write_dirty` sends one record per dirty customer, its latest state.
    :func:`customers_table` runs it right before every offset commit (Faust's
    commit timer and the flush a rebalance does before giving partitions up) and
    then waits until the broker acknowledged every write, so a committed offset
    always has its state in the changelog; a crash loses only uncommitted work,
    which is read again and applied idempotently. Faust's own pre-commit flush
    gives up after 0.1 s and misses a write that is in flight, which lost an
    event now and then when a worker was killed.
    """

    def __init__(self, app: faust.App, **kwargs: object) -> None:
        super().__init__(app, **kwargs)  # type: ignore[arg-type]
        self.key_serializer = "raw"
        self.value_serializer = "customer_state"
        self.unacked: set[asyncio.Future[Any]] = set()
        self.failed_writes = 0
        self.stale_records = 0  # changelog records recovery passed over: apply_changelog_batch
        # key -> (changelog partition: the current message's, the value last set or None: deleted)
        self.dirty: dict[Any, tuple[int | None, CustomerState | None]] = {}

    def get(self, key: Any, default: Any = None) -> Any:
        """One store lookup (``Mapping.get`` makes two, through four layers): every event reads its customer."""
        try:
            value = self.data[key]
        except KeyError:
            return default
        self.on_key_get(key)  # Faust's sensors, as a read through ``table[key]``
        return value

    def on_key_set(self, key: Any, value: Any) -> None:
        value.generation = self.app.consumer_generation_id  # a recovery's tie-break: CustomerState.superseded_by
        self.dirty[key] = (self.partition_for_key(key), value)

    def on_key_del(self, key: Any) -> None:
        self.dirty[key] = (self.partition_for_key(key), None)  # a tombstone, in order with the writes

    async def write_dirty(self) -> int:
        """Send the changelog record of every customer changed or deleted since the last call.

        Straight to aiokafka in batches built here, one per partition at a time (Faust's
        ``send`` cost ~20 µs a record in a worker draining a backlog, which wrote ~100,000
        records in 16 s with 1 s commits), key as UTF-8, value in the table's codec, each batch's last offset kept
        as the store's persisted offset (RocksDB resumes recovery from it), like Faust's
        own changelog path. A record whose batch was not handed to the producer when a
        send fails stays dirty, unless the customer was marked again meanwhile.
        """
        dirty, self.dirty = self.dirty, {}
        producer = cast(Any, self.app.producer)._ensure_producer()  # aiokafka's, for its batch API
        topic = self.changelog_topic.get_topic_name()
        filling: Filling = {}
        items = list(dirty.items())
        n, partitions = 0, 0
        try:
            for n, (key, entry) in enumerate(items):  # noqa: B007 - n is read after a failure
                partition, value = entry
                key_bytes = key.encode()
                if partition is None:  # marked with no current event: the key's partition, as Kafka's default
                    partitions = partitions or len(await producer.partitions_for(topic))
                    partition = expected_partition(key_bytes, partitions)
                data = None if value is None else value.to_bytes()
                if partition not in filling:
                    filling[partition] = (producer.create_batch(), {})
                batch, records = filling[partition]
                if batch.append(key=key_bytes, value=data, timestamp=None) is None:  # full: hand it over
                    await self._submit(producer, topic, partition, filling)
                    batch, records = filling[partition] = (producer.create_batch(), {})
                    batch.append(key=key_bytes, value=data, timestamp=None)  # an empty batch takes any record
                records[key] = entry
                if n % WRITE_SLICE == WRITE_SLICE - 1:
                    await asyncio.sleep(0)  # let the agent run: a long write would add to every event's latency
            n = len(items)
            while filling:
                await self._submit(producer, topic, next(iter(filling)), filling)
        except BaseException:
            # refused by the producer (or cancelled): the records not handed over are still to write;
            # a customer marked again meanwhile keeps its newer entry
            unsent = {key: entry for _, records in filling.values() for key, entry in records.items()}
            self.dirty = {**unsent, **dict(items[n:]), **self.dirty}
            raise
        return len(dirty)

    async def _submit(self, producer: Any, topic: str, partition: int, filling: Filling) -> None:
        """Hand ``partition``'s batch to the producer, then drop it from ``filling`` (kept there if refused)."""
        batch, records = filling[partition]
        fut = await producer.send_batch(batch, topic, partition=partition)
        del filling[partition]
        self._track(cast(asyncio.Future[Any], fut), len(records))

    def _track(self, fut: asyncio.Future[Any], records: int) -> None:
        self.unacked.add(fut)
        fut.add_done_callback(partial(self._on_done, records))

    def _on_done(self, records: int, fut: asyncio.Future[Any]) -> None:
        self.unacked.discard(fut)
        if fut.cancelled() or fut.exception() is not None:
            self.failed_writes += records
        else:
            metadata: RecordMetadata = fut.result()  # of the batch: its first offset
            self.data.set_persisted_offset(metadata.topic_partition, metadata.offset + records - 1)

    async def wait_acked(self) -> None:
        """Wait until every changelog write so far is acknowledged by the broker.

        Raises if one failed, so that the offsets are not committed and the
        messages are processed again (idempotently) instead of being lost.
        """
        while self.unacked:
            await asyncio.wait(list(self.unacked))
        if self.failed_writes:
            failed, self.failed_writes = self.failed_writes, 0
            raise ChangelogWriteError(f"{failed} changelog writes failed; not committing offsets")

    def apply_changelog_batch(self, batch: Iterable[Any]) -> None:
        """Recovery: Faust's, less each record older than the customer's state already there.

        Without transactions nothing fences a worker that lost its partitions (its session expired while
        it could not reach the brokers): its changelog writes still in flight reach the broker once it can,
        after those of the worker given the partitions meanwhile. The changelog's last record of such a
        customer was then an older state, and a recovery after it lost the events in between (the fault
        suite, one worker cut off for 25 s). A record is dropped when the state there already has all its
        messages and more, or, each having read further on some source, when that state was changed in a
        later consumer group generation (:meth:`CustomerState.superseded_by`); a deletion always applies.
        With the memory store a partition that stays with a worker (or comes back to it) is read again from
        the start over the states it holds: those older records are passed over too."""
        batch = list(batch)
        latest: dict[Any, Any] = {}  # key -> its value after the records of this batch so far
        fresh = []
        for event in batch:
            key, value = self._to_key(event.key), event.value
            current = latest[key] if key in latest else self.data.get(key)
            if value is not None and current is not None and value.superseded_by(current):
                continue
            latest[key] = value
            fresh.append(event)
        stale = len(batch) - len(fresh)
        if stale:
            self.stale_records += stale
            log.info("changelog recovery: %d records older than the customer's state in the table passed over", stale)
        super().apply_changelog_batch(fresh)


def partitions_settled(app: faust.App) -> bool:
    """No rebalance is under way and the streams flow: Faust suspends the flow when partitions are revoked
    and resumes it once the table's recovery of the new assignment is complete."""
    return not app.rebalancing and app.flow_control.is_active()


@contextmanager
def within_event(event: Any) -> Iterator[None]:
    """Make ``event`` Faust's current event for the block (None: leave it as it is).

    A table write takes its changelog partition (and RocksDB its partition database)
    from the current event; work done for a customer while another partition's message
    is current (an evaluation deferred under backlog) runs within the customer's own.
    """
    if event is None:
        yield
        return
    token = streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        streams._current_event.reset(token)


@contextmanager
def warn_if_slow(what: str, after: float, detail: Callable[[], str]) -> Iterator[None]:
    """Log a warning naming ``what`` (and ``detail()``) if the block is still running after ``after`` s.

    Only a timer on the running loop: the block is neither bounded nor cancelled.
    """
    def late() -> None:
        log.warning("%s not done after %.0f s (%s); still waiting", what, after, detail())

    handle = asyncio.get_running_loop().call_later(after, late)
    try:
        yield
    finally:
        handle.cancel()


def customers_table(app: faust.App, settings: Settings) -> faust.Table:
    """The per-customer state table, keyed by customer_id."""
    table = CustomerTable(app, name=TABLE_NAME, default=None, key_type=str, partitions=settings.partitions,
                          options=settings.table_options)
    producer = app.producer
    faust_flush = producer.flush

    def pending() -> str:
        return f"{len(table.unacked)} changelog batches unacknowledged, {len(table.dirty)} customers to write"

    async def flush_then_wait() -> None:  # the consumer calls this right before committing (Faust also on
        # a rebalance or stop, bounded there by guard 7). No step is bounded here: a commit must not pass an
        # unacknowledged write. A step that hangs says which (a worker stuck after a broker cut, no rejoin)
        steps = (("changelog write", table.write_dirty), ("producer flush", faust_flush),
                 ("changelog acknowledgements", table.wait_acked))
        for what, step in steps:
            with warn_if_slow(f"flush: {what}", SLOW_FLUSH_S, pending):
                await step()

    producer.flush = flush_then_wait  # type: ignore[method-assign]
    app.tables.add(table)
    return table
