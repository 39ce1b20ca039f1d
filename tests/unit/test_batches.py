"""Batch envelopes: many events in one message, each counted exactly once, each customer evaluated once."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from agents.engine.runtime import Message, Runtime
from stream.domain.events import MAX_BATCH_EVENTS, Batch, parse_message
from stream.domain.state import CustomerState
from stream.exceptions import InvalidEvent
from stream.settings import Settings

from .fakes import FakeSender, make_runtime

T = 1_767_225_600_000


def order(i: int, cid: str, amount: float = 10.0) -> dict[str, Any]:
    return {"event_id": f"e{i}", "customer_id": cid, "ts": T + i * 1000, "order_id": f"o{i}", "amount": amount}


def envelope(batch_id: str, events: list[Any]) -> bytes:
    return orjson.dumps({"batch_id": batch_id, "events": events})


def runtime(partitions: int = 1) -> tuple[Runtime, dict[str, CustomerState], dict[str, FakeSender]]:
    table: dict[str, CustomerState] = {}
    rt, senders = make_runtime(Settings(partitions=partitions), table)  # type: ignore[call-arg]
    return rt, table, senders


def test_parse_message_keeps_good_elements_and_names_bad_ones() -> None:
    raw = envelope("b1", [order(1, "c1"), {"event_id": "x"}, 7, order(2, "c2")])
    batch = parse_message("order", raw, currency="USD", max_bytes=1 << 20)
    assert isinstance(batch, Batch) and batch.batch_id == "b1"
    assert [(i, e.customer_id) for i, e, _ in batch.events] == [(0, "c1"), (3, "c2")]
    assert [(i, reason.split(":")[0]) for i, reason, _ in batch.rejects] == [(1, "events[1]"), (2, "events[2]")]
    assert "must be an object" in batch.rejects[1][1]
    for bad, message in [({"events": [order(1, "c")]}, "batch_id"), ({"batch_id": "b", "events": []}, "non-empty"),
                         ({"batch_id": "b", "events": [{}] * (MAX_BATCH_EVENTS + 1)}, "at most")]:
        with pytest.raises(InvalidEvent, match=message):
            parse_message("order", orjson.dumps(bad), currency="USD", max_bytes=1 << 30)


async def test_envelope_applies_each_event_once_and_evaluates_each_customer_once() -> None:
    rt, table, senders = runtime()
    raw = envelope("b1", [order(1, "c1", 100), order(2, "c2"), {"customer_id": "c1"}, order(3, "c1", 9950),
                          order(5, "c3", 20_000)])
    assert await rt.handle(Message("orders", 0, 10, b"any", raw)) == "batch"
    assert (rt.outcomes["ok"], rt.outcomes["dead_letter"]) == (4, 1)
    await asyncio.sleep(0)  # the write runs beside the intake (Runtime.flush_soon)
    assert rt.view.flushed == [["c1", "c3"]]  # type: ignore[attr-defined]  # the big orders' views: one call
    dead = orjson.loads(senders["dead_letters"].sent[0][1])
    assert dead["error"].startswith("events[2]: ") and dead["offset"] == 10
    assert table["c1"].orders_total == 2 and table["c2"].orders_total == 1
    changes = [orjson.loads(v) for _, v, _ in senders["tag_changes"].sent]
    big = next(c for c in changes if c["customer_id"] == "c1")  # one evaluation for both of c1's orders
    assert "big_spender" in big["added"] and big["trigger"]["batch_id"] == "b1" and big["trigger"]["events"] == 2
    assert sum(c["customer_id"] == "c1" for c in changes) == 1
    assert big["trigger"]["priority"] == "big_order"
    # redelivery (same offset), a producer retry of the envelope (new offset), the same event alone: no effect
    await rt.handle(Message("orders", 0, 10, b"any", raw))
    await rt.handle(Message("orders", 0, 11, b"any", raw))
    await rt.handle(Message("orders", 0, 12, b"c2", orjson.dumps(order(2, "c2"))))
    assert rt.outcomes["duplicate"] == 4 + 4 + 1
    assert table["c1"].orders_total == 2 and table["c2"].orders_total == 1
    # a new envelope repeating one event id and adding another: only the new one counts
    await rt.handle(Message("orders", 0, 13, b"any", envelope("b2", [order(2, "c2"), order(4, "c2")])))
    assert table["c2"].orders_total == 2


async def test_customers_of_other_partitions_go_on_as_one_envelope_each() -> None:
    rt, table, senders = runtime(partitions=8)
    customers = [f"c{i}" for i in range(20)]
    mine = [c for c in customers if rt.partition_of(c) == 0]
    raw = envelope("b9", [order(i, c) for i, c in enumerate(customers)])
    await rt.handle(Message("orders", 0, 5, None, raw))
    assert sorted(table) == sorted(mine)
    rekeyed = senders["rekey"].sent
    assert len(rekeyed) == len(customers) - len(mine)  # one message per foreign customer
    for key, value, _ in rekeyed:  # the owner of each receives its customer's part, from the re-key topic
        part = rt.partition_of(key.decode())
        assert await rt.handle(Message(rt.settings.rekey_topic, part, 0, key, value)) == "batch"
        again = Message(rt.settings.rekey_topic, part, 0, key, value)
        assert await rt.handle(again) == "batch"  # redelivered: duplicate
    assert sorted(table) == sorted(customers) and all(s.orders_total == 1 for s in table.values())
    assert rt.outcomes["ok"] == len(customers) and rt.outcomes["duplicate"] == len(customers) - len(mine)
