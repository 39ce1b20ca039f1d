"""Trends with two workers through the broker and Redis: one point per boundary of stream time, cluster-wide counts.

The stream clock is moved across each boundary by a login of one "pacer" customer that only ever logs in, so
the crossing itself changes no count (whichever worker sees the clock first records the point, possibly before
the pacer's own view is written). Between crossings the test waits until every view holds its customer's
orders, then takes the expected counts from the views in Redis.

Tier and churn counts are read from the counts hash ``<prefix>:n`` that the view write script keeps.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, cast

import orjson
import pytest

from agents.engine.evaluate import facts_schema
from rules import default_rules_dir, load_ruleset
from rules.churn import LEVELS
from stream.domain.events import format_ts, parse_ts

from .conftest import Namespace, Worker, wait_for

pytestmark = pytest.mark.integration
MINUTE = 60_000
BASE = parse_ts("2026-03-02T00:00:00Z")  # a boundary: a multiple of the minute
CUSTOMERS = 24


def boundary(k: int) -> int:
    return BASE + k * MINUTE


def owned(worker: Worker, topic: str) -> set[str]:
    status, stats = worker.get("/stats?partitions")
    return {tp for tp in (stats or {}).get("partitions", {}) if tp.startswith(f"{topic}[")} if status == 200 else set()


def views(ns: Namespace) -> dict[str, dict[str, Any]]:
    prefix = ns.settings.redis_prefix
    return {key.decode()[len(prefix) + 3:]: orjson.loads(cast(bytes, ns.redis.get(key) or b"{}"))
            for key in ns.redis.scan_iter(f"{prefix}:c:*", count=1000)}


def counts_of_views(ns: Namespace, tags: list[str]) -> dict[str, dict[str, int]]:
    docs = list(views(ns).values())
    tiers = Counter(d.get("tier") for d in docs)
    churn = Counter((d.get("churn") or {}).get("level") for d in docs)
    held = Counter(t for d in docs for t in d.get("tags", []))
    return {"tiers": {t: tiers[t] for t in "ABCD"}, "churn": {lv: churn[lv] for lv in LEVELS},
            "tags": {t: held[t] for t in tags}}


def points(ns: Namespace) -> list[tuple[int, dict[str, Any]]]:
    rows = cast(list[tuple[bytes, float]],
                ns.redis.zrangebyscore(f"{ns.settings.redis_prefix}:trends", "-inf", "+inf", withscores=True))
    return [(int(score), orjson.loads(member)) for member, score in rows]


def point_at(ns: Namespace, at: int) -> dict[str, Any]:
    found = wait_for(lambda: [p for s, p in points(ns) if s == at], 60, f"the trend point at {format_ts(at)}")
    assert len(found) == 1, found
    return found[0]  # type: ignore[no-any-return]


def pace(ns: Namespace, k: int, n: int) -> None:
    """The pacer logs in just after boundary ``k``: the stream clock passes it."""
    ns.produce("login", {"event_id": f"pace-{k}-{n}", "customer_id": "pacer", "ts": boundary(k) + 500 + n})


def test_two_workers_record_one_point_per_boundary_with_the_cluster_wide_counts(namespace: Namespace) -> None:
    ns = namespace
    tags = [r.tag for r in load_ruleset(default_rules_dir(), facts_schema()).rules]
    first, second = ns.worker(trend_interval=60), ns.worker(trend_interval=60)
    topic, partitions = ns.topic("order"), ns.settings.partitions

    def split() -> bool:
        mine, theirs = owned(first, topic), owned(second, topic)
        return bool(mine and theirs and not mine & theirs and len(mine | theirs) == partitions)

    wait_for(split, 90, "the two workers to split the partitions")
    pace(ns, 0, 0)
    wait_for(lambda: ns.view("pacer"), 60, "the pacer's view")
    point_at(ns, boundary(0))  # recorded at the first flush after the clock passed it: the pacer, or nothing yet

    spend: dict[str, float] = {}
    for k in range(3):  # orders inside minute k, then the pacer crosses into minute k + 1
        for i in range(CUSTOMERS):
            cid = f"c{i:02d}"
            for j in range(1 + (i + k) % 4):  # some customers get to frequent_buyer, some to big_spender
                amount = 150.0 * (i + 1) * (j + 1) + (4000.0 if i % 7 == 3 else 0.0)
                ns.producer.produce(ns.topic("order"), key=cid, value=orjson.dumps(
                    {"event_id": f"o-{k}-{i}-{j}", "customer_id": cid, "order_id": f"o-{k}-{i}-{j}",
                     "ts": boundary(k) + 1000 + 1000 * j + i, "amount": f"{amount:.2f}"}))
                spend[cid] = spend.get(cid, 0.0) + amount
        ns.flush()

        def settled() -> bool:
            docs = views(ns)
            return all(abs((docs.get(c) or {}).get("aggregates", {}).get("spend_365d", -1) - s) < 1e-6
                       for c, s in spend.items())

        wait_for(settled, 90, f"every view to hold the orders of minute {k}", interval=0.5)
        expected = counts_of_views(ns, tags)
        assert sum(expected["tiers"].values()) == CUSTOMERS + 1
        pace(ns, k + 1, 0)
        point = point_at(ns, boundary(k + 1))
        assert point["at"] == format_ts(boundary(k + 1))
        assert point["tags"] == expected["tags"], k
        raw_n = ns.redis.hgetall(f"{ns.settings.redis_prefix}:n")
        assert raw_n, f"no counts hash {ns.settings.redis_prefix}:n: the view write script does not keep it"
        assert {"tiers": point["tiers"], "churn": point["churn"]} == \
            {"tiers": expected["tiers"], "churn": expected["churn"]}, k

    pace(ns, 9, 0)  # the clock jumps six boundaries: only the latest gets a point
    point_at(ns, boundary(9))
    pace(ns, 9, 1)  # a second login in the same minute: no new point
    wait_for(lambda: (ns.view("pacer") or {}).get("aggregates", {}).get("logins_7d") == 6, 60,
             "the pacer's sixth login")
    got = points(ns)
    assert [s for s, _ in got] == [boundary(k) for k in (0, 1, 2, 3, 9)], [format_ts(s) for s, _ in got]
    recorded = sum(w.log_path.read_text(errors="replace").count("trend point recorded") for w in ns.workers)
    assert recorded == len(got)  # each point was recorded by one worker

    # the API on either worker: every role, from/to, a bad bound
    status, body = second.get(f"/trends?from={format_ts(boundary(1))}&to={boundary(3)}", who="viewer")
    assert status == 200 and body["interval_s"] == 60
    assert [p["at"] for p in body["points"]] == [format_ts(boundary(k)) for k in (1, 2, 3)]
    assert all(set(p) == {"at", "tiers", "tags"} and set(p["tags"]) <= {"big_spender", "frequent_buyer", "new_customer"}
               for p in body["points"])
    status, body = first.get("/trends", who="sales")
    assert status == 200 and len(body["points"]) == 5
    assert all("churn" in p and "has_open_complaint" not in p["tags"] and "inactive_30d" in p["tags"]
               for p in body["points"])
    status, body = second.get("/trends", who="admin")
    assert status == 200 and [p for _, p in got] == body["points"]
    status, body = first.get("/trends?from=last+tuesday", who="finance")
    assert status == 400 and body["parameter"] == "from" and "cannot parse" in body["error"]
    assert first.get("/trends", who=None)[0] == 401
