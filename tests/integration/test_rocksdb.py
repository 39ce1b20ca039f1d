"""The production state store: Faust's RocksDB store (rocksdict) on a real worker.

One worker on ``TAGGER_STORE=rocksdb://`` processes events and stops. Its
local RocksDB state holds, per partition, the last changelog offset it wrote,
equal to the changelog's last offset, so a restart reads only the tail. It
restarts on that state (and takes more events), then restarts once more with
its data directory deleted and Redis emptied, so everything comes back from
the changelog. Both runs must give the same views, and the aggregates of both
must equal an independent batch recomputation.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import rocksdict

from stream.kafka.kafka_admin import consume_all

from .conftest import Namespace, Worker, wait_for
from .test_pipeline import _expected, _history, login

pytestmark = pytest.mark.integration

FIELDS = ["spend_30d", "spend_90d", "spend_365d", "orders_30d", "orders_90d", "orders_365d",
          "orders_total", "logins_7d", "logins_30d"]
OFFSET_KEY = b"__faust\0offset__"  # where Faust's RocksDB store keeps the last changelog offset applied


def _produce(ns: Namespace, history: list[tuple[str, dict[str, Any]]]) -> None:
    for kind, event in history:
        ns.producer.produce(ns.topic(kind), key=event["customer_id"], value=orjson.dumps(event))
    ns.flush()


def _mismatches(ns: Namespace, expected: dict[str, dict[str, Any]]) -> list[str]:
    bad = []
    for cid, exp in expected.items():
        got = (ns.view(cid) or {}).get("aggregates", {})
        for f in FIELDS:
            if abs(float(got.get(f, -1)) - exp.get(f, 0.0)) > 1e-6:
                bad.append(f"{cid}.{f}: got {got.get(f)} want {exp.get(f, 0.0)}")
    return bad


def _settle(ns: Namespace, expected: dict[str, dict[str, Any]]) -> None:
    def settled() -> bool:
        ns.reevaluate()  # views are written at each customer's own last event; refresh to "now"
        return not _mismatches(ns, expected)

    try:
        wait_for(settled, 120, "aggregates to equal the batch recomputation", interval=1)
    finally:
        assert _mismatches(ns, expected) == [], "\n".join(_mismatches(ns, expected)[:20])


def _snapshot(ns: Namespace, customers: list[str]) -> dict[str, Any]:
    """What a customer's view says, less the moment of its last evaluation."""
    out = {}
    for cid in customers:
        view = ns.view(cid) or {}
        out[cid] = {k: view.get(k) for k in ("aggregates", "tags", "tier", "score", "score_breakdown", "churn")}
    return out


def _converged(ns: Namespace, customers: list[str]) -> dict[str, Any]:
    """The views once one more re-evaluation leaves them as they are.

    Scores rank each spend against tier cut-offs the worker reads from Redis every
    second; right after Redis was emptied those still come from a partial rebuild.
    """
    seen: list[dict[str, Any]] = [_snapshot(ns, customers)]

    def unchanged() -> bool:
        ns.reevaluate()
        seen.append(_snapshot(ns, customers))
        return seen[-1] == seen[-2]

    wait_for(unchanged, 120, "views to stop changing", interval=1)
    return seen[-1]


def _ready(worker: Worker) -> float:
    """Seconds from start until /readyz answers 200 (recovery finished, partitions assigned)."""
    started = time.monotonic()
    worker.start()
    wait_for(lambda: worker.get("/readyz")[0] == 200, 120, "worker ready")
    return time.monotonic() - started


def _persisted_offsets(datadir: Path) -> dict[int, int]:
    """Partition -> last changelog offset the local RocksDB state holds (read with the worker stopped)."""
    offsets = {}
    for path in sorted(datadir.rglob("customers-*.db")):
        partition = int(path.name.removesuffix(".db").rsplit("-", 1)[1])
        db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True),
                             access_type=rocksdict.AccessType.read_only())
        try:
            raw = db.get(OFFSET_KEY)
        finally:
            db.close()
        if raw is not None:
            offsets[partition] = int(raw)
    return offsets


def test_rocksdb_restart_with_and_without_local_state(namespace: Namespace) -> None:
    ns = namespace
    history = [("login", login("k-000", "latest", 401))]  # the latest event time comes first
    history += _history(seed=23, customers=80, events=2400)
    first, rest = history[:1800], history[1800:]
    _produce(ns, first)
    worker = ns.worker(store="rocksdb://")
    datadir = Path(worker.env["TAGGER_DATADIR"])
    _settle(ns, _expected(first))
    worker.stop()

    # local state is on disk, and holds every changelog record the worker wrote
    changelog = consume_all(ns.services.bootstrap, f"{ns.settings.app_id}-customers-changelog", timeout=30)
    last = {}
    for record in changelog:
        last[record["partition"]] = max(last.get(record["partition"], -1), record["offset"])
    assert last and _persisted_offsets(datadir) == last

    # restart on the local state: only the tail (nothing here) is read, then new events
    _produce(ns, rest)
    with_state = _ready(worker)
    _settle(ns, _expected(history))
    customers = sorted(_expected(history))
    kept = _converged(ns, customers)
    worker.stop()

    # restart without local state: data directory gone, Redis emptied; all from the changelog
    shutil.rmtree(datadir)
    for key in ns.redis.scan_iter(match=f"{ns.settings.redis_prefix}:*", count=1000):
        ns.redis.delete(key)
    without_state = _ready(worker)
    _settle(ns, _expected(history))
    rebuilt = _converged(ns, customers)
    assert rebuilt == kept
    print(f"ready after restart: with local state {with_state:.1f}s, without {without_state:.1f}s")  # noqa: T201
