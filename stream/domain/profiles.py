"""Customer attributes from the compacted ``customer-profiles`` topic (pure).

A profile is the latest record for a customer (a null value deletes it).
Rules see it as the facts listed in :data:`PROFILE_FIELDS`.
"""

from __future__ import annotations

from typing import Any

from stream.domain.events import _fail, _id, _opt_str, _show, _tname, decode_object, parse_ts
from stream.exceptions import InvalidEvent

DAY_MS = 86_400_000
MAX_ATTRIBUTES = 100
TEAM_CHARS = 64
#: fact name -> (kind, nullable), in the rules engine's kinds
PROFILE_FIELDS: dict[str, tuple[str, bool]] = {
    "company_size": ("string", False),
    "industry": ("string", False),
    "region": ("string", False),
    "team": ("string", False),
    "strategic_account": ("bool", False),
    "customer_since_days": ("float", True),
    "attributes": ("map", False),
}


def _attributes(d: dict[str, Any]) -> dict[str, Any]:
    attrs = d.get("attributes", {})
    if attrs is None:
        return {}
    if type(attrs) is not dict:
        raise _fail("attributes", f"must be an object, got {_tname(attrs)}")
    if len(attrs) > MAX_ATTRIBUTES:
        raise _fail("attributes", f"at most {MAX_ATTRIBUTES} entries, got {len(attrs)}")
    for key, value in attrs.items():
        if not (type(value) in (str, int, float, bool) and len(key) <= 64):
            raise _fail(f"attributes.{key[:64]}", f"must be a string, number or boolean, got {_show(value)}")
    return attrs


def parse_profile(raw: bytes, *, max_bytes: int) -> dict[str, Any]:
    """Validate a profile record; returns the stored form. Raises InvalidEvent only."""
    d = decode_object(raw, max_bytes)
    strategic = d.get("strategic_account", False)
    if type(strategic) is not bool:
        raise _fail("strategic_account", f"must be true or false, got {_show(strategic)}")
    since = d.get("customer_since")
    profile: dict[str, Any] = {
        "customer_id": _id(d, "customer_id"),
        "company_size": _opt_str(d, "company_size") or "",
        "industry": _opt_str(d, "industry") or "",
        "region": _opt_str(d, "region") or "",
        "team": _team(d),
        "strategic_account": strategic,
        "customer_since": None if since is None else _since(since),
        "attributes": _attributes(d),
    }
    return profile


def _team(d: dict[str, Any]) -> str:
    """The owning team: a name customer lists filter on (``GET /customers?team=``)."""
    team = _opt_str(d, "team") or ""
    if len(team) > TEAM_CHARS or any(c.isspace() for c in team):
        raise _fail("team", f"must be a team name of at most {TEAM_CHARS} characters without spaces, got {_show(team)}")
    return team


def _since(value: object) -> int:
    """A date (``2019-04-01``), an RFC 3339 time, or epoch ms."""
    if isinstance(value, str) and len(value) == 10:
        value = value + "T00:00:00Z"
    try:
        return parse_ts(value)
    except InvalidEvent as exc:
        raise _fail("customer_since", exc.reason.split(": ", 1)[-1]) from None


def profile_facts(profile: dict[str, Any] | None, now_ms: int) -> dict[str, Any]:
    """The facts rules see; neutral values when there is no profile."""
    p = profile or {}
    since = p.get("customer_since")
    return {
        "company_size": p.get("company_size", ""),
        "industry": p.get("industry", ""),
        "region": p.get("region", ""),
        "team": p.get("team", ""),
        "strategic_account": p.get("strategic_account", False),
        "customer_since_days": None if since is None else float(max(0, now_ms - since) // DAY_MS),
        "attributes": p.get("attributes", {}),
    }
