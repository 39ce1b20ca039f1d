"""Malformed and adversarial input messages, shared by the unit fuzz test and the live worker test."""

from __future__ import annotations

import json
import random
from typing import Any

KINDS = ("order", "login", "ticket", "profile", "manual")
_CIDS = [f"h-{i}" for i in range(40)]
_NASTY: list[Any] = [
    None, True, -1, 0, 10**30, -(10**30), 1e308, -1e-308, "", " ", "NaN", "Infinity", "-Infinity",
    "\u0000", "\ud7ff\ue000", "x" * 200, "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999Z",
    "10000-01-01T00:00:00Z", -62_135_596_800_000, 253_402_300_799_999, 253_402_300_800_000,
    "2026-02-30T00:00:00Z", "2026-11-22T10:00:00+25:00", [], {}, [1, 2], {"a": {"b": None}},
    "paid", "refunded", "complaint", "escalated", 12.345678, "12.3456789", "-5", 5,
]
_FIELDS = ("event_id", "customer_id", "ts", "order_id", "amount", "status", "margin", "items", "ticket_id",
           "action", "category", "severity", "command_id", "author", "tag", "adjust_pct", "expires_at",
           "strategic_account", "customer_since", "attributes", "note", "currency", "")


def dumps(value: Any) -> bytes:
    """JSON as any producer might write it: big integers kept, NaN/Infinity written as literals."""
    return json.dumps(value).encode()


def _valid(kind: str, rng: random.Random, i: int) -> dict[str, Any]:
    cid = rng.choice(_CIDS)
    ts = 1_767_225_600_000 + rng.randrange(400) * 86_400_000
    shapes: dict[str, dict[str, Any]] = {
        "order": {"event_id": f"e{i}", "customer_id": cid, "ts": ts, "order_id": f"o{i}",
                  "amount": round(rng.uniform(0, 900), 2), "status": rng.choice(["paid", "refunded", "placed"])},
        "login": {"event_id": f"e{i}", "customer_id": cid, "ts": ts},
        "ticket": {"event_id": f"e{i}", "customer_id": cid, "ts": ts, "ticket_id": f"T{rng.randrange(5)}",
                   "action": rng.choice(["opened", "escalated", "resolved", "reopened"]),
                   "category": rng.choice(["complaint", "billing", ""]), "severity": "low"},
        "profile": {"customer_id": cid, "strategic_account": rng.random() < 0.5, "region": "EU",
                    "attributes": {f"a{j}": j for j in range(rng.randrange(4))}},
        "manual": {"command_id": f"m{i}", "customer_id": cid, "action": "add_tag", "tag": f"t{rng.randrange(300)}",
                   "author": "fuzz"},
    }
    return shapes[kind]


def _deep(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def hostile_message(rng: random.Random, i: int) -> tuple[str, bytes | None, bytes | None]:
    """One message (kind, key, value): valid, slightly wrong, or outright hostile."""
    kind = rng.choice(KINDS)
    event = _valid(kind, rng, i)
    roll = rng.random()
    value: bytes | None
    if roll < 0.25:  # one field gets a nasty value (or is removed)
        field = rng.choice([*event, *_FIELDS])
        if rng.random() < 0.2:
            event.pop(field, None)
        else:
            event[field] = rng.choice(_NASTY)
        value = dumps(event)
    elif roll < 0.35:  # NaN / Infinity literals orjson would never write
        value = dumps(event).replace(b'"event_id"', b'"x":' + rng.choice([b"NaN", b"Infinity", b"-Infinity"])
                                            + b',"event_id"', 1)
    elif roll < 0.42:
        value = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))  # random bytes, invalid UTF-8
    elif roll < 0.47:
        value = _deep(rng.choice([100, 1000, 100_000]))  # deeply nested JSON
    elif roll < 0.52:
        event["items"] = [{"sku": "x" * 20, "qty": 1}] * rng.choice([1001, 30_000])  # enormous item list
        value = dumps(event)
    elif roll < 0.56:
        value = rng.choice([b"", b"null", b"[]", b'"x"', b"1e999", b"{}", b"{" , b'{"a":1,"a":2}'])
    elif roll < 0.6:  # duplicate id with different content
        event["event_id"] = event["command_id"] = "dup-1"
        if "amount" in event:
            event["amount"] = rng.choice([1, 2, 3])
        value = dumps(event)
    else:
        value = dumps(event)
    key_roll = rng.random()
    cid = event.get("customer_id") if isinstance(event.get("customer_id"), str) else None
    if key_roll < 0.05:
        key: bytes | None = None
    elif key_roll < 0.1:
        key = b""
    elif key_roll < 0.13:
        key = bytes(rng.randrange(256) for _ in range(8))
    elif key_roll < 0.2:
        key = rng.choice(_CIDS).encode()  # mis-keyed
    else:
        key = (cid or "h-0").encode()
    if kind == "profile" and rng.random() < 0.03:
        value = None  # tombstone
    return kind, key, value
