"""Operations wiring of a worker: /readyz, scrape-time metrics, a health/lag/tally loop, a Faust sensor.

:func:`install` is called once by :func:`agents.tagger.build`. The logic it
calls is pure and lives in ``stream/health.py``, ``stream/kafka/lag.py`` and
``stream/metrics.py``; this module only reads the running Faust app and
:class:`~agents.engine.runtime.Runtime`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import faust
from faust.types import TP
from faust.web import Request, Response, View

from agents.engine.pipeline.types import Sender
from agents.engine.runtime import Runtime
from stream.faust.app import partitions_settled
from stream.faust.guards import committed_offsets, partition_report, rejoin_group, restart_partition
from stream.health import RedisHealth, readiness, recovery_remaining
from stream.kafka.lag import PartitionProbe, Probed, StallWatch, next_offset, oldest_ages, partition_lag
from stream.metrics import Metrics, PartitionLag, Recovery, tally_views
from stream.security import aiokafka_options
from stream.settings import Settings

log = logging.getLogger(__name__)

REDIS_PING_INTERVAL = 2.0  # seconds between Redis health pings
REDIS_PING_TIMEOUT = 1.0
STALL_CHECK_INTERVAL = 5.0  # seconds between checks for partitions that stopped moving (see StallWatch)
PROBE_INTERVAL = 5.0  # seconds between side reads of lagging partitions (oldest unprocessed message)
TALLY_INTERVAL = 10.0  # seconds between customer tallies (stretched on big tables, see _tally)
TALLY_MAX_DUTY = 0.02  # a tally may use at most this share of the worker's time
TALLY_YIELD_EVERY = 5000  # customers counted between yields to the event loop


class MetricsSensor(faust.Sensor):
    """Faust sensor feeding Kafka produce errors and rebalances into our metrics."""

    def __init__(self, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metrics = metrics

    def on_send_error(self, producer: Any, exc: BaseException, state: Any) -> None:
        self.metrics.kafka_produce_errors.labels(type(exc).__name__).inc()

    def on_rebalance_start(self, app: Any) -> dict[Any, Any]:
        self.metrics.rebalances.inc()
        return dict(super().on_rebalance_start(app) or {})


class CountingSender:
    """A :class:`~agents.engine.runtime.Sender` that counts sends failing at once (later failures reach the sensor)."""

    def __init__(self, inner: Sender, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def send(self, *, key: bytes, value: bytes, partition: int | None = None) -> Any:
        try:
            return await self.inner.send(key=key, value=value, partition=partition)
        except Exception as exc:
            self.metrics.kafka_produce_errors.labels(type(exc).__name__).inc()
            raise


def counting_senders(senders: Mapping[str, Sender], metrics: Metrics) -> dict[str, Sender]:
    """``senders`` each wrapped in a :class:`CountingSender`: what the runtime is built with."""
    return {name: CountingSender(sender, metrics) for name, sender in senders.items()}


class WorkerSources:
    """Scrape-time readings of one running worker (implements :class:`stream.metrics.Sources`)."""

    def __init__(self, app: faust.App, runtime: Runtime, settings: Settings) -> None:
        self.app = app
        self.runtime = runtime
        self.settings = settings
        self.redis = RedisHealth()
        self.source_topics = {*settings.keyed_topics, settings.rekey_topic, settings.commands_topic}
        self.probed: dict[tuple[str, int], Probed] = {}  # side reads of lagging/unfetched partitions
        self.side_committed: dict[tuple[str, int], int] = {}  # group offsets read before Faust knows them

    # -- assignment, lag, recovery --------------------------------------------------------
    def owned(self) -> list[Any]:
        """Source topic partitions assigned to this worker (actives only)."""
        try:
            return sorted(tp for tp in self.app.assignor.assigned_actives() if tp.topic in self.source_topics)
        except Exception:  # noqa: BLE001 - no assignor state yet
            return []

    def partitions_assigned(self) -> int:
        return len({tp.partition for tp in self.owned()})

    def _positions(self) -> list[tuple[tuple[str, int], int | None, int | None, int | None]]:
        """(topic/partition, high watermark, next offset to process, committed offset) of every owned
        source partition."""
        owned = self.owned()
        if not owned:
            return []
        consumer = self.app.consumer
        committed = committed_offsets(consumer)
        processed: Mapping[tuple[str, int], int] = self.runtime.last_offset
        rows = []
        for tp in owned:
            key = (tp.topic, tp.partition)
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # noqa: BLE001 - not fetched yet or mid-rebalance: unknown
                highwater = None
            if highwater is None and key in self.probed:
                highwater = self.probed[key].highwater  # paused (recovery): read by the probe
            known = committed.get(tp)
            known = known if known is not None else self.side_committed.get(key)
            rows.append((key, highwater, next_offset(processed.get(key), known), known))
        return rows

    def consumer_lag(self) -> list[PartitionLag]:
        lags = []
        for (topic, partition), highwater, nxt, _ in self._positions():
            lag = partition_lag(highwater, nxt)
            if lag is not None:
                lags.append(PartitionLag(topic, partition, lag))
        return lags

    def oldest_unprocessed_age(self) -> dict[str, float]:
        stamps = {key: p.timestamp for key, p in self.probed.items() if p.timestamp is not None}
        return oldest_ages(self.consumer_lag(), stamps, time.time())

    def unknown_positions(self) -> list[tuple[str, int]]:
        """Owned partitions whose next offset to process is not known yet (during the first recovery)."""
        return [key for key, _, nxt, _ in self._positions() if nxt is None]

    def to_probe(self) -> dict[tuple[str, int], int]:
        """Partitions worth a side read, with their next offset: lagging, or high watermark unknown."""
        wanted = {}
        for key, highwater, nxt, _ in self._positions():
            if nxt is not None and (highwater is None or highwater > nxt):
                wanted[key] = nxt
        return wanted

    def commit_rows(self) -> list[tuple[tuple[str, int], int | None, int | None]]:
        """(topic/partition, committed offset, high watermark) of every owned source partition."""
        return [(key, committed, highwater) for key, highwater, _, committed in self._positions()]

    def busy(self) -> bool:
        """Rebalancing, recovering or paused: partitions are expected to stand still."""
        return not partitions_settled(self.app) or self.recovery().in_progress

    def recovery(self) -> Recovery:
        recovery = self.app.tables.recovery  # type: ignore[attr-defined]
        in_progress = bool(getattr(recovery, "in_recovery", False))
        remaining = recovery_remaining(recovery.active_highwaters, recovery.active_offsets) if in_progress else 0
        return Recovery(in_progress, remaining)

    # -- readiness and Redis --------------------------------------------------------------
    def readiness(self) -> tuple[bool, dict[str, Any]]:
        recovery = self.recovery()
        return readiness(partitions=self.partitions_assigned(), rebalancing=bool(self.app.rebalancing),
                         recovering=recovery.in_progress, recovery_remaining_records=recovery.remaining_records,
                         redis_up=self.redis.up, redis_error=self.redis.last_error)

    def ready(self) -> bool:
        return self.readiness()[0]

    async def ping_redis(self) -> None:
        try:
            await asyncio.wait_for(self.runtime.view.client.ping(), REDIS_PING_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - any failure means "unreachable"
            self.redis.observe(exc)
        else:
            self.redis.observe(None)

    def redis_up(self) -> bool:
        return bool(self.redis.up)

    def redis_errors(self) -> int:
        return self.runtime.view.errors + self.redis.errors

    def redis_reconnects(self) -> int:
        return self.redis.reconnects

    def redis_pending(self) -> int:
        return self.runtime.view.pending

    # -- counters kept by the runtime -----------------------------------------------------
    def rule_errors(self) -> int:
        return self.runtime.rule_errors

    def rules_reload_errors(self) -> int:
        return self.runtime.reload_errors

    def gap_records(self) -> int:
        return self.runtime.offsets.filled

    def ruleset(self) -> tuple[str, str]:
        ruleset = self.runtime.evaluator.ruleset
        return ruleset.version, ruleset.name or ""


class OpsLoop:
    """The background loop: Redis ping, side reads of lagging partitions, customer tally."""

    def __init__(self, app: faust.App, sources: WorkerSources, probe: PartitionProbe) -> None:
        self.app = app
        self.sources = sources
        self.probe = probe
        self.started = False
        self.stalls = StallWatch(sources.settings.stall_timeout)
        self._restarted: dict[tuple[str, int], int] = {}  # partitions read again: from which offset
        self._due = {"ping": 0.0, "probe": 0.0, "tally": 0.0, "stall": 0.0}
        self._tallied: set[int] = set()  # the partitions the last tally counted

    def start(self) -> None:
        """Start the loop once; the app waits for it (and it ends) when the app stops."""
        if not self.started:
            self.started = True
            self.app.add_future(self.run())

    async def run(self) -> None:
        try:
            while not self.app.should_stop:
                await self.tick()
                await self.app.sleep(0.5)
        finally:
            await self.probe.stop()

    async def tick(self) -> None:
        """Do whatever is due; a failure is logged and retried at its next turn."""
        due, now = self._due, time.monotonic()
        try:
            if now >= due["ping"]:
                due["ping"] = now + REDIS_PING_INTERVAL
                await self.sources.ping_redis()
            if now >= due["probe"]:
                due["probe"] = now + PROBE_INTERVAL
                self.sources.side_committed.update(await self.probe.committed(self.sources.unknown_positions()))
                self.sources.probed = await self.probe.probe(self.sources.to_probe())
            if now >= due["stall"]:
                due["stall"] = now + STALL_CHECK_INTERVAL
                await self.restart_stalled(now)
            owned = {tp.partition for tp in self.sources.owned()}
            if now >= due["tally"] or owned != self._tallied:  # and at once after a rebalance
                runtime = self.sources.runtime
                views, busy = await _owned_views(runtime, owned)
                runtime.metrics.set_tally(tally_views(views))
                self._tallied = owned
                due["tally"] = now + max(TALLY_INTERVAL, busy / TALLY_MAX_DUTY)
        except Exception:  # noqa: BLE001 - metrics only: never take the worker down
            log.exception("observability loop failed; retrying")

    async def restart_stalled(self, now: float) -> None:
        """Read again the partitions whose committed offset stood still while messages waited (guard 6).

        A partition still stuck at the same offset after that gets a new assignment: the group rebalances.
        """
        sources = self.sources
        rows = sources.commit_rows()
        committed_now = {key: committed for key, committed, _ in rows}
        self._restarted = {key: at for key, at in self._restarted.items() if committed_now.get(key) == at}  # moved on
        for key in self.stalls.check(rows, now, busy=sources.busy()):
            report = partition_report(self.app.consumer, sources.runtime.last_offset).get(f"{key[0]}[{key[1]}]")
            where = f"{key[0]}[{key[1]}]: committed offset unchanged for {self.stalls.after:.0f} s while messages wait"
            restart = sources.runtime.metrics.partition_restarts
            if self._restarted.get(key) == committed_now[key]:
                log.warning("%s, also after reading it again (%s); asking the group to rebalance", where, report)
                rejoin_group(self.app.consumer)
                restart.labels(key[0], "rejoin").inc()
                continue
            committed = (await self.probe.committed([key])).get(key)
            log.warning("%s (%s); reading it again from the group's committed offset %s", where, report, committed)
            if committed is not None:
                await restart_partition(self.app.consumer, TP(*key), committed)
                self._restarted[key] = committed
                sources.runtime.forget_offsets(key)
                restart.labels(key[0], "seek").inc()


def install(app: faust.App, runtime: Runtime, settings: Settings) -> WorkerSources:
    """Add /readyz, the scrape-time metrics, the health/lag/tally loop and the sensor to ``app``."""
    metrics = runtime.metrics
    sources = WorkerSources(app, runtime, settings)
    metrics.bind(sources)
    metrics.init_events(sorted(sources.source_topics))
    app.sensors.add(MetricsSensor(metrics))
    probe = PartitionProbe(settings.kafka_bootstrap_servers, group_id=settings.app_id,
                           options=aiokafka_options(settings))
    monitor = OpsLoop(app, sources, probe)

    # Faust starts @app.timer functions only once the first changelog recovery is over, which
    # is when lag, recovery progress and Redis health matter most: run our own loop instead,
    # from the first partition assignment (it stops with the app).
    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _start_monitor(sender: Any, *args: Any, **kwargs: Any) -> None:
        monitor.start()

    @app.page("/readyz")
    async def readyz(web: View, request: Request) -> Response:
        await sources.ping_redis()
        ready, doc = sources.readiness()
        return web.json(doc, status=200 if ready else 503)

    return sources


async def _owned_views(runtime: Runtime, owned: set[int]) -> tuple[list[Any], float]:
    """The current views of the local customers in ``owned`` partitions, yielding to the loop as it goes,
    and the seconds the count itself took (not the other tasks' turns in between: a busy worker's start
    stretched the next tally by their time too, so a gauge stayed at its first value for minutes)."""
    views: list[Any] = []
    started = time.perf_counter()
    items: Iterable[tuple[str, Any]] = list(runtime.table.items())
    busy = 0.0
    for i, (cid, state) in enumerate(items):
        if runtime.partition_of(cid) in owned and state is not None:
            views.append(state.view)
        if i % TALLY_YIELD_EVERY == TALLY_YIELD_EVERY - 1:
            busy += time.perf_counter() - started
            await asyncio.sleep(0)
            started = time.perf_counter()
    return views, busy + time.perf_counter() - started
