"""Privacy requests (``privacy-requests`` topic and the admin endpoint), pure: parsing and the erase message.

A request is ``{request_id, customer_id, ts, type: "erase"}``, keyed by
``customer_id``. Erasure removes the customer's table state (a changelog
tombstone), its Redis keys and index memberships, and its manual tags; the
final ``tag-changes`` message built here carries no erased data: no tags, no
tier, no score, no reasons.
"""

from __future__ import annotations

import time
from typing import Any

from stream.domain.events import _fail, _id, _show, decode_object, format_ts, parse_ts
from stream.domain.sequence import erase_change_id

TYPES = ("erase",)


def parse_privacy_request(raw: bytes, *, max_bytes: int) -> dict[str, Any]:
    """Validate a privacy request; raises InvalidEvent naming the field and the problem."""
    d = decode_object(raw, max_bytes)
    kind = d.get("type")
    if kind not in TYPES or type(kind) is not str:
        raise _fail("type", f"{_show(kind)} is not one of {', '.join(TYPES)}")
    return {"request_id": _id(d, "request_id"), "customer_id": _id(d, "customer_id"),
            "ts": parse_ts(d.get("ts")), "type": kind}


def erase_change(request: dict[str, Any], *, topic: str, ruleset_version: str,
                 ruleset_name: str | None) -> dict[str, Any]:
    """The final ``tag-changes`` message of an erased customer: empty, ``trigger.kind = "erase"``."""
    return {
        "customer_id": request["customer_id"],
        "tags": [], "manual_tags": [], "added": [], "removed": [],
        "tier": None, "previous_tier": None, "score": None, "reasons": {},
        "trigger": {"kind": "erase", "topic": topic, "event_id": request["request_id"]},
        "erased": True,
        "seq": None,  # the customer's sequences end here; a later event starts them again at 1
        "change_id": erase_change_id(request["customer_id"], request["request_id"]),
        "event_time": format_ts(request["ts"]),
        "emitted_at": format_ts(int(time.time() * 1000)),
        "ruleset_version": ruleset_version,
        "ruleset_name": ruleset_name,
    }
