"""Customer lists, the pure part: the sort-index scores, the query of ``GET /customers`` and its cursor.

Each sort key has one Redis sorted set per tier (``P:ix:<key>:<tier>``, :mod:`stream.view.redis_view`).
A customer's score in it packs the sort value and a hash of its id into one integer below 2**53
(exact in a double): ``value << bits | crc32(id) % 2**bits``. Customers with the same value (many
have risk 0 or no spend) are then still ordered by a stable, nearly unique number, so a page
boundary falls between two customers, not inside a run of equal scores.

A cursor carries the walk it belongs to, the position (score and customer id) after which the
next page starts, and a digest of the query, so it cannot be replayed against another query.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from stream.domain.manual import TAG
from stream.domain.profiles import TEAM_CHARS
from stream.exceptions import TaggerError

#: sort key of the API → (index name, bits of id hash under the value, scale of the value)
SORTS: dict[str, tuple[str, int, float]] = {
    "last_activity": ("last", 21, 0.001),  # epoch ms → s (2**32 s: year 2106)
    "risk": ("risk", 39, 10_000.0),  # 0..1, 4 decimals
    "score": ("score", 39, 100.0),  # 0..120, 2 decimals
    "spend_365d": ("spend", 13, 100.0),  # cents, up to 2**40 (11 billion)
}
INDEXES = tuple(index for index, _, _ in SORTS.values())  # the write script's order (stream/view/lua/write.lua)
MONEY_SORTS = frozenset({"spend_365d"})
TIERS = "ABCD"
NO_TIER = "_"  # the index of customers without a tier yet
LEVELS = ("none", "low", "medium", "high")
DEFAULT_LIMIT, MAX_LIMIT = 50, 500


def index_scores(customer_id: str, values: Mapping[str, float | None]) -> tuple[int, ...]:
    """The customer's score in each sort index (in :data:`INDEXES` order); a missing value counts as 0."""
    h = zlib.crc32(customer_id.encode())
    out = []
    for key, (_, bits, scale) in SORTS.items():
        top = (1 << (53 - bits)) - 1
        value = min(max(round((values.get(key) or 0.0) * scale), 0), top)
        out.append(value << bits | h & ((1 << bits) - 1))
    return tuple(out)


class BadParameter(TaggerError, ValueError):
    """A query parameter is wrong: ``parameter`` names it, the message says why."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


@dataclass(frozen=True)
class ListQuery:
    """A parsed ``GET /customers`` query."""

    tiers: str = TIERS + NO_TIER  # the indexes walked
    tag: str = ""
    levels: tuple[str, ...] = ()
    team: str = ""
    sort: str = "last_activity"
    order: str = "desc"
    limit: int = DEFAULT_LIMIT
    csv: bool = False
    cursor: Cursor | None = None

    @property
    def index(self) -> str:
        return SORTS[self.sort][0]

    def digest(self) -> str:
        """What a cursor must have been made for: every parameter but ``limit``, ``format`` and ``cursor``."""
        text = "|".join((self.tiers, self.tag, ",".join(self.levels), self.team, self.sort, self.order))
        return hashlib.blake2s(text.encode(), digest_size=6).hexdigest()

    def filters(self) -> str:
        """The query's filters for the audit record (no values of the customers)."""
        parts = [f"tier={self.tiers}", f"tag={self.tag}", f"churn={','.join(self.levels)}", f"team={self.team}"]
        return " ".join(p for p in parts if not p.endswith("="))


@dataclass(frozen=True)
class Cursor:
    """Where the next page of a walk starts."""

    walk: str
    score: int
    customer_id: str
    digest: str

    def encode(self) -> str:
        raw = orjson.dumps([self.walk, self.score, self.customer_id, self.digest])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    """The cursor from its text; raises BadParameter('cursor') when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        walk, score, customer_id, digest = orjson.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise BadParameter("cursor", "malformed cursor: pass the 'next' of the previous page as it came") from None
    if not (isinstance(walk, str) and walk.isalnum() and len(walk) <= 32 and type(score) is int
            and 0 <= score < 1 << 53 and isinstance(customer_id, str) and 0 < len(customer_id) <= 256
            and isinstance(digest, str)):
        raise BadParameter("cursor", "malformed cursor: pass the 'next' of the previous page as it came")
    return Cursor(walk, score, customer_id, digest)


def _choices(name: str, text: str, allowed: tuple[str, ...] | str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    wrong = [v for v in values if v not in allowed]
    if wrong or not values:
        raise BadParameter(name, f"{name} must be one or more of {', '.join(allowed)} (comma-separated), "
                                 f"got {text[:64]!r}")
    return values


def parse_query(params: Mapping[str, str]) -> ListQuery:
    """The query from the request's parameters; raises BadParameter naming the first wrong one."""
    known = {"tier", "tag", "churn", "team", "sort", "order", "limit", "cursor", "format"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise BadParameter(unknown[0], f"unknown parameter {unknown[0][:64]!r}; known: {', '.join(sorted(known))}")
    q: dict[str, object] = {}
    if "tier" in params:
        q["tiers"] = "".join(t for t in TIERS if t in _choices("tier", params["tier"], TIERS))
    if "tag" in params:
        if not TAG.match(params["tag"]):
            raise BadParameter("tag", f"{params['tag'][:64]!r} is not a tag name")
        q["tag"] = params["tag"]
    if "churn" in params:
        q["levels"] = tuple(v for v in LEVELS if v in _choices("churn", params["churn"], LEVELS))
    if "team" in params:
        team = params["team"]
        if not 0 < len(team) <= TEAM_CHARS or any(c.isspace() for c in team):
            raise BadParameter("team", f"team must be a team name (1-{TEAM_CHARS} characters, no spaces)")
        q["team"] = team
    if "sort" in params:
        q["sort"] = _one("sort", params["sort"], tuple(SORTS))
    if "order" in params:
        q["order"] = _one("order", params["order"], ("desc", "asc"))
    if "format" in params:
        q["csv"] = _one("format", params["format"], ("json", "csv")) == "csv"
    if "limit" in params:
        text = params["limit"]
        if not (text.isdigit() and 1 <= int(text) <= MAX_LIMIT):
            raise BadParameter("limit", f"limit must be an integer from 1 to {MAX_LIMIT}, got {text[:32]!r}")
        q["limit"] = int(text)
    query = ListQuery(**q)  # type: ignore[arg-type]
    if "cursor" in params:
        cursor = decode_cursor(params["cursor"])
        if cursor.digest != query.digest():
            raise BadParameter("cursor", "the cursor belongs to another query: keep every parameter but limit "
                                         "and format as they were on the first page")
        query = ListQuery(**{**q, "cursor": cursor})  # type: ignore[arg-type]
    return query


def _one(name: str, text: str, allowed: tuple[str, ...]) -> str:
    if text not in allowed:
        raise BadParameter(name, f"{name} must be one of {', '.join(allowed)}, got {text[:64]!r}")
    return text
