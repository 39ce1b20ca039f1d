"""Audit records (who, what, when, which customer) and their two sinks: a Kafka topic and a JSON-lines file.

A record is built only by :func:`audit_record`, which accepts a fixed set of
fields and only strings, integers, booleans and lists of strings. A float can
never get in, so no amount of money can either (the API has no monetary value
that is not a float); the response body of a read is never copied, only the
names of the field groups it disclosed.
"""

from __future__ import annotations

import inspect
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import orjson

from stream.access.auth import Principal
from stream.domain.events import format_ts

ACTIONS = ("customer.read", "tag.list", "manual.command", "privacy.request", "privacy.erase", "dashboard.feed",
           "trends.read", "customer.list", "customer.history")
#: extra fields an audit record may carry, with the JSON types allowed for each
DETAIL_FIELDS: dict[str, tuple[type, ...]] = {
    "tag": (str,), "command_id": (str,), "command": (str,), "request_id": (str,), "reason": (str,),
    "customers": (list,), "returned": (int,), "limit": (int,), "after": (str,), "found": (bool,),
    "sort": (str,), "filters": (str,), "format": (str,),
}
MAX_TEXT = 512


class Sender(Protocol):
    """What the audit log needs of a Kafka topic."""

    async def send(self, *, key: bytes, value: bytes, partition: int | None = None) -> Any: ...


def _clean(name: str, value: object) -> object:
    allowed = DETAIL_FIELDS.get(name)
    if allowed is None:
        raise ValueError(f"audit field {name!r} is not allowed")
    if value is None:
        return None
    if type(value) not in allowed:
        raise ValueError(f"audit field {name!r} must be {allowed[0].__name__}, got {type(value).__name__}")
    if isinstance(value, list):
        if not all(type(v) is str for v in value):
            raise ValueError(f"audit field {name!r} must be a list of strings")
        return [v[:MAX_TEXT] for v in value]
    return value[:MAX_TEXT] if isinstance(value, str) else value


def audit_record(*, action: str, outcome: str, status: int, principal: Principal | None,
                 customer_id: str | None = None, disclosed: Iterable[str] = (), source: str = "api",
                 worker: str = "", at_ms: int | None = None,
                 detail: Mapping[str, object] | None = None) -> dict[str, Any]:
    """One audit record; raises ValueError for an unknown action or field, or a non-allowed type."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    record: dict[str, Any] = {
        "audit_id": uuid.uuid4().hex,
        "at": format_ts(at_ms if at_ms is not None else int(time.time() * 1000)),
        "actor": principal.name if principal else None,
        "role": principal.role if principal else None,
        "action": action,
        "customer_id": customer_id,
        "outcome": outcome,
        "status": int(status),
        "disclosed": [str(d) for d in disclosed],
        "source": source,
        "worker": worker,
    }
    record.update({name: _clean(name, value) for name, value in (detail or {}).items()})
    return record


class AuditLog:
    """Writes audit records to the ``audit-log`` topic and, if configured, a JSON-lines file.

    With ``wait=True`` (the API) a write returns only once Kafka acknowledged
    the record, and any failure propagates: the API then refuses to answer
    rather than answer unaudited.
    """

    def __init__(self, sender: Sender | None, path: Path | None) -> None:
        self.sender = sender
        self.path = path
        self.written = 0

    async def write(self, record: Mapping[str, Any], *, wait: bool = True) -> None:
        """Write one record to every sink."""
        line = orjson.dumps(record)
        if self.path is not None:
            self._append(line + b"\n")
        if self.sender is not None:
            key = (record.get("customer_id") or record.get("actor") or "").encode()
            result = await self.sender.send(key=key, value=line)
            if wait and inspect.isawaitable(result):
                await result  # the broker's acknowledgement
        self.written += 1

    def _append(self, line: bytes) -> None:
        # one write() on an O_APPEND descriptor: whole lines, also with several workers on one file
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # type: ignore[arg-type]
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
