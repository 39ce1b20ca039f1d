"""The Redis projection: every customer's current view, the global spend rank, the stream clock.

Redis is a projection, never the source of truth: the Faust table is. Writes
are staged in memory and flushed in batches off the hot path; if Redis is
down the staged writes are kept (latest per customer) and retried, and if
Redis is flushed the workers notice the missing epoch key and rebuild it.

Keys (``P`` is the configured prefix):

- ``P:c:<customer_id>``: the customer's view as JSON.
- ``P:spend365``: sorted set customer → spend_365d, only customers with spend > 0.
- ``P:tag:<tag>``: sorted set (all scores 0, so ordered by id) of the customers holding ``tag``.
- ``P:ct:<customer_id>``: set of the customer's tags, so a removed tag leaves its index.
- ``P:clock``: the largest event time seen by any worker (stream clock).
- ``P:epoch``: present while the projection is intact.
- ``P:ack:<request>:<phase>``: partitions that finished a command phase.

A view write sends the customer's tags beside its view JSON, so the write script never
decodes the JSON; it compares them with ``P:ct:<customer_id>`` and changes only the index
memberships of the tags that were lost or gained.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

_MAX_SCRIPT = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = tonumber(ARGV[1])
if new > cur then redis.call('SET', KEYS[1], ARGV[1]); return new end
return cur
"""


# A chunk of customers' writes in one call, atomic: per customer its view, its rank entry and
# its tag-index memberships. Its tags come as their own argument, separated by single spaces
# (tag names match rules.model.TAG_PATTERN: no whitespace); the script compares them with the
# customer's tag set and changes only the difference: a lost tag leaves its index and the set
# (ZREM + SREM), a new one joins both (ZADD + SADD), a kept one is not touched. An empty view
# with empty tags erases the customer: the view, its rank entry, every index membership and
# (emptied) its tag set.
# KEYS: spend rank. ARGV: view key prefix, tag-set key prefix, tag-index key prefix, then per
# customer: id, view JSON ('' = erase), spend_365d, tags ('a b c', '' = none).
_WRITE_SCRIPT = """
local viewp, setp, tagp = ARGV[1], ARGV[2], ARGV[3]
for i = 4, #ARGV, 4 do
  local cid, view, spend, listed = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
  local set = setp .. cid
  local tags, new, kept = {}, {}, {}
  for t in string.gmatch(listed, '%S+') do
    if not new[t] then new[t] = true; tags[#tags + 1] = t end
  end
  for _, t in ipairs(redis.call('SMEMBERS', set)) do
    if new[t] then kept[t] = true else redis.call('ZREM', tagp .. t, cid); redis.call('SREM', set, t) end
  end
  for _, t in ipairs(tags) do
    if not kept[t] then redis.call('ZADD', tagp .. t, 0, cid); redis.call('SADD', set, t) end
  end
  if view == '' then redis.call('DEL', viewp .. cid) else redis.call('SET', viewp .. cid, view) end
  if spend > 0 then redis.call('ZADD', KEYS[1], spend, cid) else redis.call('ZREM', KEYS[1], cid) end
end
return (#ARGV - 3) / 4
"""
ViewDocument = dict[str, Any]  # the customer view (agents.engine.evaluate.Evaluator.view_document), "tags" a list
Staged = tuple[ViewDocument | Callable[[], ViewDocument] | None, float]  # None: erase
_ERASE: Staged = (None, 0.0)  # staged in place of a view: remove the customer


@dataclass(frozen=True)
class SpendRanks:
    """A snapshot of the global spend ranking."""

    n: int  # customers with spend_365d > 0
    values: tuple[float | None, ...]  # spend at the requested 1-based positions


class RedisView:
    """Staged, batched writes of customer views to Redis, and global reads.

    Views are staged as documents (dicts with a ``"tags"`` list); a flush renders each to
    JSON and sends its tags beside it (see ``_WRITE_SCRIPT``).
    """

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._pending: dict[str, Staged] = {}
        self._max = client.register_script(_MAX_SCRIPT)
        self._write_sha = client.register_script(_WRITE_SCRIPT).sha
        self._flushing = asyncio.Lock()
        self.errors = 0

    def key(self, customer_id: str) -> str:
        """Redis key of a customer's view."""
        return f"{self.prefix}:c:{customer_id}"

    def tags_key(self, customer_id: str) -> str:
        """Redis key of the set of a customer's current tags."""
        return f"{self.prefix}:ct:{customer_id}"

    async def tag_members(self, tag: str, after: str | None, limit: int) -> tuple[list[str], str | None]:
        """Up to ``limit`` customers holding ``tag``, in id order after ``after``; and the next cursor."""
        start = b"(" + after.encode() if after else b"-"
        members = await self.client.zrangebylex(f"{self.prefix}:tag:{tag}", start, b"+", start=0, num=limit + 1)
        ids = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
        return ids[:limit], (ids[limit - 1] if len(ids) > limit else None)

    async def tag_count(self, tag: str) -> int:
        """How many customers hold ``tag``."""
        return int(await self.client.zcard(f"{self.prefix}:tag:{tag}"))

    @property
    def pending(self) -> int:
        """Number of customers whose view waits to be written."""
        return len(self._pending)

    def stage(self, customer_id: str, view: ViewDocument | Callable[[], ViewDocument], spend_365d: float) -> None:
        """Queue a customer's latest view document; only the newest per customer is written.

        ``view`` may be a function that builds the document: it is called at flush time, so a
        customer evaluated many times between two flushes is rendered once. Its ``"tags"``
        (names matching ``rules.model.TAG_PATTERN``) become the customer's tag-index memberships.
        """
        self._pending[customer_id] = (view, spend_365d)

    def stage_erase(self, customer_id: str) -> None:
        """Queue the removal of every key and index membership of a customer (privacy erasure)."""
        self._pending[customer_id] = _ERASE

    async def flush(self, batch: int = 200, only: Collection[str] | None = None) -> int:
        """Write staged views; on error they stay staged and the error is raised.

        ``only``: just these customers' (a priority event's); the others stay staged.

        Flushes run one at a time (a priority flush waits for the timer's), each taking
        its chunk out of the staging area first, so no view is written twice and an
        older view never lands after a newer one. A flush writes the customers staged
        when it began; those staged while it runs wait for the next one (chasing them
        wrote chunks of two or three customers for as long as events kept coming).
        One EVALSHA per chunk of ``batch`` customers (Redis runs it in a few
        milliseconds, so reads wait little); the script is loaded once, and again only
        if Redis lost it (a restart).
        """
        written = 0
        async with self._flushing:
            staged = list(self._pending) if only is None else [cid for cid in only if cid in self._pending]
            for start in range(0, len(staged), batch):
                chunk = [(cid, self._pending.pop(cid)) for cid in staged[start:start + batch] if cid in self._pending]
                try:
                    try:
                        await self._write_chunk(chunk)
                    except NoScriptError:
                        await self.client.script_load(_WRITE_SCRIPT)
                        await self._write_chunk(chunk)
                except BaseException:
                    for cid, item in chunk:
                        self._pending.setdefault(cid, item)  # unless staged anew meanwhile
                    raise
                written += len(chunk)
        return written

    async def _write_chunk(self, chunk: list[tuple[str, Staged]]) -> None:
        """One EVALSHA for the whole chunk: one command and one reply, however many customers.

        Per customer: id, view JSON, spend_365d and its tags joined by spaces; an erasure
        sends an empty view and no tags.
        """
        args: list[bytes | str] = [self.key(""), self.tags_key(""), f"{self.prefix}:tag:"]
        for cid, (view, spend) in chunk:
            if view is None:
                args += (cid, b"", "0.0", "")
                continue
            doc = view() if callable(view) else view
            args += (cid, orjson.dumps(doc), repr(float(spend)), " ".join(doc.get("tags") or ()))
        await self.client.evalsha(self._write_sha, 1, f"{self.prefix}:spend365", *args)

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
