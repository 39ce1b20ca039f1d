"""The Redis projection: every customer's current view, its list indexes and history, the global spend rank.

Redis is a projection, never the source of truth: the Faust table is. Writes
are staged in memory and flushed in batches off the hot path; if Redis is
down the staged writes are kept (latest per customer) and retried, and if
Redis is flushed the workers notice the missing epoch key and rebuild it.

Keys (``P`` is the configured prefix):

- ``P:c:<customer_id>``: the customer's view as JSON.
- ``P:m:<customer_id>``: hash of the customer's tags (``t``, space-separated), tier (``r``, ``_`` none),
  churn level (``l``) and team (``m``): what the write script compares, and what list filters read.
- ``P:spend365``: sorted set customer → spend_365d, only customers with spend > 0.
- ``P:tag:<tag>``: sorted set (all scores 0, so ordered by id) of the customers holding ``tag``.
- ``P:ix:<last|risk|score|spend>:<A|B|C|D|_>``: sorted sets, the list indexes: per sort key and tier,
  the customers of that tier scored by :func:`stream.view.listing.index_scores`.
- ``P:n``: hash of counts, ``tier:<T>`` and ``churn:<level>``, cluster-wide.
- ``P:h:<customer_id>``: list of the customer's last changes (JSON, newest first), capped.
- ``P:walks``, ``P:w:<walk>`` (and ``:chg``, ``:old``): list walks under way (``stream/view/lua/list.lua``).
- ``P:clock``: the largest event time seen by any worker (stream clock).
- ``P:epoch``: present while the projection is intact.
- ``P:ack:<request>:<phase>``: partitions that finished a command phase.

``P:ct:<customer_id>`` (a set of tags) was the meta hash's predecessor: the write script reads
and deletes it where no hash exists yet.

The scripts are in ``stream/view/lua``: ``write.lua`` (one call per chunk of staged customers)
and ``list.lua`` (one call per page of a list), each preceded by ``common.lua``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from stream.exceptions import TaggerError
from stream.view.listing import LEVELS, NO_TIER, ListQuery, index_scores
from stream.view.timeline import rebuilt_entry

_MAX_SCRIPT = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = tonumber(ARGV[1])
if new > cur then redis.call('SET', KEYS[1], ARGV[1]); return new end
return cur
"""




def _script(name: str) -> str:
    lua = files("stream.view") / "lua"
    return (lua / "common.lua").read_text() + (lua / name).read_text()


_WRITE_SCRIPT = _script("write.lua")
_LIST_SCRIPT = _script("list.lua")
WALK_TTL_S = 600  # a walk's cursor lives this long after its page
MAX_WALKS = 200  # walks under way at once; the oldest give way
SMALL_TAG = 2000  # a tag held by at most this many customers is listed from its own index

ViewDocument = dict[str, Any]  # the customer view (agents.engine.evaluate.Evaluator.view_document), "tags" a list
#: a staged view (or a function building it; None: erase), its spend_365d and last activity (epoch ms)
Staged = tuple[ViewDocument | Callable[[], ViewDocument] | None, float, int | None]
_ERASE: Staged = (None, 0.0, None)  # staged in place of a view: remove the customer
HISTORY_ONLY = b"-"  # the view argument of a customer whose history alone is written


@dataclass(frozen=True)
class SpendRanks:
    """A snapshot of the global spend ranking."""

    n: int  # customers with spend_365d > 0
    values: tuple[float | None, ...]  # spend at the requested 1-based positions


@dataclass(frozen=True)
class Page:
    """One page of a customer list: the views in order, the position after it (None: the end)."""

    views: list[ViewDocument]
    next: tuple[str, int, str] | None  # walk, score, customer id
    as_of_ms: int


class WalkExpired(TaggerError, LookupError):
    """The cursor's walk is over, expired or gave way to newer ones: start the list again."""


class RedisView:
    """Staged, batched writes of customer views to Redis, and global reads.

    Views are staged as documents (dicts with a ``"tags"`` list); a flush renders each to
    JSON and sends its tags, tier, churn level, team and list-index scores beside it (see
    ``stream/view/lua/write.lua``), with the history entries noted since the last flush.
    """

    def __init__(self, client: aioredis.Redis, prefix: str, history_size: int = 100) -> None:
        self.client = client
        self.prefix = prefix
        self.history_size = history_size  # TAGGER_HISTORY_SIZE
        self._pending: dict[str, Staged] = {}
        self._history: dict[str, list[dict[str, Any]]] = {}  # entries noted, oldest first
        self._rebuilt: set[str] = set()  # staged by a rebuild: a history lost with Redis gets a 'rebuilt' entry
        self._max = client.register_script(_MAX_SCRIPT)
        self._write_sha = client.register_script(_WRITE_SCRIPT).sha
        self._list = client.register_script(_LIST_SCRIPT)
        self._flushing = asyncio.Lock()
        self.errors = 0

    def key(self, customer_id: str) -> str:
        """Redis key of a customer's view."""
        return f"{self.prefix}:c:{customer_id}"

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

    def stage(self, customer_id: str, view: ViewDocument | Callable[[], ViewDocument], spend_365d: float,
              last_activity: int | None = None, rebuilt: bool = False) -> None:
        """Queue a customer's latest view document; only the newest per customer is written.

        ``view`` may be a function that builds the document: it is called at flush time, so a
        customer evaluated many times between two flushes is rendered once. Its ``"tags"``
        (names matching ``rules.model.TAG_PATTERN``) become the customer's tag-index memberships;
        its tier, churn risk and score, ``spend_365d`` and ``last_activity`` (epoch ms) its places
        in the list indexes. ``rebuilt``: staged by a rebuild of the projection.
        """
        self._pending[customer_id] = (view, spend_365d, last_activity)
        if rebuilt:
            self._rebuilt.add(customer_id)

    def note(self, customer_id: str, entry: dict[str, Any]) -> None:
        """Queue an entry of the customer's history (:mod:`stream.view.timeline`), written with its next view."""
        self._history.setdefault(customer_id, []).append(entry)

    def stage_erase(self, customer_id: str) -> None:
        """Queue the removal of every key and index membership of a customer (privacy erasure)."""
        self._pending[customer_id] = _ERASE
        self._history.pop(customer_id, None)
        self._rebuilt.discard(customer_id)

    async def flush(self, batch: int = 200, only: Collection[str] | None = None) -> int:
        """Write staged views and history entries; on error they stay staged and the error is raised.

        ``only``: just these customers' (a priority event's); the others stay staged.

        Flushes run one at a time (a priority flush waits for the timer's), each taking
        its chunk out of the staging area first, so no view is written twice and an
        older view never lands after a newer one. A flush writes the customers staged
        when it began; those staged while it runs wait for the next one (chasing them
        wrote chunks of two or three customers for as long as events kept coming).
        One EVALSHA per chunk of ``batch`` customers (Redis runs it in a few
        milliseconds, so reads wait little); the script is loaded once, and again only
        if Redis lost it (a restart). Returns the number of customers written.
        """
        written = 0
        async with self._flushing:
            if only is None:
                staged = [*self._pending, *(cid for cid in self._history if cid not in self._pending)]
            else:
                staged = [cid for cid in only if cid in self._pending or cid in self._history]
            for start in range(0, len(staged), batch):
                chunk = [(cid, self._pending.pop(cid, None), self._history.pop(cid, None), cid in self._rebuilt)
                         for cid in staged[start:start + batch] if cid in self._pending or cid in self._history]
                self._rebuilt.difference_update(cid for cid, *_ in chunk)
                try:
                    try:
                        await self._write_chunk(chunk)
                    except NoScriptError:
                        await self.client.script_load(_WRITE_SCRIPT)
                        await self._write_chunk(chunk)
                except BaseException:
                    self._restage(chunk)
                    raise
                written += len(chunk)
        return written

    def _restage(self, chunk: list[tuple[str, Staged | None, list[dict[str, Any]] | None, bool]]) -> None:
        """Put a chunk that could not be written back, behind what was staged meanwhile."""
        for cid, item, entries, rebuilt in chunk:
            if item is not None:
                self._pending.setdefault(cid, item)  # unless staged anew meanwhile
            if entries and self._pending.get(cid) is not _ERASE:
                self._history[cid] = entries + self._history.get(cid, [])
            if rebuilt:
                self._rebuilt.add(cid)

    async def _write_chunk(self, chunk: list[tuple[str, Staged | None, list[dict[str, Any]] | None, bool]]) -> None:
        """One EVALSHA for the whole chunk: one command and one reply, however many customers.

        Per customer 13 arguments (``write.lua``): id, view JSON ('' erase, '-' history only),
        spend_365d, tags, tier, churn level, team, the four index scores, history entries, the
        entry of a rebuilt history.
        """
        now = int(time.time() * 1000)
        args: list[bytes | str | int] = [self.prefix, now, self.history_size]
        for cid, item, entries, rebuilt in chunk:
            lines = b"\n".join(orjson.dumps(e) for e in entries or ())
            if item is None or item[0] is None:
                view = HISTORY_ONLY if item is None else b""
                args += (cid, view, "0", "", NO_TIER, "none", "", 0, 0, 0, 0, lines, b"")
                continue
            view_or_build, spend, last = item
            doc: ViewDocument = view_or_build() if callable(view_or_build) else view_or_build  # type: ignore[assignment]
            churn = doc.get("churn") or {}
            tier = doc.get("tier") or NO_TIER
            level = str(churn.get("level")) if churn.get("level") in LEVELS else "none"
            team = (doc.get("profile") or {}).get("team") or ""
            scores = index_scores(cid, {"last_activity": last, "risk": churn.get("risk"), "score": doc.get("score"),
                                        "spend_365d": spend})
            marker = orjson.dumps(rebuilt_entry(doc, now)) if rebuilt else b""
            args += (cid, orjson.dumps(doc), repr(float(spend)), " ".join(doc.get("tags") or ()), tier, level,
                     team, *scores, lines, marker)
        await self.client.evalsha(self._write_sha, 0, *args)

    async def list_page(self, query: ListQuery, budget: int | None = None) -> Page:
        """One page of ``query`` (:mod:`stream.view.listing`) from the list indexes; raises WalkExpired.

        Costs O(limit) index entries (at most ``budget`` examined: ``20 × limit`` by default, so a page
        of a rare filter may come out short), never O(customers).
        """
        cursor = query.cursor
        walk = cursor.walk if cursor else uuid.uuid4().hex[:16]
        levels = f" {' '.join(query.levels)} " if query.levels else ""
        reply = await self._list(args=[
            self.prefix, walk, query.index, query.order, query.tiers,
            "" if cursor is None else cursor.score, "" if cursor is None else cursor.customer_id,
            query.limit, budget or max(20 * query.limit, 1000), query.tag, levels, query.team,
            int(time.time() * 1000), WALK_TTL_S * 1000, MAX_WALKS, SMALL_TAG])
        status = _text(reply[0])
        if status != "ok":
            raise WalkExpired("the list's cursor expired: start the list again without one" if status == "expired"
                              else "the cursor belongs to another list: start again without one")
        after = (walk, int(float(_text(reply[1]))), _text(reply[2])) if _text(reply[1]) else None
        return Page(views=[orjson.loads(v) for v in reply[5::2]], next=after, as_of_ms=int(reply[3]))

    async def history(self, customer_id: str, limit: int) -> tuple[bool, list[dict[str, Any]]]:
        """Whether the customer has a view, and its last ``limit`` history entries, newest first."""
        pipe = self.client.pipeline(transaction=False)
        pipe.exists(self.key(customer_id))
        pipe.lrange(f"{self.prefix}:h:{customer_id}", 0, limit - 1)
        exists, entries = await pipe.execute()
        return bool(exists), [orjson.loads(e) for e in entries]

    async def counts(self) -> Mapping[str, int]:
        """Customers per tier (``tier:A``) and churn level (``churn:high``), cluster-wide."""
        raw = await self.client.hgetall(f"{self.prefix}:n")
        return {_text(k): int(v) for k, v in raw.items()}

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


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
