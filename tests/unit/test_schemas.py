"""The published JSON Schemas agree with parse_event on their examples and on bad messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

import stream
from stream.domain.events import LOGIN, ORDER, TICKET, parse_event
from stream.exceptions import InvalidEvent

SCHEMAS = Path(stream.__file__).parent / "schemas"
FILES = {ORDER: "order.schema.json", LOGIN: "login.schema.json",
         TICKET: "support-ticket.schema.json"}


def load(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / FILES[kind]).read_text(encoding="utf-8"))
    return schema


def parses(kind: str, msg: object) -> bool:
    try:
        parse_event(kind, orjson.dumps(msg), currency="USD", max_bytes=1_048_576)
    except InvalidEvent:
        return False
    return True


def test_every_schema_file_is_covered() -> None:
    others = ["customer-profile.schema.json", "tag-command.schema.json",  # tests/unit/test_manual_profiles.py
              "privacy-request.schema.json"]  # tests/unit/test_privacy.py
    assert sorted(p.name for p in SCHEMAS.glob("*.json")) == sorted([*FILES.values(), *others])


@pytest.mark.parametrize("kind", FILES)
def test_schema_metadata(kind: str) -> None:
    schema = load(kind)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(FILES[kind].removesuffix(".schema.json"))
    assert len(schema["examples"]) == 1
    for name, prop in schema["properties"].items():
        assert prop.get("description"), f"{FILES[kind]}: field {name!r} has no description"
    assert set(schema["required"]) <= set(schema["properties"])


@pytest.mark.parametrize("kind", FILES)
def test_examples_parse(kind: str) -> None:
    for example in load(kind)["examples"]:
        assert parses(kind, example)


BAD: dict[str, list[dict[str, Any]]] = {
    ORDER: [
        {"amount": -5}, {"amount": "-5"}, {"amount": True}, {"amount": None},
        {"status": "shipped"}, {"customer_id": ""}, {"customer_id": "x" * 129},
        {"ts": "2026-11-22T10:00:00"}, {"ts": "yesterday"}, {"ts": True}, {"ts": -1},
        {"ts": "0001-01-01T00:00:00Z"}, {"items": {"sku": "a"}}, {"items": [1]},
        {"items": [{}] * 1001}, {"order_id": 7},
    ],
    LOGIN: [{"session_seconds": -1}, {"pages_viewed": -1}, {"pages_viewed": "3"},
            {"channel": 5}, {"event_id": ""}],
    TICKET: [{"action": "closed"}, {"severity": "urgent"}, {"ticket_id": None},
             {"category": 5}],
}
MISSING = {ORDER: ["event_id", "customer_id", "ts", "order_id", "amount"],
           LOGIN: ["event_id", "customer_id", "ts"],
           TICKET: ["event_id", "customer_id", "ts", "ticket_id", "action"]}


def bad_messages(kind: str) -> list[dict[str, Any]]:
    example = load(kind)["examples"][0]
    out = [{**example, **change} for change in BAD[kind]]
    return out + [{k: v for k, v in example.items() if k != gone} for gone in MISSING[kind]]


@pytest.mark.parametrize("kind", FILES)
def test_bad_messages_rejected_by_parse_event(kind: str) -> None:
    for msg in bad_messages(kind):
        assert not parses(kind, msg), msg


@pytest.mark.parametrize("kind", FILES)
def test_schema_agrees(kind: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = load(kind)
    cls = jsonschema.Draft202012Validator
    cls.check_schema(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    for example in schema["examples"]:
        validator.validate(example)
    for msg in bad_messages(kind):
        assert not validator.is_valid(msg), msg
