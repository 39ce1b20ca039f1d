"""Prometheus metrics, created per app on their own registry (nothing registers at import).

Labels are low-cardinality only: never a customer id.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class Metrics:
    """The worker's metrics."""

    registry: CollectorRegistry
    events: Counter
    processing: Histogram
    emit_latency: Histogram
    tag_changes: Counter
    churn_alerts: Counter

    def render(self) -> bytes:
        """Prometheus text exposition."""
        return bytes(generate_latest(self.registry))


def create_metrics() -> Metrics:
    """A fresh registry with the tagger's metrics."""
    registry = CollectorRegistry()
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
    )
