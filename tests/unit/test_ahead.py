"""Urgent messages handled ahead of those fetched before them (stream/faust/intake.py ``_top_up``): the
runtime's side: which messages are urgent, and the partition's gap check around one handled ahead."""

from __future__ import annotations

from typing import Any

import orjson

from agents.engine.runtime import Message, Runtime
from stream.domain.state import CustomerState
from stream.settings import Settings

from .fakes import make_runtime

T = 1_767_225_600_000


def order(i: int, cid: str, amount: float, status: str = "paid") -> bytes:
    return orjson.dumps({"event_id": f"e{i}", "customer_id": cid, "ts": T + i * 1000, "order_id": f"o{i}",
                         "amount": amount, "status": status})


def ticket(i: int, cid: str, action: str, category: str) -> bytes:
    return orjson.dumps({"event_id": f"t{i}", "customer_id": cid, "ts": T + i * 1000, "ticket_id": f"T{i}",
                         "action": action, "category": category})


class Gaps:
    """GapFiller's interface: records what was read directly."""

    def __init__(self, committed: int, records: dict[int, Any]) -> None:
        self.committed, self.records, self.fetched = committed, records, []  # type: list[tuple[int, int]]

    async def start_of(self, topic: str, partition: int) -> int:
        return self.committed

    async def fetch(self, topic: str, partition: int, start: int, end: int) -> list[Any]:
        self.fetched.append((start, end))
        return [self.records[n] for n in range(start, end)]

    def mark_done(self, topic: str, partition: int, start: int, end: int) -> None:
        pass


def runtime(gaps: Gaps | None = None) -> tuple[Runtime, dict[str, CustomerState]]:
    table: dict[str, CustomerState] = {}
    rt, _ = make_runtime(Settings(partitions=1), table, gaps=gaps)  # type: ignore[call-arg]
    return rt, table


async def test_big_orders_and_complaints_are_urgent_as_the_customers_state_stands() -> None:
    rt, _ = runtime()
    assert rt.urgent("orders", order(1, "c1", 20_000))  # the absolute bar (10,000)
    assert not rt.urgent("orders", order(2, "c1", 20_000, status="refunded"))
    assert not rt.urgent("orders", order(3, "c1", 300))  # a first order: no average to compare with
    for i in range(4):  # c1's average paid order is 100 now
        await rt.handle(Message("orders", 0, i, b"c1", order(10 + i, "c1", 100)))
    assert rt.urgent("orders", order(20, "c1", 300))  # 3 x the average (big_order_multiple)
    assert not rt.urgent("orders", order(21, "c1", 299))
    assert rt.urgent("support-tickets", ticket(1, "c1", "opened", "complaint"))
    assert rt.urgent("support-tickets", ticket(2, "c1", "escalated", "billing"))
    assert not rt.urgent("support-tickets", ticket(3, "c1", "opened", "billing"))
    # logins, envelopes (judged when their turn comes), bad input and other topics are not
    assert not rt.urgent("logins", orjson.dumps({"event_id": "l", "customer_id": "c1", "ts": T}))
    assert not rt.urgent("orders", orjson.dumps({"batch_id": "b", "events": [orjson.loads(order(1, "c2", 20_000))]}))
    assert not rt.urgent("orders", b"{not json") and not rt.urgent("orders", None)
    assert not rt.urgent("profiles", order(1, "c1", 20_000))


async def test_a_message_handled_ahead_is_not_read_again_as_a_gap_when_the_partition_reaches_it() -> None:
    values = {n: order(n, f"c{n}", 50) for n in range(8)}
    values[5] = order(5, "c5", 20_000)
    gaps = Gaps(2, {n: type("R", (), {"offset": n, "key": f"c{n}".encode(), "value": v})()
                    for n, v in values.items()})
    rt, table = runtime(gaps=gaps)

    async def handle(n: int, ahead: bool = False) -> str:
        return await rt.handle(Message("orders", 0, n, f"c{n}".encode(), values[n]), ahead=ahead)

    assert await handle(5, ahead=True) == "ok"  # the first message since the assignment, ahead of 2..4
    assert rt.last_offset == {("orders", 0): 1}  # where the group resumes (2): not past 2..4
    for n in (2, 3, 4, 6):
        assert await handle(n) == "ok"
    assert gaps.fetched == [] and rt.last_offset[("orders", 0)] == 6
    assert table["c5"].orders_total == 1 and rt.outcomes["ok"] == 5  # once
    # a real gap around an offset handled ahead: only the missing ones are read directly
    values.update({n: order(n, f"c{n}", 50) for n in range(8, 13)})
    gaps.records.update({n: type("R", (), {"offset": n, "key": f"c{n}".encode(), "value": values[n]})()
                         for n in range(8, 13)})
    assert await handle(9, ahead=True) == "ok"
    assert await handle(12) == "ok"  # 7..11 never came but 9, handled ahead
    assert gaps.fetched == [(7, 12)]
    assert rt.outcomes["ok"] == 11 and table["c9"].orders_total == 1 and "c7" in table and "c11" in table
    rt.forget_offsets()  # a rebalance: every partition restarts from its committed offset
    assert rt.offsets._ahead == {}
