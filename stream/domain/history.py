"""Replaying a history file into the input topics: the pure part (column mapping, row → event).

A :class:`ColumnMap` says which source column feeds which contract field of
one input kind (``orders``, ``logins``, ``tickets``), which fields are constant,
and how to read the time column. :func:`to_event` turns one row (a mapping of
column name to text or JSON value) into a contract event or raises
:class:`RowError` with the reason; the caller reports it with the line number.
Nothing here touches Kafka or files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson
import yaml

from stream.domain.events import parse_event, parse_ts
from stream.exceptions import InvalidEvent, TaggerError

#: Contract fields each kind accepts (docs/CONTRACT.md); the first three are required for all.
FIELDS: dict[str, tuple[str, ...]] = {
    "orders": ("event_id", "customer_id", "ts", "order_id", "amount", "currency", "status", "margin"),
    "logins": ("event_id", "customer_id", "ts", "session_seconds", "pages_viewed", "channel"),
    "tickets": ("event_id", "customer_id", "ts", "ticket_id", "action", "category", "severity"),
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "orders": ("customer_id", "ts", "amount"),
    "logins": ("customer_id", "ts"),
    "tickets": ("customer_id", "ts", "action"),
}
_NUMERIC = {"amount", "margin", "session_seconds"}


class RowError(TaggerError, ValueError):
    """One row cannot become an event; the message says why (the caller adds the line number).

    Operators: ``tagger replay`` reports the row's line and goes on (or stops with
    ``--stop-on-error``); fix the row in the file, or the ``--map`` / ``--const`` /
    ``--ts-format`` options that read it, and replay the rejected rows again.
    """


class MappingError(TaggerError, ValueError):
    """The column mapping itself is wrong (unknown kind or field): fix the options or mapping file.

    Operators: nothing was sent; the message names the kind, field or key that is wrong.
    """


@dataclass(frozen=True)
class ColumnMap:
    """How source columns become contract fields for one kind of event."""

    kind: str
    columns: Mapping[str, str] = field(default_factory=dict)  # contract field -> source column
    constants: Mapping[str, Any] = field(default_factory=dict)  # contract field -> fixed value
    ts_format: str | None = None  # strptime format of the time column (UTC); None: RFC 3339 or epoch ms
    id_prefix: str = "replay"  # event_id = <prefix>-<line> when no column gives it

    def __post_init__(self) -> None:
        if self.kind not in FIELDS:
            raise MappingError(f"unknown kind {self.kind!r}; one of {', '.join(FIELDS)}")
        unknown = (set(self.columns) | set(self.constants)) - set(FIELDS[self.kind])
        if unknown:
            raise MappingError(f"{self.kind}: unknown field(s) {', '.join(sorted(unknown))}; "
                               f"fields are {', '.join(FIELDS[self.kind])}")

    def source(self, name: str) -> str:
        """The source column of contract field ``name`` (by default the field's own name)."""
        return self.columns.get(name, name)


def load_mapping(path: Path, **overrides: Any) -> ColumnMap:
    """Read a YAML mapping file (``kind``, ``columns``, ``constants``, ``ts_format``, ``id_prefix``)."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise MappingError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise MappingError(f"{path}: expected a mapping at the top level")
    unknown = set(data) - {"kind", "columns", "constants", "ts_format", "id_prefix"}
    if unknown:
        raise MappingError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    merged: dict[str, Any] = {**data, **{k: v for k, v in overrides.items() if v}}
    merged["columns"] = {**(data.get("columns") or {}), **(overrides.get("columns") or {})}
    merged["constants"] = {**(data.get("constants") or {}), **(overrides.get("constants") or {})}
    if "kind" not in merged:
        raise MappingError(f"{path}: 'kind' is required (orders, logins or tickets)")
    return ColumnMap(**merged)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _ts(value: Any, fmt: str | None) -> str | int:
    if fmt is not None:
        try:
            parsed = datetime.strptime(str(value).strip(), fmt).replace(tzinfo=UTC)
        except ValueError as exc:
            raise RowError(f"field 'ts': {value!r} does not match format {fmt!r}") from exc
        return parsed.strftime("%Y-%m-%dT%H:%M:%SZ")
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and text.isdigit():
        text = int(text)
    try:
        parse_ts(text)
    except Exception as exc:  # noqa: BLE001 - any parse failure is this row's problem
        raise RowError(f"field 'ts': {exc}") from exc
    return text  # type: ignore[no-any-return]


def _number(name: str, value: Any) -> str:
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise RowError(f"field {name!r}: {value!r} is not a number") from exc
    if not number.is_finite() or number < 0:
        raise RowError(f"field {name!r}: {value!r} must be a finite number >= 0")
    return str(number)


def to_event(row: Mapping[str, Any], mapping: ColumnMap, line: int) -> dict[str, Any]:
    """The contract event for one row (``line`` gives the default event id); RowError if it is bad."""
    event: dict[str, Any] = dict(mapping.constants)
    for name in FIELDS[mapping.kind]:
        column = mapping.source(name)
        if column in row and not _blank(row[column]):
            event[name] = row[column].strip() if isinstance(row[column], str) else row[column]
    for name in _REQUIRED[mapping.kind]:
        if _blank(event.get(name)):
            raise RowError(f"field {name!r} (column {mapping.source(name)!r}) is missing or empty")
    event["customer_id"] = str(event["customer_id"])
    if len(event["customer_id"]) > 128:
        raise RowError("field 'customer_id': longer than 128 characters")
    event["ts"] = _ts(event["ts"], mapping.ts_format)
    for name in _NUMERIC & set(event):
        event[name] = _number(name, event[name])
    if "pages_viewed" in event:
        try:
            event["pages_viewed"] = int(str(event["pages_viewed"]))
        except ValueError as exc:
            raise RowError(f"field 'pages_viewed': {event['pages_viewed']!r} is not an integer") from exc
    event.setdefault("event_id", f"{mapping.id_prefix}-{line}")
    event["event_id"] = str(event["event_id"])
    if mapping.kind == "orders":
        event.setdefault("order_id", event["event_id"])
    if mapping.kind == "tickets":
        event.setdefault("ticket_id", event["event_id"])
    return event


_PARSER_KIND = {"orders": "order", "logins": "login", "tickets": "ticket"}


def encode(event: Mapping[str, Any], mapping: ColumnMap, *, currency: str, max_bytes: int) -> bytes:
    """The event as it goes on the wire, checked by the worker's own parser (RowError if it would reject it)."""
    raw = orjson.dumps(event)
    try:
        parse_event(_PARSER_KIND[mapping.kind], raw, currency=currency, max_bytes=max_bytes)
    except InvalidEvent as exc:
        raise RowError(str(exc)) from exc
    return raw
