"""The Redis projection: every customer's current view, the global spend rank, the stream clock.

Redis is a projection, never the source of truth: the Faust table is. Writes
are staged in memory and flushed in batches off the hot path; if Redis is
down the staged writes are kept (latest per customer) and retried, and if
Redis is flushed the workers notice the missing epoch key and rebuild it.

Keys (``P`` is the configured prefix):

- ``P:c:<customer_id>``: the customer's view as JSON.
- ``P:spend365``: sorted set customer → spend_365d, only customers with spend > 0.
- ``P:clock``: the largest event time seen by any worker (stream clock).
- ``P:epoch``: present while the projection is intact.
- ``P:ack:<request>:<phase>``: partitions that finished a command phase.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis

_MAX_SCRIPT = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = tonumber(ARGV[1])
if new > cur then redis.call('SET', KEYS[1], ARGV[1]); return new end
return cur
"""


@dataclass(frozen=True)
class SpendRanks:
    """A snapshot of the global spend ranking."""

    n: int  # customers with spend_365d > 0
    values: tuple[float | None, ...]  # spend at the requested 1-based positions


class RedisView:
    """Staged, batched writes of customer views to Redis, and global reads."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._pending: dict[str, tuple[bytes, float]] = {}
        self._max = client.register_script(_MAX_SCRIPT)
        self.errors = 0

    def key(self, customer_id: str) -> str:
        """Redis key of a customer's view."""
        return f"{self.prefix}:c:{customer_id}"

    @property
    def pending(self) -> int:
        """Number of customers whose view waits to be written."""
        return len(self._pending)

    def stage(self, customer_id: str, view_json: bytes, spend_365d: float) -> None:
        """Queue a customer's latest view; only the newest per customer is written."""
        self._pending[customer_id] = (view_json, spend_365d)

    async def flush(self, batch: int = 2000) -> int:
        """Write staged views; on error they stay staged and the error is raised."""
        written = 0
        while self._pending:
            chunk = list(self._pending.items())[:batch]
            pipe = self.client.pipeline(transaction=False)
            rank_key = f"{self.prefix}:spend365"
            for cid, (view_json, spend) in chunk:
                pipe.set(self.key(cid), view_json)
                if spend > 0:
                    pipe.zadd(rank_key, {cid: spend})
                else:
                    pipe.zrem(rank_key, cid)
            await pipe.execute()
            for cid, item in chunk:
                if self._pending.get(cid) is item:
                    del self._pending[cid]
            written += len(chunk)
        return written

    async def spend_ranks(self, positions: list[int]) -> SpendRanks:
        """Spend at the given 1-based descending rank positions (None if out of range)."""
        rank_key = f"{self.prefix}:spend365"
        n = int(await self.client.zcard(rank_key))
        pipe = self.client.pipeline(transaction=False)
        for pos in positions:
            pipe.zrevrange(rank_key, pos - 1, pos - 1, withscores=True)
        rows = await pipe.execute() if positions else []
        values = tuple(float(r[0][1]) if (r and pos >= 1) else None for r, pos in zip(rows, positions, strict=True))
        return SpendRanks(n=n, values=values)

    async def customers_between(self, low: float, high: float) -> list[str]:
        """Customers whose spend_365d lies in [low, high] (either bound may be infinite)."""
        members = await self.client.zrangebyscore(f"{self.prefix}:spend365", low, high)
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

    async def advance_clock(self, local_max: int) -> int:
        """Raise the global stream clock to ``local_max``; return the global value."""
        return int(await self._max(keys=[f"{self.prefix}:clock"], args=[local_max]))

    async def epoch(self) -> bytes | None:
        """The projection's epoch token, created if missing; a new token means Redis lost its data."""
        key = f"{self.prefix}:epoch"
        await self.client.set(key, f"{time.time_ns()}", nx=True)
        token = await self.client.get(key)
        return None if token is None else bytes(token) if isinstance(token, bytes) else str(token).encode()

    async def ack(self, request_id: str, phase: str, partition: int) -> None:
        """Record that ``partition`` finished ``phase`` of a command."""
        key = f"{self.prefix}:ack:{request_id}:{phase}"
        await self.client.sadd(key, partition)
        await self.client.expire(key, 3600)

    async def acked(self, request_id: str, phase: str) -> set[int]:
        """Partitions that finished ``phase`` of a command."""
        members = await self.client.smembers(f"{self.prefix}:ack:{request_id}:{phase}")
        return {int(m) for m in members}

    async def get_view(self, customer_id: str) -> bytes | None:
        """A customer's view as stored in Redis."""
        value = await self.client.get(self.key(customer_id))
        if value is None:
            return None
        return value if isinstance(value, bytes) else str(value).encode()
