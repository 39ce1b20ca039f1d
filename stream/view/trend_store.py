"""Trend points: tier, churn-level and tag counts once per interval of stream time, in one Redis sorted set.

Keys (``P`` is the configured prefix):

- ``P:trends``: sorted set, score the interval boundary (epoch ms), member the point as compact JSON
  ``{"at": "<RFC 3339>", "tiers": {"A": n, …}, "churn": {"none": n, …}, "tags": {"<tag>": n, …}}``.

A point is read from what the view writes keep (so it is cluster-wide, whichever worker records it):
the counts hash ``P:n`` (``tier:A`` … ``tier:D``, ``churn:none`` … ``churn:high``; a missing field
counts 0) and the tag indexes ``P:tag:<tag>`` (ZCARD). One script reads them and adds the point,
so there is no gap between the read and the write in which another worker could record the same
boundary; and it adds a point only after the newest one, so with several workers each boundary
gets exactly one point, and the points only go forward in time. The worker that adds a point
trims those that fell out of the span.

Also here, pure: the query bounds of ``GET /trends`` and what each role sees of a point.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import orjson
import redis.asyncio as aioredis

from rules.churn import LEVELS
from rules.tiers import TIERS
from stream.access.auth import Principal
from stream.access.visibility import TagRules, can_see_tag
from stream.domain.events import format_ts, parse_ts
from stream.exceptions import InvalidEvent, TaggerError

MAX_TAGS = 100  # tags counted per point: the ruleset's first, in rule order
CHURN_ROLES = frozenset({"sales", "finance", "admin"})  # see churn levels; viewers do not (as in the view)

# Trim, then add the point if it is after the newest, reading the counts in the same call.
# KEYS: trends, counts hash. ARGV: boundary ms, its RFC 3339 text, trim bound (points at or
# before it go), tag-index key prefix, tiers ('A B C D'), churn levels ('none low …'), then the tags.
# Returns 1 if the point was added, 0 if a point at or after the boundary was there already.
_RECORD_SCRIPT = """
local at = tonumber(ARGV[1])
local newest = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #newest > 0 and tonumber(newest[2]) >= at then return 0 end
local n = {}
local flat = redis.call('HGETALL', KEYS[2])
for i = 1, #flat, 2 do n[flat[i]] = tonumber(flat[i + 1]) or 0 end
local tiers, churn, tags = {}, {}, {}
for t in string.gmatch(ARGV[5], '%S+') do tiers[t] = n['tier:' .. t] or 0 end
for l in string.gmatch(ARGV[6], '%S+') do churn[l] = n['churn:' .. l] or 0 end
for i = 7, #ARGV do tags[ARGV[i]] = redis.call('ZCARD', ARGV[4] .. ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('ZADD', KEYS[1], at, cjson.encode({at = ARGV[2], tiers = tiers, churn = churn, tags = tags}))
return 1
"""

Point = dict[str, Any]  # {"at", "tiers", "churn", "tags"}
_TS_FIELD = "field 'ts': "  # how parse_ts's reasons begin; a bound's reason names its parameter instead


class TrendStore:
    """The trend points of one deployment (Redis key prefix), kept for ``span_ms`` of stream time."""

    def __init__(self, client: aioredis.Redis, prefix: str, span_ms: int) -> None:
        self.client = client
        self.prefix = prefix
        self.span_ms = span_ms
        self.key = f"{prefix}:trends"
        self._record = client.register_script(_RECORD_SCRIPT)

    async def stream_clock(self) -> int | None:
        """The global stream clock (``P:clock``, the largest event time any worker saw); None before any."""
        value = await self.client.get(f"{self.prefix}:clock")
        return None if value is None else int(value)

    async def record(self, boundary_ms: int, tags: Sequence[str]) -> bool:
        """Record the counts now as the point at ``boundary_ms``; False if it or a later point exists.

        ``tags``: the tags to count (at most :data:`MAX_TAGS` are). Points at or more than the
        span before ``boundary_ms`` are trimmed when a point is added.
        """
        args: list[str | int] = [boundary_ms, format_ts(boundary_ms), boundary_ms - self.span_ms,
                                 f"{self.prefix}:tag:", " ".join(TIERS), " ".join(LEVELS), *rule_tags(tags)]
        added = await self._record(keys=[self.key, f"{self.prefix}:n"], args=args)
        return bool(added)

    async def points(self, from_ms: int | None = None, to_ms: int | None = None) -> list[Point]:
        """The points with ``from_ms <= at <= to_ms`` (either bound may be None: open), oldest first."""
        low = "-inf" if from_ms is None else from_ms
        high = "+inf" if to_ms is None else to_ms
        members = await self.client.zrangebyscore(self.key, low, high)
        return [orjson.loads(cast(bytes, m)) for m in members]


def boundary(now_ms: int, interval_ms: int) -> int:
    """The latest interval boundary at or before ``now_ms`` (boundaries are multiples of the interval)."""
    return now_ms - now_ms % interval_ms


class TrendQueryError(TaggerError, ValueError):
    """A ``from`` or ``to`` of ``GET /trends`` is not a time, or ``to`` is before ``from``.

    The caller gets a 400 naming the ``parameter``; nothing for an operator to do. Callers: send
    RFC 3339 with an offset (``2026-11-22T10:00:00Z``) or epoch milliseconds.
    """

    def __init__(self, parameter: str, reason: str) -> None:
        super().__init__(reason)
        self.parameter = parameter
        self.reason = reason


def parse_bound(parameter: str, value: str | None) -> int | None:
    """A query bound: RFC 3339 with an offset, or epoch ms digits; None if absent or empty."""
    if not value:
        return None
    try:
        return parse_ts(int(value) if value.isdigit() else value)
    except InvalidEvent as exc:
        raise TrendQueryError(parameter, f"{parameter}: {exc.reason.removeprefix(_TS_FIELD)}") from None


def query_bounds(query: Mapping[str, str]) -> tuple[int | None, int | None]:
    """``from`` and ``to`` of a ``GET /trends`` query; :class:`TrendQueryError` if either is bad or to < from."""
    low, high = parse_bound("from", query.get("from")), parse_bound("to", query.get("to"))
    if low is not None and high is not None and high < low:
        raise TrendQueryError("to", "to: is before from")
    return low, high


def visible_point(point: Mapping[str, Any], principal: Principal, rules: TagRules) -> Point:
    """A point as ``principal`` may see it: tiers for every role, churn for sales and up, visible tags only."""
    out: Point = {"at": point["at"], "tiers": dict(point.get("tiers") or {})}
    if principal.role in CHURN_ROLES:
        out["churn"] = dict(point.get("churn") or {})
    out["tags"] = {t: n for t, n in (point.get("tags") or {}).items() if can_see_tag(principal, t, rules)}
    return out


def disclosed(principal: Principal) -> list[str]:
    """The field groups a trends answer discloses to ``principal`` (for the audit record)."""
    return ["trends:tiers", *(["trends:churn"] if principal.role in CHURN_ROLES else []), "trends:tags"]


def rule_tags(tags: Iterable[str]) -> list[str]:
    """The tags a point counts: the first :data:`MAX_TAGS` distinct ones, in the order given (rule order)."""
    return list(dict.fromkeys(tags))[:MAX_TAGS]
