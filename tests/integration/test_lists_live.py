"""Customer lists and histories on a real worker, through the broker and Redis: every filter and sort,
paging while customers change, bad parameters, CSV, roles; a history across a restart and an erasure."""

from __future__ import annotations

import csv
import io
import random
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest

from stream.devtools.embedded import ServiceGroup

from .conftest import Namespace, Worker, isolated_namespace, wait_for

pytestmark = pytest.mark.integration

CUSTOMERS = [f"l-{i:02d}" for i in range(36)]
SORT_FIELD = {"last_activity": lambda r: r["last_activity_at"] or "", "risk": lambda r: r["churn"]["risk"],
              "score": lambda r: r["score"], "spend_365d": lambda r: r["spend_365d"]}


def order(cid: str, eid: str, day: int, amount: float) -> dict[str, Any]:
    return {"event_id": eid, "customer_id": cid, "ts": f"2026-03-{day:02d}T10:00:00Z", "order_id": eid,
            "amount": f"{amount:.2f}"}


@pytest.fixture(scope="module")
def lists(services: ServiceGroup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Namespace, Worker]]:
    spaces = isolated_namespace(services, tmp_path_factory.mktemp("lists"))
    ns = next(spaces)
    try:
        worker = ns.worker(sweep_interval=1)  # the tier cut-offs' moves re-evaluate at the next sweep
        rng = random.Random(3)
        for i, cid in enumerate(CUSTOMERS):
            ns.produce("profile", {"customer_id": cid, "team": ("emea-sales", "apac-sales", None)[i % 3]})
            for j in range(1 + i % 4):
                ns.produce("order", order(cid, f"{cid}-o{j}", 1 + (i + j) % 27, rng.choice((40.0, 900.0, 12000.0))))
            if i % 5 == 0:
                ns.produce("ticket", {"event_id": f"{cid}-t", "customer_id": cid, "ts": "2026-03-20T00:00:00Z",
                                      "ticket_id": f"T{i}", "action": "opened", "category": "complaint"})
        ns.produce("login", {"event_id": "clock", "customer_id": "l-00", "ts": "2026-05-20T00:00:00Z"})
        wait_for(lambda: all((ns.view(c) or {}).get("profile", {}).get("team") is not None for c in CUSTOMERS)
                 and (ns.view("l-00") or {}).get("aggregates", {}).get("last_login_at"), 90, "every view")
        yield ns, worker
    finally:
        spaces.close()


def walk(worker: Worker, who: str = "finance", between: Any = None, **params: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    while True:
        status, page = worker.get(f"/customers?{urlencode(params)}", who=who)
        assert status == 200, page
        rows += page["customers"]
        if page["next"] is None:
            return rows
        params["cursor"] = page["next"]
        if between is not None:
            between()


def views(ns: Namespace) -> dict[str, dict[str, Any]]:
    return {cid: v for cid in CUSTOMERS if (v := ns.view(cid)) is not None}


@pytest.mark.parametrize("sort", list(SORT_FIELD))
@pytest.mark.parametrize("order_", ["desc", "asc"])
def test_every_sort_pages_through_every_customer_in_order(lists: tuple[Namespace, Worker], sort: str,
                                                          order_: str) -> None:
    ns, worker = lists
    rows = walk(worker, sort=sort, order=order_, limit=7)
    mine = [r for r in rows if r["customer_id"] in CUSTOMERS]
    assert sorted(r["customer_id"] for r in mine) == sorted(views(ns))
    keys = [SORT_FIELD[sort](r) for r in rows]
    assert keys == sorted(keys, reverse=order_ == "desc")


def test_every_filter_lists_exactly_its_customers(lists: tuple[Namespace, Worker]) -> None:
    ns, worker = lists
    docs = views(ns)
    for tier in "ABCD":
        got = {r["customer_id"] for r in walk(worker, tier=tier, limit=5)} & set(CUSTOMERS)
        assert got == {c for c, d in docs.items() if d["tier"] == tier}
    got = {r["customer_id"] for r in walk(worker, team="emea-sales", limit=4)}
    assert got == {c for c, d in docs.items() if d["profile"]["team"] == "emea-sales"} and got
    got = {r["customer_id"] for r in walk(worker, tag="has_open_complaint", limit=3, who="admin")}
    assert got == {c for c, d in docs.items() if "has_open_complaint" in d["tags"]} and got
    levels = {d["churn"]["level"] for d in docs.values()}
    assert len(levels) >= 2, levels
    for level in levels:
        got = {r["customer_id"] for r in walk(worker, churn=level, sort="risk")} & set(CUSTOMERS)
        assert got == {c for c, d in docs.items() if d["churn"]["level"] == level}
    # "my C customers at churn risk, worst first"
    rows = walk(worker, who="sales", tier="C", churn="low,medium,high", sort="risk")
    assert rows and all(r["tier"] == "C" and r["churn"]["level"] != "none" for r in rows)
    assert [r["churn"]["risk"] for r in rows] == sorted((r["churn"]["risk"] for r in rows), reverse=True)
    assert "spend_365d" not in rows[0] and "team" in rows[0]


def test_a_walk_while_customers_change_lists_each_once(lists: tuple[Namespace, Worker]) -> None:
    """Between pages, orders move customers' spend (the sort key) and some tiers: every customer is still
    listed once."""
    ns, worker = lists
    rng = random.Random(11)
    before = set(views(ns))
    seq = iter(range(10_000))

    def change() -> None:
        for cid in rng.sample(CUSTOMERS, 4):
            ns.produce("order", order(cid, f"{cid}-w{next(seq)}", 28, rng.choice((5.0, 3000.0, 9000.0))))
        wait_for(lambda: ns.redis.llen(f"{ns.settings.redis_prefix}:h:{cid}") > 0, 30, "the change")
        worker.get("/healthz")

    rows = walk(worker, sort="spend_365d", limit=4, between=change)
    ids = [r["customer_id"] for r in rows if r["customer_id"] in CUSTOMERS]
    assert len(ids) == len(set(ids)) and set(ids) == before


def test_bad_parameters_are_400_naming_the_parameter(lists: tuple[Namespace, Worker]) -> None:
    _, worker = lists
    for query, parameter in [("tier=E", "tier"), ("tier=", "tier"), ("churn=severe", "churn"), ("sort=age", "sort"),
                             ("order=up", "order"), ("limit=0", "limit"), ("limit=501", "limit"), ("limit=x", "limit"),
                             ("cursor=%%%", "cursor"), ("cursor=eyJ4Ijox", "cursor"), ("format=xml", "format"),
                             ("team=a%20b", "team"), ("tag=Bad-Tag", "tag"), ("colour=red", "colour")]:
        status, body = worker.get(f"/customers?{query}", who="admin")
        assert status == 400 and body["parameter"] == parameter and body["error"], (query, body)
    status, page = worker.get("/customers?limit=2", who="admin")
    status, body = worker.get(f"/customers?limit=2&sort=risk&cursor={page['next']}", who="admin")
    assert status == 400 and body["parameter"] == "cursor" and "another query" in body["error"]
    status, body = worker.get("/customers?sort=spend_365d", who="sales")
    assert status == 403 and "finance" in body["error"]
    status, body = worker.get("/customers?churn=high", who="viewer")
    assert status == 403 and "viewer" in body["error"]
    status, body = worker.get("/customers/l-00/history?limit=0", who="admin")
    assert status == 400 and body["parameter"] == "limit"


def test_csv_download_is_the_same_page(lists: tuple[Namespace, Worker]) -> None:
    ns, worker = lists
    status, page = worker.get("/customers?tier=A,B,C,D&sort=score&limit=10", who="finance")
    req = urllib.request.Request(f"http://127.0.0.1:{worker.web_port}/customers?tier=A,B,C,D&sort=score&limit=10"
                                 "&format=csv", headers={"Authorization": f"Bearer {ns.tokens['finance']}"})
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        assert resp.headers["Content-Type"].startswith("text/csv")
        assert resp.headers["X-Next-Cursor"]
        table = list(csv.DictReader(io.StringIO(resp.read().decode())))
    assert [r["customer_id"] for r in table] == [r["customer_id"] for r in page["customers"]]
    assert list(table[0]) == ["customer_id", "tier", "tags", "evaluated_at", "score", "churn_risk", "churn_level",
                              "team", "last_activity_at", "spend_365d"]
    assert table[0]["tags"] == " ".join(page["customers"][0]["tags"])


def test_history_survives_a_restart_and_goes_with_an_erasure(lists: tuple[Namespace, Worker]) -> None:
    ns, worker = lists
    cid = "l-07"
    ns.produce("manual", {"command_id": "h-1", "customer_id": cid, "action": "add_tag", "tag": "watch_list",
                          "author": "ana", "note": "asked for a call"})
    wait_for(lambda: any(e["kind"] == "manual" for e in worker.get(f"/customers/{cid}/history")[1]["changes"]),
             60, "the manual entry")
    status, body = worker.get(f"/customers/{cid}/history")
    changes = body["changes"]
    kinds = [e["kind"] for e in changes]
    assert status == 200 and "tag_change" in kinds and kinds.index("manual") < len(kinds) - 1
    assert changes[kinds.index("manual") - 1]["added"] == ["watch_list"]  # the change it caused, newer
    first = next(e for e in reversed(changes) if e["kind"] == "tag_change")
    assert first["previous_tier"] is None and first["trigger"]["kind"] == "event" and first["change_id"]
    status, seen = worker.get(f"/customers/{cid}/history", who="viewer")
    assert all(e["kind"] in ("tag_change", "rebuilt") and "reasons" not in e and "trigger" not in e
               for e in seen["changes"])
    assert "watch_list" not in str(seen)  # a manual tag is a team tag
    worker.stop()
    worker = ns.worker(sweep_interval=1)  # the restart rebuilds the views: the history stays as it was
    wait_for(worker.alive_and_serving, 90, "the restarted worker")
    wait_for(lambda: worker.get(f"/customers/{cid}")[0] == 200, 60, "the customer on the restarted worker")
    assert worker.get(f"/customers/{cid}/history")[1]["changes"] == changes
    ns.produce("privacy", {"request_id": "h-erase", "customer_id": cid, "ts": "2026-05-21T00:00:00Z",
                           "type": "erase"})
    wait_for(lambda: worker.get(f"/customers/{cid}/history")[0] == 404, 60, "the erasure")
    assert not [k for k in ns.redis.scan_iter(f"{ns.settings.redis_prefix}:*") if cid.encode() in k]
    assert cid not in {r["customer_id"] for r in walk(worker)}
