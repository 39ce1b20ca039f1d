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


def run_bench(events: int, customers: int, partitions: int) -> dict[str, float]:
    """Run the measurement; return its figures."""
    workdir = Path(tempfile.mkdtemp(prefix="tagger-bench-"))
    with ServiceGroup() as services:
        settings = Settings(kafka_bootstrap_servers=services.bootstrap, redis_url=services.redis_url,
                            partitions=partitions)  # type: ignore[call-arg]
        ensure_all_topics(settings)
        config = DemoConfig(customers=customers, rate=0, start_ms=int(time.time() * 1000) - 86_400_000 * 300,
                            time_step_ms=60_000)
        started = time.monotonic()
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
                done = sum(stats["outcomes"].values()) if stats else 0
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
    return {"events": produced, "customers": customers, "partitions": partitions,
            "produce_events_per_s": produced / produce_s,
            "worker_seconds": seconds, "worker_events_per_s": (last[1] - first[1]) / max(seconds, 1e-9)}


def sweep_cost(customers: int, orders_each: int = 8, seed: int = 1) -> dict[str, float]:
    """Pure CPU cost of re-evaluating one customer in a sweep (evaluate + churn + view JSON)."""
    import random

    import orjson

    from rules import default_rules_dir, load_ruleset
    from stream.events import parse_event
    from stream.state import DAY_MS, CustomerState

    from .evaluate import Cutoffs, Evaluator, facts_schema

    evaluator = Evaluator(load_ruleset(default_rules_dir(), facts_schema()))
    rng = random.Random(seed)
    start = 1_767_225_600_000
    states = []
    for c in range(customers):
        state = CustomerState()
        for i in range(orders_each):
            raw = orjson.dumps({"event_id": f"{c}-{i}", "customer_id": f"c{c}", "order_id": f"o{i}",
                                "ts": start + rng.randrange(300) * DAY_MS, "amount": round(rng.uniform(5, 500), 2)})
            state.apply(parse_event("order", raw, currency="USD", max_bytes=1 << 20), "orders:0", i, f"o:{c}-{i}")
        states.append(state)
    cutoffs = Cutoffs(a_cut=4000.0, b_cut=2500.0, quantiles=tuple(sorted(rng.uniform(0, 5000) for _ in range(101))))
    trigger = {"kind": "timer", "topic": None, "event_id": None}
    now = start + 301 * DAY_MS
    began = time.perf_counter()
    for i, state in enumerate(states):
        cid = f"c{i}"
        facts, _ = evaluator.evaluate(cid, state, now, cutoffs, trigger)
        evaluator.churn_alert(cid, state, facts, now, trigger)
        evaluator.view_json(cid, state, facts)
    per_customer = (time.perf_counter() - began) / customers
    return {"customers": customers, "us_per_customer": per_customer * 1e6,
            "seconds_per_million": per_customer * 1e6}
