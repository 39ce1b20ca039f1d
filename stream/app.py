"""The Faust app factory: every Faust setting comes from :class:`Settings`."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
from faust.serializers import codecs

from . import compat, guards
from .security import aiokafka_options, faust_credentials
from .settings import Settings
from .state import CustomerState

TABLE_NAME = "customers"


class CustomerStateCodec(codecs.Codec):
    """Changelog codec for :class:`CustomerState` (compact orjson)."""

    def _dumps(self, obj: CustomerState) -> bytes:
        return obj.to_bytes()

    def _loads(self, s: bytes) -> CustomerState:
        return CustomerState.from_bytes(s)


def create_app(settings: Settings) -> faust.App:
    """Build the Faust app. Faust reads no environment variables of its own."""
    codecs.register("customer_state", CustomerStateCodec())
    guards.install_ack_guard()
    if settings.tansu_compat:
        compat.install(settings.kafka_bootstrap_servers, aiokafka_options(settings))
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
        # No standby replicas: Faust's memory store deletes standby rows when a recovery
        # completes and later resumes them from the standby offset, losing customers
        # (seen in our SIGKILL test). Recovery reads the changelog instead.
        table_standby_replicas=0,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=settings.heartbeat_interval,
        broker_commit_interval=1.0,
        producer_linger=0.005,
        producer_max_request_size=16 << 20,
        consumer_max_fetch_size=16 << 20,
        stream_buffer_maxsize=16384,
        web_enabled=True,
        web_host=settings.web_host,
        web_bind=settings.web_bind,
        web_port=settings.web_port,
        canonical_url=f"http://{settings.web_host}:{settings.web_port}",
    )


class CustomerTable(faust.Table):
    """Table of :class:`CustomerState` keyed by customer_id.

    Keys are raw UTF-8 (not JSON) so that Faust's key routing and Kafka's
    murmur2 partitioner agree on the customer's partition.

    Changelog writes are tracked until the broker acknowledges them, and
    :func:`customers_table` makes every offset commit wait for them. Faust's
    own pre-commit flush gives up after 0.1 s and misses a write that is in
    flight, which lost an event now and then when a worker was killed.
    """

    def __init__(self, app: faust.App, **kwargs: object) -> None:
        super().__init__(app, **kwargs)  # type: ignore[arg-type]
        self.key_serializer = "raw"
        self.value_serializer = "customer_state"
        self.unacked: set[asyncio.Future[Any]] = set()
        self.failed_writes = 0

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        fut = super().send_changelog(*args, **kwargs)
        self.unacked.add(fut)
        fut.add_done_callback(self._on_done)
        return fut

    def _on_done(self, fut: asyncio.Future[Any]) -> None:
        self.unacked.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            self.failed_writes += 1

    async def wait_acked(self) -> None:
        """Wait until every changelog write so far is acknowledged by the broker.

        Raises if one failed, so that the offsets are not committed and the
        messages are processed again (idempotently) instead of being lost.
        """
        while self.unacked:
            await asyncio.wait(list(self.unacked))
        if self.failed_writes:
            failed, self.failed_writes = self.failed_writes, 0
            raise RuntimeError(f"{failed} changelog writes failed; not committing offsets")


def customers_table(app: faust.App, settings: Settings) -> faust.Table:
    """The per-customer state table, keyed by customer_id."""
    table = CustomerTable(app, name=TABLE_NAME, default=None, key_type=str, partitions=settings.partitions,
                          options=settings.table_options)
    producer = app.producer
    faust_flush = producer.flush

    async def flush_then_wait() -> None:  # the consumer calls this right before committing
        await faust_flush()
        await table.wait_acked()

    producer.flush = flush_then_wait  # type: ignore[method-assign]
    app.tables.add(table)
    return table
