"""Metrics, readiness and lag logic (no broker): names, labels, values, promtool's lint."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents.engine.evaluate import Evaluator, facts_schema
from agents.engine.runtime import Message, Runtime
from agents.observability import CountingSender, MetricsSensor
from rules import default_rules_dir, load_ruleset
from stream.domain.clock import Clock
from stream.domain.events import parse_event
from stream.exceptions import InvalidEvent
from stream.health import PARTITIONS, RECOVERY, REDIS, RedisHealth, readiness, recovery_remaining
from stream.kafka.lag import StallWatch, next_offset, oldest_ages, partition_lag
from stream.metrics import (
    DEAD_LETTER_REASONS,
    CustomerTally,
    Metrics,
    PartitionLag,
    Recovery,
    create_metrics,
    dead_letter_reason,
    tally_views,
)
from stream.settings import Settings
from tests.deploy_checks import exported_names, promtool
from tests.unit.fakes import FakeFaustConsumer


def reason_of(raw: bytes, kind: str = "order", max_bytes: int = 1000) -> str:
    with pytest.raises(InvalidEvent) as info:
        parse_event(kind, raw, currency="USD", max_bytes=max_bytes)
    return info.value.reason


ORDER = {"event_id": "e1", "customer_id": "c1", "ts": "2026-01-01T00:00:00Z", "order_id": "o1", "amount": 5}


@pytest.mark.parametrize(("raw", "expected"), [
    (b"x" * 2000, "too_large"),
    (b"", "empty"),
    (b"\xff\xfe", "not_utf8"),
    (b"{nope", "not_json"),
    (b"[1, 2]", "not_object"),
    (orjson.dumps({k: v for k, v in ORDER.items() if k != "order_id"}), "missing_field"),
    (orjson.dumps({**ORDER, "currency": "EUR"}), "wrong_currency"),
    (orjson.dumps({**ORDER, "amount": -5}), "invalid_field"),
    (orjson.dumps({**ORDER, "ts": "yesterday"}), "invalid_field"),
])
def test_dead_letter_reasons_of_real_parser_errors(raw: bytes, expected: str) -> None:
    assert dead_letter_reason(reason_of(raw)) == expected


def test_dead_letter_reasons_of_runtime_errors_and_the_rest() -> None:
    assert dead_letter_reason("unexpected topic 'x'") == "unexpected_topic"
    assert dead_letter_reason("malformed internal message: KeyError('kind')") == "malformed_internal"
    assert dead_letter_reason("internal error: RuntimeError('boom')") == "internal_error"
    assert dead_letter_reason("field 'cmd': unknown command 'x'") == "invalid_field"
    assert dead_letter_reason("something new") == "other"
    assert {dead_letter_reason(r) for r in ("", "message is 5 bytes")} == {"other"}
    assert len(set(DEAD_LETTER_REASONS)) == len(DEAD_LETTER_REASONS)


def view(tier: str | None, tags: Iterable[str] = (), level: str = "none") -> dict[str, Any]:
    return {"tier": tier, "tags": list(tags), "churn": {"level": level}}


def test_tally_counts_tiers_tags_and_churn_levels() -> None:
    views: list[dict[str, Any] | None] = [view("A", ["big_spender", "vip"]), view("A", ["vip"], "high"), view("D"),
                                          None, {"tags": []}]
    tally = tally_views(views)
    assert tally.customers == 5
    assert tally.tiers == {"A": 2, "D": 1}
    assert tally.tags == {"big_spender": 1, "vip": 2}
    assert tally.churn_levels == {"none": 3, "high": 1}


def test_tally_bounds_the_number_of_tag_labels() -> None:
    views = [view("D", [f"manual_{i}"] * 1) for i in range(10)] + [view("D", ["common"])] * 5
    tally = tally_views(views, max_tags=4)
    assert len(tally.tags) == 4 and tally.tags["common"] == 5
    assert sum(tally.tags.values()) == 15 and tally.tags["_other"] == 8


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_set_tally_replaces_label_sets() -> None:
    metrics = create_metrics()
    metrics.set_tally(CustomerTally(3, {"A": 1, "B": 2}, {"vip": 1}, {"none": 3}))
    metrics.set_tally(CustomerTally(2, {"B": 2}, {}, {"none": 2}))
    got = samples(metrics)
    assert got[("tagger_customers", ())] == 2
    assert got[("tagger_customers_by_tier", (("tier", "B"),))] == 2
    assert ("tagger_customers_by_tier", (("tier", "A"),)) not in got
    assert not any(name == "tagger_customers_by_tag" for name, _ in got)


class FakeSources:
    """Everything a worker reports at scrape time, as fixed values."""

    def consumer_lag(self) -> list[PartitionLag]:
        return [PartitionLag("orders", 0, 5), PartitionLag("orders", 1, 0), PartitionLag("logins", 0, 2)]

    def oldest_unprocessed_age(self) -> Mapping[str, float]:
        return {"orders": 12.5, "logins": 0.0}

    def partitions_assigned(self) -> int:
        return 2

    def recovery(self) -> Recovery:
        return Recovery(True, 1234)

    def ready(self) -> bool:
        return False

    def redis_up(self) -> bool:
        return True

    def redis_errors(self) -> int:
        return 3

    def redis_reconnects(self) -> int:
        return 1

    def redis_pending(self) -> int:
        return 7

    def rule_errors(self) -> int:
        return 4

    def rules_reload_errors(self) -> int:
        return 1

    def gap_records(self) -> int:
        return 9

    def ruleset(self) -> tuple[str, str]:
        return "abc123def456", "default"


def populated_metrics() -> Metrics:
    """Metrics with a value in every series, as a busy worker would have them."""
    m = create_metrics()
    m.bind(FakeSources())
    m.init_events(["orders", "logins"])
    m.events.labels("orders", "ok").inc(10)
    m.processing.observe(0.002)
    m.emit_latency.labels("tag_change", "arrival").observe(0.01)
    m.emit_latency.labels("churn_alert", "kafka_timestamp").observe(0.3)
    m.tag_changes.labels("vip", "added").inc()
    m.churn_alerts.labels("high").inc()
    m.dead_lettered("not valid JSON: x")
    m.sweep_seconds.observe(1.5)
    m.sweep_customers.observe(2000)
    m.kafka_produce_errors.labels("KafkaTimeoutError").inc()
    m.rebalances.inc()
    m.set_tally(CustomerTally(3, {"A": 1, "D": 2}, {"vip": 1}, {"none": 2, "high": 1}))
    return m


def test_scrape_time_metrics_come_from_the_sources() -> None:
    got = samples(populated_metrics())
    assert got[("tagger_consumer_lag", (("partition", "0"), ("topic", "orders")))] == 5
    assert got[("tagger_consumer_lag", (("partition", "0"), ("topic", "logins")))] == 2
    assert got[("tagger_oldest_unprocessed_event_age_seconds", (("topic", "orders"),))] == 12.5
    assert got[("tagger_ruleset_info", (("name", "default"), ("version", "abc123def456")))] == 1
    assert got[("tagger_recovery_in_progress", ())] == 1
    assert got[("tagger_recovery_remaining_records", ())] == 1234
    assert got[("tagger_ready", ())] == 0 and got[("tagger_redis_up", ())] == 1
    assert got[("tagger_redis_errors_total", ())] == 3 and got[("tagger_redis_reconnects_total", ())] == 1
    assert got[("tagger_rule_errors_total", ())] == 4 and got[("tagger_gap_records_total", ())] == 9
    assert got[("tagger_dead_letters_total", (("reason", "not_json"),))] == 1
    assert got[("tagger_dead_letters_total", (("reason", "too_large"),))] == 0  # initialised, so rate() works
    assert got[("tagger_events_total", (("outcome", "rekeyed"), ("topic", "logins")))] == 0


def test_every_issue_metric_is_exported() -> None:
    names = exported_names(populated_metrics().render().decode())
    required = {
        "tagger_events_total", "tagger_processing_seconds_bucket", "tagger_emit_latency_seconds_bucket",
        "tagger_consumer_lag", "tagger_oldest_unprocessed_event_age_seconds", "tagger_tag_changes_total",
        "tagger_churn_alerts_total", "tagger_customers_by_tier", "tagger_customers_by_tag",
        "tagger_dead_letters_total", "tagger_rule_errors_total", "tagger_ruleset_info",
        "tagger_sweep_duration_seconds_bucket", "tagger_sweep_customers_bucket", "tagger_redis_errors_total",
        "tagger_redis_reconnects_total", "tagger_kafka_produce_errors_total", "tagger_recovery_remaining_records",
        "tagger_recovery_in_progress", "tagger_ready", "tagger_redis_up", "tagger_reversals_total",
    }
    assert required <= names, required - names


def test_no_label_can_carry_a_customer_id() -> None:
    allowed = {"topic", "outcome", "partition", "output", "since", "tag", "direction", "level", "reason", "error",
               "tier", "version", "name", "le", "kind"}
    for family in text_string_to_metric_families(populated_metrics().render().decode()):
        for s in family.samples:
            assert set(s.labels) <= allowed, (s.name, s.labels)


def test_promtool_check_metrics_accepts_our_exposition() -> None:
    result = promtool("check", "metrics", stdin=populated_metrics().render())
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_promtool_check_metrics_would_reject_a_bad_name() -> None:  # the check above can fail
    bad = b"# HELP x_ms Latency.\n# TYPE x_ms counter\nx_ms 1\n"
    result = promtool("check", "metrics", stdin=bad)
    assert result.returncode != 0 and "x_ms" in result.stdout + result.stderr


# -- readiness ---------------------------------------------------------------------------


def test_ready_only_with_partitions_no_recovery_and_redis() -> None:
    ok, doc = readiness(partitions=4, rebalancing=False, recovering=False, recovery_remaining_records=0,
                        redis_up=True)
    assert ok and doc["missing"] == [] and doc["status"] == "ready"
    ok, doc = readiness(partitions=0, rebalancing=True, recovering=True, recovery_remaining_records=50,
                        redis_up=False, redis_error="ConnectionError: refused")
    assert not ok and doc["missing"] == [PARTITIONS, RECOVERY, REDIS]
    assert doc["recovery_remaining_records"] == 50 and doc["redis"] == "ConnectionError: refused"
    ok, doc = readiness(partitions=4, rebalancing=False, recovering=False, recovery_remaining_records=0,
                        redis_up=None)
    assert not ok and doc["missing"] == [REDIS] and doc["redis"] == "not checked yet"
    assert readiness(partitions=4, rebalancing=True, recovering=False, recovery_remaining_records=0,
                     redis_up=True)[1]["missing"] == [RECOVERY]


def test_redis_health_counts_errors_and_reconnects() -> None:
    health = RedisHealth()
    health.observe(None)
    assert health.up and health.reconnects == 0
    health.observe(ConnectionError("refused"))
    health.observe(ConnectionError("refused"))
    assert health.up is False and health.errors == 2 and health.last_error == "ConnectionError: refused"
    health.observe(None)
    health.observe(None)
    assert health.up and health.reconnects == 1 and health.last_error is None


def test_recovery_remaining_counts_unread_changelog_records() -> None:
    assert recovery_remaining({"p0": 99, "p1": 9, "p2": -1, "p3": None}, {"p0": 49, "p1": 9}) == 50
    assert recovery_remaining({"p0": 4}, {}) == 5  # nothing read yet: offsets 0..4


# -- lag ---------------------------------------------------------------------------------


def test_lag_from_highwater_and_next_offset() -> None:
    assert next_offset(41, 10) == 42 and next_offset(None, 10) == 10 and next_offset(None, None) is None
    assert partition_lag(100, 42) == 58
    assert partition_lag(100, 100) == 0 and partition_lag(100, 120) == 0
    assert partition_lag(None, 5) is None and partition_lag(7, None) is None
    assert partition_lag(0, None) == 0  # an empty partition has no lag


def test_oldest_age_per_topic() -> None:
    lags = [PartitionLag("orders", 0, 5), PartitionLag("orders", 1, 3), PartitionLag("orders", 2, 0),
            PartitionLag("logins", 0, 0), PartitionLag("tickets", 0, 4)]
    stamps = {("orders", 0): 100.0, ("orders", 1): 60.0, ("logins", 0): 1.0}
    assert oldest_ages(lags, stamps, now=160.0) == {"orders": 100.0, "logins": 0.0}  # tickets: not known yet
    lags.append(PartitionLag("logins", 1, 7))
    assert "logins" not in oldest_ages(lags, stamps, now=160.0)  # never a false 0 for a lagging topic
    assert oldest_ages([PartitionLag("orders", 0, 1)], {("orders", 0): 170.0}, now=160.0) == {"orders": 0.0}


def test_stall_watch_names_partitions_whose_committed_offset_stands_still() -> None:
    key, watch = ("orders", 0), StallWatch(after=60)
    assert watch.check([(key, 10, 50)], now=0) == [] and watch.check([(key, 10, 50)], now=59) == []
    assert watch.check([(key, 10, 50)], now=60) == [key]
    assert watch.check([(key, 10, 50)], now=61) == []  # named once per period while it stays stuck
    assert watch.check([(key, 10, 50)], now=120) == [key]
    assert watch.check([(key, 11, 50)], now=121) == [] and watch.check([(key, 11, 50)], now=180) == []  # it moved
    assert watch.check([(key, 50, 50)], now=300) == [] and watch.check([(key, 50, 50)], now=900) == []  # caught up
    assert watch.check([(key, 50, 70)], now=901) == []  # new messages: the clock starts now
    assert watch.check([(key, None, 70)], now=2000) == [] and watch.check([(key, 50, None)], now=3000) == []
    busy = StallWatch(after=60)
    busy.check([(key, 10, 50)], now=0)
    assert busy.check([(key, 10, 50)], now=100, busy=True) == []  # a rebalance: standing still is expected
    assert busy.check([(key, 10, 50)], now=101) == [] and busy.check([(key, 10, 50)], now=161) == [key]


# -- the runtime and Faust hooks count what they should ------------------------------------


class FakeSender:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.sent: list[bytes] = []

    async def send(self, *, key: bytes, value: bytes, partition: int | None = None) -> Any:
        if self.fail:
            raise TimeoutError("broker gone")
        self.sent.append(value)


class FakeView:
    def stage(self, cid: str, view: Any, spend: float) -> None:
        pass


async def test_runtime_counts_dead_letters_by_reason_and_outcomes() -> None:
    settings = Settings(partitions=1)  # type: ignore[call-arg]
    senders = {name: FakeSender() for name in ("tag_changes", "dead_letters", "rekey", "commands", "churn_alerts")}
    runtime = Runtime(settings, {}, Evaluator(load_ruleset(default_rules_dir(), facts_schema())),
                      FakeView(), Clock("wall"), senders)  # type: ignore[arg-type]
    assert await runtime.handle(Message("orders", 0, 0, b"c1", b"{not json")) == "dead_letter"
    euros = orjson.dumps({**ORDER, "currency": "EUR"})
    assert await runtime.handle(Message("orders", 0, 1, b"c1", euros)) == "dead_letter"
    assert await runtime.handle(Message("elsewhere", 0, 0, b"c1", b"{}")) == "dead_letter"
    got = samples(runtime.metrics)
    assert got[("tagger_dead_letters_total", (("reason", "not_json"),))] == 1
    assert got[("tagger_dead_letters_total", (("reason", "wrong_currency"),))] == 1
    assert got[("tagger_dead_letters_total", (("reason", "unexpected_topic"),))] == 1
    assert got[("tagger_events_total", (("outcome", "dead_letter"), ("topic", "orders")))] == 2
    assert len(senders["dead_letters"].sent) == 3


async def test_produce_errors_are_counted_at_once_and_from_faust() -> None:
    metrics = create_metrics()
    sender = CountingSender(FakeSender(fail=True), metrics)
    with pytest.raises(TimeoutError):
        await sender.send(key=b"k", value=b"v")
    await CountingSender(FakeSender(), metrics).send(key=b"k", value=b"v")
    sensor = MetricsSensor(metrics)
    sensor.on_send_error(None, ConnectionError("gone"), None)
    sensor.on_rebalance_start(None)
    got = samples(metrics)
    assert got[("tagger_kafka_produce_errors_total", (("error", "TimeoutError"),))] == 1
    assert got[("tagger_kafka_produce_errors_total", (("error", "ConnectionError"),))] == 1
    assert got[("tagger_rebalances_total", ())] == 1


class FakeApp:
    should_stop = False

    def __init__(self) -> None:
        self.futures: list[Any] = []
        self.consumer = FakeFaustConsumer({})

    def add_future(self, coro: Any) -> None:
        self.futures.append(coro)


class FakeWorkerSources:
    def __init__(self) -> None:
        self.runtime = type("R", (), {"metrics": create_metrics(), "table": {}, "partition_of": lambda self, c: 0,
                                      "last_offset": {("orders", 0): 12},
                                      "forget_offsets": lambda self, key: self.last_offset.pop(key, None)})()
        self.pings = 0
        self.probed: dict[Any, Any] = {}
        self.side_committed: dict[Any, int] = {}
        self.settings = Settings(partitions=1, stall_timeout=60)  # type: ignore[call-arg]
        self.rows: list[tuple[tuple[str, int], int | None, int | None]] = []
        self.rebalancing = False

    def commit_rows(self) -> list[tuple[tuple[str, int], int | None, int | None]]:
        return self.rows

    def busy(self) -> bool:
        return self.rebalancing

    def unknown_positions(self) -> list[tuple[str, int]]:
        return [("logins", 1)]

    async def ping_redis(self) -> None:
        self.pings += 1

    def to_probe(self) -> dict[tuple[str, int], int]:
        return {("orders", 0): 5}

    def owned(self) -> list[Any]:
        return []


class FakeProbe:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls = 0

    async def committed(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return {key: 7 for key in partitions}

    async def probe(self, wanted: Mapping[Any, int]) -> dict[Any, Any]:
        self.calls += 1
        if self.fail:
            raise RuntimeError("broker gone")
        return {key: ("probed", offset) for key, offset in wanted.items()}


async def test_monitor_does_what_is_due_and_survives_failures(caplog: pytest.LogCaptureFixture) -> None:
    from agents.observability import OpsLoop

    app, sources, probe = FakeApp(), FakeWorkerSources(), FakeProbe()
    monitor = OpsLoop(app, sources, probe)  # type: ignore[arg-type]
    monitor.start()
    monitor.start()
    assert len(app.futures) == 1  # started once, whatever the number of assignments
    app.futures[0].close()
    await monitor.tick()
    assert sources.pings == 1 and sources.probed == {("orders", 0): ("probed", 5)}
    assert sources.side_committed == {("logins", 1): 7}  # committed offsets read while Faust has none
    assert samples(sources.runtime.metrics)[("tagger_customers", ())] == 0  # tallied
    await monitor.tick()
    assert sources.pings == 1 and probe.calls == 1  # nothing due again yet
    failing = OpsLoop(app, FakeWorkerSources(), FakeProbe(fail=True))  # type: ignore[arg-type]
    await failing.tick()  # logged, not raised
    assert "observability loop failed" in caplog.text


async def test_monitor_reads_a_stalled_partition_again_then_asks_for_a_rebalance(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from faust.types import TP

    from agents import observability
    from agents.observability import OpsLoop

    app, sources = FakeApp(), FakeWorkerSources()
    tp = TP("orders", 0)
    app.consumer = FakeFaustConsumer({tp: 7}, {tp: [9]})  # offsets 7 and 8 never acked: commits wait forever
    sources.rows = [(("orders", 0), 7, 50)]
    rejoins: list[Any] = []
    monkeypatch.setattr(observability, "rejoin_group", rejoins.append)
    monitor = OpsLoop(app, sources, FakeProbe())  # type: ignore[arg-type]
    await monitor.restart_stalled(0.0)
    await monitor.restart_stalled(59.0)
    assert app.consumer.seeks == []
    await monitor.restart_stalled(60.0)
    assert app.consumer.seeks == [(tp, 7)] and app.consumer._committed_offset[tp] == 7  # FakeProbe: committed 7
    assert tp not in app.consumer._acked and ("orders", 0) not in sources.runtime.last_offset
    metrics = sources.runtime.metrics
    assert samples(metrics)[("tagger_partition_restarts_total", (("action", "seek"), ("topic", "orders")))] == 1
    assert "reading it again from the group's committed offset 7" in caplog.text
    await monitor.restart_stalled(119.0)
    assert rejoins == []
    await monitor.restart_stalled(120.0)  # still at 7 a period after the seek: the group rebalances
    assert rejoins == [app.consumer] and len(app.consumer.seeks) == 1
    assert metrics.total(metrics.partition_restarts) == 2 and "asking the group to rebalance" in caplog.text
    sources.rows = [(("orders", 0), 8, 50)]  # it moved on, then stood still again: a seek first, once more
    await monitor.restart_stalled(130.0)
    await monitor.restart_stalled(190.0)
    assert len(app.consumer.seeks) == 2 and len(rejoins) == 1
    sources.rebalancing = True
    await monitor.restart_stalled(500.0)
    assert len(app.consumer.seeks) == 2 and len(rejoins) == 1  # never while rebalancing or recovering
