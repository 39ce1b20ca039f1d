"""Unit tests for stream.domain.events: every valid form, every rejection reason, hostile input."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.domain.events import (
    AMOUNT_SCALE,
    LOGIN,
    MAX_TS_MS,
    ORDER,
    TICKET,
    LoginEvent,
    OrderEvent,
    TicketEvent,
    dedupe_key,
    format_ts,
    parse_event,
    parse_ts,
)
from stream.exceptions import InvalidEvent, TaggerError

MB = 1_048_576
TS = "2026-11-22T10:00:00Z"
TS_MS = 1_795_341_600_000
BASE: dict[str, Any] = {"event_id": "e-1", "customer_id": "c-1", "ts": TS}
ORDER_MSG: dict[str, Any] = {**BASE, "order_id": "o-1", "amount": 19.99}
LOGIN_MSG: dict[str, Any] = dict(BASE)
TICKET_MSG: dict[str, Any] = {**BASE, "ticket_id": "t-1", "action": "opened"}
MSGS = {ORDER: ORDER_MSG, LOGIN: LOGIN_MSG, TICKET: TICKET_MSG}


def parse(kind: str, msg: dict[str, Any] | bytes, currency: str = "USD") -> Any:
    raw = msg if isinstance(msg, bytes) else orjson.dumps(msg)
    return parse_event(kind, raw, currency=currency, max_bytes=MB)


def reason(kind: str, msg: dict[str, Any] | bytes) -> str:
    with pytest.raises(InvalidEvent) as info:
        parse(kind, msg)
    assert isinstance(info.value, TaggerError)
    return info.value.reason


# -- valid forms -------------------------------------------------------------------------

def test_order_minimal_defaults() -> None:
    assert parse(ORDER, ORDER_MSG) == OrderEvent("e-1", "c-1", TS_MS, "o-1", 199_900, "paid",
                                                 None, 0)


def test_order_all_fields() -> None:
    msg = {**ORDER_MSG, "amount": "1234.5", "currency": "usd", "status": "refunded",
           "margin": -2.25, "items": [{"sku": "a"}, {}], "extra": {"future": True}}
    assert parse(ORDER, msg) == OrderEvent("e-1", "c-1", TS_MS, "o-1", 12_345_000, "refunded",
                                           -22_500, 2)


@pytest.mark.parametrize(("amount", "units"), [
    (0, 0), (7, 70_000), (19.99, 199_900), ("19.99", 199_900), ("0.00005", 0),
    ("0.00015", 2), ("1.00025", 10_002), (0.00015, 2), ("1000000000000", 10**16),
    (1e12, 10**16), (-0.0, 0), ("0.123456789", 1_235),
])
def test_amount_forms_round_half_even(amount: object, units: int) -> None:
    assert parse(ORDER, {**ORDER_MSG, "amount": amount}).amount == units


def test_float_amount_fast_path_matches_decimal() -> None:
    for cents in range(0, 2_000_000, 997):
        for v in (cents / 100, cents / 10_000, cents / 1_000_000 + 123.0):
            want = Decimal(repr(v)).quantize(Decimal("0.0001"), rounding=ROUND_HALF_EVEN)
            assert parse(ORDER, {**ORDER_MSG, "amount": v}).amount == int(want * AMOUNT_SCALE)


@pytest.mark.parametrize("status", ["paid", "placed", "cancelled", "refunded"])
def test_order_statuses(status: str) -> None:
    assert parse(ORDER, {**ORDER_MSG, "status": status}).status == status


def test_login_forms() -> None:
    assert parse(LOGIN, LOGIN_MSG) == LoginEvent("e-1", "c-1", TS_MS, None, None, None)
    msg = {**LOGIN_MSG, "session_seconds": 30, "pages_viewed": 4, "channel": "ios"}
    assert parse(LOGIN, msg) == LoginEvent("e-1", "c-1", TS_MS, 30.0, 4, "ios")


def test_ticket_forms() -> None:
    assert parse(TICKET, TICKET_MSG) == TicketEvent("e-1", "c-1", TS_MS, "t-1", "opened", "",
                                                    "medium")
    msg = {**TICKET_MSG, "action": "resolved", "category": "Complaint", "severity": "critical"}
    assert parse(TICKET, msg) == TicketEvent("e-1", "c-1", TS_MS, "t-1", "resolved",
                                             "Complaint", "critical")


@pytest.mark.parametrize(("ts", "ms"), [
    ("2026-11-22T10:00:00Z", TS_MS),
    ("2026-11-22T12:00:00+02:00", TS_MS),
    ("2026-11-22T05:30:00-04:30", TS_MS),
    ("2026-11-22t10:00:00.5z", TS_MS + 500),
    ("2026-11-22 10:00:00.123999+00:00", TS_MS + 123),
    (TS_MS, TS_MS),
    (0, 0),
    ("1969-12-31T23:00:00-01:00", 0),
    ("9999-12-31T23:59:59.999Z", MAX_TS_MS),
    (MAX_TS_MS, MAX_TS_MS),
])
def test_ts_forms(ts: object, ms: int) -> None:
    assert parse_ts(ts) == ms


def test_format_ts_agrees_with_datetime() -> None:
    import random
    from datetime import UTC, datetime

    rng = random.Random(5)
    for ms in [0, 86_399_999, 253_402_300_799_999] + [rng.randrange(0, 253_402_300_800_000) for _ in range(2000)]:
        expected = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"
        assert format_ts(ms) == expected


def test_format_ts() -> None:
    assert format_ts(TS_MS) == "2026-11-22T10:00:00.000Z"
    assert format_ts(TS_MS + 7) == "2026-11-22T10:00:00.007Z"
    assert format_ts(0) == "1970-01-01T00:00:00.000Z"
    assert format_ts(MAX_TS_MS) == "9999-12-31T23:59:59.999Z"
    for ms in (1, 86_399_999, 951_782_400_000, TS_MS + 3_599_999):
        assert parse_ts(format_ts(ms)) == ms


def test_unknown_kind_is_a_wiring_bug() -> None:
    with pytest.raises(ValueError, match="unknown event kind 'orders'"):
        parse_event("orders", b"{}", currency="USD", max_bytes=MB)


# -- invalid input, exact reasons ------------------------------------------------------------

@pytest.mark.parametrize(("kind", "msg", "why"), [
    (ORDER, b"{not json", "not valid JSON: "),
    (ORDER, b"", "message is empty"),
    (ORDER, b"\xff\xfe{}", "not valid UTF-8"),
    (ORDER, b'{"event_id": "\xc3\x28"}', "not valid UTF-8"),
    (ORDER, b"[" * 2000 + b"]" * 2000, "not valid JSON: depth limit exceeded"),
    (ORDER, b'{"amount": NaN}', "not valid JSON: "),
    (ORDER, b'{"amount": Infinity}', "not valid JSON: "),
    (ORDER, b'{"amount": 1e999}', "not valid JSON: number is infinity"),
    (ORDER, b"[1, 2]", "message must be a JSON object, got array"),
    (ORDER, b'"text"', "message must be a JSON object, got string"),
    (ORDER, b"null", "message must be a JSON object, got null"),
])
def test_undecodable(kind: str, msg: bytes, why: str) -> None:
    assert reason(kind, msg).startswith(why)


def test_size_limit_checked_before_decoding() -> None:
    raw = b"[" * (10 * MB)
    with pytest.raises(InvalidEvent) as info:
        parse_event(ORDER, raw, currency="USD", max_bytes=MB)
    assert info.value.reason == ("message is 10485760 bytes, over the limit of 1048576 "
                                 "(TAGGER_MAX_EVENT_BYTES)")


def test_none_value_is_invalid() -> None:
    with pytest.raises(InvalidEvent, match="message value must be bytes, got null"):
        parse_event(ORDER, None, currency="USD", max_bytes=MB)  # type: ignore[arg-type]


def without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize(("kind", "msg", "why"), [
    (ORDER, without(ORDER_MSG, "customer_id"), "field 'customer_id': missing"),
    (ORDER, without(ORDER_MSG, "event_id"), "field 'event_id': missing"),
    (ORDER, without(ORDER_MSG, "order_id"), "field 'order_id': missing"),
    (ORDER, without(ORDER_MSG, "amount"), "field 'amount': missing"),
    (ORDER, without(ORDER_MSG, "ts"), "field 'ts': missing"),
    (TICKET, without(TICKET_MSG, "ticket_id"), "field 'ticket_id': missing"),
    (TICKET, without(TICKET_MSG, "action"), "field 'action': missing"),
    (ORDER, {**ORDER_MSG, "customer_id": ""}, "field 'customer_id': must not be empty"),
    (ORDER, {**ORDER_MSG, "customer_id": "x" * 129},
     "field 'customer_id': must be at most 128 characters, got 129"),
    (ORDER, {**ORDER_MSG, "customer_id": 42}, "field 'customer_id': must be a string, got integer"),
    (ORDER, {**ORDER_MSG, "customer_id": None},
     "field 'customer_id': must be a string, got null"),
    (ORDER, {**ORDER_MSG, "event_id": ["x"]}, "field 'event_id': must be a string, got array"),
    (ORDER, {**ORDER_MSG, "amount": -5}, "field 'amount': must be >= 0, got -5"),
    (ORDER, {**ORDER_MSG, "amount": -0.01}, "field 'amount': must be >= 0, got -0.01"),
    (ORDER, {**ORDER_MSG, "amount": "-5"}, "field 'amount': must be >= 0, got '-5'"),
    (ORDER, {**ORDER_MSG, "amount": 1e12 + 1},
     "field 'amount': must be at most 1000000000000 in absolute value, got 1000000000001.0"),
    (ORDER, {**ORDER_MSG, "amount": 10**13},
     "field 'amount': must be at most 1000000000000 in absolute value, got 10000000000000"),
    (ORDER, {**ORDER_MSG, "amount": True},
     "field 'amount': must be a number or a decimal string, got boolean"),
    (ORDER, {**ORDER_MSG, "amount": None},
     "field 'amount': must be a number or a decimal string, got null"),
    (ORDER, {**ORDER_MSG, "amount": "NaN"},
     "field 'amount': cannot parse 'NaN' as a decimal number"),
    (ORDER, {**ORDER_MSG, "amount": "1e3"},
     "field 'amount': cannot parse '1e3' as a decimal number"),
    (ORDER, {**ORDER_MSG, "amount": ""}, "field 'amount': cannot parse '' as a decimal number"),
    (ORDER, {**ORDER_MSG, "currency": "EUR"},
     "field 'currency': 'EUR' is not the configured currency 'USD'"),
    (ORDER, {**ORDER_MSG, "currency": 1}, "field 'currency': must be a string, got integer"),
    (ORDER, {**ORDER_MSG, "status": "shipped"},
     "field 'status': 'shipped' is not one of paid, placed, cancelled, refunded"),
    (ORDER, {**ORDER_MSG, "status": "PAID"},
     "field 'status': 'PAID' is not one of paid, placed, cancelled, refunded"),
    (ORDER, {**ORDER_MSG, "margin": "abc"},
     "field 'margin': cannot parse 'abc' as a decimal number"),
    (ORDER, {**ORDER_MSG, "items": {"sku": "a"}}, "field 'items': must be an array, got object"),
    (ORDER, {**ORDER_MSG, "items": [{}, 3]}, "field 'items[1]': must be an object, got integer"),
    (ORDER, {**ORDER_MSG, "items": [{}] * 1001},
     "field 'items': must have at most 1000 items, got 1001"),
    (LOGIN, {**LOGIN_MSG, "session_seconds": -1}, "field 'session_seconds': must be >= 0, got -1"),
    (LOGIN, {**LOGIN_MSG, "session_seconds": "30"},
     "field 'session_seconds': must be a number, got string"),
    (LOGIN, {**LOGIN_MSG, "pages_viewed": 2.5},
     "field 'pages_viewed': must be an integer, got number 2.5"),
    (LOGIN, {**LOGIN_MSG, "pages_viewed": False},
     "field 'pages_viewed': must be an integer, got boolean"),
    (LOGIN, {**LOGIN_MSG, "channel": 7}, "field 'channel': must be a string, got integer"),
    (TICKET, {**TICKET_MSG, "action": "closed"},
     "field 'action': 'closed' is not one of opened, escalated, resolved, reopened"),
    (TICKET, {**TICKET_MSG, "severity": "urgent"},
     "field 'severity': 'urgent' is not one of low, medium, high, critical"),
    (TICKET, {**TICKET_MSG, "category": ["complaint"]},
     "field 'category': must be a string, got array"),
])
def test_invalid_fields(kind: str, msg: dict[str, Any], why: str) -> None:
    assert reason(kind, msg) == why


@pytest.mark.parametrize(("ts", "why"), [
    ("yesterday", "cannot parse 'yesterday' as RFC 3339 or epoch milliseconds"),
    ("2026-11-22", "cannot parse '2026-11-22' as RFC 3339 or epoch milliseconds"),
    ("1795341600000", "cannot parse '1795341600000' as RFC 3339 or epoch milliseconds"),
    ("2026-11-22T10:00:00", "'2026-11-22T10:00:00' has no UTC offset; add 'Z' or '+HH:MM'"),
    ("0001-01-01T00:00:00Z", "'0001-01-01T00:00:00Z' is before 1970; epoch-millisecond "
                             "storage needs years 1970..9999"),
    ("1970-01-01T00:30:00+01:00", "'1970-01-01T00:30:00+01:00' is before 1970; "
                                  "epoch-millisecond storage needs years 1970..9999"),
    ("9999-12-31T23:59:59-01:00", "'9999-12-31T23:59:59-01:00' is after 9999-12-31T23:59:59.999Z"),
    ("2026-02-30T10:00:00Z", "'2026-02-30T10:00:00Z' is not a valid date-time "
                             "(day is out of range for month)"),
    ("2026-11-22T10:00:60Z", "'2026-11-22T10:00:60Z' is not a valid date-time "
                             "(second must be in 0..59)"),
    (-1, "epoch milliseconds -1 is outside 0..253402300799999 (1970..9999)"),
    (MAX_TS_MS + 1,
     "epoch milliseconds 253402300800000 is outside 0..253402300799999 (1970..9999)"),
    (1.7e12,
     "must be an RFC 3339 string or integer epoch milliseconds, got number 1700000000000.0"),
    (True, "must be an RFC 3339 string or integer epoch milliseconds, got boolean"),
    ({"t": 1}, "must be an RFC 3339 string or integer epoch milliseconds, got object"),
])
def test_invalid_ts(ts: object, why: str) -> None:
    assert reason(LOGIN, {**LOGIN_MSG, "ts": ts}) == f"field 'ts': {why}"


def test_huge_integer_is_rejected() -> None:
    raw = orjson.dumps(ORDER_MSG).replace(b"19.99", b"1" + b"0" * 40)
    assert reason(ORDER, raw).startswith("field 'amount': must be at most 1000000000000")


def test_long_values_are_truncated_in_reasons() -> None:
    why = reason(ORDER, {**ORDER_MSG, "status": "x" * 10_000})
    assert len(why) < 200 and why.startswith("field 'status': 'xxxx")


# -- hostile input: nothing but InvalidEvent, ever -------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=5),
    max_leaves=20,
)
FIELDS = ["event_id", "customer_id", "ts", "order_id", "amount", "currency", "status", "margin",
          "items", "session_seconds", "pages_viewed", "channel", "ticket_id", "action",
          "category", "severity"]
near_valid = st.builds(
    lambda kind, base_drop, changes: (kind, {**without(MSGS[kind], base_drop), **changes}),
    st.sampled_from([ORDER, LOGIN, TICKET]),
    st.sampled_from(FIELDS),
    st.dictionaries(st.sampled_from(FIELDS), json_values | st.sampled_from(
        ["paid", "opened", "2026-01-01T00:00:00+01:00", "-1", "0.00005", TS_MS]), max_size=4),
)


def _check(kind: str, raw: bytes) -> None:
    try:
        event = parse_event(kind, raw, currency="USD", max_bytes=4096)
    except InvalidEvent as exc:
        assert exc.reason
        return
    assert isinstance(event, OrderEvent | LoginEvent | TicketEvent)
    assert 0 <= event.ts <= MAX_TS_MS
    assert dedupe_key(event) == f"{kind}:{event.event_id}"


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([ORDER, LOGIN, TICKET]), st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_invalid_event(kind: str, raw: bytes) -> None:
    _check(kind, raw)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([ORDER, LOGIN, TICKET]), json_values)
def test_arbitrary_json_raises_only_invalid_event(kind: str, value: object) -> None:
    _check(kind, orjson.dumps(value))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_valid)
def test_near_valid_messages_raise_only_invalid_event(case: tuple[str, dict[str, Any]]) -> None:
    _check(case[0], orjson.dumps(case[1]))
