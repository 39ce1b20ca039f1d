"""Fault injection on a 3-broker Kafka cluster and Redis, checked exactly against a batch recomputation.

Run with ``./dev test tests/fault --run-fault -s`` (minutes; not part of the default suite).
Each scenario streams 200,000 events over 20,000+ customers into 3 workers, injects its
fault mid-stream (workers, Redis, broker connections, brokers), waits until every event is
consumed, runs ``tagger reevaluate`` and compares every customer's aggregates, tags and tier
with tests/fault/oracle.py. Timings go to stdout and to ``fault-report.json`` in the test's
temporary directory.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from stream.devtools.embedded import ServiceGroup
from stream.kafka.kafka_admin import client_config, consume_all, make_producer
from stream.kafka.topics import changelog_topic_name

from ..integration.conftest import PARTITIONS, Namespace, Worker, rules_without_bands, wait_for
from . import sequences
from .conftest import FaultCluster
from .oracle import expected, history, mismatches

pytestmark = [pytest.mark.integration, pytest.mark.fault]

EVENTS, CUSTOMERS, WORKERS = 200_000, 20_500, 3
RATE = 4000  # events/s offered by the producer thread: the stream overlaps the faults
# Short stall timeout (default 120 s): a partition that stops moving outside a rebalance is read again soon
# (guard 6), so the exact comparison also covers that repair whenever it happens.
#
# Session timeout 10 s (the worker's default is 60 s): a SIGKILLed or cut-off member holds its partitions
# until its session expires, so this is how long they wait for a new owner. 10 s (Kafka's own default
# before 3.0) is an operator's choice for a latency-sensitive group: three 2 s heartbeats must all go
# missing before a live worker is expelled, and the brokers' group.min.session.timeout.ms (6 s) allows it.
# Replication factor 3 for the changelog Faust creates (the topics ensure_all_topics creates take the
# cluster's default.replication.factor, 3): on RF 1 a killed broker would take a third of the table with it.
WORKER = {"sweep_interval": 3600, "redis_flush_interval": 0.5, "stall_timeout": 30,
          "session_timeout": 10, "heartbeat_interval": 2, "topic_replication_factor": 3}
# The scenarios' producer survives a broker's death: every write on all in-sync replicas, retried in order
# without duplicates (idempotence) for up to librdkafka's 300 s delivery time-out.
PRODUCER = {"acks": "all", "enable.idempotence": True, "message.timeout.ms": 300_000}


class Stream:
    """Produces the history at ``RATE`` in a thread; remembers the last offset per partition."""

    def __init__(self, ns: Namespace, events: list[tuple[str, dict[str, Any]]]) -> None:
        self.ns, self.events = ns, events
        self.ends: dict[tuple[str, int], int] = {}
        self.produced = 0
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))
            return
        key = (msg.topic(), msg.partition())
        self.ends[key] = max(self.ends.get(key, -1), msg.offset())

    def _run(self) -> None:
        producer = make_producer(self.ns.services.bootstrap, **PRODUCER)
        started = time.monotonic()
        for i, (kind, event) in enumerate(self.events):
            while True:
                try:
                    producer.produce(self.ns.topic(kind), key=event["customer_id"], value=orjson.dumps(event),
                                     on_delivery=self._delivered)
                    break
                except BufferError:  # librdkafka's queue is full while the broker is cut: wait for room
                    producer.poll(0.5)
            self.produced = i + 1
            if i % 1000 == 999:
                producer.poll(0)
                ahead = self.produced / RATE - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush(300)

    def start(self) -> Stream:
        self.thread.start()
        return self

    def wait_produced(self, fraction: float) -> None:
        wait_for(lambda: self.produced >= fraction * len(self.events), 600, f"{fraction:.0%} produced")

    def finish(self) -> None:
        self.thread.join(600)
        assert not self.thread.is_alive() and not self.errors, self.errors[:5]


def behind(ns: Namespace, ends: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
    """Messages still unconsumed by the tagger's group per partition (committed offsets against the produced ends)."""
    consumer = Consumer({**client_config(ns.settings.kafka_bootstrap_servers), "group.id": ns.settings.app_id,
                         "enable.auto.commit": False})
    try:
        tps = consumer.committed([TopicPartition(t, p) for t, p in ends], timeout=20)
    finally:
        consumer.close()
    done = {(tp.topic, tp.partition): tp.offset for tp in tps}
    left = {key: end + 1 - max(done.get(key, 0), 0) for key, end in ends.items()}
    return {key: n for key, n in left.items() if n > 0}


def views(ns: Namespace, customers: list[str]) -> dict[str, dict[str, Any] | None]:
    out: dict[str, dict[str, Any] | None] = {}
    for i in range(0, len(customers), 2000):
        chunk = customers[i:i + 2000]
        raw = ns.redis.mget([f"{ns.settings.redis_prefix}:c:{c}" for c in chunk])
        out.update({c: orjson.loads(r) if r else None for c, r in zip(chunk, raw, strict=True)})
    return out


def ok_count(workers: list[Worker]) -> int:
    total = 0
    for w in workers:
        status, stats = w.get("/stats")
        if status == 200:
            total += stats["outcomes"].get("ok", 0) + stats["outcomes"].get("duplicate", 0)
    return total


NOISE = re.compile(r"Unable connect|Unable to update metadata|NodeNotReady|Failed fetch|Got error produce|"
                   r"Coordinator Request failed|rdkafka|KafkaConnectionError")


def live_stats(worker: Worker) -> dict[str, Any] | None:
    """A running worker's /stats with its partitions; None if it is not running or does not answer."""
    if worker.proc.poll() is not None:
        return None
    status, stats = worker.get("/stats?partitions")
    return stats if status == 200 else None


def diagnosis(worker: Worker, lines: int = 15) -> str:
    """A worker's source partitions (one line each) and its log without the connection noise: short for CI."""
    stats = live_stats(worker) or {}
    partitions = stats.pop("partitions", {})
    log = [line for line in worker.log_path.read_text(errors="replace").splitlines() if not NOISE.search(line)]
    return "\n".join([f"\n--- worker {worker.web_port}: {stats or 'not running or not answering'}",
                      *(f"  {tp} {state}" for tp, state in partitions.items() if "changelog" not in tp),
                      *log[-lines:]])


def owners(ns: Namespace, stuck: dict[tuple[str, int], int]) -> dict[str, str]:
    """Which worker reports each stuck partition as assigned, and what it says of it."""
    found = {f"{t}[{p}]": "no worker has it assigned" for t, p in stuck}
    for w in ns.workers:
        for tp, state in (live_stats(w) or {}).get("partitions", {}).items():
            if tp in found:
                found[tp] = f"worker {w.web_port}: {state}"
    return found


def ready_after(worker: Worker, since: float, timeout: float = 180) -> float:
    """Seconds from ``since`` until ``worker`` answers /readyz with 200."""
    wait_for(lambda: worker.get("/readyz")[0] == 200, timeout, f"worker {worker.web_port} ready", interval=0.25)
    return time.monotonic() - since


def settle_and_compare(ns: Namespace, stream: Stream, want: dict[str, dict[str, Any]],
                       report: dict[str, Any], started: float) -> None:
    """Wait until every produced event is committed, then compare every customer with the oracle exactly."""
    stream.finish()
    began = time.monotonic()
    try:
        wait_for(lambda: not behind(ns, stream.ends), 900, "every event consumed", interval=2)
    except AssertionError:
        for w in ns.workers:  # what each worker was doing: the failure is otherwise silent in CI
            print(diagnosis(w))
        stuck = behind(ns, stream.ends)
        raise AssertionError(f"partitions behind after 900 s: {stuck}; {owners(ns, stuck)}") from None
    report["drain_after_last_produce_s"] = round(time.monotonic() - began, 1)
    report["partition_restarts"] = sum(stats["partition_restarts"] for stats in map(live_stats, ns.workers) if stats)
    customers = sorted(want)
    bad: list[str] = []
    for _ in range(3):  # views are written at each customer's last evaluation: bring all to "now"
        ns.reevaluate()
        bad = mismatches(want, views(ns, customers))
        if not bad:
            break
    report["customers"], report["events"] = len(customers), len(stream.events)
    if bad:
        keep_evidence(ns, bad, report)
    assert bad == [], f"{len(bad)} mismatches, e.g.\n" + "\n".join(bad[:20])
    check_sequences(ns, report)
    report["scenario_s"] = round(time.monotonic() - started, 1)


def keep_evidence(ns: Namespace, bad: list[str], report: dict[str, Any], most: int = 5) -> None:
    """Every changelog record and input message of the first mismatched customers: which state the recovery
    kept and which message it lacks. Printed in short (a CI run keeps only its log, which shows a failed
    test's output) and in full to ``evidence.json`` in the test's directory. Never raises: the mismatches
    are the failure to report."""
    cids = list(dict.fromkeys(line.split(".")[0].split(":")[0] for line in bad))[:most]
    evidence: dict[str, Any] = {cid: {"changelog": [], "inputs": []} for cid in cids}
    try:
        for record in consume_all(ns.services.bootstrap, changelog_topic_name(ns.settings), timeout=120):
            if record["key"] in evidence:
                evidence[record["key"]]["changelog"].append(record)
        for kind in ("order", "login", "ticket"):
            for record in consume_all(ns.services.bootstrap, ns.topic(kind), timeout=120):
                if record["key"] in evidence:
                    evidence[record["key"]]["inputs"].append({**record, "topic": kind})
    except Exception as exc:  # noqa: BLE001 - evidence is a help; the mismatches still fail the test
        print(f"\nEVIDENCE incomplete: {exc!r}")
    path = ns.tmp / "evidence.json"
    path.write_bytes(orjson.dumps(evidence, default=str, option=orjson.OPT_INDENT_2))
    report["evidence"] = str(path)
    print(f"\nEVIDENCE of {', '.join(cids)} (all of it in {path}):")
    for cid, found in evidence.items():
        for r in found["changelog"]:
            doc = r["value"] if isinstance(r["value"], dict) else {}
            state = "tombstone" if r["value"] is None else f"g={doc.get('g')} o={doc.get('o')} t={doc.get('t')}"
            print(f"  {cid} changelog[{r['partition']}]@{r['offset']} {state}")
        for r in found["inputs"]:
            event = r["value"] if isinstance(r["value"], dict) else {}
            print(f"  {cid} {r['topic']}[{r['partition']}]@{r['offset']} {event.get('event_id')} ts={event.get('ts')} "
                  f"{event.get('action') or event.get('status') or ''} {event.get('ticket_id') or ''}")


def check_sequences(ns: Namespace, report: dict[str, Any]) -> None:
    """The whole tag-changes and churn-alerts topics as a read_committed consumer sees them: per customer,
    the ``seq`` numbers are 1..n once repeats (same ``change_id``) are dropped (tests/fault/sequences.py).
    The raw repeat counts go to the report."""
    records = []
    for topic in (ns.settings.tag_changes_topic, ns.settings.churn_alerts_topic):
        config = {"bootstrap.servers": ns.services.bootstrap, "isolation.level": "read_committed"}
        records += [{**r, "topic": topic} for r in consume_all(config, topic, timeout=120)]
    result = sequences.check_sequences(records)
    report["output_records"], report["output_repeats"] = result.records, result.repeats
    report["output_repeats_by_topic"] = {
        topic: sum(s.repeats for s in result.sequences.values() if s.topic == topic)
        for topic in (ns.settings.tag_changes_topic, ns.settings.churn_alerts_topic)}
    if result.records and result.unnumbered == result.records:
        # the workers do not number their output yet (seq/change_id are being added): nothing to check
        report["sequences"] = "not checked: no output message carries seq/change_id yet"
        return
    report["sequences"] = "1..n" if result.ok else result.summary()
    assert result.ok, result.summary()


def record(tmp_path: Path, name: str, report: dict[str, Any]) -> None:
    line = json.dumps({"scenario": name, **report})
    print("\nFAULT REPORT", line)
    with (tmp_path / "fault-report.json").open("a") as f:
        f.write(line + "\n")


@pytest.fixture(scope="module")
def events() -> list[tuple[str, dict[str, Any]]]:
    return history(EVENTS, CUSTOMERS)


@pytest.fixture(scope="module")
def want(events: list[tuple[str, dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory,
         ) -> dict[str, dict[str, Any]]:
    """The oracle on the rules the workers run (:func:`start_worker`): equal entry and exit fractions, exact tiers."""
    return expected(events, rules_without_bands(tmp_path_factory.mktemp("oracle")))


def start_worker(ns: Namespace, via: str | None = None) -> Worker:
    """A worker with the suite's settings; ``via``: its bootstrap servers (default the direct listener)."""
    saved = ns.env
    if via is not None:  # KAFKA_BOOTSTRAP_SERVERS is read before TAGGER_KAFKA_BOOTSTRAP_SERVERS
        ns.env = dict(saved, KAFKA_BOOTSTRAP_SERVERS=via)
    try:
        return ns.worker(**WORKER, rules_dir=rules_without_bands(ns.tmp))  # exact tiers: the oracle's rules
    finally:
        ns.env = saved


def start_workers(ns: Namespace, via: list[str | None]) -> list[Worker]:
    workers = [start_worker(ns, v) for v in via]
    began = time.monotonic()
    for w in workers:
        ready_after(w, began)
    return workers


def begin(ns: Namespace, events: list[tuple[str, dict[str, Any]]], fraction: float,
          via: list[str | None] | None = None) -> tuple[list[Worker], Stream]:
    """Start the workers (each on its ``via`` bootstrap) and the stream; return once ``fraction`` is produced."""
    workers = start_workers(ns, via or [None] * WORKERS)
    stream = Stream(ns, events).start()
    stream.wait_produced(fraction)
    return workers, stream


def owned(worker: Worker) -> int:
    """Source partitions ``worker`` says it owns (0 when it does not answer)."""
    status, doc = worker.get("/readyz")
    return int(doc.get("partitions_assigned", 0)) if status in (200, 503) and isinstance(doc, dict) else 0


def since(t: float) -> float:
    return round(time.monotonic() - t, 1)


def test_three_workers_with_sigkill_restart_and_sigterm(namespace: Namespace, events: Any, want: Any,
                                                        tmp_path: Path) -> None:
    ns, report, t0 = namespace, dict[str, Any](), time.monotonic()
    workers, stream = begin(ns, events, 0.3)
    workers[0].signal(signal.SIGKILL)
    killed = time.monotonic()
    restarted = start_worker(ns)
    report["sigkill_restart_ready_s"] = round(ready_after(restarted, killed), 1)
    stream.wait_produced(0.6)
    before = time.monotonic()
    workers[1].signal(signal.SIGTERM)
    report["sigterm_rebalance_ready_s"] = round(max(ready_after(w, before) for w in (workers[2], restarted)), 1)
    settle_and_compare(ns, stream, want, report, t0)
    record(tmp_path, "3 workers, SIGKILL + restart, SIGTERM", report)


def test_redis_down_30s_then_back_empty(namespace: Namespace, services: ServiceGroup, events: Any, want: Any,
                                        tmp_path: Path) -> None:
    ns, report, t0 = namespace, dict[str, Any](), time.monotonic()
    workers, stream = begin(ns, events, 0.4)
    services.redis.stop()
    down = time.monotonic()
    before = ok_count(workers)
    time.sleep(30)
    during = ok_count(workers) - before
    report["events_processed_while_redis_down"] = during
    assert during > 1000, "processing stopped while Redis was down"
    services.redis.start()  # same port, no data: the projection must be rebuilt
    report["redis_back_ready_s"] = round(max(ready_after(w, time.monotonic()) for w in workers), 1)
    wait_for(lambda: ns.redis.exists(f"{ns.settings.redis_prefix}:epoch"), 60, "the projection's rebuild")
    report["redis_outage_s"] = since(down)
    settle_and_compare(ns, stream, want, report, t0)
    record(tmp_path, "Redis stopped 30 s, back empty", report)


def broker_outage(ns: Namespace, cluster: FaultCluster, events: Any, want: Any,
                  fault: Callable[[float], None]) -> dict[str, Any]:
    """Every worker reaches the three brokers through the proxies: run them into ``fault(20)`` (every
    proxy's outage), report how they resumed and compare the results."""
    report: dict[str, Any] = {}
    t0 = time.monotonic()
    workers, stream = begin(ns, events, 0.4, via=[cluster.proxied_bootstrap] * WORKERS)
    fault(20)
    began = time.monotonic()
    time.sleep(20)
    resumed_from = ok_count(workers)
    wait_for(lambda: ok_count(workers) > resumed_from + 1000, 300, "processing to resume after the outage")
    report["resumed_after_cut_s"] = since(began)
    report["ready_after_cut_s"] = round(max(ready_after(w, began) for w in workers), 1)
    settle_and_compare(ns, stream, want, report, t0)
    return report


def test_broker_connections_cut_for_20s(namespace: Namespace, cluster: FaultCluster, events: Any, want: Any,
                                        tmp_path: Path) -> None:
    report = broker_outage(namespace, cluster, events, want, cluster.cut)
    record(tmp_path, "broker connections cut 20 s (proxies)", report)


def test_broker_connections_go_silent_for_20s(namespace: Namespace, cluster: FaultCluster, events: Any,
                                              want: Any, tmp_path: Path) -> None:
    # no close, no reset: every request in flight waits for its client's time-out (guard 8's, for the producer)
    report = broker_outage(namespace, cluster, events, want, cluster.silence)
    record(tmp_path, "broker connections silent 20 s (proxies)", report)


def test_partition_leader_broker_sigkilled_at_30_restarted_at_60(namespace: Namespace, cluster: FaultCluster,
                                                                  events: Any, want: Any, tmp_path: Path) -> None:
    ns, report, t0 = namespace, dict[str, Any](), time.monotonic()
    workers, stream = begin(ns, events, 0.3)
    sources = list(ns.settings.keyed_topics)
    leads = cluster.kafka.leaders(sources)
    victim = max(leads, key=lambda node_id: leads[node_id])
    report["killed_node"], report["source_partitions_it_led"] = victim, leads[victim]
    at_kill = ok_count(workers)
    cluster.kafka.node(victim).kill()
    killed = time.monotonic()
    wait_for(lambda: cluster.kafka.leaders(sources)[victim] == 0, 120, f"node {victim}'s partitions to move")
    report["leaders_moved_s"] = since(killed)
    moved = ok_count(workers)
    report["processed_until_leaders_moved"] = moved - at_kill
    wait_for(lambda: ok_count(workers) > moved + 1000, 300, "processing on the new leaders")
    report["processing_on_new_leaders_s"] = since(killed)
    stream.wait_produced(0.6)
    back = time.monotonic()
    cluster.kafka.node(victim).start()
    report["broker_restart_ready_s"] = since(back)
    cluster.kafka.wait_in_sync(cluster.topics(), timeout=300)
    report["broker_back_in_sync_s"] = since(back)
    report["killed_for_s"] = round(back - killed, 1)
    settle_and_compare(ns, stream, want, report, t0)
    record(tmp_path, "broker leading partitions SIGKILLed at 30%, restarted at 60%", report)


def test_rolling_restart_of_every_broker(namespace: Namespace, cluster: FaultCluster, events: Any, want: Any,
                                         tmp_path: Path) -> None:
    ns, report, t0 = namespace, dict[str, Any](), time.monotonic()
    workers, stream = begin(ns, events, 0.1)
    for node in cluster.kafka.nodes:  # one at a time, the next only once every replica is back in sync
        began = time.monotonic()
        node.restart()
        report[f"node_{node.node_id}_restart_s"] = since(began)
        cluster.kafka.wait_in_sync(cluster.topics(), timeout=300)
        report[f"node_{node.node_id}_in_sync_s"] = since(began)
    report["rolling_restart_s"] = since(t0)
    report["produced_when_done"] = f"{stream.produced / len(stream.events):.0%}"
    settle_and_compare(ns, stream, want, report, t0)
    record(tmp_path, "rolling restart of the 3 brokers", report)


CUT_OFF = 25  # seconds one worker cannot reach any broker: longer than its session timeout


def test_one_worker_cut_off_longer_than_its_session(namespace: Namespace, cluster: FaultCluster, events: Any,
                                                    want: Any, tmp_path: Path) -> None:
    assert CUT_OFF > WORKER["session_timeout"] + 2 * WORKER["heartbeat_interval"]
    ns, report, t0 = namespace, dict[str, Any](), time.monotonic()
    # only the first worker goes through the proxies; the others connect directly
    workers, stream = begin(ns, events, 0.4, via=[cluster.proxied_bootstrap, None, None])
    lonely, others = workers[0], workers[1:]
    cluster.cut(CUT_OFF)
    began = time.monotonic()
    wait_for(lambda: sum(map(owned, others)) == PARTITIONS, 120, "the other workers to own every partition")
    report["others_own_every_partition_s"] = since(began)
    time.sleep(max(began + CUT_OFF - time.monotonic(), 0))
    wait_for(lambda: owned(lonely) > 0 and lonely.get("/readyz")[0] == 200, 180, "the cut-off worker to rejoin")
    report["cut_off_worker_rejoined_s"] = since(began)
    report["rejoined_after_cut_ended_s"] = round(report["cut_off_worker_rejoined_s"] - CUT_OFF, 1)
    report["ready_all_s"] = round(max(ready_after(w, began) for w in workers), 1)
    settle_and_compare(ns, stream, want, report, t0)
    record(tmp_path, f"one worker cut off from every broker for {CUT_OFF} s", report)
