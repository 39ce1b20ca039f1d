"""The customer API on a real worker: every role against every endpoint, field filtering, the tag index,
the audit records (file and topic), and secrets kept out of the log and /metrics."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from stream.devtools.embedded import RedisServer, ServiceGroup

from .conftest import Namespace, Worker, isolated_namespace, wait_for

pytestmark = pytest.mark.integration

MONEY = ("12840", "7000.25", "5839.75")  # c-rich's spend, its orders
WHO = ("anonymous", "bogus", "viewer", "sales", "support", "finance", "admin")
ENDPOINTS: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "read": ("GET", "/customers/c-rich", None),
    "list_public": ("GET", "/tags/big_spender/customers", None),
    "list_team": ("GET", "/tags/inactive_30d/customers", None),
    "list_restricted": ("GET", "/tags/has_open_complaint/customers", None),
    "manual": ("POST", "/customers/c-manual/tags", {"action": "add_tag", "tag": "api_probe", "note": "matrix"}),
    "erase": ("POST", "/privacy/requests", {"customer_id": "c-erase-probe", "type": "erase"}),
    "trends": ("GET", "/trends", None),
    "customers": ("GET", "/customers?tier=A,B&limit=5", None),
    "customers_risk": ("GET", "/customers?sort=risk&churn=high,medium", None),
    "customers_spend": ("GET", "/customers?sort=spend_365d", None),
    "history": ("GET", "/customers/c-rich/history", None),
}
ACTIONS = {"read": "customer.read", "list_public": "tag.list", "list_team": "tag.list",
           "list_restricted": "tag.list", "manual": "manual.command", "erase": "privacy.request",
           "trends": "trends.read", "customers": "customer.list", "customers_risk": "customer.list",
           "customers_spend": "customer.list", "history": "customer.history"}
#: expected status of each endpoint for each caller ("support" is a sales token of the support team)
EXPECTED: dict[str, dict[str, int]] = {
    "anonymous": dict.fromkeys(ENDPOINTS, 401),
    "bogus": dict.fromkeys(ENDPOINTS, 401),
    "viewer": {"read": 200, "list_public": 200, "list_team": 403, "list_restricted": 403, "manual": 403, "erase": 403,
               "trends": 200, "customers": 200, "customers_risk": 403, "customers_spend": 403, "history": 200},
    "sales": {"read": 200, "list_public": 200, "list_team": 200, "list_restricted": 403, "manual": 202, "erase": 403,
              "trends": 200, "customers": 200, "customers_risk": 200, "customers_spend": 403, "history": 200},
    "support": {"read": 200, "list_public": 200, "list_team": 200, "list_restricted": 200, "manual": 202,
                "erase": 403, "trends": 200, "customers": 200, "customers_risk": 200, "customers_spend": 403,
                "history": 200},
    "finance": {"read": 200, "list_public": 200, "list_team": 200, "list_restricted": 403, "manual": 403,
                "erase": 403, "trends": 200, "customers": 200, "customers_risk": 200, "customers_spend": 200,
                "history": 200},
    "admin": {"read": 200, "list_public": 200, "list_team": 200, "list_restricted": 200, "manual": 202, "erase": 202,
              "trends": 200, "customers": 200, "customers_risk": 200, "customers_spend": 200, "history": 200},
}
ROLE_OF = {"viewer": "viewer", "sales": "sales", "support": "sales", "finance": "finance", "admin": "admin"}


def order(cid: str, eid: str, ts: str, amount: str) -> dict[str, Any]:
    return {"event_id": eid, "customer_id": cid, "ts": ts, "order_id": eid, "amount": amount}


def call(worker: Worker, who: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    if who == "anonymous":
        return worker.request(method, path, body, who=None)
    if who == "bogus":
        return worker.request(method, path, body, bearer="tgr_" + "x" * 43)
    return worker.request(method, path, body, who=who)


def api_records(path: Path) -> list[dict[str, Any]]:
    lines = path.read_bytes().splitlines() if path.exists() else []
    return [r for r in map(orjson.loads, lines) if r["source"] == "api"]


def assert_no_money(record: Any) -> None:
    text = orjson.dumps(record).decode()
    assert not any(m in text for m in MONEY), text

    def walk(v: Any) -> None:
        assert not isinstance(v, float), record
        for child in v.values() if isinstance(v, dict) else v if isinstance(v, list) else ():
            walk(child)
    walk(record)


@pytest.fixture(scope="module")
def api(services: ServiceGroup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Namespace, Worker]]:
    spaces = isolated_namespace(services, tmp_path_factory.mktemp("api"))
    ns = next(spaces)
    try:
        worker = ns.worker(audit_file=ns.tmp / "audit.jsonl")
        # the stream clock moves to April first, so c-rich (last seen in January) is inactive
        ns.produce("login", {"event_id": "l1", "customer_id": "c-clock", "ts": "2026-04-10T00:00:00Z"})
        wait_for(lambda: ns.view("c-clock"), 60, "c-clock's view")
        ns.produce("order", order("c-rich", "o1", "2026-01-05T00:00:00Z", "7000.25"))
        ns.produce("order", order("c-rich", "o2", "2026-01-06T00:00:00Z", "5839.75"))
        ns.produce("ticket", {"event_id": "t1", "customer_id": "c-rich", "ts": "2026-01-07T00:00:00Z",
                              "ticket_id": "T1", "action": "opened", "category": "complaint"})
        want = {"big_spender", "inactive_30d", "has_open_complaint"}
        wait_for(lambda: want <= set((ns.view("c-rich") or {}).get("tags", [])), 60, "c-rich's tags")
        yield ns, worker
    finally:
        spaces.close()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("who", WHO)
def test_every_caller_against_every_endpoint_is_answered_and_audited(
        api: tuple[Namespace, Worker], who: str, endpoint: str) -> None:
    ns, worker = api
    method, path, body = ENDPOINTS[endpoint]
    audit_file = ns.tmp / "audit.jsonl"
    before = len(api_records(audit_file))
    status, answer = call(worker, who, method, path, body)
    assert status == EXPECTED[who][endpoint], answer
    records = api_records(audit_file)
    assert len(records) == before + 1, records[before:]  # exactly one record per call, written before the answer
    record = records[-1]
    assert record["action"] == ACTIONS[endpoint] and record["status"] == status
    assert record["actor"] == (who if who in ROLE_OF else None) and record["role"] == ROLE_OF.get(who)
    assert record["outcome"] == {401: "unauthenticated", 403: "denied", 200: "allowed", 202: "accepted"}[status]
    if endpoint in ("read", "manual"):
        assert record["customer_id"] == path.split("/")[2]
    if endpoint == "erase":
        assert record["customer_id"] == "c-erase-probe"
    if endpoint.startswith("list"):
        assert record["tag"] == path.split("/")[2]
    assert_no_money(record)
    if status >= 400:
        assert set(answer) == {"error"}


@pytest.mark.parametrize("who", ["viewer", "sales", "support", "finance", "admin"])
def test_the_customer_document_is_filtered_by_role(api: tuple[Namespace, Worker], who: str) -> None:
    """Money in the reasons is masked for sales and support.

    Orders and tickets are different topics, so the ticket may be applied after the second
    order (the tag is then held: the exit reason) or before it (the entry reason).
    """
    _, worker = api
    entry_or_held = ("spend_365d={} >= 10000", "held: not yet spend_365d={} < 8000")

    status, doc = worker.get("/customers/c-rich", who=who)
    assert status == 200
    tags = set(doc["tags"])
    assert "big_spender" in tags
    assert ("inactive_30d" in tags) == (who != "viewer")
    assert ("has_open_complaint" in tags) == (who in ("support", "admin"))
    text = orjson.dumps(doc).decode()
    if who == "viewer":
        assert set(doc) == {"customer_id", "tier", "tags", "evaluated_at", "ruleset_version"}
    elif who in ("sales", "support"):
        assert doc["aggregates"]["orders_total"] == 2 and "spend_365d" not in doc["aggregates"]
        assert doc["reasons"]["big_spender"] in [r.format("…") for r in entry_or_held], doc["reasons"]
    else:
        assert doc["aggregates"]["spend_365d"] == 12840.0
        assert doc["reasons"]["big_spender"] in [r.format("12840.00") for r in entry_or_held], doc["reasons"]
    assert any(m in text for m in MONEY) == (who in ("finance", "admin"))


def test_unknown_customer_and_bad_requests(api: tuple[Namespace, Worker]) -> None:
    _, worker = api
    assert worker.get("/customers/nobody")[0] == 404
    assert worker.get("/tags/Not-A-Tag/customers")[0] == 400
    assert worker.get("/tags/big_spender/customers?limit=0")[0] == 400
    assert worker.get("/tags/big_spender/customers?limit=x")[0] == 400
    status, answer = worker.request("POST", "/customers/c-rich/tags", {"action": "adjust_score", "adjust_pct": 35},
                                    who="sales")
    assert status == 400 and "beyond the ±20% cap" in answer["error"]
    assert worker.request("POST", "/customers/c-rich/tags", b"[1, 2]", who="sales")[0] == 400
    status, answer = worker.request("POST", "/privacy/requests", {"customer_id": "c-x", "type": "forget"})
    assert status == 400 and answer["error"].startswith("field 'type'")


def test_manual_tags_by_api_feed_the_paginated_tag_index(api: tuple[Namespace, Worker]) -> None:
    ns, worker = api
    members = [f"p-{i}" for i in range(1, 6)]
    for cid in members:
        status, answer = worker.request("POST", f"/customers/{cid}/tags",
                                        {"action": "add_tag", "tag": "campaign_x", "note": "spring"}, who="sales")
        assert status == 202 and answer["command_id"]
    def total() -> int | None:
        status, page = worker.get("/tags/campaign_x/customers", who="sales")
        return page["total"] if status == 200 else None

    wait_for(lambda: total() == 5, 60, "5 members in the tag index")
    pages, after = [], ""
    while True:
        status, page = worker.get(f"/tags/campaign_x/customers?limit=2{'&after=' + after if after else ''}",
                                  who="sales")
        assert status == 200 and page["total"] == 5
        pages.append(page["customers"])
        if page["next"] is None:
            break
        after = page["next"]
    assert pages == [["p-1", "p-2"], ["p-3", "p-4"], ["p-5"]]
    status, doc = worker.get("/customers/p-1", who="sales")
    assert doc["manual"]["tags"]["campaign_x"]["author"] == "sales"  # the token's name, not the caller's word

    # a removed tag leaves the index
    assert worker.request("POST", "/customers/p-3/tags", {"action": "remove_tag", "tag": "campaign_x"},
                          who="admin")[0] == 202
    wait_for(lambda: total() == 4, 60, "p-3 to leave the tag index")
    assert worker.get("/tags/campaign_x/customers", who="sales")[1]["customers"] == ["p-1", "p-2", "p-4", "p-5"]
    assert b"campaign_x" not in ns.redis.smembers(f"{ns.settings.redis_prefix}:ct:p-3")


def test_audit_topic_matches_the_file_and_never_holds_money(api: tuple[Namespace, Worker]) -> None:
    ns, _ = api
    in_file = api_records(ns.tmp / "audit.jsonl")
    assert len(in_file) >= len(WHO) * len(ENDPOINTS)
    ids = {r["audit_id"] for r in in_file}
    records = ns.read(ns.settings.audit_log_topic,
                      lambda rs: ids <= {r["value"]["audit_id"] for r in rs if isinstance(r["value"], dict)})
    by_id = {r["value"]["audit_id"]: r for r in records}
    for record in in_file:
        assert by_id[record["audit_id"]]["value"] == record
        assert by_id[record["audit_id"]]["key"] == (record["customer_id"] or record["actor"] or "")
    for r in records:
        assert_no_money(r["value"])
    reads = [r for r in in_file if r["action"] == "customer.read" and r["status"] == 200]
    assert {tuple(r["disclosed"]) for r in reads if r["role"] == "viewer"} == {("tier", "tags:public")}
    assert all("aggregates:monetary" in r["disclosed"] for r in reads if r["role"] == "finance")


class PasswordRedis(RedisServer):
    """A redis-server that requires AUTH."""

    def __init__(self, password: str) -> None:
        super().__init__()
        self.password = password

    def command(self) -> list[str]:
        return [*super().command(), "--requirepass", self.password]

    def probe(self, timeout: float) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
                sock.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
                reply = b""
                while not reply.endswith(b"+PONG\r\n"):
                    chunk = sock.recv(1024)
                    if not chunk:
                        return False
                    reply += chunk
                return True
        except OSError:
            return False


def test_secrets_never_reach_the_log_or_metrics(namespace: Namespace) -> None:
    ns = namespace
    redis_secret, kafka_secret = "redis-Pa55-" + "q" * 20, "kafka-Pa55-" + "z" * 20
    with PasswordRedis(redis_secret) as server:
        ns.env["REDIS_URL"] = server.url  # this namespace's workers use the password-protected Redis
        worker = ns.worker(log_level="debug", redis_password=redis_secret, kafka_sasl_password=kafka_secret,
                           audit_file=ns.tmp / "audit.jsonl")
        ns.produce("order", order("c-sec", "o1", "2026-01-05T00:00:00Z", "10"))
        client = redis.Redis.from_url(server.url, password=redis_secret)
        prefix = ns.settings.redis_prefix
        wait_for(lambda: client.get(f"{prefix}:c:c-sec"), 60, "the view in the password-protected Redis")
        assert worker.get("/customers/c-sec", who="finance")[0] == 200
        assert worker.get("/tags/big_spender/customers", who="viewer")[0] == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=10) as resp:  # noqa: S310
            metrics = resp.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/stats", timeout=10) as resp:  # noqa: S310
            stats = resp.read().decode()
        assert "tagger_" in metrics
        worker.stop()
    log = worker.log_path.read_text(errors="replace")
    assert "API tokens: viewer 1, sales 2, finance 1, admin 1" in log
    audit = (ns.tmp / "audit.jsonl").read_text()
    for secret in (redis_secret, kafka_secret, *ns.tokens.values()):
        for name, text in (("log", log), ("metrics", metrics), ("stats", stats), ("audit", audit)):
            assert secret not in text, f"a secret leaked into the {name}"


def test_lookups_are_answered_and_audited_by_the_owning_worker(namespace: Namespace) -> None:
    ns = namespace
    audit_file = ns.tmp / "audit.jsonl"
    first, second = ns.worker(audit_file=audit_file), ns.worker(audit_file=audit_file)
    customers = [f"r-{i}" for i in range(12)]
    for cid in customers:
        ns.produce("order", order(cid, f"{cid}-o1", "2026-01-05T00:00:00Z", "20"))

    def all_visible() -> bool:  # both workers own partitions and every customer is served through `first`
        return (first.get("/readyz", who=None)[0] == 200 and second.get("/readyz", who=None)[0] == 200
                and all(first.get(f"/customers/{cid}", who="viewer")[0] == 200 for cid in customers))
    wait_for(all_visible, 90, "both workers ready, every customer served through the first one")
    before = len(api_records(audit_file))
    for cid in customers:
        assert first.get(f"/customers/{cid}", who=None)[0] == 401  # the owner checks the token too
        status, doc = first.get(f"/customers/{cid}", who="viewer")
        assert status == 200 and set(doc) == {"customer_id", "tier", "tags", "evaluated_at", "ruleset_version"}
    records = api_records(audit_file)[before:]
    assert len(records) == 2 * len(customers)  # one per call, none by the forwarding worker
    answered_by = {r["worker"] for r in records}
    assert answered_by == {f"127.0.0.1:{first.web_port}", f"127.0.0.1:{second.web_port}"}, answered_by
