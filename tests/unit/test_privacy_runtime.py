"""Erasure in the runtime: state, due entry and view go, one empty tag change, one audit record (no broker)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import orjson

from agents.engine.evaluate import Evaluator, facts_schema
from agents.engine.runtime import Message, Runtime
from rules import default_rules_dir, load_ruleset
from stream.access.audit import AuditLog
from stream.domain.clock import Clock
from stream.kafka.kafka_admin import expected_partition
from stream.settings import Settings
from stream.view.redis_view import ViewDocument

PARTITIONS = 4


class FakeSender:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, dict[str, Any]]] = []

    async def send(self, *, key: bytes, value: bytes, partition: int | None = None) -> Any:
        self.sent.append((key, orjson.loads(value)))


class FakeView:
    def __init__(self) -> None:
        self.pending: dict[str, ViewDocument | Callable[[], ViewDocument] | None] = {}
        self.written: dict[str, ViewDocument] = {}
        self.history: dict[str, list[dict[str, Any]]] = {}

    def stage(self, cid: str, view: ViewDocument | Callable[[], ViewDocument], spend: float,
              last_activity: int | None = None, rebuilt: bool = False) -> None:
        self.pending[cid] = view

    def note(self, cid: str, entry: dict[str, Any]) -> None:
        self.history.setdefault(cid, []).append(entry)

    def stage_erase(self, cid: str) -> None:
        self.pending[cid] = None
        self.history.pop(cid, None)

    async def flush(self, batch: int = 200, only: Collection[str] | None = None) -> int:
        chosen = list(self.pending) if only is None else [cid for cid in only if cid in self.pending]
        for cid in chosen:
            value = self.pending.pop(cid)
            if value is None:
                self.written.pop(cid, None)
            else:
                self.written[cid] = value() if callable(value) else value  # rendered at flush, as RedisView does
        return len(chosen)


def make() -> tuple[Runtime, dict[str, Any], FakeView, dict[str, FakeSender], FakeSender]:
    settings = Settings(partitions=PARTITIONS, clock="stream")  # type: ignore[call-arg]
    senders = {n: FakeSender() for n in ("tag_changes", "dead_letters", "rekey", "commands", "churn_alerts")}
    table: dict[str, Any] = {}
    view = FakeView()
    audit = FakeSender()
    runtime = Runtime(settings, table, Evaluator(load_ruleset(default_rules_dir(), facts_schema())), view,
                      Clock("stream"), senders, audit=AuditLog(audit, None))  # type: ignore[arg-type]
    return runtime, table, view, senders, audit


def key_partition(cid: str) -> int:
    return expected_partition(cid.encode(), PARTITIONS)


async def feed(runtime: Runtime, topic: str, cid: str, value: dict[str, Any], offset: int,
               key: str | None = None) -> str:
    k = cid if key is None else key
    return await runtime.handle(Message(topic, key_partition(k), offset, k.encode(), orjson.dumps(value)))


async def test_erase_removes_state_due_entry_and_view_and_emits_one_empty_change() -> None:
    runtime, table, view, senders, audit = make()
    cid, p = "cust-1", key_partition("cust-1")
    runtime.due.track(p)
    order = {"event_id": "e1", "customer_id": cid, "ts": "2026-01-05T00:00:00Z", "order_id": "o1", "amount": "12840"}
    assert await feed(runtime, "orders", cid, order, 0) == "ok"
    manual = {"command_id": "c1", "customer_id": cid, "action": "add_tag", "tag": "vip_watch", "author": "sam"}
    assert await feed(runtime, "tag-commands", cid, manual, 0) == "ok"
    await view.flush()
    assert cid in table and cid in view.written and runtime.due.size(p) == 1
    assert "vip_watch" in view.written[cid]["tags"]

    request = {"request_id": "dsr-1", "customer_id": cid, "ts": "2026-02-01T00:00:00Z", "type": "erase"}
    assert await feed(runtime, "privacy-requests", cid, request, 0) == "ok"
    assert cid not in table and cid not in view.written and runtime.due.size(p) == 0
    last_key, last = senders["tag_changes"].sent[-1]
    assert last_key == cid.encode() and last["tags"] == [] and last["trigger"]["kind"] == "erase"
    assert last["trigger"]["event_id"] == "dsr-1" and "12840" not in orjson.dumps(last).decode()
    [(_, record)] = audit.sent
    assert record["action"] == "privacy.erase" and record["customer_id"] == cid and record["found"] is True
    assert record["request_id"] == "dsr-1" and "12840" not in orjson.dumps(record).decode()

    # a new event starts a fresh customer: one order, no manual tag
    again = {**order, "event_id": "e2", "order_id": "o2", "amount": "5"}
    assert await feed(runtime, "orders", cid, again, 1) == "ok"
    assert table[cid].aggregates(runtime.clock.now())["orders_total"] == 1 and table[cid].manual is None


async def test_erasing_an_unknown_customer_still_answers_and_is_audited() -> None:
    runtime, table, _, senders, audit = make()
    request = {"request_id": "dsr-2", "customer_id": "nobody", "ts": 0, "type": "erase"}
    assert await feed(runtime, "privacy-requests", "nobody", request, 0) == "ok"
    assert senders["tag_changes"].sent[-1][1]["trigger"]["kind"] == "erase"
    assert audit.sent[-1][1]["found"] is False and not table


async def test_mis_keyed_request_is_rekeyed_and_bad_ones_are_dead_lettered() -> None:
    runtime, _, _, senders, _ = make()
    request = {"request_id": "dsr-3", "customer_id": "cust-9", "ts": 0, "type": "erase"}
    wrong = next(k for k in ("a", "b", "c", "d", "e") if key_partition(k) != key_partition("cust-9"))
    assert await feed(runtime, "privacy-requests", "cust-9", request, 0, key=wrong) == "rekeyed"
    [(key, envelope)] = senders["rekey"].sent
    assert key == b"cust-9" and envelope["kind"] == "privacy"
    # the rekeyed copy arrives on the customer's partition and erases
    rekeyed = orjson.dumps(envelope)
    assert await runtime.handle(Message("customer-tagger-rekey", key_partition("cust-9"), 0, key, rekeyed)) == "ok"
    assert senders["tag_changes"].sent[-1][1]["trigger"] == {"kind": "erase", "topic": "privacy-requests",
                                                             "event_id": "dsr-3"}
    bad = [({**request, "type": "forget"}, "field 'type'"), ({**request, "customer_id": ""}, "field 'customer_id'")]
    for offset, (value, reason) in enumerate(bad, start=1):
        assert await feed(runtime, "privacy-requests", "cust-9", value, offset) == "dead_letter"
        assert senders["dead_letters"].sent[-1][1]["error"].startswith(reason)
