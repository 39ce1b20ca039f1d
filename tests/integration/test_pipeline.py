"""End-to-end: real Tansu broker, real redis-server, real worker processes."""

from __future__ import annotations

import math
import random
import signal
from collections import defaultdict
from typing import Any

import orjson
import pytest

from .conftest import Namespace, rules_without_bands, wait_for

pytestmark = pytest.mark.integration

DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def order(cid: str, eid: str, day: float, amount: Any, **extra: Any) -> dict[str, Any]:
    return {"event_id": eid, "customer_id": cid, "ts": int(T0 + day * DAY), "order_id": f"o-{eid}",
            "amount": amount, **extra}


def login(cid: str, eid: str, day: float) -> dict[str, Any]:
    return {"event_id": eid, "customer_id": cid, "ts": int(T0 + day * DAY)}


def view_of(ns: Namespace, cid: str, check: Any, timeout: float = 60) -> dict[str, Any]:
    return wait_for(lambda: (v := ns.view(cid)) is not None and check(v) and v, timeout, f"view of {cid}")


def test_tags_duplicates_order_rekey_and_bad_input(namespace: Namespace) -> None:
    ns = namespace
    worker = ns.worker()

    # a customer crossing into big_spender, with the evidence in the reason
    ns.produce("order", order("c-big", "b1", 1, 6000))
    ns.produce("order", order("c-big", "b2", 2, "5000.50"))
    changes = ns.changes("c-big", lambda cs: any("big_spender" in c["added"] for c in cs))
    crossing = next(c for c in changes if "big_spender" in c["added"])
    assert crossing["reasons"]["big_spender"] == "spend_365d=11000.50 >= 10000"
    assert crossing["trigger"] == {"kind": "event", "topic": ns.settings.orders_topic, "event_id": "b2"}
    assert crossing["tags"] == sorted(crossing["tags"]) and "big_spender" in crossing["tags"]
    assert set(crossing) >= {"customer_id", "tags", "added", "removed", "tier", "previous_tier", "score",
                             "reasons", "trigger", "event_time", "emitted_at", "ruleset_version"}

    # a duplicate event (producer retry) is counted once
    ns.produce("order", order("c-dup", "d1", 3, 100))
    ns.produce("order", order("c-dup", "d1", 3, 100))
    ns.produce("order", order("c-dup", "d2", 4, 1))
    v = view_of(ns, "c-dup", lambda v: v["aggregates"]["last_order_at"] == "2026-01-05T00:00:00.000Z")
    assert v["aggregates"]["orders_total"] == 2 and v["aggregates"]["spend_365d"] == 101.0

    # an out-of-order event lands in the right place
    ns.produce("order", order("c-ooo", "x1", 10, 50))
    ns.produce("order", order("c-ooo", "x2", 2, 70))
    v = view_of(ns, "c-ooo", lambda v: v["aggregates"]["orders_total"] == 2)
    assert v["aggregates"]["first_order_at"] == "2026-01-03T00:00:00.000Z"
    assert v["aggregates"]["last_order_at"] == "2026-01-11T00:00:00.000Z"
    assert v["aggregates"]["mean_order_gap_days"] == 8.0
    assert v["aggregates"]["spend_30d"] == 120.0

    # mis-keyed events (empty key, wrong key, wrong partition) are still counted for the right customer
    ns.produce("order", order("c-mis", "m1", 5, 10), key=None)
    ns.produce("order", order("c-mis", "m2", 5, 20), key="somebody-else")
    ns.produce("order", order("c-mis", "m3", 5, 30), key="c-mis", partition=1)
    ns.produce("order", order("c-mis", "m3", 5, 30), key="c-mis", partition=2)  # retry, other partition
    v = view_of(ns, "c-mis", lambda v: v["aggregates"]["orders_total"] >= 3)
    assert v["aggregates"]["spend_365d"] == 60.0
    status, api = worker.get("/customers/c-mis")
    assert status == 200 and api["aggregates"]["orders_total"] == 3
    assert set(api) >= {"customer_id", "tags", "tier", "score", "reasons", "aggregates"}
    assert worker.get("/customers/nobody")[0] == 404

    # bad input: each one is dead-lettered with its reason; processing goes on
    bad: list[tuple[bytes | dict[str, Any], str]] = [
        (b"{not json", "not valid JSON"),
        ({"event_id": "e1", "ts": T0, "order_id": "o", "amount": 1}, "customer_id"),
        (order("c-bad", "e2", 1, -5), "amount"),
        (order("c-bad", "e3", 1, 5, status="shipped"), "status"),
        ({**order("c-bad", "e4", 1, 5), "ts": "yesterday"}, "ts"),
        (b'{"customer_id": "c-bad", "pad": "' + b"x" * (10 << 20) + b'"}', "bytes"),
        ({**order("c-bad", "e5", 1, 5), "amount": {"v": 5}}, "amount"),
        (order("c-bad", "e6", 1, 5, currency="EUR"), "currency"),
        (b"\xff\xfe not utf-8", "UTF-8"),
    ]
    for value, _ in bad:
        ns.produce("order", value, key="c-bad")
    ns.produce("login", login("c-after", "l1", 6))
    letters = ns.read(ns.settings.dead_letters_topic, lambda rs: len(rs) >= len(bad), timeout=90)
    errors = [r["value"]["error"] for r in letters]
    for (_, expected), error in zip(bad, errors, strict=True):
        assert expected in error, (expected, error)
    assert all({"topic", "partition", "offset", "key", "value", "failed_at"} <= set(r["value"]) for r in letters)
    assert letters[-1]["value"].get("value_base64") is True
    huge = next(r["value"] for r in letters if "bytes" in r["value"]["error"])
    assert huge["value_truncated"] is True and huge["value_size"] > 10 << 20
    view_of(ns, "c-after", lambda v: v["aggregates"]["logins_30d"] == 1)
    assert worker.proc.poll() is None

    # Redis is a projection: flushed, it is rebuilt from the table
    before = ns.view("c-big")
    ns.redis.flushdb()
    after = view_of(ns, "c-big", lambda v: True, timeout=30)
    def timeless(view: dict[str, Any]) -> dict[str, Any]:  # days_since_* follow the clock
        return {k: v for k, v in view["aggregates"].items() if not k.startswith("days_since")}

    assert after["tags"] == before["tags"] and timeless(after) == timeless(before)
    assert ns.redis.zscore(f"{ns.settings.redis_prefix}:spend365", "c-big") == 11000.5


def test_tier_changes_because_of_other_customers_spend(namespace: Namespace) -> None:
    ns = namespace
    # exact tiers: without bands (equal entry and exit fractions) tiers are the plain rank definition
    ns.worker(sweep_chunk=2, rules_dir=rules_without_bands(ns.tmp))  # re-evaluation in chunks of 2 per partition
    ns.produce("order", order("t-1", "t1", 1, 100))
    view_of(ns, "t-1", lambda v: v["aggregates"]["spend_365d"] == 100.0)
    ns.reevaluate()
    assert view_of(ns, "t-1", lambda v: v["tier"] == "A")["tier"] == "A"

    spends = {f"t-{i}": 1000.0 + i for i in range(2, 21)}
    for cid, amount in spends.items():
        ns.produce("order", order(cid, f"e-{cid}", 2, amount))
    for cid in spends:
        view_of(ns, cid, lambda v: v["aggregates"]["spend_365d"] > 0)
    ns.reevaluate()

    spends["t-1"] = 100.0
    ranked = sorted(spends.values(), reverse=True)
    n = len(ranked)
    a_cut, b_cut = ranked[math.ceil(0.05 * n) - 1], ranked[math.ceil(0.20 * n) - 1]
    for cid, spend in spends.items():
        expected = "A" if spend >= a_cut else "B" if spend >= b_cut else None
        tier = view_of(ns, cid, lambda v: v["tier"] is not None)["tier"]
        if expected:
            assert tier == expected, (cid, spend, tier)
        else:
            assert tier in ("C", "D"), (cid, spend, tier)
    demoted = ns.changes("t-1", lambda cs: any(c["previous_tier"] == "A" for c in cs))
    change = next(c for c in demoted if c["previous_tier"] == "A")
    assert change["trigger"]["kind"] == "manual" and change["tier"] != "A"


def _history(seed: int, customers: int, events: int) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(seed)
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(events):
        cid = f"k-{rng.randrange(customers):03d}"
        day = rng.uniform(0, 400)
        if rng.random() < 0.6:
            status = rng.choice(["paid"] * 8 + ["refunded", "placed"])
            out.append(("order", order(cid, f"k{i}", day, round(rng.uniform(1, 500), 2), status=status)))
        else:
            out.append(("login", login(cid, f"k{i}", day)))
    return out


def _expected(history: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Independent batch recomputation (day-bucket windows at now = the last event time)."""
    now_day = max(e["ts"] for _, e in history) // DAY
    seen: set[str] = set()
    agg: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(float))
    for kind, e in history:
        if (kind, e["event_id"]) in seen:
            continue
        seen.add((kind, e["event_id"]))
        a, age = agg[e["customer_id"]], now_day - e["ts"] // DAY
        if kind == "order":
            sign = {"paid": 1, "refunded": -1}.get(e.get("status", "paid"), 0)
            for n in (30, 90, 365):
                if age < n:
                    a[f"spend_{n}d"] += sign * e["amount"]
                    a[f"orders_{n}d"] += sign == 1
            a["orders_total"] += sign == 1
        else:
            for n in (7, 30):
                a[f"logins_{n}d"] += age < n
    return {cid: {k: round(v, 4) for k, v in a.items()} for cid, a in agg.items()}


def test_sigkill_mid_stream_loses_nothing_and_counts_nothing_twice(namespace: Namespace) -> None:
    ns = namespace
    history = [("login", login("k-000", "latest", 401))]  # the latest event time comes first
    history += _history(seed=11, customers=60, events=3000)
    history += random.Random(5).sample(history, 200)  # producer retries: same event ids again
    half = len(history) // 2
    for kind, event in history[:half]:
        ns.producer.produce(ns.topic(kind), key=event["customer_id"], value=orjson.dumps(event))
    ns.flush()
    first = ns.worker()
    wait_for(lambda: first.get("/stats")[1]["outcomes"].get("ok", 0) > 300, 90, "processing to start")
    first.signal(signal.SIGKILL)
    ns.redis.delete(f"{ns.settings.redis_prefix}:clock")  # the stream clock must come back from the changelog
    for kind, event in history[half:]:
        ns.producer.produce(ns.topic(kind), key=event["customer_id"], value=orjson.dumps(event))
    ns.flush()
    second = ns.worker()

    expected = _expected(history)
    fields = ["spend_30d", "spend_90d", "spend_365d", "orders_30d", "orders_90d", "orders_365d",
              "orders_total", "logins_7d", "logins_30d"]

    def mismatches() -> list[str]:
        bad = []
        for cid, exp in expected.items():
            got = (ns.view(cid) or {}).get("aggregates", {})
            for f in fields:
                if abs(float(got.get(f, -1)) - exp.get(f, 0.0)) > 1e-6:
                    bad.append(f"{cid}.{f}: got {got.get(f)} want {exp.get(f, 0.0)}")
        return bad

    def settled() -> bool:
        ns.reevaluate()  # views are written at each customer's own last event; refresh to "now"
        return not mismatches()

    try:
        wait_for(settled, 120, "aggregates to equal the batch recomputation", interval=1)
    finally:
        assert mismatches() == [], "\n".join(mismatches())

    def orders_partitions() -> dict[str, dict[str, Any]]:  # /stats: where each assigned partition stands
        stats = second.get("/stats?partitions")[1]
        return {tp: s for tp, s in stats["partitions"].items() if tp.startswith(ns.topic("order"))}

    wait_for(lambda: orders_partitions() and all(s["committed"] == s["highwater"] == s["position"]
                                                 for s in orders_partitions().values()), 30, "everything committed")
    assert all(s["active"] and not s["paused"] and s["acked"] == 0 for s in orders_partitions().values())
