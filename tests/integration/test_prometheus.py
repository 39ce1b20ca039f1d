"""Real Prometheus scraping real workers; /readyz through a changelog recovery and a Redis outage.

Needs the Debian ``prometheus`` package (prometheus + promtool); skipped with the
reason if it is missing (``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agents.engine.evaluate import facts_schema
from rules import default_rules_dir, load_ruleset
from stream.devtools.embedded import RedisServer, free_port, spawn, terminate
from stream.domain.state import CustomerState
from stream.kafka.kafka_admin import consume_all, expected_partition, make_producer
from tests.deploy_checks import (
    PROMETHEUS_DIR,
    PROMETHEUS_OWN,
    alert_rules,
    as_prometheus_query,
    binary,
    dashboard_exprs,
    exported_names,
    promql_metric_names,
    promtool,
)

from .conftest import Namespace, Worker, wait_for
from .test_pipeline import T0, login, order

pytestmark = pytest.mark.integration


def scrape(worker: Worker) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=5) as resp:  # noqa: S310
        return str(resp.read().decode())


def values(exposition: str) -> dict[str, float]:
    """``name{a="x",...}`` (labels sorted) -> value, from a /metrics text."""
    out = {}
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


class Prometheus:
    """A prometheus server on a free port with our scrape config and alert rules, scraping every second."""

    def __init__(self, tmp: Path, targets: list[str]) -> None:
        self.port = free_port()
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
        for job in config["scrape_configs"]:
            job.pop("dns_sd_configs", None)
            job["static_configs"] = [{"targets": targets if job["job_name"] == "tagger"
                                      else [f"127.0.0.1:{self.port}"]}]
        self.config = tmp / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = tmp / "prometheus.log"
        self.proc = spawn([binary("prometheus"), f"--config.file={self.config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                           f"--web.listen-address=127.0.0.1:{self.port}"], log_path=self.log)
        wait_for(self._ready, 30, "prometheus to be ready")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as resp:  # noqa: S310
                return bool(resp.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310
            doc = json.loads(resp.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        return list(self.api("query", query=expr)["result"])

    def scalar(self, expr: str) -> float | None:
        """The value of a one-element result (None when empty)."""
        result = self.query(expr)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        terminate(self.proc, grace=10)


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Any:
    binary("prometheus")
    servers: list[Prometheus] = []

    def start(targets: list[str]) -> Prometheus:
        servers.append(Prometheus(tmp_path, targets))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def test_prometheus_scrapes_two_workers(namespace: Namespace, prometheus_for: Any) -> None:
    ns = namespace
    workers = [ns.worker(), ns.worker()]
    wait_for(lambda: all(w.get("/readyz")[0] == 200 for w in workers)
             and sum(w.get("/readyz")[1]["partitions_assigned"] for w in workers) == 4, 90,
             "both workers ready with the 4 partitions split between them")
    prom = prometheus_for([f"127.0.0.1:{w.web_port}" for w in workers])
    wait_for(lambda: prom.scalar('count(count_over_time(up{job="tagger"}[1m]) >= 2)') == 2, 30,
             "two scrapes of each worker before any event, so rates start from the zeros")

    customers = [f"p-{i:02d}" for i in range(40)]
    for n in range(200):
        ns.produce("order", order(customers[n % 40], f"o{n}", n % 30, 20 + 37 * (n % 7)))
    for n in range(20):
        ns.produce("login", login(customers[n], f"l{n}", 29))
    ns.produce("order", b"{not json", key="p-00")
    ns.produce("order", order("p-00", "eur", 29, 5, currency="EUR"))
    wait_for(lambda: all((v := ns.view(c)) is not None and v["aggregates"]["orders_total"] == 5 for c in customers),
             60, "every customer's view with its 5 orders")

    # promtool lints what the workers really serve; the dashboard and rules use only names they export
    exported = set(PROMETHEUS_OWN)
    for worker in workers:
        text = scrape(worker)
        result = promtool("check", "metrics", stdin=text.encode())
        assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr
        exported |= exported_names(text)
    for expr in dashboard_exprs():
        assert promql_metric_names(expr) <= exported, expr
    recorded = {r["record"] for r in alert_rules() if "record" in r}
    for rule in alert_rules():
        assert promql_metric_names(rule["expr"]) <= exported | recorded, rule["expr"]

    # Prometheus has the throughput and latency series, and they agree with what happened
    wait_for(lambda: prom.scalar('sum(tagger_events_total{outcome="ok"})') == 220, 30, "220 ok events in Prometheus")
    throughput_query = as_prometheus_query('sum(rate(tagger_events_total{outcome!="command"}[$__rate_interval]))')
    throughput = wait_for(lambda: prom.scalar(throughput_query), 30, "a throughput rate (two scrapes apart)")
    assert throughput > 0
    p99_query = ('histogram_quantile(0.99, sum by (le) '
                 '(rate(tagger_emit_latency_seconds_bucket{since="kafka_timestamp"}[1m])))')
    p99 = wait_for(lambda: prom.scalar(p99_query), 30, "a p99 latency")
    assert 0 < p99 <= 60 and math.isfinite(p99)
    changes = consume_all(ns.services.bootstrap, ns.settings.tag_changes_topic, timeout=10)
    wait_for(lambda: prom.scalar('sum(tagger_emit_latency_seconds_count{output="tag_change",since="arrival"})')
             == len(changes), 20, f"one latency observation per tag change ({len(changes)})")
    assert prom.scalar('sum(tagger_dead_letters_total{reason="not_json"})') == 1
    assert prom.scalar('sum(tagger_dead_letters_total{reason="wrong_currency"})') == 1

    # lag: every partition of every source topic reported by exactly one worker, all caught up
    sources = len(ns.settings.keyed_topics) + 2  # inputs, rekey and commands
    wait_for(lambda: prom.scalar("count(tagger_consumer_lag)") == 4 * sources
             and prom.scalar("sum(tagger_consumer_lag)") == 0, 30, f"lag of all {4 * sources} partitions, 0")
    assert prom.scalar('count(up{job="tagger"} == 1)') == 2 and prom.scalar("sum(tagger_ready)") == 2
    version = load_ruleset(default_rules_dir(), facts_schema()).version
    assert prom.scalar(f'count(tagger_ruleset_info{{version="{version}"}})') == 2

    # per-worker customer gauges summed in PromQL equal the truth in Redis, read again at each try: the
    # tier cut-offs (read every second) may still move customers after the views above were read
    def truth() -> tuple[int, Counter[str], Counter[str]]:
        now = {c: ns.view(c) or {"tier": None, "tags": []} for c in customers}
        return (len(customers), Counter(v["tier"] for v in now.values()),
                Counter(t for v in now.values() for t in v["tags"]))

    def summed(metric: str, label: str) -> dict[str, float]:
        return {r["metric"][label]: float(r["value"][1]) for r in prom.query(f"sum by ({label}) ({metric})")}
    def gauges() -> tuple[float | None, dict[str, float], dict[str, float]]:
        return (prom.scalar("sum(tagger_customers)"), summed("tagger_customers_by_tier", "tier"),
                summed("tagger_customers_by_tag", "tag"))
    seen: list[Any] = []
    wait_for(lambda: seen.append((gauges(), truth())) or seen[-1][0] == seen[-1][1], 40,
             lambda: f"customer gauges summed over workers = Redis: {seen[-1][1]}; Prometheus: {seen[-1][0]}")

    print("prometheus:", {"ok events": 220, "throughput/s": throughput, "p99 event->tag change s": p99,
                          "tag changes": len(changes), "tiers": summed("tagger_customers_by_tier", "tier")})

    # every dashboard query runs; the panels the issue asks for have data
    for expr in dashboard_exprs():
        prom.query(as_prometheus_query(expr))  # raises unless status is success
    for needed in ('sum by (topic) (rate(tagger_events_total{outcome!="command"}[$__rate_interval]))',
                   "sum by (topic) (tagger_consumer_lag)", "sum by (tier) (tagger_customers_by_tier)",
                   "sum by (tag, direction) (rate(tagger_tag_changes_total[$__rate_interval]))",
                   "sum by (reason) (rate(tagger_dead_letters_total[$__rate_interval]))"):
        assert needed in dashboard_exprs(), needed
        assert prom.query(as_prometheus_query(needed)), needed
    assert any("histogram_quantile(0.99" in e and "tagger_emit_latency_seconds_bucket" in e for e in dashboard_exprs())

    # the alert rules load and evaluate cleanly; nothing that should be quiet fires
    def rules_ok() -> bool:
        groups = prom.api("rules")["groups"]
        return len(groups) == 2 and all(r["health"] == "ok" for g in groups for r in g["rules"])
    wait_for(rules_ok, 20, "every rule evaluated without error")
    alerts = {a["labels"]["alertname"] for a in prom.api("alerts")["alerts"]}
    assert not alerts & {"TaggerWorkerNotReady", "TaggerWorkerDown", "TaggerRedisUnreachable",
                         "TaggerDeadLetterRateHigh", "TaggerConsumerLagGrowing"}, alerts


def test_readyz_through_recovery_and_a_redis_outage(namespace: Namespace, tmp_path: Path) -> None:
    ns = namespace
    redis = RedisServer(workdir=tmp_path / "redis").start()  # our own, so we can take it away
    try:
        _recovery_and_redis(ns, tmp_path, redis)
    finally:
        redis.stop()


def _start(ns: Namespace, tmp: Path, redis_url: str, name: str) -> Worker:
    port = free_port()
    env = dict(ns.env, REDIS_URL=redis_url, TAGGER_WEB_PORT=str(port), TAGGER_DATADIR=str(tmp / f"data-{name}"))
    worker = Worker(env, tmp / f"worker-{name}.log", port)
    ns.workers.append(worker)
    return worker.start()


def _recovery_and_redis(ns: Namespace, tmp: Path, redis: RedisServer) -> None:
    first = _start(ns, tmp, redis.url, "first")
    wait_for(lambda: first.get("/readyz")[0] == 200, 60, "first worker ready")
    for n in range(40):
        ns.produce("order", order(f"r-{n:02d}", f"r{n}", 1, 50))
    wait_for(lambda: first.get("/stats")[1]["outcomes"].get("ok") == 40, 60, "40 events processed")
    time.sleep(2)  # let the worker commit its offsets
    first.stop()

    # while it is down: a big changelog to recover (written straight to the changelog topic) and a backlog
    state = CustomerState()
    state.view = {"tags": ["restored"], "tier": "D", "churn": {"level": "none"}}
    value, restored = state.to_bytes(), 40_000
    producer = make_producer(ns.services.bootstrap)
    changelog = f"{ns.settings.app_id}-customers-changelog"
    for n in range(restored):
        key = f"x-{n}".encode()
        producer.produce(changelog, key=key, value=value, partition=expected_partition(key, ns.settings.partitions))
        if n % 10_000 == 0:
            producer.poll(0)
    now_ms = int(time.time() * 1000)
    for n in range(3000):
        cid = f"r-{n % 40:02d}"
        event = {"event_id": f"b{n}", "customer_id": cid, "ts": T0 + 2 * 86_400_000 + n, "order_id": f"ob{n}",
                 "amount": 10}
        producer.produce(ns.settings.orders_topic, key=cid, value=orjson.dumps(event), timestamp=now_ms)
    producer.flush(60)

    second = _start(ns, tmp, redis.url, "second")
    seen: dict[str, Any] = {"recovering_503": None, "metrics_recovering": None, "max_lag": 0.0, "max_age": 0.0,
                            "lag_while_recovering": 0.0}

    def watch() -> bool:
        status, doc = second.get("/readyz")
        m = values(scrape(second))
        if status == 503 and "recovery finished" in doc["missing"] and doc["recovery_remaining_records"] > 0:
            seen["recovering_503"] = seen["recovering_503"] or doc
        if m.get("tagger_recovery_in_progress") == 1 and m.get("tagger_recovery_remaining_records", 0) > 0:
            snapshot = {k: v for k, v in m.items() if k.startswith(("tagger_recovery", "tagger_ready"))}
            seen["metrics_recovering"] = seen["metrics_recovering"] or snapshot
        lag = sum(v for k, v in m.items() if k.startswith("tagger_consumer_lag{") and ns.settings.orders_topic in k)
        seen["max_lag"] = max(seen["max_lag"], lag)
        if m.get("tagger_recovery_in_progress") == 1:  # the backlog is visible before processing starts
            seen["lag_while_recovering"] = max(seen["lag_while_recovering"], lag)
        seen["max_age"] = max([seen["max_age"], *(v for k, v in m.items()
                                                  if k.startswith("tagger_oldest_unprocessed_event_age_seconds{"))])
        lags = [v for k, v in m.items() if k.startswith("tagger_consumer_lag{")]
        return status == 200 and m.get("tagger_ready") == 1 and bool(lags) and sum(lags) == 0

    wait_for(watch, 120, "second worker to recover, catch up and be ready", interval=0.1)
    print("observed while the second worker started:", seen)  # shown with pytest -s
    assert seen["recovering_503"] is not None, "never saw /readyz say 'recovery finished' is missing"
    assert seen["recovering_503"]["missing"] == ["recovery finished"], seen["recovering_503"]
    assert seen["metrics_recovering"] is not None and seen["metrics_recovering"]["tagger_ready"] == 0, seen
    assert seen["max_lag"] > 0 and seen["max_age"] > 0, seen  # the backlog showed as lag and as age
    assert seen["lag_while_recovering"] > 0, seen
    wait_for(lambda: values(scrape(second)).get("tagger_customers") == restored + 40, 30,
             "recovered customers counted")
    assert values(scrape(second))['tagger_customers_by_tag{tag="restored"}'] == restored

    # Redis goes away: not ready, saying why; Redis comes back: ready again, one reconnect counted
    redis.stop()
    status, doc = second.get("/readyz")
    assert status == 503 and doc["missing"] == ["redis reachable"], doc
    wait_for(lambda: values(scrape(second)).get("tagger_redis_up") == 0, 10, "tagger_redis_up 0")
    redis.start()
    wait_for(lambda: second.get("/readyz")[0] == 200, 30, "ready again once Redis is back")
    m = wait_for(lambda: (m := values(scrape(second))).get("tagger_redis_up") == 1 and m, 10, "tagger_redis_up 1")
    assert m["tagger_redis_reconnects_total"] >= 1 and m["tagger_redis_errors_total"] >= 1, m
