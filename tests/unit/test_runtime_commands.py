"""Partition-wide commands run in chunks and report whether a sweep is still running (no broker)."""

from __future__ import annotations

from typing import Any

import orjson

from agents.evaluate import Evaluator, facts_schema
from agents.runtime import Runtime
from rules import default_rules_dir, load_ruleset
from stream.clock import Clock
from stream.settings import Settings
from stream.state import CustomerState


class FakeSender:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes, int | None]] = []

    async def send(self, *, key: bytes, value: bytes, partition: int | None = None) -> Any:
        self.sent.append((key, value, partition))


class FakeView:
    def __init__(self) -> None:
        self.staged: dict[str, float] = {}
        self.acks: list[tuple[str, str, int]] = []

    def stage(self, cid: str, view_json: bytes, spend: float) -> None:
        self.staged[cid] = spend

    async def flush(self) -> int:
        return len(self.staged)

    async def ack(self, request_id: str, phase: str, partition: int) -> None:
        self.acks.append((request_id, phase, partition))


async def test_sweeps_run_in_chunks_and_acknowledge_at_the_end() -> None:
    settings = Settings(partitions=1, sweep_chunk=2)  # type: ignore[call-arg]
    senders = {name: FakeSender() for name in ("tag_changes", "dead_letters", "rekey", "commands", "churn_alerts")}
    table: dict[str, CustomerState] = {f"c{i}": CustomerState() for i in range(5)}
    view = FakeView()
    runtime = Runtime(settings, table, Evaluator(load_ruleset(default_rules_dir(), facts_schema())),
                      view, Clock("wall"), senders)  # type: ignore[arg-type]
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
