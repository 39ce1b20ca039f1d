"""Partition-wide commands run in chunks and report whether a sweep is still running (no broker)."""

from __future__ import annotations

from typing import Any

import orjson

from stream.clock import Clock
from stream.settings import Settings
from stream.state import CustomerState

from .fakes import FakeView, make_runtime


async def test_sweeps_run_in_chunks_and_acknowledge_at_the_end() -> None:
    settings = Settings(partitions=1, sweep_chunk=2)  # type: ignore[call-arg]
    table: dict[str, CustomerState] = {f"c{i}": CustomerState() for i in range(5)}
    view = FakeView()
    runtime, senders = make_runtime(settings, table, Clock("wall"), view)
    cmd: dict[str, Any] = {"cmd": "rank", "request_id": "r1"}
    runs = 0
    while True:
        runs += 1
        await runtime.command(0, cmd)
        if not senders["commands"].sent:
            break
        _, value, partition = senders["commands"].sent.pop()
        assert partition == 0 and runtime.sweeping("rank", 0)
        cmd = orjson.loads(value)
    assert runs == 3 and set(view.staged) == set(table)  # 2 + 2 + 1 customers
    assert view.acks == [("r1", "rank", 0)] and not runtime.sweeping("rank", 0)
