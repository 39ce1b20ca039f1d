"""Partition-wide commands run in chunks and report whether a sweep is still running (no broker)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from stream.domain.clock import Clock
from stream.domain.state import CustomerState
from stream.settings import Settings

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


async def test_a_redis_connection_error_at_the_end_is_tried_again_and_the_ack_not_lost(monkeypatch: Any) -> None:
    """A Redis just restarted leaves a dead pooled connection: the last step of a command must not lose its ack."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    import agents.engine.pipeline.commands

    monkeypatch.setattr(agents.engine.pipeline.commands, "REDIS_RETRY_DELAYS", (0.0, 0.0))
    view = FakeView()
    runtime, _ = make_runtime(Settings(partitions=1), {"c1": CustomerState()}, Clock("wall"), view)  # type: ignore[call-arg]
    flush, failures = view.flush, [RedisConnectionError("Connection closed by server."), None]

    async def flaky(*args: Any, **kwargs: Any) -> int:
        error = failures.pop(0) if failures else None
        if error is not None:
            raise error
        return await flush(*args, **kwargs)

    view.flush = flaky  # type: ignore[method-assign]
    await runtime.command(0, {"cmd": "rank", "request_id": "r2"})
    assert view.acks == [("r2", "rank", 0)] and view.flushed == [None]
    failures[:] = [RedisConnectionError("down")] * 3  # more failures than tries: raised (dead-lettered by the caller)
    with pytest.raises(RedisConnectionError):
        await runtime.command(0, {"cmd": "rank", "request_id": "r3"})
    assert view.acks == [("r2", "rank", 0)]
