"""Latency measurement for ``tagger bench``: histogram deltas, the immediate path, the plot.

Two ways, both used:

- *inside*: the workers' own ``tagger_emit_latency_seconds`` histogram (Kafka timestamp of
  the event → its tag change sent), read from /metrics before and after a phase; the
  percentile is interpolated inside a bucket (:func:`percentile`).
- *outside*: for priority events (big orders, complaints: ``stream/domain/priority.py``) the bench
  records the wall time it produced each one, a consumer of the group's tag-changes topic
  records when the tag change with that ``trigger.event_id`` arrived, and the difference
  is the latency (:class:`TagChangeWatcher`, :func:`latencies`). Each priority event is for
  a new customer, so it always yields a tag change (``new_customer``, and ``big_spender`` or
  ``has_open_complaint``).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import click
import orjson

from agents.bench.workers import Group, get

Buckets = list[tuple[float, float]]
BIG_ORDER_AMOUNT = 20_000.0  # above the default TAGGER_BIG_ORDER_AMOUNT (10,000) and big_spender's bar


def latency_buckets(metrics_text: str, output: str = "tag_change",
                    since: str = "kafka_timestamp") -> Buckets:
    """Cumulative (upper bound, count) pairs of the emit-latency histogram in a /metrics page."""
    out = []
    prefix = "tagger_emit_latency_seconds_bucket{"
    for line in metrics_text.splitlines():
        if line.startswith(prefix) and f'output="{output}"' in line and f'since="{since}"' in line:
            labels, value = line[len(prefix):].rsplit("} ", 1)
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            out.append((float("inf") if le == "+Inf" else float(le), float(value)))
    return sorted(out)


def merge_buckets(snapshots: Iterable[Buckets]) -> Buckets:
    """One histogram from several workers' histograms (counts added per upper bound)."""
    total: dict[float, float] = {}
    for buckets in snapshots:
        for le, n in buckets:
            total[le] = total.get(le, 0.0) + n
    return sorted(total.items())


def snapshot(group: Group) -> Buckets:
    """The group's emit-latency histogram now (all workers merged)."""
    return merge_buckets(latency_buckets(get(port, "/metrics")[1].decode()) for port in group.ports)


def percentile(before: Buckets, after: Buckets, q: float) -> float | None:
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


def percentiles(before: Buckets, after: Buckets, prefix: str = "") -> dict[str, float | None]:
    """``{prefix}p50_s``, ``p95_s`` and ``p99_s`` between two snapshots."""
    return {f"{prefix}p{round(q * 100)}_s": percentile(before, after, q) for q in (0.5, 0.95, 0.99)}


def quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank q-quantile (0..1) of ``values``; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def trigger_event_id(value: bytes | None) -> str | None:
    """``trigger.event_id`` of a tag-change record (docs/CONTRACT.md), None if it has none."""
    try:
        trigger = orjson.loads(value or b"").get("trigger") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return None
    event_id = trigger.get("event_id") if isinstance(trigger, dict) else None
    return event_id if isinstance(event_id, str) else None


def latencies(sent: Mapping[str, float], arrived: Mapping[str, float]) -> list[float]:
    """Arrival minus send time of every sent event id that arrived (seconds)."""
    return [arrived[event_id] - at for event_id, at in sent.items() if event_id in arrived]


def priority_event(n: int, run: str, now_ms: int) -> tuple[str, bytes, bytes, str]:
    """The n-th priority event of a run: (kind, key, value, event_id); even n a big order, odd a complaint.

    Each is for a new customer, so it always changes that customer's tags.
    """
    event_id = f"bench-{run}-{n}"
    customer = f"bench-vip-{run}-{n}"
    body: dict[str, Any] = {"event_id": event_id, "customer_id": customer, "ts": now_ms}
    if n % 2 == 0:
        kind = "order"
        body.update(order_id=f"ord-{event_id}", amount=BIG_ORDER_AMOUNT, status="paid", currency="USD")
    else:
        kind = "ticket"
        body.update(ticket_id=f"tkt-{event_id}", action="opened", category="complaint", severity="high")
    return kind, customer.encode(), orjson.dumps(body), event_id


async def priority_traffic(bootstrap: str, topics: Mapping[str, str], count: int,
                           interval: float) -> dict[str, float]:
    """Produce ``count`` priority events ``interval`` s apart; event id → wall time sent."""
    from stream.kafka.kafka_admin import make_producer

    producer: Any = make_producer(bootstrap, **{"linger.ms": 0})
    run, sent = uuid.uuid4().hex[:8], {}
    for n in range(count):
        kind, key, value, event_id = priority_event(n, run, time.time_ns() // 1_000_000)
        sent[event_id] = time.time()
        producer.produce(topics[kind], value, key)
        producer.poll(0)
        await asyncio.sleep(interval)
    if await asyncio.to_thread(producer.flush, 30):
        raise click.ClickException("priority events not delivered to the broker within 30 s")
    return sent


class TagChangeWatcher:
    """Reads a tag-changes topic in a thread; notes the wall time each ``trigger.event_id`` arrived.

    Use as a context manager: entering returns once it reads at the topic's end, so records of events
    produced afterwards are seen as they come. It starts there: reading the earlier tag changes
    first kept the broker busy for the first seconds of the phase.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.arrived: dict[str, float] = {}
        self.stamped: dict[str, float] = {}  # the tag change's Kafka timestamp: when the worker sent it
        self._caught_up, self._stop = threading.Event(), threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bench-watch", daemon=True)

    def __enter__(self) -> TagChangeWatcher:
        self._thread.start()
        if not self._caught_up.wait(60) or self._error is not None:
            self.__exit__()
            raise click.ClickException(f"could not read {self.topic!r} to its end: {self._error or 'timed out'}")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        from confluent_kafka import OFFSET_END, Consumer, KafkaError, TopicPartition

        from stream.kafka.kafka_admin import client_config

        consumer = Consumer({**client_config(self.bootstrap), "group.id": f"bench-watch-{uuid.uuid4().hex}",
                             "enable.auto.commit": False, "enable.partition.eof": True, "fetch.wait.max.ms": 10})
        try:
            partitions = consumer.list_topics(self.topic, timeout=20).topics[self.topic].partitions
            consumer.assign([TopicPartition(self.topic, p, OFFSET_END) for p in partitions])
            at_end: set[int] = set()
            while not self._stop.is_set():
                batch = consumer.consume(1000, timeout=0.005)  # returns at 1,000 or the timeout: it adds to latency
                now = time.time()
                for msg in batch:
                    error = msg.error()
                    if error is None:
                        event_id = trigger_event_id(msg.value())
                        if event_id is not None and event_id not in self.arrived:
                            self.stamped[event_id] = msg.timestamp()[1] / 1000  # first: arrived is read meanwhile
                            self.arrived[event_id] = now
                    elif error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(msg.partition() or 0)
                if len(at_end) >= len(partitions):
                    self._caught_up.set()
        except BaseException as exc:  # noqa: BLE001 - reported by __enter__
            self._error = exc
            self._caught_up.set()
        finally:
            consumer.close()


def plot_latency(result: Mapping[str, Any], path: Path) -> None:
    """PNG of p50/p95/p99 (ms) against offered events/s, with the 1k ev/s and immediate-path points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["latency_by_rate"]
    rates = [row["offered_events_per_s"] for row in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, style in (("p50_s", "o-"), ("p95_s", "s-"), ("p99_s", "^-")):
        values = [row[key] * 1000 if row[key] is not None else math.nan for row in rows]
        ax.plot(rates, values, style, label=key[:-2])
    # the broker's share of the two cores (on Tansu it rises phase after phase: bench.py, phase 2)
    points = [(row["offered_events_per_s"], row["p99_s"], row.get("broker_cpu_percent"), 8) for row in rows]
    points += [(1000, result.get("latency_1k_p99_s"), result.get("latency_1k_broker_cpu_percent"), 8),
               (result.get("immediate_offered_events_per_s"), result.get("immediate_p99_s"),
                result.get("immediate_broker_cpu_percent"), -14)]  # below: the highest rate's label is above
    for rate, p99, broker, offset in points:
        if rate is not None and p99 is not None and broker is not None:
            ax.annotate(f"broker {broker:.0f}%", (rate, p99 * 1000), textcoords="offset points",
                        xytext=(0, offset), ha="center", fontsize=7)
    if result.get("latency_1k_p99_s") is not None:
        ax.plot([1000], [result["latency_1k_p99_s"] * 1000], "k*", markersize=11, label="p99 at 1,000 ev/s")
    if result.get("immediate_p99_s") is not None:
        ax.plot([result["immediate_offered_events_per_s"]], [result["immediate_p99_s"] * 1000], "rD",
                label="p99 big orders + complaints (end to end)")
    ax.axhline(100, color="grey", linestyle="--", linewidth=1, label="target p99 100 ms")
    ax.set_xlabel("offered events/s (single events, one worker)")
    ax.set_ylabel("latency, ms (event → tag change), log scale")
    ax.set_yscale("log")  # from tens of ms when idle to seconds when saturated, with the 100 ms target in view
    ax.set_title(f"tagger bench: {result['events']:,} events, {result['customers']:,} customers, "
                 f"batch {result['batch']}, load average {result['load_average_start']:.1f}\n"
                 f"in order: 1,000 ev/s, big orders + complaints, the rates; broker: "
                 f"{result.get('broker', 'tansu').capitalize()}'s CPU, % of a core",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
