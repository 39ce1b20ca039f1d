"""Erasure on a real worker: nothing of the customer remains in Redis, the table or its changelog
(also after a restart that recovers from the changelog); a new event starts a fresh customer; mis-keyed
requests are re-keyed, malformed ones dead-lettered; the erasure is audited without the erased data."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from .conftest import Namespace, Worker, wait_for

pytestmark = pytest.mark.integration

GONE, KEEP = "c-gone", "c-keep"


def order(cid: str, eid: str, day: int, amount: str) -> dict[str, Any]:
    return {"event_id": eid, "customer_id": cid, "ts": f"2026-03-{day:02d}T10:00:00Z", "order_id": eid,
            "amount": amount}


def traces(ns: Namespace, needle: str) -> list[str]:
    """Every Redis key of the namespace whose name or value (of any type) mentions ``needle``."""
    r, found = ns.redis, []
    for key in r.scan_iter(match=f"{ns.settings.redis_prefix}:*", count=1000):
        kind = r.type(key).decode()
        if kind == "string":
            values = [r.get(key)]
        elif kind == "zset":
            values = r.zrange(key, 0, -1)
        elif kind == "set":
            values = list(r.smembers(key))
        elif kind == "hash":
            values = [b for kv in r.hgetall(key).items() for b in kv]
        else:
            values = r.lrange(key, 0, -1)
        if needle.encode() in key or any(v is not None and needle.encode() in v for v in values):
            found.append(key.decode())
    return found


def changelog(ns: Namespace, key: str) -> list[Any]:
    """Values of every changelog record of ``key``, oldest first (read to the end)."""
    from stream.kafka.kafka_admin import consume_all

    records = consume_all(ns.services.bootstrap, f"{ns.settings.app_id}-customers-changelog", timeout=30)
    return [r["value"] for r in sorted(records, key=lambda r: r["offset"]) if r["key"] == key]


def erase_changes(ns: Namespace, cid: str, count: int = 1) -> list[dict[str, Any]]:
    return [c for c in ns.changes(cid, lambda cs: sum(c["trigger"]["kind"] == "erase" for c in cs) >= count)
            if c["trigger"]["kind"] == "erase"]


def seed(ns: Namespace, worker: Worker) -> None:
    for cid in (GONE, KEEP):
        ns.produce("order", order(cid, f"{cid}-o1", 1, "6000"))
        ns.produce("order", order(cid, f"{cid}-o2", 2, "5000.50"))
        ns.produce("profile", {"customer_id": cid, "company_size": "enterprise", "strategic_account": True})
        status, _ = worker.request("POST", f"/customers/{cid}/tags",
                                   {"action": "add_tag", "tag": "vip_watch", "note": "renewal",
                                    "expires_at": "2099-01-01T00:00:00Z"}, who="sales")
        assert status == 202
    prefix = ns.settings.redis_prefix
    for cid in (GONE, KEEP):
        wait_for(lambda c=cid: {"big_spender", "vip_watch"} <= set((ns.view(c) or {}).get("tags", [])), 60,
                 f"{cid}'s tags in Redis")
        assert ns.redis.zscore(f"{prefix}:spend365", cid) == 11000.5
        assert ns.redis.zscore(f"{prefix}:tag:vip_watch", cid) == 0


def test_erasure_leaves_nothing_and_a_new_event_starts_afresh(namespace: Namespace) -> None:
    ns = namespace
    worker = ns.worker(audit_file=ns.tmp / "audit.jsonl")
    seed(ns, worker)
    assert traces(ns, GONE)  # the scan does find the customer before

    status, answer = worker.request("POST", "/privacy/requests", {"request_id": "dsr-1", "customer_id": GONE,
                                                                  "ts": "2026-03-05T00:00:00Z", "type": "erase"})
    assert status == 202 and answer == {"request_id": "dsr-1", "status": "accepted"}
    [final] = erase_changes(ns, GONE)
    assert final["tags"] == [] and final["manual_tags"] == [] and final["tier"] is None and final["score"] is None
    assert final["trigger"] == {"kind": "erase", "topic": ns.settings.privacy_requests_topic, "event_id": "dsr-1"}

    # Redis: no key name and no value mentions the customer; the other customer is untouched
    wait_for(lambda: not traces(ns, GONE), 30, "every Redis trace to go")
    assert set(ns.view(KEEP)["tags"]) >= {"big_spender", "vip_watch"}
    assert ns.redis.zscore(f"{ns.settings.redis_prefix}:tag:vip_watch", KEEP) == 0
    # the table (served by the owning worker) and its changelog: the last record of the key is a tombstone
    assert worker.get(f"/customers/{GONE}")[0] == 404
    # (state records are written at commits, so a state record comes first only if a commit came in between)
    wait_for(lambda: changelog(ns, GONE)[-1:] == [None], 30, "the tombstone in the changelog")
    assert worker.get(f"/customers/{KEEP}")[0] == 200

    # the audit: the admin's request and the worker's erasure, without the erased data
    def audit() -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in (ns.tmp / "audit.jsonl").read_bytes().splitlines()]
    wait_for(lambda: any(r["action"] == "privacy.erase" for r in audit()), 30, "the erasure's audit record")
    [asked] = [r for r in audit() if r["action"] == "privacy.request"]
    [done] = [r for r in audit() if r["action"] == "privacy.erase"]
    assert asked["actor"] == "admin" and asked["customer_id"] == GONE and asked["request_id"] == "dsr-1"
    assert done["customer_id"] == GONE and done["request_id"] == "dsr-1" and done["found"] is True
    assert done["source"] == ns.settings.privacy_requests_topic and done["actor"] is None
    text = orjson.dumps(done).decode()
    assert not any(s in text for s in ("6000", "5000.5", "11000", "vip_watch", "big_spender", "enterprise"))

    # a restarted worker recovers the table from the changelog and rebuilds Redis: still nothing
    worker.stop()
    ns.redis.delete(f"{ns.settings.redis_prefix}:c:{KEEP}")  # reappears once the new worker rebuilt Redis
    worker = ns.worker(audit_file=ns.tmp / "audit.jsonl")
    wait_for(lambda: ns.view(KEEP), 60, "the new worker to recover the table and rebuild Redis")
    assert worker.get(f"/customers/{GONE}")[0] == 404 and not traces(ns, GONE)

    # a new event for the same id starts a fresh customer: one order, no manual tag, no profile
    ns.produce("order", order(GONE, f"{GONE}-o3", 4, "10"))
    view = wait_for(lambda: ns.view(GONE), 60, "the new customer's view")
    assert view["aggregates"]["orders_total"] == 1 and view["aggregates"]["spend_365d"] == 10.0
    assert view["manual"]["tags"] == {} and view["profile"] == {} and "vip_watch" not in view["tags"]


def test_mis_keyed_and_malformed_requests(namespace: Namespace) -> None:
    ns = namespace
    worker = ns.worker()
    for cid in ("c-a", "c-b"):
        ns.produce("order", order(cid, f"{cid}-o1", 1, "20000"))
        wait_for(lambda c=cid: ns.view(c), 60, f"{cid}'s view")
    # produced straight to the topic, with a wrong key, an empty key, a wrong partition
    request = {"request_id": "dsr-a", "customer_id": "c-a", "ts": 1_772_000_000_000, "type": "erase"}
    ns.produce("privacy", request, key="somebody-else")
    ns.produce("privacy", {**request, "request_id": "dsr-b", "customer_id": "c-b"}, key=None)
    for cid in ("c-a", "c-b"):
        erase_changes(ns, cid)
        wait_for(lambda c=cid: not traces(ns, c), 30, f"{cid}'s Redis traces to go")
        assert worker.get(f"/customers/{cid}")[0] == 404
        wait_for(lambda c=cid: changelog(ns, c)[-1:] == [None], 30, f"{cid}'s tombstone in the changelog")

    bad: list[tuple[bytes | dict[str, Any], str]] = [
        ({**request, "type": "forget"}, "field 'type': 'forget' is not one of erase"),
        ({"request_id": "x", "ts": 0, "type": "erase"}, "field 'customer_id': missing"),
        ({"request_id": "x", "customer_id": "c-z", "type": "erase"}, "field 'ts': missing"),
        (b"{not json", "not valid JSON"),
    ]
    for value, _ in bad:
        ns.produce("privacy", value, key="c-z")
    letters = ns.read(ns.settings.dead_letters_topic, lambda rs: len(rs) >= len(bad))
    assert len(letters) == len(bad)
    for _, reason in bad:
        assert any(r["value"]["error"].startswith(reason) for r in letters), (reason, letters)
    assert all(r["value"]["topic"] == ns.settings.privacy_requests_topic for r in letters)
