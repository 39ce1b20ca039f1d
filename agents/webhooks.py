"""The webhook sink: selected tag changes and churn alerts POSTed to subscribed URLs.

It runs in every worker as its own consumer group (``<app_id>-webhooks``) on
``tag-changes`` and ``churn-alerts``, separate from the tagger's group, so a slow
endpoint never holds up tagging. Offsets are committed only after every message
of a fetched batch was delivered (2xx) or dead-lettered to
``webhook-dead-letters``: nothing is dropped, and after a crash the uncommitted
messages come again. Each delivery carries an ``Idempotency-Key``,
``<subscription>:<change_id>`` (stream/domain/sequence.py: the same for a tag change
the tagger re-published after a crash, at another offset), and is recorded in
Redis (``P:wh:<key>``, 7 days) once delivered.

Repeats are dropped twice over. In memory, a :class:`~stream.domain.sequence.RepeatFilter`
keeps each customer's highest ``seq`` per topic partition read (at most
``MAX_CUSTOMERS``, 100,000, ~28 MB, least recently seen dropped first; a partition's
marks are dropped when it is revoked): a message at or below its customer's mark
is a repeat, whatever its offset, and costs no request and no Redis call. Across
a restart or a rebalance the marks are gone: the sink starts again at its
committed offset, after which only the messages of the last uncommitted batch
and tagger re-publications can repeat, and the Redis record of their key drops
them (within one run too, for a customer whose mark the bound dropped). A repeat
can still reach the endpoint only after a crash between its 2xx and that record,
or when Redis lost the record (down, flushed, 7 days passed) and no mark holds
the customer; the key, the same for every copy, lets the receiver drop it.

Matching, payloads, signing, backoff and the circuit breaker are in stream/webhook_delivery.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

from stream.domain.sequence import MAX_CUSTOMERS, RepeatFilter
from stream.metrics import WebhookMetrics
from stream.webhook_delivery import (
    CircuitBreaker,
    Subscription,
    WebhookConfig,
    backoff,
    classify,
    dead_letter,
    headers,
    idempotency_key,
    matches,
    payload,
)

log = logging.getLogger(__name__)
DONE_TTL = 7 * 24 * 3600

DeadLetterSink = Callable[[bytes, bytes], Awaitable[None]]  # (key, value) -> sent or raise


class Deliverer:
    """Delivers one message to one subscription: retries, breaker, per-URL concurrency, dead letter."""

    def __init__(self, config: WebhookConfig, session: aiohttp.ClientSession, redis: Any, prefix: str,
                 dead_letters: DeadLetterSink, metrics: WebhookMetrics) -> None:
        self.config, self.session, self.redis, self.prefix = config, session, redis, prefix
        self.dead_letters, self.metrics = dead_letters, metrics
        self.limits = {s.name: asyncio.Semaphore(s.max_concurrency) for s in config.webhooks}
        self.breakers = {s.name: CircuitBreaker(config.breaker_failures, config.breaker_reset)
                         for s in config.webhooks}

    async def _seen(self, key: str) -> bool:
        try:
            return bool(await self.redis.exists(f"{self.prefix}:wh:{key}"))
        except Exception as exc:  # noqa: BLE001 - Redis down: deliver (at least once), receiver dedupes by key
            log.warning("webhook dedupe check failed, delivering anyway: %r", exc)
            return False

    async def _remember(self, key: str) -> None:
        try:
            await self.redis.set(f"{self.prefix}:wh:{key}", b"1", ex=DONE_TTL)
        except Exception as exc:  # noqa: BLE001 - a redelivery may then repeat it; the key lets receivers dedupe
            log.warning("webhook delivery record failed: %r", exc)

    async def _post(self, sub: Subscription, body: bytes, key: str, kind: str) -> tuple[int | None, str]:
        async with self.limits[sub.name]:
            try:
                async with self.session.post(sub.url, data=body, headers=headers(sub, body, key, kind, time.time()),
                                             timeout=aiohttp.ClientTimeout(total=sub.timeout)) as resp:
                    await resp.read()
                    result = "ok" if classify(resp.status) == "ok" else "http_error"
                    self.metrics.attempts.labels(sub.name, result).inc()
                    return resp.status, f"HTTP {resp.status}"
            except TimeoutError:
                self.metrics.attempts.labels(sub.name, "timeout").inc()
                return None, f"timeout after {sub.timeout}s"
            except aiohttp.ClientError as exc:
                self.metrics.attempts.labels(sub.name, "connection_error").inc()
                return None, f"{type(exc).__name__}: {exc}"

    async def deliver(self, sub: Subscription, kind: str, topic: str, partition: int, offset: int,
                      message: dict[str, Any]) -> str:
        """'delivered', 'duplicate' or 'dead_letter'; raises only if the dead letter itself cannot be sent."""
        key = idempotency_key(topic, partition, offset, sub.name, message)
        if await self._seen(key):
            self.metrics.deliveries.labels(sub.name, "duplicate").inc()
            return "duplicate"
        body, started, attempts = payload(sub, kind, message, key), time.monotonic(), 0
        breaker, error = self.breakers[sub.name], "not attempted"
        while True:
            wait = breaker.wait_time()
            self.metrics.circuit_open.labels(sub.name).set(1 if breaker.state == "open" else 0)
            if wait > 0:
                if time.monotonic() - started + wait > self.config.max_delivery_seconds:
                    error = f"circuit open ({error})"
                    break
                await asyncio.sleep(wait)
                continue
            attempts += 1
            status, error = await self._post(sub, body, key, kind)
            verdict = classify(status)
            if verdict == "ok":
                breaker.success()
                await self._remember(key)
                return self._finish(sub, "delivered", started)
            if verdict == "permanent":
                breaker.success()  # the endpoint answers; this message will not get better
                break
            breaker.failure()
            delay = backoff(attempts, self.config.backoff_base, self.config.backoff_cap)
            if attempts >= self.config.max_attempts or \
                    time.monotonic() - started + delay > self.config.max_delivery_seconds:
                break
            await asyncio.sleep(delay)
        record = dead_letter(sub, kind, topic, partition, offset, key, message, error, attempts,
                             int(time.time() * 1000))
        await self.dead_letters(str(message.get("customer_id", "")).encode(), record)
        log.warning("webhook %s: %s dead-lettered after %d attempts: %s", sub.name, key, attempts, error)
        return self._finish(sub, "dead_letter", started)

    def _finish(self, sub: Subscription, outcome: str, started: float) -> str:
        self.metrics.deliveries.labels(sub.name, outcome).inc()
        self.metrics.delivery_seconds.labels(sub.name, outcome).observe(time.monotonic() - started)
        return outcome


def decode_record(record: Any) -> dict[str, Any] | None:
    """A consumed record's message, or None when it is not a JSON object (nothing to deliver)."""
    try:
        message = orjson.loads(record.value or b"null")
    except orjson.JSONDecodeError:
        log.warning("webhook sink: %s[%s]@%s is not JSON; nothing to deliver",
                    record.topic, record.partition, record.offset)
        return None
    return message if isinstance(message, dict) else None


def fresh_records(deliverer: Deliverer, kinds: dict[str, str], records: list[Any],
                  repeats: RepeatFilter) -> list[tuple[Any, dict[str, Any]]]:
    """The records to deliver, in order, with their messages: repeats (same customer, ``seq`` at or below
    the last seen in the partition) are left out and counted as duplicates of each matching subscription."""
    fresh = []
    for record in records:
        message = decode_record(record)
        if message is None:
            continue
        if repeats.seen((record.topic, record.partition), message):
            kind = kinds[record.topic]
            for sub in deliverer.config.webhooks:
                if matches(sub, kind, message):
                    deliverer.metrics.deliveries.labels(sub.name, "duplicate").inc()
            continue
        fresh.append((record, message))
    return fresh


async def deliver_record(deliverer: Deliverer, kinds: dict[str, str], record: Any,
                         message: dict[str, Any]) -> None:
    """Every matching subscription's delivery of one consumed record (decoded: :func:`fresh_records`)."""
    kind = kinds[record.topic]
    subs = [s for s in deliverer.config.webhooks if matches(s, kind, message)]
    await asyncio.gather(*(deliverer.deliver(s, kind, record.topic, record.partition, record.offset, message)
                           for s in subs))


async def run_sink(settings: Any, config: WebhookConfig, metrics: WebhookMetrics,
                   stop: asyncio.Event | None = None) -> None:
    """Consume, deliver, then commit, batch after batch, until ``stop`` is set or the task is cancelled."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
    from aiokafka.errors import CommitFailedError, KafkaError

    from stream.kafka.kafka_admin import ensure_topics
    from stream.security import aiokafka_options, librdkafka_config, redis_client

    await asyncio.to_thread(ensure_topics, librdkafka_config(settings),
                            {settings.webhook_dead_letters_topic: settings.partitions})
    kinds = {settings.tag_changes_topic: "tag_change", settings.churn_alerts_topic: "churn_alert"}
    options = aiokafka_options(settings)
    repeats = RepeatFilter(MAX_CUSTOMERS)

    class ForgetRevoked(ConsumerRebalanceListener):  # type: ignore[misc]
        """A revoked partition's marks go: its next owner may deliver more, and an erasure, meanwhile."""

        async def on_partitions_revoked(self, revoked: Any) -> None:
            for tp in revoked:
                repeats.forget((tp.topic, tp.partition))

        async def on_partitions_assigned(self, assigned: Any) -> None:
            pass

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, group_id=f"{settings.app_id}-webhooks",
        enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=100,
        session_timeout_ms=int(settings.session_timeout * 1000),
        heartbeat_interval_ms=int(settings.heartbeat_interval * 1000),
        max_poll_interval_ms=int((config.max_delivery_seconds + 120) * 1000), **options)
    consumer.subscribe(topics=list(kinds), listener=ForgetRevoked())
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", **options)

    async def send_dead_letter(key: bytes, value: bytes) -> None:
        for attempt in range(1, 1_000_000):
            try:
                await producer.send_and_wait(settings.webhook_dead_letters_topic, key=key, value=value)
                return
            except KafkaError as exc:  # never give up on a dead letter: the batch stays uncommitted meanwhile
                log.warning("webhook dead letter not sent (attempt %d), retrying: %r", attempt, exc)
                await asyncio.sleep(backoff(attempt, 0.5, 10))

    redis = redis_client(settings)
    await producer.start()
    await consumer.start()
    try:
        async with aiohttp.ClientSession() as session:
            deliverer = Deliverer(config, session, redis, settings.redis_prefix, send_dead_letter, metrics)
            while stop is None or not stop.is_set():
                batches = await consumer.getmany(timeout_ms=500)
                records = [r for rs in batches.values() for r in rs]
                if not records:
                    continue
                fresh = fresh_records(deliverer, kinds, records, repeats)
                await asyncio.gather(*(deliver_record(deliverer, kinds, r, m) for r, m in fresh))
                try:
                    await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batches.items() if rs})
                except (CommitFailedError, KafkaError) as exc:  # rebalanced: the new owner redelivers; Redis dedupes
                    log.warning("webhook offsets not committed (%r); deliveries are recorded in Redis", exc)
    finally:
        await consumer.stop()
        await producer.stop()
        await redis.aclose()


def install_webhooks(app: Any, runtime: Any, settings: Any) -> None:
    """Start the sink in this worker when ``TAGGER_WEBHOOKS_FILE`` is set (a bad file stops the start)."""
    from stream.metrics import create_webhook_metrics
    from stream.webhook_delivery import load_config

    if settings.webhooks_file is None:
        return
    config = load_config(settings.webhooks_file)
    metrics = create_webhook_metrics(runtime.metrics.registry, [s.name for s in config.webhooks])
    log.info("webhook sink: %d subscriptions", len(config.webhooks))

    @app.task
    async def webhook_sink() -> None:
        while True:
            try:
                await run_sink(settings, config, metrics)
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - restart the sink; uncommitted messages come again
                log.exception("webhook sink failed; restarting in 2 s")
                await asyncio.sleep(2)
