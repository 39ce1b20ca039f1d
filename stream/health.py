"""Liveness and readiness of a worker, as pure logic the web pages and metrics share.

A worker is *ready* when it owns partitions, no rebalance or changelog
recovery is under way, and Redis answers. ``/readyz`` returns the
:func:`readiness` document (HTTP 503 until ready), so an operator or a
Kubernetes probe sees what is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PARTITIONS = "partitions assigned"
RECOVERY = "recovery finished"
REDIS = "redis reachable"


@dataclass
class RedisHealth:
    """The worker's view of Redis from its health pings: up, error count, reconnects."""

    up: bool | None = None  # None: not pinged yet
    errors: int = 0
    reconnects: int = 0
    last_error: str | None = None

    def observe(self, error: BaseException | None) -> None:
        """Record one ping: ``None`` if it answered, else the exception it raised."""
        if error is None:
            if self.up is False:
                self.reconnects += 1
            self.up, self.last_error = True, None
        else:
            self.errors += 1
            self.up, self.last_error = False, f"{type(error).__name__}: {error}"[:300]


def recovery_remaining(highwaters: Mapping[Any, int | None], offsets: Mapping[Any, int | None]) -> int:
    """Changelog records still to read: per partition, highwater (last offset) minus last read offset."""
    remaining = 0
    for tp, highwater in highwaters.items():
        if highwater is None or highwater < 0:
            continue
        read = offsets.get(tp)
        remaining += max(0, highwater - (read if read is not None else -1))
    return remaining


def readiness(*, partitions: int, rebalancing: bool, recovering: bool, recovery_remaining_records: int,
              redis_up: bool | None, redis_error: str | None = None) -> tuple[bool, dict[str, Any]]:
    """(ready, the /readyz document naming whatever is missing)."""
    missing = []
    if partitions <= 0:
        missing.append(PARTITIONS)
    if rebalancing or recovering:
        missing.append(RECOVERY)
    if not redis_up:
        missing.append(REDIS)
    doc: dict[str, Any] = {
        "status": "ready" if not missing else "not ready",
        "missing": missing,
        "partitions_assigned": partitions,
        "rebalancing": rebalancing,
        "recovering": recovering,
        "recovery_remaining_records": recovery_remaining_records,
        "redis": "ok" if redis_up else (redis_error or "not checked yet"),
    }
    return not missing, doc
