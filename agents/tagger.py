"""The Faust wiring: one agent, with the timers and web pages connected to it.

The timer jobs are in agents/timers.py, /healthz, /metrics and /stats in agents/pages.py,
the customer API in agents/api.py, the trend timer and GET /trends in agents/trends.py, the API's
description (/openapi.json) in agents/openapi.py.

The agent body only hands each message to :class:`Runtime`; nothing escapes
the loop, so one bad message can never stop the worker.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any, cast

import faust

from agents.engine.evaluate import Evaluator, facts_schema
from agents.engine.runtime import Message, Runtime
from rules import Ruleset, default_rules_dir, load_ruleset
from stream.access.audit import AuditLog
from stream.domain.clock import Clock
from stream.faust.app import create_app, customers_table, partitions_settled, within_event
from stream.faust.intake import BatchIntake, unfetched
from stream.faust.offsets import GapFiller, GapUnfilled
from stream.kafka.topics import Topics, declare_topics
from stream.metrics import Metrics, create_metrics
from stream.security import aiokafka_options, redis_client
from stream.settings import Settings
from stream.view.redis_view import RedisView

from .api import create_audit, install_api
from .dashboard import install_dashboard
from .observability import counting_senders
from .observability import install as install_observability
from .openapi import install_openapi
from .pages import install_pages
from .timers import CutoffRefresh, PartitionCommands, RulesReload, ViewFlush
from .trends import install_trends
from .webhooks import install_webhooks

log = logging.getLogger(__name__)


class _ProducerSender:
    """A :class:`~agents.engine.runtime.Sender` straight to the app's producer, for one topic.

    Faust's ``Topic.send`` costs several times more per message (serializer lookups,
    futures, sensors); the values are bytes already. Deliveries that fail later are
    counted like the ones Faust's sensor sees, and Faust's producer flush, which runs
    before every commit, waits for these sends too.
    """

    def __init__(self, app: faust.App, topic: str, metrics: Metrics) -> None:
        self.app = app
        self.topic = topic
        self.metrics = metrics

    async def send(self, *, key: bytes, value: bytes, partition: int | None = None) -> Any:
        fut = await self.app.producer.send(self.topic, key, value, partition, None, None)
        cast(asyncio.Future[Any], fut).add_done_callback(self._delivered)
        return fut

    def _delivered(self, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and (exc := fut.exception()) is not None:
            self.metrics.kafka_produce_errors.labels(type(exc).__name__).inc()


def build(settings: Settings) -> tuple[faust.App, Runtime]:
    """Create the app and connect its agent, timers and web views. Fails fast on a bad ruleset."""
    rules_dir = settings.rules_dir or default_rules_dir()
    ruleset = load_ruleset(rules_dir, facts_schema())
    app = create_app(settings)
    topics = declare_topics(app, settings)
    table = customers_table(app, settings)
    audit = create_audit(settings, topics)  # erasures (runtime) and API calls (api)
    runtime, gaps = _runtime(app, settings, topics, table, ruleset, audit)
    log.info("ruleset %s loaded: %d rules", ruleset.version, len(ruleset.rules))
    receiver = Receiver(runtime)
    intake = BatchIntake(app, topics.source.topics, receiver.receive_record, receiver.urgent)
    if settings.intake == "batch":  # records reach receive_record straight from the fetch (stream.faust.intake)
        intake.install()
    _install_agent(app, topics, receiver)
    partitions = PartitionCommands(lambda: app.assignor.assigned_actives(), settings.commands_topic,
                                   topics.commands, runtime)
    cutoffs = CutoffRefresh(runtime, partitions)
    _install_rebalance_hooks(app, table, runtime, gaps, partitions, cutoffs)
    app.timer(settings.redis_flush_interval)(ViewFlush(runtime, settings.clock == "stream",
                                                      partial(partitions_settled, app)).run)
    app.timer(settings.cutoff_refresh_interval)(cutoffs.run)
    app.timer(settings.sweep_interval)(partitions.sweep)  # not where the last sweep is still running
    app.timer(settings.rules_reload_interval)(RulesReload(rules_dir, runtime, partitions).run)
    api = install_api(app, table, runtime, settings, topics, audit)  # /customers, /tags, /privacy: tokens, roles, audit
    install_dashboard(app, table, api, settings)  # /dashboard: page, live feed, tier counts, lookup (same roles)
    install_trends(app, api, settings)  # a trend point each TAGGER_TREND_INTERVAL of stream time; GET /trends
    install_pages(app, runtime, gaps, intake)  # /healthz, /metrics, /stats
    install_observability(app, runtime, settings)  # /readyz, scrape-time metrics, health timers
    install_webhooks(app, runtime, settings)  # tag changes and churn alerts to webhook URLs (own consumer group)
    install_openapi(app)  # /openapi.json (agents/static/openapi.yaml) and JSON bodies for aiohttp's own errors
    return app, runtime


def _runtime(app: faust.App, settings: Settings, topics: Topics, table: Any, ruleset: Ruleset,
             audit: AuditLog) -> tuple[Runtime, GapFiller]:
    """The agent's runtime, its senders straight to the app's producer, and the gap filler it reads with."""
    senders = {"tag_changes": topics.tag_changes, "dead_letters": topics.dead_letters, "rekey": topics.rekey,
               "commands": topics.commands, "churn_alerts": topics.churn_alerts}
    metrics = create_metrics()  # shared by the senders and the runtime
    producing = {k: _ProducerSender(app, t.get_topic_name(), metrics) for k, t in senders.items()}
    gaps = GapFiller(settings.kafka_bootstrap_servers, group_id=settings.app_id, options=aiokafka_options(settings))
    # AUTH and TLS from settings (stream.security)
    view = RedisView(redis_client(settings), settings.redis_prefix, settings.history_size)
    runtime = Runtime(settings, table, Evaluator(ruleset), view, Clock(settings.clock),
                      counting_senders(producing, metrics), gaps=gaps, message_context=faust.current_event,
                      within=within_event, audit=audit, metrics=metrics)
    return runtime, gaps


class Receiver:
    """Hands each record to the runtime; an error never leaves the intake or the agent's loop."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def receive(self, message: Message, more: int, ahead: bool = False) -> None:
        runtime = self.runtime
        try:
            await runtime.handle(message, more, ahead)
        except GapUnfilled as exc:  # not acknowledged (its generation passed): read again where it went
            log.warning("%s[%s]@%s not processed: %s", message.topic, message.partition, message.offset, exc)
        except Exception as exc:  # noqa: BLE001 - never leave the loop: dead-letter instead
            log.exception("failed on %s[%s]@%s", message.topic, message.partition, message.offset)
            runtime.outcomes["dead_letter"] += 1
            try:
                await runtime.dead_letter(message, f"internal error: {exc!r}")
            except Exception:  # noqa: BLE001 - the producer itself failed; logged, loop goes on
                log.exception("could not dead-letter %s[%s]@%s", message.topic, message.partition, message.offset)

    async def receive_record(self, record: Any, more: int, ahead: bool) -> None:
        """From the batch intake: aiokafka's ConsumerRecord."""
        timestamp = None if record.timestamp is None or record.timestamp < 0 else record.timestamp / 1000
        await self.receive(Message(record.topic, record.partition, record.offset, record.key, record.value,
                                   timestamp), more, ahead)

    def urgent(self, record: Any) -> bool:
        return self.runtime.urgent(record.topic, record.value)


def _install_agent(app: faust.App, topics: Topics, receiver: Receiver) -> None:
    @app.agent(topics.source)  # subscribes the source topics; with the batch intake its stream stays empty
    async def tagger(stream: faust.StreamT) -> None:
        consumer = app.consumer
        async for event in stream.events():
            msg = event.message
            # a backlog: messages fetched and waiting, plus those not fetched yet (as the intake's)
            more = stream.channel.queue.qsize() + unfetched(consumer, topics.source.topics)  # type: ignore[attr-defined]
            await receiver.receive(Message(msg.topic, msg.partition, msg.offset, msg.key, msg.value, msg.timestamp),
                                   more)


def _install_rebalance_hooks(app: faust.App, table: Any, runtime: Runtime, gaps: GapFiller,
                             partitions: PartitionCommands, cutoffs: CutoffRefresh) -> None:
    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        runtime.forget_offsets()
        log.info("partitions assigned: %d active, %d standby",
                 len(app.assignor.assigned_actives()), len(app.assignor.assigned_standbys()))
        gaps.faust_consumer = app.consumer  # committed offsets: where each partition must resume
        runtime.keep_partitions(partitions.owned())

    @table.on_recover
    async def _recovered() -> None:
        log.info("customers table recovered")
        runtime.restore_clock()  # the stream clock is durable through the changelog
        cutoffs.rebuild_soon()
