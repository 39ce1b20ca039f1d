"""Prometheus metrics, created per app on their own registry (nothing registers at import).

Every metric the worker exports is declared here, in one place: the ones the
worker updates as things happen (counters, histograms, the customer tallies)
and the ones read at scrape time from the running worker through
:class:`Sources` (lag, recovery, readiness inputs, error counters kept
elsewhere). Labels are low-cardinality only: never a customer id.

``tagger_customers_*`` gauges are per worker: each worker counts the customers
of the partitions it owns, so the cluster figure is ``sum`` over workers.
"""

from __future__ import annotations

import re
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0)  # fine around the 100 ms target (issue 7)
_SWEEP_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_SWEEP_SIZE_BUCKETS = (0, 1, 10, 100, 500, 1000, 2000, 5000, 10_000, 50_000, 100_000, 500_000, 1_000_000)

#: Dead-letter reason classes (the ``reason`` label); the full text is in the dead letter itself.
DEAD_LETTER_REASONS = ("too_large", "empty", "not_utf8", "not_json", "not_object", "missing_field",
                       "wrong_currency", "invalid_field", "unexpected_topic", "malformed_internal",
                       "internal_error", "other")
#: Outcomes of a consumed message (``tagger_events_total{outcome}``).
OUTCOMES = ("ok", "duplicate", "dead_letter", "rekeyed", "command")
#: ``tagger_emit_latency_seconds`` labels.
EMIT_OUTPUTS = ("tag_change", "churn_alert")
EMIT_SINCE = ("arrival", "kafka_timestamp")
#: Churn-risk levels (``tagger_churn_alerts_total{level}``).
CHURN_LEVELS = ("none", "low", "medium", "high")
#: What a reversal can be of (``tagger_reversals_total{kind}``; stream.domain.reversals).
REVERSAL_KINDS = ("tier", "churn")
#: More distinct tags than this in one worker are counted under ``tag="_other"``.
MAX_TAG_LABELS = 100

_FIELD = re.compile(r"^field '([^']*)': (.*)$", re.S)


def dead_letter_reason(reason: str) -> str:
    """The low-cardinality class of a dead-letter reason text (see ``DEAD_LETTER_REASONS``)."""
    field_match = _FIELD.match(reason)
    if field_match:
        name, problem = field_match.groups()
        if name == "currency":
            return "wrong_currency"
        return "missing_field" if problem == "missing" else "invalid_field"
    prefixes = (("message is empty", "empty"), ("message value must be bytes", "empty"),
                ("not valid UTF-8", "not_utf8"), ("not valid JSON", "not_json"),
                ("message must be a JSON object", "not_object"), ("unexpected topic", "unexpected_topic"),
                ("malformed internal message", "malformed_internal"), ("internal error", "internal_error"))
    for prefix, label in prefixes:
        if reason.startswith(prefix):
            return label
    if reason.startswith("message is ") and "over the limit" in reason:
        return "too_large"
    return "other"


@dataclass(frozen=True)
class CustomerTally:
    """Customers of one worker by tier, tag and churn level (from their current views)."""

    customers: int = 0
    tiers: Mapping[str, int] = field(default_factory=dict)
    tags: Mapping[str, int] = field(default_factory=dict)
    churn_levels: Mapping[str, int] = field(default_factory=dict)


def tally_views(views: Iterable[Mapping[str, Any] | None], max_tags: int = MAX_TAG_LABELS) -> CustomerTally:
    """Count customers by tier, tag and churn level; customers never evaluated count only in the total.

    Manual tags are free text within a pattern, so beyond ``max_tags`` distinct tags the
    rarest are summed into ``_other`` to keep the label set bounded.
    """
    total, tiers, tags, levels = 0, Tally[str](), Tally[str](), Tally[str]()
    for view in views:
        total += 1
        if not view:
            continue
        if view.get("tier"):
            tiers[str(view["tier"])] += 1
        tags.update(str(t) for t in view.get("tags", ()))
        levels[str((view.get("churn") or {}).get("level", "none"))] += 1
    if len(tags) > max_tags:
        ranked = sorted(tags.items(), key=lambda kv: (-kv[1], kv[0]))
        kept = dict(ranked[:max_tags - 1])
        kept["_other"] = sum(n for _, n in ranked[max_tags - 1:])
        tags = Tally(kept)
    return CustomerTally(total, dict(tiers), dict(tags), dict(levels))


@dataclass(frozen=True)
class PartitionLag:
    """Consumer lag of one source partition owned by this worker."""

    topic: str
    partition: int
    lag: int


@dataclass(frozen=True)
class Recovery:
    """Changelog recovery after an assignment or restart."""

    in_progress: bool
    remaining_records: int


class Sources(Protocol):
    """What the scrape-time metrics read from the running worker."""

    def consumer_lag(self) -> Iterable[PartitionLag]: ...
    def oldest_unprocessed_age(self) -> Mapping[str, float]: ...  # topic -> seconds
    def partitions_assigned(self) -> int: ...
    def recovery(self) -> Recovery: ...
    def ready(self) -> bool: ...
    def redis_up(self) -> bool: ...
    def redis_errors(self) -> int: ...
    def redis_reconnects(self) -> int: ...
    def redis_pending(self) -> int: ...
    def rule_errors(self) -> int: ...
    def rules_reload_errors(self) -> int: ...
    def gap_records(self) -> int: ...
    def ruleset(self) -> tuple[str, str]: ...  # version, name ('' if unnamed)


class _SourcesCollector(Collector):
    """Builds the scrape-time metric families from :class:`Sources`."""

    def __init__(self, sources: Sources | None) -> None:
        self.sources = sources

    def describe(self) -> Iterator[Metric]:
        return self._families(None)

    def collect(self) -> Iterator[Metric]:
        return self._families(self.sources)

    def _families(self, s: Sources | None) -> Iterator[Metric]:
        def gauge(name: str, doc: str, value: float | None, labels: list[str] | None = None) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value if labels is None else None, labels=labels)

        def counter(name: str, doc: str, value: float | None) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        lag = gauge("tagger_consumer_lag", "Messages not yet processed, per owned source topic partition "
                    "(highwater minus next offset to process).", None, ["topic", "partition"])
        age = gauge("tagger_oldest_unprocessed_event_age_seconds", "Age (from its Kafka timestamp) of the oldest "
                    "message not yet processed, per source topic; 0 when caught up.", None, ["topic"])
        info = InfoMetricFamily("tagger_ruleset", "The ruleset in use.", labels=["version", "name"])
        if s is not None:
            for item in s.consumer_lag():
                lag.add_metric([item.topic, str(item.partition)], item.lag)
            for topic, seconds in sorted(s.oldest_unprocessed_age().items()):
                age.add_metric([topic], seconds)
            version, name = s.ruleset()
            info.add_metric([version, name], {})
        recovery = s.recovery() if s is not None else None
        yield lag
        yield age
        yield info
        yield gauge("tagger_partitions_assigned", "Source partitions this worker owns.",
                    s.partitions_assigned() if s else 0)
        yield gauge("tagger_recovery_in_progress", "1 while the customers table is being restored from its "
                    "changelog.", int(recovery.in_progress) if recovery else 0)
        yield gauge("tagger_recovery_remaining_records", "Changelog records still to read before the table is "
                    "recovered (0 when done).", recovery.remaining_records if recovery else 0)
        yield gauge("tagger_ready", "1 when /readyz answers ready (partitions assigned, recovery finished, "
                    "Redis reachable).", int(s.ready()) if s else 0)
        yield gauge("tagger_redis_up", "1 if the last Redis health ping succeeded.", int(s.redis_up()) if s else 0)
        yield gauge("tagger_redis_pending_views", "Customer views staged for Redis, not yet written.",
                    s.redis_pending() if s else 0)
        yield counter("tagger_redis_errors", "Failed Redis operations (view flushes, rank reads, health pings).",
                      s.redis_errors() if s else 0)
        yield counter("tagger_redis_reconnects", "Times Redis answered again after failing.",
                      s.redis_reconnects() if s else 0)
        yield counter("tagger_rule_errors", "Rule evaluation errors (a condition that failed to evaluate).",
                      s.rule_errors() if s else 0)
        yield counter("tagger_rules_reload_errors", "Changed rulesets that were invalid and not loaded.",
                      s.rules_reload_errors() if s else 0)
        yield counter("tagger_gap_records", "Messages Faust skipped that the worker read directly and processed.",
                      s.gap_records() if s else 0)


@dataclass(frozen=True)
class Metrics:
    """The worker's metrics."""

    registry: CollectorRegistry
    events: Counter
    processing: Histogram
    emit_latency: Histogram
    tag_changes: Counter
    churn_alerts: Counter
    reversals: Counter
    dead_letters: Counter
    sweep_seconds: Histogram
    sweep_customers: Histogram
    kafka_produce_errors: Counter
    rebalances: Counter
    partition_restarts: Counter
    customers: Gauge
    customers_by_tier: Gauge
    customers_by_tag: Gauge
    customers_by_churn_level: Gauge
    _sources: _SourcesCollector

    def render(self) -> bytes:
        """Prometheus text exposition."""
        return bytes(generate_latest(self.registry))

    @staticmethod
    def total(counter: Counter) -> float:
        """The sum of a counter over all its label sets."""
        return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))

    def bind(self, sources: Sources) -> None:
        """Read the scrape-time metrics from ``sources`` from now on."""
        self._sources.sources = sources

    def init_events(self, topics: Iterable[str]) -> None:
        """Create the series whose label values are known up front at 0, so rates exist from the start."""
        for topic in topics:
            for outcome in OUTCOMES:
                self.events.labels(topic, outcome)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)
        for output in EMIT_OUTPUTS:
            for since in EMIT_SINCE:
                self.emit_latency.labels(output, since)
        for level in CHURN_LEVELS:
            self.churn_alerts.labels(level)
        for kind in REVERSAL_KINDS:
            self.reversals.labels(kind)

    def dead_lettered(self, reason: str) -> None:
        """Count one dead letter under its reason class."""
        self.dead_letters.labels(dead_letter_reason(reason)).inc()

    def set_tally(self, tally: CustomerTally) -> None:
        """Replace the customer gauges (label sets that disappeared are removed)."""
        self.customers.set(tally.customers)
        for gauge, counts in ((self.customers_by_tier, tally.tiers), (self.customers_by_tag, tally.tags),
                              (self.customers_by_churn_level, tally.churn_levels)):
            gauge.clear()
            for label, n in counts.items():
                gauge.labels(label).set(n)


def create_metrics() -> Metrics:
    """A fresh registry with the tagger's metrics."""
    registry = CollectorRegistry()
    sources = _SourcesCollector(None)
    registry.register(sources)
    return Metrics(
        registry=registry,
        events=Counter("tagger_events_total", "Messages consumed, by topic and outcome.",
                       ["topic", "outcome"], registry=registry),
        processing=Histogram("tagger_processing_seconds", "Time to handle one message.",
                             registry=registry, buckets=_LATENCY_BUCKETS),
        emit_latency=Histogram("tagger_emit_latency_seconds",
                               "From an event's arrival (since='arrival') or its Kafka timestamp "
                               "(since='kafka_timestamp') to the tag change or churn alert it caused.",
                               ["output", "since"], registry=registry, buckets=_LATENCY_BUCKETS),
        tag_changes=Counter("tagger_tag_changes_total", "Tag changes, by tag and direction.",
                            ["tag", "direction"], registry=registry),
        churn_alerts=Counter("tagger_churn_alerts_total", "Churn alerts, by level.", ["level"],
                             registry=registry),
        reversals=Counter("tagger_reversals_total", "Tier changes (kind='tier') and churn level changes "
                          "(kind='churn') that undo the customer's previous one within TAGGER_REVERSAL_WINDOW, "
                          "with no input of that customer in between: flapping.", ["kind"], registry=registry),
        dead_letters=Counter("tagger_dead_letters_total", "Messages sent to the dead-letter topic, by reason class.",
                             ["reason"], registry=registry),
        sweep_seconds=Histogram("tagger_sweep_duration_seconds", "Wall time of one sweep of a partition.",
                                registry=registry, buckets=_SWEEP_SECONDS_BUCKETS),
        sweep_customers=Histogram("tagger_sweep_customers", "Customers re-evaluated by one sweep of a partition.",
                                  registry=registry, buckets=_SWEEP_SIZE_BUCKETS),
        kafka_produce_errors=Counter("tagger_kafka_produce_errors_total",
                                     "Kafka sends that failed (outputs, dead letters, changelog), by error type.",
                                     ["error"], registry=registry),
        rebalances=Counter("tagger_rebalances_total", "Consumer-group rebalances this worker went through.",
                           registry=registry),
        partition_restarts=Counter("tagger_partition_restarts_total", "Partitions whose committed offset stood "
                                   "still while messages waited (settings: stall_timeout), by topic and action: "
                                   "seek (read again from the committed offset) or rejoin (still stuck after "
                                   "that: the group rebalanced).", ["topic", "action"], registry=registry),
        customers=Gauge("tagger_customers", "Customers in the partitions this worker owns (sum over workers).",
                        registry=registry),
        customers_by_tier=Gauge("tagger_customers_by_tier", "Customers per tier in the partitions this worker "
                                "owns (sum over workers).", ["tier"], registry=registry),
        customers_by_tag=Gauge("tagger_customers_by_tag", "Customers with each tag in the partitions this worker "
                               "owns (sum over workers).", ["tag"], registry=registry),
        customers_by_churn_level=Gauge("tagger_customers_by_churn_level", "Customers per churn-risk level in the "
                                       "partitions this worker owns (sum over workers).", ["level"],
                                       registry=registry),
        _sources=sources,
    )


@dataclass(frozen=True)
class WebhookMetrics:
    """The webhook sink's metrics (agents/webhooks.py), on the worker's registry; labelled by subscription name."""

    delivery_seconds: Histogram
    deliveries: Counter
    attempts: Counter
    circuit_open: Gauge


#: Final outcomes of one webhook delivery / results of one HTTP attempt.
WEBHOOK_OUTCOMES = ("delivered", "duplicate", "dead_letter")
WEBHOOK_ATTEMPT_RESULTS = ("ok", "http_error", "timeout", "connection_error")


def create_webhook_metrics(registry: CollectorRegistry, subscriptions: Iterable[str]) -> WebhookMetrics:
    """Webhook metrics on ``registry``, every subscription's series created at 0."""
    metrics = WebhookMetrics(
        delivery_seconds=Histogram("tagger_webhook_delivery_seconds", "From the first attempt of a webhook "
                                   "delivery to its final outcome (retries and backoff included).",
                                   ["subscription", "outcome"], registry=registry, buckets=_LATENCY_BUCKETS),
        deliveries=Counter("tagger_webhook_deliveries_total", "Webhook deliveries by final outcome: delivered, "
                           "duplicate (already delivered before a restart), dead_letter.",
                           ["subscription", "outcome"], registry=registry),
        attempts=Counter("tagger_webhook_attempts_total", "HTTP attempts by result: ok, http_error, timeout, "
                         "connection_error.", ["subscription", "result"], registry=registry),
        circuit_open=Gauge("tagger_webhook_circuit_open", "1 while the subscription's circuit breaker is open.",
                           ["subscription"], registry=registry),
    )
    for name in subscriptions:
        for outcome in WEBHOOK_OUTCOMES:
            metrics.deliveries.labels(name, outcome)
            metrics.delivery_seconds.labels(name, outcome)
        for result in WEBHOOK_ATTEMPT_RESULTS:
            metrics.attempts.labels(name, result)
        metrics.circuit_open.labels(name).set(0)
    return metrics
