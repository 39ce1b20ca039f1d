"""Privacy requests: parsing, the JSON Schema agreeing with it, and the final erase message (no broker)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

import stream
from stream.access.privacy import erase_change, parse_privacy_request
from stream.exceptions import InvalidEvent

SCHEMA = json.loads((Path(stream.__file__).parent / "schemas" / "privacy-request.schema.json").read_text())
GOOD = {"request_id": "dsr-1", "customer_id": "cust-00042", "ts": "2026-11-22T10:00:00Z", "type": "erase"}


def parse(msg: object) -> dict[str, Any]:
    return parse_privacy_request(msg if isinstance(msg, bytes) else orjson.dumps(msg), max_bytes=1 << 20)


def test_a_request_parses_to_normalised_fields() -> None:
    assert parse(GOOD) == {"request_id": "dsr-1", "customer_id": "cust-00042", "ts": 1795341600000, "type": "erase"}
    assert parse({**GOOD, "ts": 1795341600000, "extra": 1})["ts"] == 1795341600000


@pytest.mark.parametrize(("change", "reason"), [
    ({"type": "forget"}, "field 'type': 'forget' is not one of erase"),
    ({"type": None}, "field 'type': None is not one of erase"),
    ({"customer_id": ""}, "field 'customer_id': must not be empty"),
    ({"customer_id": 42}, "field 'customer_id': must be a string, got integer"),
    ({"request_id": None}, "field 'request_id': must be a string, got null"),
    ({"ts": "yesterday"}, "field 'ts': cannot parse"),
    ({"ts": None}, "field 'ts': missing"),
])
def test_bad_requests_name_the_field(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidEvent) as err:
        parse({**GOOD, **change})
    assert err.value.reason.startswith(reason)
    with pytest.raises(jsonschema.ValidationError):  # the published schema refuses it too
        jsonschema.validate({**GOOD, **change}, SCHEMA)


@pytest.mark.parametrize(("raw", "reason"), [(b"{not json", "not valid JSON"), (b"[]", "must be a JSON object"),
                                             (b"", "message is empty")])
def test_undecodable_requests(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        parse(raw)


def test_schema_metadata_and_example() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(SCHEMA["required"]) == {"request_id", "customer_id", "ts", "type"}
    for example in SCHEMA["examples"]:
        jsonschema.validate(example, SCHEMA)
        assert parse(example)["type"] == "erase"


def test_the_final_tag_change_is_empty_and_says_erase() -> None:
    change = erase_change(parse(GOOD), topic="privacy-requests", ruleset_version="v1", ruleset_name=None)
    assert change["customer_id"] == "cust-00042" and change["erased"] is True
    assert change["tags"] == [] and change["manual_tags"] == [] and change["added"] == [] and change["removed"] == []
    assert change["tier"] is None and change["score"] is None and change["reasons"] == {}
    assert change["trigger"] == {"kind": "erase", "topic": "privacy-requests", "event_id": "dsr-1"}
    assert change["event_time"] == "2026-11-22T10:00:00.000Z"
