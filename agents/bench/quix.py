"""The Quix Streams peer of ``tagger bench``: the tagger's spend job written the Quix way, in its own process.

``python -m agents.bench.quix`` reads the settings of a bench group (``agents/bench/workers.py``), as
a worker does, from its environment: ``KAFKA_BOOTSTRAP_SERVERS``, ``TAGGER_APP_ID`` as its consumer
group, ``TAGGER_PARTITIONS``, the group's ``TAGGER_*_TOPIC`` names, ``TAGGER_WEB_PORT``,
``TAGGER_DATADIR`` for its RocksDB state, ``TAGGER_COMMIT_INTERVAL``; so the bench starts, waits for
and stops it like a worker.

The job, per customer (the message key), with Quix's own RocksDB state and changelog topic:

- net spend over 30/90/365 days and paid-order counts over the same windows, in UTC day buckets
  by event time (``ts``), exactly as ``stream/domain/state.py``: a window of N days at ``now`` holds the
  days d with day(now) - N < d <= day(now); paid orders add their amount, refunds subtract theirs
  in their own day; cancelled and placed orders count nowhere; buckets at or before
  day(now) - 366 are dropped. Money is summed in integer units of 1/10,000 (``AMOUNT_SCALE``).
- ``ts`` is read by the tagger's own ``stream.domain.events.parse_ts``; ``now`` is the wall clock, as
  for the bench's tagger workers (``TAGGER_CLOCK`` default ``wall``).
- one tag, ``big_spender``, with the hysteresis of ``rules/default/tags.yaml``: on when
  ``spend_365d >= 10000``, off again only when ``spend_365d < 8000``; a change is sent to the
  group's tag-changes topic (with ``trigger.event_id``), nothing else is.
- logins and support tickets are read (and decoded) and counted, nothing more: the tagger's
  other aggregates, its rule set, tiers, churn, Redis views and duplicate checks have no
  counterpart here. Envelopes (``{"batch_id", "events": [...]}``, key None) are unpacked, and
  their customers' state lives under the envelope's (None) key prefix, one entry per customer.

HTTP on ``TAGGER_WEB_PORT`` (what the bench polls): ``/readyz`` 200 once the consumer group is
stable with partitions assigned to every member; ``/stats`` ``{"outcomes": {"event": n},
"tagged": m}`` (events finished, as a worker's /stats; customers holding big_spender);
``/latency?from=i`` the in-process latencies (s) from the i-th on: input's Kafka timestamp to
the tag change handed to Quix's producer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import orjson

from stream.domain.events import parse_ts  # the tagger's reading of ``ts``: RFC 3339 with an offset, or epoch ms
from stream.settings import Settings

DAY_MS = 86_400_000
HORIZON_DAYS = 366
AMOUNT_SCALE = 10_000
WINDOWS = (30, 90, 365)
TAG, ENTER, EXIT = "big_spender", 10_000 * AMOUNT_SCALE, 8_000 * AMOUNT_SCALE


# --- the job's pure part ---------------------------------------------------------------------


def fold_order(days: dict[str, list[int]], event: Mapping[str, Any], today: int) -> None:
    """Add a paid order (spend and count) or subtract a refund in its event's day bucket."""
    status, day = event.get("status"), parse_ts(event["ts"]) // DAY_MS
    if day <= today - HORIZON_DAYS or status not in ("paid", "refunded"):
        return
    units = round(float(event.get("amount") or 0) * AMOUNT_SCALE)
    bucket = days.setdefault(str(day), [0, 0])
    if status == "paid":
        bucket[0] += units
        bucket[1] += 1
    else:
        bucket[0] -= units


def window_sums(days: dict[str, list[int]], today: int) -> dict[str, float | int]:
    """spend_Nd (major units) and orders_Nd for N in 30/90/365 at ``today``; drops buckets past the horizon."""
    out: dict[str, float | int] = {}
    spend = dict.fromkeys(WINDOWS, 0)
    orders = dict.fromkeys(WINDOWS, 0)
    for key in [k for k in days if int(k) <= today - HORIZON_DAYS]:
        del days[key]
    for key, (units, count) in days.items():
        age = today - int(key)
        for n in WINDOWS:
            if 0 <= age < n:
                spend[n] += units
                orders[n] += count
    for n in WINDOWS:
        out[f"spend_{n}d"], out[f"orders_{n}d"] = spend[n] / AMOUNT_SCALE, orders[n]
    return out


def tagged(was: bool, spend_365d_units: float) -> bool:
    """big_spender after this event: enter at 10,000, leave below 8,000."""
    return spend_365d_units >= EXIT if was else spend_365d_units >= ENTER


def apply_orders(record: dict[str, Any] | None, events: Iterable[Mapping[str, Any]],
                 now_ms: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(new state, tag change or None) of one customer after ``events`` (their orders)."""
    record = record or {"d": {}, "t": False}
    today = now_ms // DAY_MS
    last: Mapping[str, Any] = {}
    for event in events:
        fold_order(record["d"], event, today)
        last = event
    sums = window_sums(record["d"], today)
    now_tagged = tagged(record["t"], sums["spend_365d"] * AMOUNT_SCALE)
    if now_tagged == record["t"]:
        return record, None
    record["t"] = now_tagged
    change = {"customer_id": last.get("customer_id"), "tag": TAG, "added": now_tagged, "at": now_ms, **sums,
              "trigger": {"event_id": last.get("event_id"), "ts": last.get("ts")}}
    return record, change


# --- the Quix application --------------------------------------------------------------------


class Counters:
    """What the HTTP thread reports: events finished and tag-change latencies (the job's thread writes)."""

    def __init__(self) -> None:
        self.events = 0
        self.tagged = 0  # customers holding big_spender now
        self.latencies: list[float] = []


def _events(value: Any) -> list[Mapping[str, Any]]:
    return value["events"] if isinstance(value, dict) and isinstance(value.get("events"), list) else [value]


def build_app(settings: Settings, counters: Counters) -> Any:
    """The Quix Application of a bench group's settings (its three inputs, one output)."""
    from quixstreams import Application
    from quixstreams.models import TopicConfig

    app = Application(broker_address=settings.kafka_bootstrap_servers, consumer_group=settings.app_id,
                      auto_offset_reset="earliest", commit_interval=settings.commit_interval,
                      state_dir=settings.datadir / "quix-state", loglevel="WARNING",
                      processing_guarantee="at-least-once")
    config = TopicConfig(num_partitions=settings.partitions, replication_factor=1)

    def topic(name: str) -> Any:
        return app.topic(name, value_deserializer="json", value_serializer="json", config=config)

    def on_orders(value: Any, key: Any, timestamp: int, headers: Any, state: Any) -> list[dict[str, Any]]:
        events = _events(value)
        by_customer: dict[str, list[Mapping[str, Any]]] = {}
        for event in events:
            by_customer.setdefault(str(event.get("customer_id")), []).append(event)
        now_ms, changes = int(time.time() * 1000), []
        for customer, theirs in by_customer.items():
            record, change = apply_orders(state.get(customer), theirs, now_ms)
            state.set(customer, record)
            if change is not None:
                changes.append(change)
                counters.tagged += 1 if change["added"] else -1
                counters.latencies.append(time.time() - timestamp / 1000)
        counters.events += len(events)
        return changes

    def count(value: Any) -> None:
        counters.events += len(_events(value))

    out = topic(settings.tag_changes_topic)
    orders = app.dataframe(topic(settings.orders_topic))
    orders.apply(on_orders, stateful=True, metadata=True, expand=True).to_topic(
        out, key=lambda change: str(change["customer_id"]).encode())
    for name in (settings.logins_topic, settings.tickets_topic):
        app.dataframe(topic(name)).update(count)
    return app


def _ready(bootstrap: str, group: str) -> bool:
    """The consumer group is stable and every member holds partitions."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    try:
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        description = admin.describe_consumer_groups([group], request_timeout=3)[group].result(timeout=5)
    except Exception:  # noqa: BLE001 - any error means "not ready yet"
        return False
    members = description.members
    return (description.state == ConsumerGroupState.STABLE and bool(members)
            and all(m.assignment and m.assignment.topic_partitions for m in members))


def serve(port: int, bootstrap: str, group: str, counters: Counters) -> ThreadingHTTPServer:
    """The HTTP endpoints the bench polls, in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            url = urlparse(self.path)
            status, body = 200, b""
            if url.path == "/readyz":
                status = 200 if _ready(bootstrap, group) else 503
            elif url.path == "/stats":
                body = orjson.dumps({"outcomes": {"event": counters.events}, "tagged": counters.tagged})
            elif url.path == "/latency":
                start = int(parse_qs(url.query).get("from", ["0"])[0])
                body = orjson.dumps(counters.latencies[start:])
            else:
                status = 404
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, name="bench-quix-http", daemon=True).start()
    return server


def main() -> None:
    """Run the job until SIGTERM (Quix stops its application on SIGTERM and SIGINT)."""
    settings, counters = Settings(), Counters()
    server = serve(settings.web_port, settings.kafka_bootstrap_servers, settings.app_id, counters)
    try:
        build_app(settings, counters).run()
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
