"""Manual tags and score adjustments from sales staff (``tag-commands`` topic), pure.

A command names its author. Manual tags survive re-evaluation, may expire,
and are shown as manual with author and note. A score adjustment moves the
score by at most ±:data:`MAX_ADJUST_PCT` percent of itself; a larger one is
rejected (dead-lettered with the reason), never silently capped.
"""

from __future__ import annotations

import re
from typing import Any

from stream.domain.events import _fail, _id, _opt_str, _show, decode_object, parse_ts

MAX_ADJUST_PCT = 20.0
MAX_MANUAL_TAGS = 100  # per customer: a flood of add_tag commands cannot grow the state without bound
ACTIONS = ("add_tag", "remove_tag", "adjust_score", "clear_adjustment")
TAG = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
#: the fields each action takes besides command_id, customer_id, author and note
ACTION_FIELDS = {"add_tag": ("tag", "expires_at"), "remove_tag": ("tag",), "adjust_score": ("adjust_pct",),
                 "clear_adjustment": ()}
OPTIONAL_FIELDS = ("tag", "expires_at", "adjust_pct")


def stray_field(body: dict[str, Any]) -> str | None:
    """The reason to refuse a command naming a field its action does not take (``adjust_pct`` on an ``add_tag``),
    None if there is none: the worker ignores such a field, so the caller's intent would be lost without a word."""
    action = body.get("action")
    used = ACTION_FIELDS.get(action, OPTIONAL_FIELDS) if isinstance(action, str) else OPTIONAL_FIELDS
    stray = next((f for f in OPTIONAL_FIELDS if body.get(f) is not None and f not in used), None)
    return None if stray is None else f"field '{stray}': not taken by action {_show(action)}"


def parse_command(raw: bytes, *, max_bytes: int, now_ms: int) -> dict[str, Any]:
    """Validate a tag command; raises InvalidEvent with the field and the problem."""
    d = decode_object(raw, max_bytes)
    action = d.get("action")
    if action not in ACTIONS:
        raise _fail("action", f"{_show(action)} is not one of {', '.join(ACTIONS)}")
    cmd: dict[str, Any] = {"command_id": _id(d, "command_id"), "customer_id": _id(d, "customer_id"),
                           "action": action, "author": _id(d, "author"), "note": _opt_str(d, "note") or ""}
    if action in ("add_tag", "remove_tag"):
        tag = d.get("tag")
        if not (isinstance(tag, str) and TAG.match(tag)):
            raise _fail("tag", f"{_show(tag)} is not a tag name (a-z, 0-9, _; starts with a letter)")
        cmd["tag"] = tag
    if action == "add_tag" and d.get("expires_at") is not None:
        try:
            cmd["expires_at"] = parse_ts(d["expires_at"])
        except Exception as exc:  # noqa: BLE001 - re-raised naming this field
            raise _fail("expires_at", str(exc).split(": ", 1)[-1]) from None
        if cmd["expires_at"] <= now_ms:
            raise _fail("expires_at", "is already in the past")
    if action == "adjust_score":
        pct: Any = d.get("adjust_pct")
        if type(pct) not in (int, float):
            raise _fail("adjust_pct", f"must be a number, got {_show(pct)}")
        if abs(pct) > MAX_ADJUST_PCT:
            raise _fail("adjust_pct", f"{pct} is beyond the ±{MAX_ADJUST_PCT:g}% cap on manual score adjustments")
        cmd["adjust_pct"] = float(pct)
    return cmd


def apply_command(manual: dict[str, Any] | None, cmd: dict[str, Any], now_ms: int) -> dict[str, Any] | None:
    """The customer's manual section after ``cmd`` (None when empty); raises InvalidEvent past the tag cap."""
    tags: dict[str, Any] = dict((manual or {}).get("tags", {}))
    adjust = (manual or {}).get("adjust")
    who = {"author": cmd["author"], "note": cmd["note"], "at": now_ms}
    action = cmd["action"]
    if action == "add_tag":
        if cmd["tag"] not in tags and len(tags) >= MAX_MANUAL_TAGS:
            raise _fail("tag", f"the customer already has {MAX_MANUAL_TAGS} manual tags, the most allowed")
        tags[cmd["tag"]] = {**who, "expires_at": cmd.get("expires_at")}
    elif action == "remove_tag":
        tags.pop(cmd["tag"], None)
    elif action == "adjust_score":
        adjust = {**who, "pct": cmd["adjust_pct"]}
    else:
        adjust = None
    return _pack(tags, adjust)


def expire(manual: dict[str, Any] | None, now_ms: int) -> dict[str, Any] | None:
    """Drop manual tags whose expiry has passed."""
    if not manual:
        return None
    tags = {t: e for t, e in manual.get("tags", {}).items() if e.get("expires_at") is None or e["expires_at"] > now_ms}
    return _pack(tags, manual.get("adjust"))


def next_expiry(manual: dict[str, Any] | None) -> int | None:
    """When the next manual tag expires (None: none will)."""
    times = [e["expires_at"] for e in (manual or {}).get("tags", {}).values() if e.get("expires_at") is not None]
    return min(times, default=None)


def _pack(tags: dict[str, Any], adjust: dict[str, Any] | None) -> dict[str, Any] | None:
    if not tags and adjust is None:
        return None
    return {"tags": tags, "adjust": adjust}


def adjusted_score(score: float, manual: dict[str, Any] | None) -> float:
    """Score after the manual adjustment (percent of itself), kept within 0–100."""
    pct = ((manual or {}).get("adjust") or {}).get("pct", 0.0)
    return round(min(100.0, max(0.0, score * (1 + pct / 100))), 2)


def manual_reason(entry: dict[str, Any]) -> str:
    """The evidence shown for a manual tag."""
    return f"manual: {entry['author']}" + (f": {entry['note']}" if entry.get("note") else "")
