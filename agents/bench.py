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


def run_bench(events: int, customers: int, partitions: int, batch: int = 0) -> dict[str, float]:
    """Run the measurement; return its figures. ``batch`` > 0: produce batch envelopes of that size."""
    workdir = Path(tempfile.mkdtemp(prefix="tagger-bench-"))
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
        produce_s = time.monotonic() - started
        port = free_port()
        env = worker_env(services.bootstrap, services.redis_url, port, workdir / "data", embedded=True)
        env["TAGGER_PARTITIONS"] = str(partitions)
        proc = spawn([sys.executable, "-m", "agents", "worker"], env=env, log_path=workdir / "worker.log")
        try:
            first = last = None
            done = 0
            while done < produced:
                stats = _stats(port)
                outcomes = stats["outcomes"] if stats else {}
                done = sum(n for outcome, n in outcomes.items() if outcome not in ("batch", "command"))
                now = time.monotonic()
                if done and first is None:
                    first = (now, done)
                last = (now, done)
                if proc.poll() is not None:
                    raise click.ClickException(f"worker exited; see {workdir / 'worker.log'}")
                time.sleep(0.25)
        finally:
            terminate(proc, grace=15.0)
    assert first is not None and last is not None
    seconds = last[0] - first[0]
    return {"events": produced, "customers": customers, "partitions": partitions, "batch": batch,
            "produce_events_per_s": produced / produce_s,
            "worker_seconds": seconds, "worker_events_per_s": (last[1] - first[1]) / max(seconds, 1e-9)}


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
