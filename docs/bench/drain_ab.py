"""Alternating drains of two checkouts' tagger and the do-nothing agent, with every process's CPU.

Starts the embedded broker and Redis, makes the 300k-event backlog over 20,000 customers of
``tagger bench`` (single events, or envelopes of BATCH events as with ``--batch``), then REPEATS
times: the do-nothing agent, then the tagger of OTHER (a checkout of another commit) and of this
checkout, in alternating order, each WORKERS workers on their own topics (as ``tagger bench``
does). Prints each drain's rate (the do-nothing agent's in messages/s), the CPU (% of one core)
of the broker, Redis, this process (it produces the backlog) and each worker during the drain,
and the records each tagger group wrote to its changelog and outputs.

    .venv/bin/python docs/bench/drain_ab.py WORKERS REPEATS OTHER [BATCH]

``git worktree add /tmp/old <rev>`` makes OTHER; both run with this checkout's ``.venv/bin/python``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from agents.bench import workers as bench_workers
from agents.bench.harness import CpuMeter, DemoConfig, Run, ServiceGroup, backlog
from stream.devtools.embedded import spawn
from stream.kafka.kafka_admin import client_config

EVENTS, CUSTOMERS, PARTITIONS, STEP_MS = 300_000, 20_000, 8, 60_000
OUTPUTS = ("customers-changelog", "tag-changes", "churn-alerts", "dead-letters")


def records_written(bootstrap: str, group: bench_workers.Group) -> dict[str, int]:
    """Records in each of the group's output topics (sum of the partitions' highwaters)."""
    consumer = Consumer({**client_config(bootstrap), "group.id": "drain-ab"})
    try:
        topics = consumer.list_topics(timeout=10).topics
        names = {out: f"{group.app_id}-{out}" if out == "customers-changelog" else group.topic(out) for out in OUTPUTS}
        return {out: sum(consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1]
                         for p in topics[name].partitions) for out, name in names.items() if name in topics}
    finally:
        consumer.close()


def drain(run: Run, name: str, command: str, workers: int) -> float:
    group = run.group(name, command, workers)
    try:
        bench_workers.wait_ready(group)
        broker, redis = run.services.broker.pid, run.services.redis.pid
        assert broker is not None and redis is not None  # both run for the whole script
        pids = {"broker": broker, "redis": redis, "bench": os.getpid(),
                **{f"worker{i}": proc.pid for i, proc in enumerate(group.procs)}}
        meter, began = CpuMeter(pids), time.monotonic()
        bench_workers.produce(run.services.bootstrap, run.messages, group)
        expected = EVENTS if command == "worker" else len(run.messages)  # the do-nothing agent counts messages
        rate = bench_workers.drain_rate(group, expected, began)
        used, seconds = meter.read()
        cpu = {k: round(100 * s / seconds) for k, s in used.items()}
        written = records_written(run.services.bootstrap, group) if command == "worker" else {}
        print(f"{name:8s} {rate:9,.0f}/s  cpu% {cpu}  {written}", flush=True)
        return rate
    finally:
        bench_workers.stop_group(group)


def groups_named_other_run(other: Path) -> None:
    """From now on, groups whose name starts with "other" run the code of the checkout ``other``."""
    def spawn_worker(group: bench_workers.Group, i: int) -> object:
        env = dict(group.env, TAGGER_WEB_PORT=str(group.ports[i]),
                   TAGGER_DATADIR=str(group.workdir / f"{group.name}-{i}-data"))
        return spawn([sys.executable, "-m", "agents", group.command], env=env, log_path=group.logs[i],
                     cwd=other if group.name.startswith("other") else None)

    bench_workers.spawn_worker = spawn_worker  # type: ignore[assignment]


def bench_run(services: ServiceGroup, batch: int) -> Run:
    """The backlog of ``tagger bench --events 300000 --customers 20000 [--batch BATCH]``."""
    config = DemoConfig(customers=CUSTOMERS, rate=0, start_ms=int(time.time() * 1000) - EVENTS * STEP_MS,
                        time_step_ms=STEP_MS)
    messages = backlog(config, EVENTS, PARTITIONS, batch)
    return Run(services, Path(tempfile.mkdtemp(prefix="ab-")), EVENTS, CUSTOMERS, PARTITIONS, batch, messages)


def main(workers: int, repeats: int, other: Path, batch: int) -> None:
    groups_named_other_run(other)
    with ServiceGroup() as services:
        run = bench_run(services, batch)
        for i in range(repeats):
            noop = drain(run, f"noop{i}", "baseline-worker", workers) * max(batch, 1)  # events/s
            rates = {k: drain(run, f"{k}{i}", "worker", workers)
                     for k in (("other", "this") if i % 2 == 0 else ("this", "other"))}
            print(f"÷ do-nothing agent: other {rates['other'] / noop:.3f}, this {rates['this'] / noop:.3f}; "
                  f"this ÷ other {rates['this'] / rates['other']:.3f}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 0)
