"""A customer's history, the pure part: the entries of its timeline (``P:h:<customer_id>`` in Redis).

One entry per change a person would ask about, newest first in Redis, each with when it happened
(the event's time), what caused it and why:

- ``tag_change``: tags added or removed, the tier and the one before it, the reasons of the tags added;
- ``churn``: the churn level and the one before it, the risk and its reasons;
- ``manual``: a tag command of sales staff, with its author and note;
- ``rebuilt``: Redis lost the history and it was rebuilt from the table: the tier and tags then.

Entries are built from the published messages, so a timeline says what subscribers were told.
They hold no customer id (the key does) and nothing that changes on a replay, so the write script
can recognise a replayed entry and not repeat it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stream.domain.events import format_ts


def tag_change_entry(change: Mapping[str, Any]) -> dict[str, Any]:
    """The entry of a ``tag-changes`` message."""
    reasons = change.get("reasons") or {}
    return {"at": change["event_time"], "kind": "tag_change", "added": change["added"], "removed": change["removed"],
            "tier": change["tier"], "previous_tier": change["previous_tier"], "score": change.get("score"),
            "reasons": {t: reasons[t] for t in change["added"] if t in reasons},
            "trigger": change.get("trigger"), "change_id": change.get("change_id")}


def churn_entry(alert: Mapping[str, Any]) -> dict[str, Any]:
    """The entry of a ``churn-alerts`` message."""
    return {"at": alert.get("event_time"), "kind": "churn", "level": alert.get("level"),
            "previous_level": alert.get("previous_level"), "risk": alert.get("risk"),
            "reasons": alert.get("reasons") or [], "trigger": alert.get("trigger"), "change_id": alert.get("change_id")}


def manual_entry(command: Mapping[str, Any], at_ms: int) -> dict[str, Any]:
    """The entry of a manual tag command, applied at ``at_ms``."""
    entry = {"at": format_ts(at_ms), "kind": "manual", "action": command["action"], "author": command["author"],
             "note": command.get("note") or "", "command_id": command["command_id"]}
    for field in ("tag", "adjust_pct"):
        if field in command:
            entry[field] = command[field]
    if command.get("expires_at") is not None:
        entry["expires_at"] = format_ts(command["expires_at"])
    return entry


def rebuilt_entry(view: Mapping[str, Any], at_ms: int) -> dict[str, Any]:
    """The first entry of a history rebuilt after Redis lost it: the customer's tier and tags then."""
    return {"at": format_ts(at_ms), "kind": "rebuilt", "tier": view.get("tier"), "tags": view.get("tags") or []}
