"""``tagger bench``: sustained events/s of one worker on the embedded broker.

Produces N demo events first, then starts one worker and times it from its
first processed message until every message has an outcome. A first figure,
not yet the full harness (see issue 7).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click
import orjson

from stream.demo import DemoConfig, run_demo
from stream.embedded import ServiceGroup, free_port, spawn, terminate
from stream.settings import Settings
from stream.topics import ensure_all_topics

from .devmode import worker_env


def _stats(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=2) as resp:  # noqa: S310
            return dict(json.loads(resp.read()))
    except OSError:
        return None


def produce_batches(bootstrap: str, config: DemoConfig, events: int, partitions: int, size: int) -> int:
    """Produce ``events`` demo events as batch envelopes of up to ``size`` events per topic partition."""
    from stream.demo import DemoGenerator
    from stream.kafka_admin import expected_partition, make_producer

    producer = make_producer(bootstrap)
    pending: dict[tuple[str, int], list[bytes]] = {}
    batches = 0

    def send(topic: str, partition: int, values: list[bytes]) -> None:
        nonlocal batches
        batches += 1
        value = b'{"batch_id":"b%d","events":[' % batches + b",".join(values) + b"]}"
        producer.produce(topic, value, None, partition=partition)
        producer.poll(0)

    for topic, key, value in DemoGenerator(config).take(events):
        slot = (topic, expected_partition(key, partitions))
        values = pending.setdefault(slot, [])
        values.append(value)
        if len(values) >= size:
            send(*slot, values)
            pending[slot] = []
    for slot, values in pending.items():
        if values:
            send(*slot, values)
    if producer.flush(60):
        raise click.ClickException("batch envelopes not delivered")
    return events


def _done(port: int) -> int:
    """Events the worker has finished with (commands and envelope messages not counted)."""
    stats = _stats(port)
    outcomes = stats["outcomes"] if stats else {}
    return sum(n for outcome, n in outcomes.items() if outcome not in ("batch", "command"))


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return 0, b""


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def latency_buckets(metrics_text: str, output: str = "tag_change",
                    since: str = "kafka_timestamp") -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) pairs of the emit-latency histogram in a /metrics page."""
    out = []
    prefix = "tagger_emit_latency_seconds_bucket{"
    for line in metrics_text.splitlines():
        if line.startswith(prefix) and f'output="{output}"' in line and f'since="{since}"' in line:
            labels, value = line[len(prefix):].rsplit("} ", 1)
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            out.append((float("inf") if le == "+Inf" else float(le), float(value)))
    return sorted(out)


def percentile(before: list[tuple[float, float]], after: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile (0..1) of the observations made between two histogram snapshots (linear in a bucket)."""
    counts = dict(before)
    delta = [(le, n - counts.get(le, 0.0)) for le, n in after]
    total = delta[-1][1] if delta else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for le, cumulative in delta:
        if cumulative >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / max(cumulative - below, 1e-12)
        lower, below = le, cumulative
    return lower


def raw_consume_rate(bootstrap: str, topics: list[str], expected: int) -> float:
    """Messages/s of a plain aiokafka ``getmany`` loop reading ``topics`` from the start (no group)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    async def run() -> float:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            tps = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or set())]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            read, began = 0, time.monotonic()
            while read < expected and time.monotonic() - began < 120:
                batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
                read += sum(len(records) for records in batches.values())
            return read / (time.monotonic() - began)
        finally:
            await consumer.stop()

    return asyncio.run(run())


def changelog_sizes(bootstrap: str, topic: str, idle_s: float = 3.0) -> dict[bytes, int]:
    """Size of the latest record per key of a changelog topic (read until ``idle_s`` without records)."""
    from confluent_kafka import Consumer, TopicPartition

    from stream.kafka_admin import client_config

    consumer = Consumer({**client_config(bootstrap), "group.id": "tagger-bench-sizes", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=20).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        latest: dict[bytes, int] = {}
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle_s:
            batch = consumer.consume(10_000, timeout=0.5)
            if batch:
                quiet_since = time.monotonic()
            for msg in batch:
                key, value = msg.key(), msg.value()
                if msg.error() is not None or key is None:
                    continue
                if value is None:
                    latest.pop(key, None)  # a tombstone (erasure)
                else:
                    latest[key] = len(value)
        return latest
    finally:
        consumer.close()


def run_bench(events: int, customers: int, partitions: int, batch: int = 0,
              latency_seconds: float = 10.0) -> dict[str, Any]:
    """The whole benchmark on embedded services; returns its figures (see ``tagger bench --help``)."""
    import redis as redis_sync

    workdir = Path(tempfile.mkdtemp(prefix="tagger-bench-"))
    result: dict[str, Any] = {"events": events, "customers": customers, "partitions": partitions, "batch": batch}
    with ServiceGroup() as services:
        settings = Settings(kafka_bootstrap_servers=services.bootstrap, redis_url=services.redis_url,
                            partitions=partitions)  # type: ignore[call-arg]
        ensure_all_topics(settings)
        config = DemoConfig(customers=customers, rate=0, start_ms=int(time.time() * 1000) - 86_400_000 * 300,
                            time_step_ms=60_000)
        started = time.monotonic()
        if batch > 0:
            produced = produce_batches(services.bootstrap, config, events, partitions, batch)
        else:
            produced = asyncio.run(run_demo(services.bootstrap, config, limit=events))
        result["produce_events_per_s"] = produced / (time.monotonic() - started)
        sources = list(settings.input_topics)
        messages = produced if batch <= 0 else -(-produced // batch)
        result["raw_aiokafka_messages_per_s"] = raw_consume_rate(services.bootstrap, sources, messages)
        port = free_port()
        env = worker_env(services.bootstrap, services.redis_url, port, workdir / "data", embedded=True)
        env["TAGGER_PARTITIONS"] = str(partitions)
        proc = spawn([sys.executable, "-m", "agents", "worker"], env=env, log_path=workdir / "worker.log")
        try:
            first = last = None
            done = 0
            while done < produced:  # 1. sustained throughput on the backlog, until lag is 0
                done, now = _done(port), time.monotonic()
                if done and first is None:
                    first = (now, done)
                last = (now, done)
                if proc.poll() is not None:
                    raise click.ClickException(f"worker exited; see {workdir / 'worker.log'}")
                time.sleep(0.25)
            assert first is not None and last is not None
            seconds = last[0] - first[0]
            rate = (last[1] - first[1]) / max(seconds, 1e-9)
            raw = result["raw_aiokafka_messages_per_s"] * (batch if batch > 0 else 1)
            result.update(worker_seconds=seconds, worker_events_per_s=rate, tagger_vs_raw_aiokafka=rate / raw)
            # 2. latency from the producer's timestamp to the tag change, single events at half the measured
            # capacity (after a batch run, at most 200/s: single events cost far more than batched ones)
            offered = max(1.0, rate / 2 if batch <= 0 else min(rate / 2, 200.0))
            before = latency_buckets(_get(port, "/metrics")[1].decode())
            live = DemoConfig(customers=customers, rate=offered, seed=99)
            extra = asyncio.run(run_demo(services.bootstrap, live, limit=int(offered * latency_seconds)))
            deadline = time.monotonic() + 120
            while _done(port) < produced + extra and time.monotonic() < deadline:
                time.sleep(0.25)
            after = latency_buckets(_get(port, "/metrics")[1].decode())
            result["latency_offered_events_per_s"] = offered
            for q in (0.5, 0.95, 0.99):
                result[f"latency_p{round(q * 100)}_s"] = percentile(before, after, q)
            # 3. memory: worker RSS, state bytes per customer (latest changelog record per key), Redis
            result["worker_rss_mb"] = _rss_mb(proc.pid)
            latest = changelog_sizes(services.bootstrap, f"{settings.app_id}-customers-changelog")
            result["state_bytes_per_customer"] = sum(latest.values()) / max(len(latest), 1)
            result["customers_in_state"] = len(latest)
            info = redis_sync.Redis.from_url(services.redis_url).info("memory")
            result["redis_bytes_per_customer"] = info["used_memory"] / max(len(latest), 1)
            # 4. recovery: stop the worker, start another on the same (memory) store: time to ready
            terminate(proc, grace=15.0)
            began = time.monotonic()
            proc = spawn([sys.executable, "-m", "agents", "worker"], env=env, log_path=workdir / "worker-2.log")
            while _get(port, "/readyz")[0] != 200 and time.monotonic() - began < 300:
                time.sleep(0.25)
            result["recovery_to_ready_s"] = time.monotonic() - began
        finally:
            terminate(proc, grace=15.0)
    return result


def render_table(result: dict[str, Any]) -> str:
    """The figures as a short two-column table."""
    def show(value: Any) -> str:
        return f"{value:,.3f}" if isinstance(value, float) and value < 10 else (
            f"{value:,.0f}" if isinstance(value, float) else str(value))
    width = max(len(k) for k in result)
    return "\n".join(f"{key:<{width}}  {show(value)}" for key, value in result.items())


class _Null:
    """Sender and Redis view that only count (the sweep benchmark measures CPU, not I/O)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.staged = 0

    async def send(self, *, key: bytes, value: bytes, partition: int | None = None) -> None:
        if key in (b"sweep",):
            self.sent.append(value)

    def stage(self, cid: str, view_json: bytes, spend: float) -> None:
        self.staged += 1

    async def flush(self) -> int:
        return 0


def _bench_states(customers: int, orders_each: int, seed: int, start: int) -> dict[str, Any]:
    """Customers with paid orders and logins spread over 300 days (random phases)."""
    import random

    from stream.events import parse_event
    from stream.state import DAY_MS, CustomerState

    rng = random.Random(seed)
    table: dict[str, Any] = {}
    for c in range(customers):
        state = CustomerState()
        for i in range(orders_each):
            raw = orjson.dumps({"event_id": f"{c}-{i}", "customer_id": f"c{c}", "order_id": f"o{i}",
                                "ts": start + rng.randrange(300 * DAY_MS), "amount": round(rng.uniform(5, 500), 2)})
            state.apply(parse_event("order", raw, currency="USD", max_bytes=1 << 20), "orders:0", i, f"o:{c}-{i}")
            raw = orjson.dumps({"event_id": f"{c}-l{i}", "customer_id": f"c{c}",
                                "ts": start + rng.randrange(300 * DAY_MS)})
            state.apply(parse_event("login", raw, currency="USD", max_bytes=1 << 20), "logins:0", i, f"l:{c}-{i}")
        table[f"c{c}"] = state
    return table


def sweep_cost(customers: int, orders_each: int = 8, seed: int = 1, hours: float = 24.0,
               interval_s: float = 60.0) -> dict[str, float]:
    """CPU cost of incremental sweeps: build the due index, then sweep every ``interval_s`` of stream
    time for ``hours``, through the real :class:`Runtime` (broker and Redis replaced by counters)."""
    import asyncio

    from rules import default_rules_dir, load_ruleset
    from stream.clock import Clock
    from stream.settings import Settings
    from stream.state import DAY_MS

    from .evaluate import Cutoffs, Evaluator, facts_schema
    from .runtime import Runtime

    start = 1_767_225_600_000
    table = _bench_states(customers, orders_each, seed, start)
    clock = Clock("stream")
    clock.observe(start + 301 * DAY_MS)
    null: Any = _Null()
    settings = Settings(partitions=1, sweep_chunk=2000, clock="stream")  # type: ignore[call-arg]
    runtime = Runtime(settings, table, Evaluator(load_ruleset(default_rules_dir(), facts_schema())),
                      null, clock, {k: null for k in ("tag_changes", "dead_letters", "rekey", "commands",
                                                      "churn_alerts")})  # type: ignore[arg-type]
    runtime.cutoffs = Cutoffs(a_cut=4000.0, b_cut=2500.0, quantiles=tuple(float(q) * 50 for q in range(101)))

    async def sweep() -> tuple[float, float, int]:
        """One whole sweep; (seconds, longest chunk in seconds, customers evaluated)."""
        staged, longest, began = null.staged, 0.0, time.perf_counter()
        cmd = b'{"cmd":"sweep"}'
        while True:
            t0 = time.perf_counter()
            await runtime.command(0, orjson.loads(cmd))
            longest = max(longest, time.perf_counter() - t0)
            if not null.sent:
                return time.perf_counter() - began, longest, null.staged - staged
            cmd = null.sent.pop()

    async def run() -> dict[str, float]:
        build_s, _, first_n = await sweep()  # builds the index, then evaluates everyone (never evaluated)
        steps = int(hours * 3600 / interval_s)
        total_s = longest_chunk = longest_sweep = 0.0
        evaluated = most = 0
        for _ in range(steps):
            clock.observe(clock.now() + int(interval_s * 1000))
            seconds, chunk_s, n = await sweep()
            total_s += seconds
            longest_sweep, longest_chunk = max(longest_sweep, seconds), max(longest_chunk, chunk_s)
            evaluated, most = evaluated + n, max(most, n)
        per_eval = total_s / max(evaluated, 1)
        nonlocal runtime
        runtime = Runtime(settings, table, runtime.evaluator, null, clock, runtime.senders)  # a restart
        restart_s, _, restart_n = await sweep()  # rebuilds the index from the table; nothing is overdue
        return {
            "customers": customers, "first_sweep_seconds": build_s, "first_sweep_evaluated": first_n,
            "sweeps": steps, "stream_hours": hours,
            "evaluated_per_customer_per_day": evaluated / customers * 24 / hours,
            "us_per_evaluation": per_eval * 1e6,
            "cpu_seconds_per_day_per_million": total_s / customers * 1e6 * 24 / hours,
            "longest_sweep_ms": longest_sweep * 1e3, "most_customers_in_one_sweep": most,
            "longest_chunk_ms": longest_chunk * 1e3,
            "first_sweep_seconds_per_million": build_s / customers * 1e6,
            "restart_sweep_seconds_per_million": restart_s / customers * 1e6, "restart_evaluated": restart_n,
        }

    return asyncio.run(run())
