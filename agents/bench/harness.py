"""``tagger bench``: the benchmark harness (issues 7 and 27) on a local broker and Redis.

The broker (``--broker``): one real Apache Kafka node (``stream.devtools.kafka_local``, KRaft, on this
machine) when Java and Maven are here, else the embedded Tansu; ``broker`` in the JSON says which.
Workers get Tansu's settings (fast joins, the highwater shim) only on Tansu.

Every measured *group* (``agents/bench/workers.py``) is its own consumer group with its
own app id, input/output topics and Redis prefix, and reads the same backlog (``--events``
demo events over ``--customers``, or batch envelopes of ``--batch``) from its start. The
phases, in order:

1. **Throughput.** For each group: start its workers on *empty* topics, wait until every
   worker answers /readyz 200 in two polls a second apart (all joined, partitions
   assigned, no rebalance in between), only then produce the backlog (well under a
   second) and time from the start of production until every event is finished (the sum
   over the workers' /stats outcomes, without ``batch`` and ``command``, less the events
   whose evaluation still waits: a drain is a backlog, so evaluation is coalesced,
   ``TAGGER_COALESCE_*``; the time includes the last evaluation). Starting on empty topics
   is what makes N workers measurable on Tansu: a join takes half the 6 s session
   timeout, and a worker that started draining alone would be interrupted by a rebalance
   inside the timed window. Groups: one tagger worker evaluating every event on its own
   (``tagger-each-1``), one fed through Faust's stream (``tagger-stream-1``); then the
   do-nothing Faust agent (``baseline-worker``) and the tagger with ``--workers`` N workers,
   then both with 1 if N > 1, each do-nothing group right before its tagger group (the
   machine's speed drifts over a run: adjacent groups make the ratios fairer).
   A raw aiokafka ``getmany`` loop reads the first do-nothing group's input topics (no group).
   Between the one-worker do-nothing and tagger groups, on Kafka only, the **Quix Streams peer**
   (``agents/bench/quix.py``, one process, group ``quix-1``): the same backlog through net spend
   over 30/90/365 days, paid-order counts and the ``big_spender`` tag on change, with Quix's own
   RocksDB state and changelog; then, still running, 1,000 events/s of demo traffic with 20
   priority events a second among it (half of them big orders of new customers: each one a
   big_spender change, so there are changes to time) for ``--latency-seconds``, latency from its
   own record (input's Kafka timestamp → tag change handed to its producer). On Tansu it does not
   run (its keys are null): Quix 3.28 derives its changelog topic's config from the input topics'
   ``retention.ms`` (DescribeConfigs), which Tansu does not return, and with that patched in, the
   peer's readiness check (DescribeGroups) never saw a stable group there within 180 s.
   Each drain also measures its workers' CPU (/proc) per event of the backlog.
   Right before each do-nothing group (no worker running), :func:`machine_scaling` measures
   what two busy processes get done on this machine against one.
2. **Latency**, on the one-worker tagger group, each phase once the worker has settled (no
   evaluation or Redis view waiting, then its commit interval and a second: the changelog
   write of what a drain left dirty lands before the phase), each ``--latency-seconds`` long:

   a. single demo events at a fixed 1,000 events/s, if the reference capacity reaches it
      (else null); p50/p95/p99 of the worker's histogram (Kafka timestamp → tag change
      sent) between before and after;
   b. the **immediate path**: normal traffic at the highest ``--rates`` fraction of the
      reference capacity plus 20 priority events/s (big orders of 20,000, complaint
      tickets; new customers, so each yields a tag change), measured end to end from the
      outside (``agents/bench/latency.py``);
   c. single demo events at each ``--rates`` fraction of the reference capacity, as in a.

   On Kafka the broker is a JVM, whose CPU the ``broker_cpu_percent`` keys report in the same
   way; the Tansu-specific growth below does not apply (Kafka finds a fetch's position by its
   offset index), so on Kafka those figures are just the broker's share, not a trend.

   The reference capacity is the rate of one worker that evaluates every event on its own
   (a drain with coalescing off, group ``tagger-each-1``): a worker that keeps up never
   coalesces, so the coalesced drain rate is a catch-up rate it only reaches while
   behind. With ``--batch`` that rate is of envelopes, and single events cost more, so it
   is capped at ``--latency-capacity``.
   Tansu's CPU per fetch grows with the number of record batches in each partition it
   reads (it lists them all: 1-2 µs each), and these phases add one small batch every few
   events (at a steady 920 msg/s read by a plain aiokafka consumer: 21% of a core in the
   first 11 s, 94% in the fifth; flat 6-7% with no consumer), so every phase runs on a
   slower broker than the one before: each reports the broker's CPU. The immediate path
   runs before the sweep: after it, with a consumer of the tag changes besides, the broker
   took a whole core of the two.
3. **Memory**: worker RSS, state bytes per customer (latest changelog record per key),
   Redis bytes per customer (whole instance, flushed before this group started).
4. **Whole-base re-evaluation under load**: steady traffic at 50% of the reference capacity;
   intake and p99 for ``--latency-seconds`` before, then ``tagger reevaluate`` (rank, then
   evaluate, every partition, acks in Redis) and the same during it (the p99 window runs
   until a second after the last ack, so events queued behind it count). Also the
   in-process incremental-sweep cost (``sweep_cost``, as ``tagger bench-sweep``).
5. **Recovery**: the worker is stopped and restarted on the same (memory) store; seconds
   until /readyz is 200.

JSON keys (``--out``); rates are per second, latencies in seconds, null where not measured:

- ``broker`` (``kafka`` or ``tansu``), ``broker_version`` (Kafka's, null on Tansu), ``events``,
  ``customers``, ``partitions``, ``batch``, ``workers``, ``rates``: the run's options.
- ``cpu_count``, ``load_average_start``, ``load_average_end``: the machine (1-minute load).
- ``machine_scaling_ratio_before_n_workers``, ``machine_scaling_ratio_before_one_worker``:
  :func:`machine_scaling` right before the N-worker and the one-worker groups that
  ``scaling_ratio`` compares (null if N = 1): the ceiling of any scaling ratio here.
- ``backlog_messages``: messages in the backlog (= events, or envelopes with ``--batch``).
- ``produce_events_per_s``: how fast the bench produced the backlog (first group).
- ``raw_aiokafka_messages_per_s``: plain aiokafka ``getmany`` over the backlog, no group;
  ``raw_aiokafka_cpu_us_per_event``: its CPU per event (µs; per message ÷ ``batch``).
- ``faust_noop_messages_per_s``: the do-nothing Faust agent, N workers together.
- ``faust_noop_one_worker_messages_per_s``, ``faust_noop_scaling_ratio``: the same with one
  worker, and N / 1 (null if N = 1).
- ``worker_events_per_s``: the tagger, N workers together (events, not envelopes).
- ``one_worker_events_per_s``, ``scaling_ratio``: the tagger with one worker, and N / 1
  (null if N = 1).
- ``tagger_vs_faust_noop``, ``tagger_vs_raw_aiokafka``: ``worker_events_per_s`` over the
  N-worker no-op rate and over the raw rate (both in events, envelopes × ``batch``).
- ``one_worker_tagger_vs_faust_noop``: ``one_worker_events_per_s`` over the one-worker no-op rate;
  ``one_worker_tagger_vs_raw_aiokafka`` over the raw rate (in events), ``one_worker_tagger_vs_quix``
  over ``quix_events_per_s`` (null on Tansu).
- ``one_worker_cpu_us_per_event``, ``faust_noop_one_worker_cpu_us_per_event``: CPU µs per event of
  the one-worker tagger and do-nothing drains (the worker's /proc user + system time from the start
  of production until drained, ÷ the backlog's events).
- ``quix_version``, ``quix_events_per_s``, ``quix_cpu_us_per_event``: the Quix Streams peer's drain
  (one process) and its CPU per event; ``quix_big_spenders_after_drain`` and
  ``tagger_big_spenders_after_drain`` (the one-worker tagger group's Redis tag index, once settled):
  customers holding big_spender after the backlog, a check that the two jobs agree.
  ``quix_latency_1k_reachable`` (its drain reached 1,000 events/s), ``quix_latency_1k_p50_s``,
  ``quix_latency_1k_p99_s`` (nearest rank), ``quix_latency_1k_samples`` (tag changes timed),
  ``quix_latency_1k_worker_cpu_us_per_event``: its phase at 1,000 events/s. All null on Tansu.
- ``one_worker_stream_intake_events_per_s``, ``stream_intake_vs_faust_noop``: one tagger worker
  with ``TAGGER_INTAKE=stream`` (records through a Faust agent's stream, Faust's per-message
  path, instead of the batch intake of ``stream/faust/intake.py``), and that over the one-worker no-op rate.
- ``one_worker_uncoalesced_events_per_s``: one tagger worker with ``TAGGER_COALESCE_CUSTOMERS=0``
  (every event evaluated on its own).
- ``latency_reference_events_per_s``: the capacity ``--rates`` are fractions of.
- ``latency_by_rate``: one entry per ``--rates`` fraction: ``fraction``,
  ``offered_events_per_s``, ``events``, ``p50_s``, ``p95_s``, ``p99_s``, and
  ``broker_cpu_percent`` (of one core) and ``worker_cpu_us_per_event`` during the phase.
- ``latency_1k_reachable``, ``latency_1k_p50_s``, ``latency_1k_p95_s``, ``latency_1k_p99_s``,
  ``latency_1k_broker_cpu_percent``, ``latency_1k_worker_cpu_us_per_event``: the same at
  1,000 events/s (issue 7 target: p99 ≤ 0.1 s).
- ``immediate_offered_events_per_s``, ``immediate_events``, ``immediate_matched``,
  ``immediate_p50_s``, ``immediate_p99_s``, ``immediate_max_s``: the immediate path: normal
  traffic rate, priority events sent (``PRIORITY_EVENTS_PER_S`` = 20 a second among the
  traffic) and matched to their tag change, and their end-to-end latency (bench's produce
  call → tag change consumed by the bench). Split in two: ``immediate_sent_p99_s``, produce call →
  the tag change's Kafka timestamp (the worker's send), and ``immediate_delivery_p99_s``, that
  timestamp → consumed by the bench. ``immediate_broker_cpu_percent``: the broker's CPU (% of one
  core) from the start of that traffic until every tag change was consumed.
- ``worker_rss_mb``, ``state_bytes_per_customer``, ``customers_in_state``,
  ``redis_bytes_per_customer``: memory after the latency phases (the customers include
  the immediate path's new ones). State is the latest changelog record per customer;
  ``state_bytes_per_customer_without_recent_ids`` leaves out its recent-ID dedupe list
  (``recent_ids_bytes_per_customer``, ``recent_ids_per_customer`` entries on average; at
  most ``RECENT_IDS`` = 64 per customer, see README).
- ``reevaluate_offered_events_per_s``, ``reevaluate_seconds``, ``reevaluate_rank_seconds``,
  ``reevaluate_evaluate_seconds``, ``reevaluate_customers_per_s`` (``customers_in_state`` /
  ``reevaluate_seconds``), ``intake_before_reevaluate_events_per_s``,
  ``intake_during_reevaluate_events_per_s``, ``p99_before_reevaluate_s``,
  ``p99_during_reevaluate_s``: the whole-base re-evaluation under load.
- ``incremental_sweep_us_per_evaluation``, ``incremental_sweep_cpu_seconds_per_day_per_million``:
  from ``sweep_cost(customers, hours=6)``.
- ``recovery_to_ready_s``: restart to /readyz 200.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import tempfile
import time
from base64 import b64decode
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import orjson

from agents.bench.latency import (
    Buckets,
    TagChangeWatcher,
    latencies,
    percentile,
    percentiles,
    plot_latency,
    priority_traffic,
    quantile,
    snapshot,
)
from agents.bench.workers import (
    Group,
    Message,
    backlog,
    check_alive,
    done,
    drain_rate,
    get,
    new_group,
    produce,
    spawn_worker,
    stop_group,
    wait_done,
    wait_ready,
    wait_settled,
)
from stream.devtools.demo import DemoConfig, run_demo
from stream.devtools.embedded import ServiceGroup, TansuBroker, terminate
from stream.settings import Settings

__all__ = ["parse_rates", "percentile", "plot_latency", "render_table", "run_bench", "sweep_cost"]

PRIORITY_EVENTS_PER_S = 20.0  # 200 in a 10-s phase: a nearest-rank p99 of fewer than 100 is their maximum
ONE_K = 1000.0


def progress(what: str) -> None:
    """One line on stderr per step, so a slow or failing run shows where it is."""
    click.echo(f"{time.strftime('%H:%M:%S')} bench: {what}", err=True)


def parse_rates(text: str) -> list[float]:
    """``"0.25,0.5,0.8"`` → ``[0.25, 0.5, 0.8]``: fractions of capacity, each in (0, 1.5], sorted."""
    try:
        rates = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: expected comma-separated numbers such as 0.25,0.5,0.8") from exc
    if not rates or not all(0 < r <= 1.5 for r in rates):
        raise click.BadParameter(f"{text!r}: every rate must be a fraction of capacity in (0, 1.5]")
    return rates


@dataclass
class Run:
    """One benchmark run: services, options and the backlog every group reads."""

    services: ServiceGroup
    tansu: bool  # the broker is Tansu (else Apache Kafka, stream.devtools.kafka_local)
    workdir: Path
    events: int
    customers: int
    partitions: int
    batch: int
    messages: list[Message]

    def group(self, name: str, command: str, count: int, settings: dict[str, str] | None = None) -> Group:
        return new_group(name, command, count, bootstrap=self.services.bootstrap, redis_url=self.services.redis_url,
                         partitions=self.partitions, workdir=self.workdir, settings=settings, tansu=self.tansu)

    @property
    def broker_pid(self) -> int:
        """The broker's process: Tansu's, or the one Kafka node's JVM."""
        broker: Any = self.services.broker
        pid = broker.pid if isinstance(broker, TansuBroker) else broker.nodes[0].pid
        assert pid is not None  # the broker runs for the whole bench
        return int(pid)

    def settings(self, group: Group) -> Settings:
        """Settings of a group's workers, for commands sent from here (reevaluate)."""
        return Settings(kafka_bootstrap_servers=self.services.bootstrap, redis_url=self.services.redis_url,
                        partitions=self.partitions, app_id=group.app_id,
                        redis_prefix=group.redis_prefix)  # type: ignore[call-arg]


def _spin(seconds: float, start: Any, out: Any) -> None:
    start.wait()
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(10_000):
            n += 1
    out.put(n)


def machine_scaling(seconds: float = 2.0) -> float:
    """Loop iterations two busy pure-Python processes complete together ÷ one alone, in ``seconds``
    (one alone measured before and after the two, and averaged).

    ~2 on two free cores; less while the host gives this machine's two vCPUs less than two
    cores' worth (a shared physical core, busy neighbours). A group of workers is not expected
    to scale past it (within its noise: seen 1.67-2.23 on an idle machine in five calls in a
    row), and it moves during a run, so ``scaling_ratio`` is to be read against it.
    """
    ctx = multiprocessing.get_context("spawn")

    def work(processes: int) -> int:
        start, out = ctx.Barrier(processes + 1), ctx.Queue()
        children = [ctx.Process(target=_spin, args=(seconds, start, out)) for _ in range(processes)]
        for child in children:
            child.start()
        start.wait()  # every child started (spawn takes a while): they spin over the same seconds
        done = sum(out.get() for _ in children)
        for child in children:
            child.join()
        return done

    alone = work(1)
    together = work(2)
    return together / ((alone + work(1)) / 2)  # one process before and after: the machine drifts


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_consume_rate(bootstrap: str, topics: list[str], expected: int) -> tuple[float, float]:
    """(messages/s, CPU µs per message) of a plain aiokafka ``getmany`` loop reading ``topics`` from the
    start (no group), in this process (nothing else runs in it meanwhile)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition
    from confluent_kafka.admin import AdminClient

    listed = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(timeout=20).topics
    partitions = {t: sorted(listed[t].partitions) for t in topics}  # (Kafka tells a consumer of no topic none)

    async def run() -> tuple[float, float]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            tps = [TopicPartition(t, p) for t, parts in partitions.items() for p in parts]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            read, began, cpu = 0, time.monotonic(), time.process_time()  # ns resolution; /proc's is 10 ms
            while read < expected and time.monotonic() - began < 120:
                batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
                read += sum(len(records) for records in batches.values())
            return read / (time.monotonic() - began), 1e6 * (time.process_time() - cpu) / max(read, 1)
        finally:
            await consumer.stop()

    return asyncio.run(run())


def changelog_sizes(bootstrap: str, topic: str, idle_s: float = 3.0) -> dict[bytes, tuple[int, int, int]]:
    """Latest record per key of a changelog topic (read until ``idle_s`` without records):
    its size in bytes, the bytes of its recent-ID dedupe list (``"j":"...",``: base64 of 8 bytes an id,
    stream.domain.state) and that list's length."""
    from confluent_kafka import Consumer, TopicPartition

    from stream.kafka.kafka_admin import client_config

    consumer = Consumer({**client_config(bootstrap), "group.id": "tagger-bench-sizes", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=20).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        latest: dict[bytes, tuple[int, int, int]] = {}
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
                    ids = orjson.loads(value).get("j", "")
                    latest[key] = (len(value), len(ids) + 7 if ids else 0, len(b64decode(ids)) // 8)
        return latest
    finally:
        consumer.close()


# --- 1. throughput ---------------------------------------------------------------------------


@dataclass
class Drain:
    """One timed drain of the backlog by a group."""

    rate: float  # finished per second (events, or envelopes for the do-nothing agent)
    group: Group
    produce_s: float
    cpu_us_per_event: float  # the group's workers' CPU over the drain ÷ the backlog's events


def measure_drain(run: Run, name: str, command: str, count: int, expected: int, keep: bool = False,
                  settings: dict[str, str] | None = None) -> Drain:
    """Start the group on empty topics, wait ready, produce, time the drain.

    The group is stopped afterwards unless ``keep``.
    """
    progress(f"{name}: starting {count} worker(s)")
    group = run.group(name, command, count, settings)
    try:
        progress(f"{name}: ready after {wait_ready(group):.1f}s; producing the backlog, timing the drain")
        cpu = CpuMeter({str(i): proc.pid for i, proc in enumerate(group.procs)})
        started = time.monotonic()
        produce_s = produce(run.services.bootstrap, run.messages, group)
        rate = drain_rate(group, expected, started)
        used, _ = cpu.read()
        group.expected = expected
        progress(f"{name}: drained {expected:,} at {rate:,.0f}/s")
    except BaseException:
        stop_group(group)
        raise
    if not keep:
        stop_group(group)
    return Drain(rate, group, produce_s, 1e6 * sum(used.values()) / run.events)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def throughput(run: Run, workers: int, result: dict[str, Any], seconds: float) -> Group:
    """Phase 1 (and the Quix peer's latency at 1,000 events/s); returns the one-worker tagger group, still running."""
    counts = [workers, 1] if workers > 1 else [1]
    per_message = max(run.batch, 1)  # events per backlog message
    noop: dict[int, Drain] = {}
    tagger: dict[int, Drain] = {}
    # evaluating every event on its own, as a worker that keeps up does: the latency phases' reference
    result["one_worker_uncoalesced_events_per_s"] = measure_drain(
        run, "tagger-each-1", "worker", 1, run.events, settings={"TAGGER_COALESCE_CUSTOMERS": "0"}).rate
    # the same tagger fed through a Faust agent's stream (Faust's per-message path) instead of the batch intake
    result["one_worker_stream_intake_events_per_s"] = measure_drain(
        run, "tagger-stream-1", "worker", 1, run.events, settings={"TAGGER_INTAKE": "stream"}).rate
    result.update(machine_scaling_ratio_before_n_workers=None, machine_scaling_ratio_before_one_worker=None)
    for n in counts:  # each do-nothing group right before its tagger group: the machine drifts between runs
        if workers > 1:
            result[f"machine_scaling_ratio_before_{'one_worker' if n == 1 else 'n_workers'}"] = machine_scaling()
        noop[n] = measure_drain(run, f"noop-{n}", "baseline-worker", n, len(run.messages))
        if "raw_aiokafka_messages_per_s" not in result:
            result["produce_events_per_s"] = run.events / noop[n].produce_s
            topics = [noop[n].group.topic(t) for t in ("orders", "logins", "support-tickets")]
            result["raw_aiokafka_messages_per_s"], raw_cpu = raw_consume_rate(run.services.bootstrap, topics,
                                                                              len(run.messages))
            result["raw_aiokafka_cpu_us_per_event"] = raw_cpu / per_message
        if n == 1:
            # between the one-worker no-op and tagger groups; Kafka only (see the module docstring)
            result.update(QUIX_KEYS if run.tansu else quix_peer(run, seconds))
            _flush_redis(run)  # Redis bytes per customer are measured on this group alone
        tagger[n] = measure_drain(run, f"tagger-{n}", "worker", n, run.events, keep=n == 1)
    raw = result["raw_aiokafka_messages_per_s"] * per_message
    result.update(
        faust_noop_messages_per_s=noop[workers].rate, faust_noop_one_worker_messages_per_s=noop[1].rate,
        faust_noop_scaling_ratio=_ratio(noop[workers].rate, noop[1].rate) if workers > 1 else None,
        worker_events_per_s=tagger[workers].rate, one_worker_events_per_s=tagger[1].rate,
        scaling_ratio=_ratio(tagger[workers].rate, tagger[1].rate) if workers > 1 else None,
        tagger_vs_faust_noop=tagger[workers].rate / (noop[workers].rate * per_message),
        one_worker_tagger_vs_faust_noop=tagger[1].rate / (noop[1].rate * per_message),
        stream_intake_vs_faust_noop=result["one_worker_stream_intake_events_per_s"] / (noop[1].rate * per_message),
        tagger_vs_raw_aiokafka=tagger[workers].rate / raw, one_worker_tagger_vs_raw_aiokafka=tagger[1].rate / raw,
        one_worker_tagger_vs_quix=_ratio(tagger[1].rate, result["quix_events_per_s"]),
        one_worker_cpu_us_per_event=tagger[1].cpu_us_per_event,
        faust_noop_one_worker_cpu_us_per_event=noop[1].cpu_us_per_event)
    return tagger[1].group  # the last one measured: one worker, still running


QUIX_KEYS: dict[str, Any] = dict.fromkeys(
    ("quix_version", "quix_events_per_s", "quix_cpu_us_per_event", "quix_big_spenders_after_drain",
     "quix_latency_1k_reachable", "quix_latency_1k_p50_s", "quix_latency_1k_p99_s", "quix_latency_1k_samples",
     "quix_latency_1k_worker_cpu_us_per_event"))
"""The Quix peer's keys, all null: on Tansu it does not run."""


def quix_peer(run: Run, seconds: float) -> dict[str, Any]:
    """The Quix Streams peer (``agents/bench/quix.py``), one process: its drain of the backlog, the
    big_spender customers after it, and its latency at 1,000 events/s (if its drain rate reaches it)."""
    from importlib.metadata import version

    drain = measure_drain(run, "quix-1", "quix", 1, run.events, keep=True)
    group = drain.group
    try:
        stats = orjson.loads(get(group.ports[0], "/stats")[1])
        reachable = drain.rate >= ONE_K
        at_1k = quix_latency_at(run, group, ONE_K, seconds) if reachable else {}
    finally:
        stop_group(group)
    return {"quix_version": version("quixstreams"), "quix_events_per_s": drain.rate,
            "quix_cpu_us_per_event": drain.cpu_us_per_event, "quix_big_spenders_after_drain": stats["tagged"],
            "quix_latency_1k_reachable": reachable,
            **{f"quix_latency_1k_{key}": at_1k.get(key) for key in ("p50_s", "p99_s", "samples",
                                                                     "worker_cpu_us_per_event")}}


def quix_latency_at(run: Run, group: Group, offered: float, seconds: float) -> dict[str, Any]:
    """Demo events at ``offered``/s for ``seconds`` into the Quix peer, with priority big orders among them
    (new customers: each one is a big_spender change, so there are changes to time); p50/p99 of the
    peer's own latencies (input's Kafka timestamp → tag change handed to its producer) meanwhile."""
    time.sleep(float(group.env.get("TAGGER_COMMIT_INTERVAL", "3")) + 1)  # its checkpoint after the drain
    port = group.ports[0]
    first = len(orjson.loads(get(port, "/latency")[1]))
    count = max(2, round(PRIORITY_EVENTS_PER_S * seconds))

    async def traffic() -> tuple[int, dict[str, float]]:
        normal = run_demo(run.services.bootstrap, _demo(run, group, offered, 99),
                          limit=max(1, round(offered * seconds)))
        special = priority_traffic(run.services.bootstrap, group.demo_topics, count, 1 / PRIORITY_EVENTS_PER_S)
        return await asyncio.gather(normal, special)

    progress(f"quix: latency at {offered:,.0f} events/s for {seconds:g}s")
    cpu = CpuMeter({"worker": group.procs[0].pid})
    produced, sent = asyncio.run(traffic())
    group.expected += produced + len(sent)
    wait_done(group, group.expected)
    used, _ = cpu.read()
    measured = orjson.loads(get(port, f"/latency?from={first}")[1])
    return {"p50_s": quantile(measured, 0.5), "p99_s": quantile(measured, 0.99), "samples": len(measured),
            "worker_cpu_us_per_event": 1e6 * used["worker"] / max(produced + len(sent), 1)}


def big_spenders(run: Run, group: Group) -> int:
    """Customers holding big_spender in a tagger group's Redis tag index (once its views are written)."""
    import redis as redis_sync

    wait_settled(group)
    return int(redis_sync.Redis.from_url(run.services.redis_url).zcard(f"{group.redis_prefix}:tag:big_spender"))


def _flush_redis(run: Run) -> None:
    import redis as redis_sync

    redis_sync.Redis.from_url(run.services.redis_url).flushall()


# --- 2. latency ------------------------------------------------------------------------------


def _demo(run: Run, group: Group, rate: float, seed: int) -> DemoConfig:
    return DemoConfig(customers=run.customers, rate=rate, seed=seed, topics=group.demo_topics)


class CpuMeter:
    """CPU seconds each of some processes (name → pid) uses from creation to :meth:`read`."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self.start, self.began = {name: _cpu_seconds(pid) for name, pid in self.pids.items()}, time.monotonic()

    def read(self) -> tuple[dict[str, float], float]:
        """(CPU seconds by name, seconds elapsed) so far."""
        return ({name: _cpu_seconds(pid) - self.start[name] for name, pid in self.pids.items()},
                time.monotonic() - self.began)


def _broker_and_worker(run: Run, group: Group) -> CpuMeter:
    return CpuMeter({"broker": run.broker_pid, "worker": group.procs[0].pid})


def latency_at(run: Run, group: Group, offered: float, seconds: float, seed: int) -> dict[str, Any]:
    """Single demo events at ``offered``/s for ``seconds``: p50/p95/p99 of the worker's histogram.

    Also the CPU the broker and the (first) worker used meanwhile: Tansu's cost per fetch grows
    with the partition's log, so at one rate its CPU rises phase after phase.
    """
    wait_settled(group)
    progress(f"latency at {offered:,.0f} events/s for {seconds:g}s")
    before, cpu = snapshot(group), _broker_and_worker(run, group)
    sent = asyncio.run(run_demo(run.services.bootstrap, _demo(run, group, offered, seed),
                                limit=max(1, round(offered * seconds))))
    group.expected += sent
    wait_done(group, group.expected)
    used, elapsed = cpu.read()
    return {"offered_events_per_s": offered, "events": sent, **percentiles(before, snapshot(group)),
            "broker_cpu_percent": 100 * used["broker"] / elapsed,
            "worker_cpu_us_per_event": 1e6 * used["worker"] / max(sent, 1)}


def latency_1k(run: Run, group: Group, reference: float, seconds: float) -> dict[str, Any]:
    """Phase 2a: 1,000 events/s, if the reference capacity reaches it."""
    reachable = reference >= ONE_K
    at_1k = latency_at(run, group, ONE_K, seconds, 99) if reachable else {}
    return {"latency_1k_reachable": reachable,
            **{f"latency_1k_{key}": at_1k.get(key)
               for key in ("p50_s", "p95_s", "p99_s", "broker_cpu_percent", "worker_cpu_us_per_event")}}


def latency_by_rate(run: Run, group: Group, rates: list[float], reference: float, seconds: float) -> list[Any]:
    """Phase 2c: each fraction of the reference capacity, lowest first."""
    return [{"fraction": f, **latency_at(run, group, f * reference, seconds, 100 + i)} for i, f in enumerate(rates)]


def immediate_path(run: Run, group: Group, offered: float, seconds: float) -> dict[str, Any]:
    """Phase 2b: priority events among normal traffic at ``offered``/s, latency measured end to end."""
    bootstrap = run.services.bootstrap
    count = max(2, round(PRIORITY_EVENTS_PER_S * seconds))
    wait_settled(group)

    async def traffic() -> tuple[int, dict[str, float]]:
        normal = run_demo(bootstrap, _demo(run, group, offered, 98), limit=max(1, round(offered * seconds)))
        special = priority_traffic(bootstrap, group.demo_topics, count, 1 / PRIORITY_EVENTS_PER_S)
        return await asyncio.gather(normal, special)

    progress(f"immediate path: {count} priority events among {offered:,.0f} events/s")
    with TagChangeWatcher(bootstrap, group.topic("tag-changes")) as watcher:
        cpu = _broker_and_worker(run, group)
        produced, sent = asyncio.run(traffic())
        group.expected += produced + len(sent)
        wait_done(group, group.expected)
        deadline = time.monotonic() + 30
        while len(latencies(sent, watcher.arrived)) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.1)
        arrived = dict(watcher.arrived)  # the watcher goes on; every event id in it is in stamped already
        matched = {event_id: at for event_id, at in sent.items() if event_id in arrived}
        measured = latencies(matched, arrived)
        in_worker = latencies(matched, watcher.stamped)
        delivery = [arrived[event_id] - watcher.stamped[event_id] for event_id in matched]
        used, elapsed = cpu.read()
    return {"immediate_offered_events_per_s": offered, "immediate_events": len(sent),
            "immediate_broker_cpu_percent": 100 * used["broker"] / elapsed, "immediate_matched": len(measured),
            "immediate_p50_s": quantile(measured, 0.5),
            "immediate_p99_s": quantile(measured, 0.99), "immediate_max_s": max(measured, default=None),
            "immediate_sent_p99_s": quantile(in_worker, 0.99), "immediate_delivery_p99_s": quantile(delivery, 0.99)}


# --- 3. memory -------------------------------------------------------------------------------


def memory(run: Run, group: Group) -> dict[str, Any]:
    """Phase 3: RSS of the (first) worker, changelog bytes and Redis bytes per customer."""
    import redis as redis_sync

    progress("memory: reading the changelog")
    latest = changelog_sizes(run.services.bootstrap, f"{group.app_id}-customers-changelog")
    used = redis_sync.Redis.from_url(run.services.redis_url).info("memory")["used_memory"]
    n = max(len(latest), 1)
    total, ids_bytes, ids = (sum(column) for column in zip(*latest.values(), strict=True)) if latest else (0, 0, 0)
    return {"worker_rss_mb": _rss_mb(group.procs[0].pid),
            "state_bytes_per_customer": total / n,
            "state_bytes_per_customer_without_recent_ids": (total - ids_bytes) / n,
            "recent_ids_bytes_per_customer": ids_bytes / n, "recent_ids_per_customer": ids / n,
            "customers_in_state": len(latest), "redis_bytes_per_customer": used / n}


# --- 4. whole-base re-evaluation under load --------------------------------------------------


async def _sample(group: Group) -> tuple[Buckets, int, float]:
    """(latency histogram, finished events, monotonic time) of a group, without blocking the loop."""
    buckets, finished = await asyncio.to_thread(snapshot, group), await asyncio.to_thread(done, group)
    return buckets, finished, time.monotonic()


async def _reevaluate_under_load(run: Run, group: Group, offered: float, before_s: float) -> dict[str, Any]:
    from agents.reevaluate import request_reevaluation

    stop = asyncio.Event()
    demo = asyncio.create_task(run_demo(run.services.bootstrap, _demo(run, group, offered, 97), stop=stop))
    try:
        await asyncio.sleep(1.0)  # the producer's pace settles
        snap0, done0, t0 = await _sample(group)
        await asyncio.sleep(before_s)
        snap1, done1, t1 = await _sample(group)
        progress(f"re-evaluating every customer under {offered:,.0f} events/s")
        timings = await request_reevaluation(run.settings(group), timeout=120.0)
        _, done2, t2 = await _sample(group)
        await asyncio.sleep(1.0)  # events queued behind the last chunk are emitted now
        snap2, _, _ = await _sample(group)
    finally:
        stop.set()
        group.expected += await demo
    return {"reevaluate_offered_events_per_s": offered, "reevaluate_seconds": t2 - t1,
            "reevaluate_rank_seconds": timings["rank"], "reevaluate_evaluate_seconds": timings["evaluate"],
            "intake_before_reevaluate_events_per_s": (done1 - done0) / (t1 - t0),
            "intake_during_reevaluate_events_per_s": (done2 - done1) / max(t2 - t1, 1e-9),
            "p99_before_reevaluate_s": percentile(snap0, snap1, 0.99),
            "p99_during_reevaluate_s": percentile(snap1, snap2, 0.99)}


def reevaluate_under_load(run: Run, group: Group, offered: float, before_s: float,
                          customers: int) -> dict[str, Any]:
    """Phase 4: ``tagger reevaluate`` of every customer while traffic flows at ``offered``/s."""
    wait_settled(group)  # the sweep's highest rate can leave the worker behind
    result = asyncio.run(_reevaluate_under_load(run, group, offered, before_s))
    wait_done(group, group.expected)
    result["reevaluate_customers_per_s"] = customers / result["reevaluate_seconds"]
    cost = sweep_cost(max(customers, 100), hours=6)
    result["incremental_sweep_us_per_evaluation"] = cost["us_per_evaluation"]
    result["incremental_sweep_cpu_seconds_per_day_per_million"] = cost["cpu_seconds_per_day_per_million"]
    return result


# --- 5. recovery -----------------------------------------------------------------------------


def recovery(group: Group) -> float:
    """Phase 5: stop worker 0, start it again on the same store; seconds until /readyz is 200."""
    progress("recovery: restarting the worker")
    terminate(group.procs[0], grace=15.0)
    began = time.monotonic()
    group.procs[0] = spawn_worker(group, 0)
    while get(group.ports[0], "/readyz")[0] != 200:
        check_alive(group)
        if time.monotonic() - began > 180:
            raise click.ClickException(f"restarted worker not ready after 180s; see its log {group.logs[0]}")
        time.sleep(0.25)
    return time.monotonic() - began


# --- the whole run ---------------------------------------------------------------------------


def _services(broker: str) -> ServiceGroup:
    if broker == "tansu":
        return ServiceGroup()
    from stream.devtools.kafka_local import KafkaCluster

    return ServiceGroup(broker=KafkaCluster(1))


def run_bench(events: int, customers: int, partitions: int, batch: int = 0, latency_seconds: float = 10.0,
              workers: int = 1, rates: list[float] | None = None,
              latency_capacity: float = 400.0, broker: str | None = None) -> dict[str, Any]:
    """The whole benchmark on a local broker (``kafka`` or ``tansu``; default
    :func:`stream.devtools.kafka_local.default_broker`) and Redis; returns its figures (keys: the module docstring)."""
    from stream.devtools.kafka_local import default_broker, kafka_version

    rates = rates or [0.25, 0.5, 0.8]
    broker = broker or default_broker()
    result: dict[str, Any] = {"broker": broker, "broker_version": kafka_version() if broker == "kafka" else None,
                              "events": events, "customers": customers, "partitions": partitions, "batch": batch,
                              "workers": workers, "rates": rates, "cpu_count": os.cpu_count(),
                              "load_average_start": os.getloadavg()[0]}
    # one event a minute, ending now: the latency phases' events (now) carry on from the backlog. A backlog
    # that ended months ago made their first seconds a whole-base re-evaluation (every customer's windows
    # moved at once), which phase 4 measures on its own
    step_ms = 60_000
    config = DemoConfig(customers=customers, rate=0, start_ms=int(time.time() * 1000) - events * step_ms,
                        time_step_ms=step_ms)
    messages = backlog(config, events, partitions, batch)
    result["backlog_messages"] = len(messages)
    with _services(broker) as services:
        run = Run(services, broker == "tansu", Path(tempfile.mkdtemp(prefix="tagger-bench-")), events, customers,
                  partitions, batch, messages)
        progress(f"broker {broker} {services.bootstrap}, redis {services.redis_url}; worker logs in {run.workdir}")
        group = throughput(run, workers, result, latency_seconds)
        try:
            result["tagger_big_spenders_after_drain"] = big_spenders(run, group)
            one = result["one_worker_uncoalesced_events_per_s"]
            reference = one if batch <= 0 else min(one, latency_capacity)
            result["latency_reference_events_per_s"] = reference
            result.update(latency_1k(run, group, reference, latency_seconds))
            # before the sweep: Tansu's CPU per fetch grows with every small batch the phases add to a partition
            # (docs/bench/README.md), and at its end the broker took a whole core of the two
            result.update(immediate_path(run, group, max(rates) * reference, latency_seconds))
            result["latency_by_rate"] = latency_by_rate(run, group, rates, reference, latency_seconds)
            result.update(memory(run, group))
            result.update(reevaluate_under_load(run, group, reference / 2, latency_seconds,
                                                result["customers_in_state"]))
            result["recovery_to_ready_s"] = recovery(group)
        finally:
            stop_group(group)
    shutil.rmtree(run.workdir, ignore_errors=True)  # kept when a phase failed: its error names the logs
    result["load_average_end"] = os.getloadavg()[0]
    return result


def _rows(result: dict[str, Any]) -> Iterator[tuple[str, str]]:
    def show(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.3f}" if value < 10 else f"{value:,.0f}"
        return "—" if value is None else str(value)

    for key, value in result.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                label = f"{key}[{show(item.get('fraction'))}]"
                yield label, "  ".join(f"{k}={show(v)}" for k, v in item.items() if k != "fraction")
        else:
            yield key, show(value)


def render_table(result: dict[str, Any]) -> str:
    """The figures as a short two-column table (entries of a list on rows of their own)."""
    rows = list(_rows(result))
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


class _Null:
    """Sender and Redis view that only count (the sweep benchmark measures CPU, not I/O)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.staged = 0

    async def send(self, *, key: bytes, value: bytes, partition: int | None = None) -> None:
        if key in (b"sweep",):
            self.sent.append(value)

    def stage(self, cid: str, view: Any, spend: float, last_activity: int | None = None,
              rebuilt: bool = False) -> None:
        self.staged += 1

    def note(self, cid: str, entry: dict[str, Any]) -> None:
        pass

    async def flush(self) -> int:
        return 0


def _bench_states(customers: int, orders_each: int, seed: int, start: int) -> dict[str, Any]:
    """Customers with paid orders and logins spread over 300 days (random phases)."""
    import random

    from stream.domain.events import parse_event
    from stream.domain.state import DAY_MS, CustomerState

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

    from agents.engine.evaluate import Cutoffs, Evaluator, facts_schema
    from agents.engine.runtime import Runtime
    from rules import default_rules_dir, load_ruleset
    from stream.domain.clock import Clock
    from stream.domain.state import DAY_MS
    from stream.settings import Settings

    start = 1_767_225_600_000
    table = _bench_states(customers, orders_each, seed, start)
    clock = Clock("stream")
    clock.observe(start + 301 * DAY_MS)
    null: Any = _Null()
    settings = Settings(partitions=1, sweep_chunk=2000, clock="stream")  # type: ignore[call-arg]
    senders = {k: null for k in ("tag_changes", "dead_letters", "rekey", "commands", "churn_alerts")}
    runtime = Runtime(settings, table, Evaluator(load_ruleset(default_rules_dir(), facts_schema())), null, clock,
                      senders, cutoffs=Cutoffs(a_cut=4000.0, b_cut=2500.0,
                                               quantiles=tuple(float(q) * 50 for q in range(101))))

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
        runtime = Runtime(settings, table, runtime.evaluator, null, clock, senders)  # a restart
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
