"""Unit tests for the demo generator: determinism, the event contract, realistic behaviour."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any

import orjson
import pytest

from stream.devtools.demo import DEFAULT_TOPICS, DemoConfig, DemoGenerator, _Pacer

START = 1_700_000_000_000
STEP = 60_000
KIND_OF_TOPIC = {topic: kind for kind, topic in DEFAULT_TOPICS.items()}
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)")
TRANSITIONS = {
    "opened": {"escalated", "resolved"},
    "escalated": {"resolved"},
    "resolved": {"reopened"},
    "reopened": {"escalated", "resolved"},
}
SEVERITIES = ["low", "medium", "high", "critical"]

Decoded = tuple[str, bytes, dict[str, Any]]


def generate(count: int, **overrides: Any) -> list[Decoded]:
    config = DemoConfig(**{"start_ms": START, "time_step_ms": STEP, **overrides})
    return [(KIND_OF_TOPIC[t], k, orjson.loads(v)) for t, k, v in DemoGenerator(config).take(count)]


@pytest.fixture(scope="module")
def events() -> list[Decoded]:
    return generate(30_000)


def money(value: Any) -> Decimal:
    assert isinstance(value, float | int | str) and not isinstance(value, bool)
    if isinstance(value, str):
        assert re.fullmatch(r"\d+(\.\d+)?", value), value
    amount = Decimal(str(value))
    assert amount >= 0
    return amount


def test_same_seed_same_events_and_other_seed_differs() -> None:
    config = DemoConfig(start_ms=START, time_step_ms=STEP)
    assert DemoGenerator(config).take(2000) == DemoGenerator(config).take(2000)
    other = DemoConfig(start_ms=START, time_step_ms=STEP, seed=8)
    assert DemoGenerator(other).take(200) != DemoGenerator(config).take(200)


def test_default_start_gives_fresh_ids_per_run() -> None:
    first, second = (DemoGenerator(DemoConfig(rate=10)).take(50) for _ in range(2))
    ids = {orjson.loads(v)["event_id"] for _, _, v in first + second}
    assert len(ids) == 100


def test_every_event_follows_the_contract(events: list[Decoded]) -> None:
    for kind, key, event in events:
        assert key == event["customer_id"].encode()
        assert re.fullmatch(r"cust-\d{5}", event["customer_id"])
        assert isinstance(event["event_id"], str) and event["event_id"]
        ts = event["ts"]
        assert (type(ts) is int) or (isinstance(ts, str) and RFC3339.fullmatch(ts)), ts
        {"order": check_order, "login": check_login, "ticket": check_ticket}[kind](event)
    assert len({e["event_id"] for _, _, e in events}) == len(events)


def check_order(event: dict[str, Any]) -> None:
    assert isinstance(event["order_id"], str)
    amount = money(event["amount"])
    assert event["status"] in ("paid", "placed", "cancelled", "refunded")
    assert event.get("currency", "USD") == "USD"
    if "margin" in event:
        assert money(event["margin"]) <= amount
    if "items" in event:
        total = Decimal(0)
        for item in event["items"]:
            assert set(item) == {"sku", "category", "quantity", "unit_price"}
            assert isinstance(item["sku"], str) and isinstance(item["category"], str)
            assert type(item["quantity"]) is int and item["quantity"] >= 1
            total += money(item["unit_price"]) * item["quantity"]
        assert total == amount


def check_login(event: dict[str, Any]) -> None:
    if "session_seconds" in event:
        assert isinstance(event["session_seconds"], int | float) and event["session_seconds"] >= 0
    if "pages_viewed" in event:
        assert type(event["pages_viewed"]) is int and event["pages_viewed"] >= 1
    assert event.get("channel", "web") in ("web", "app", "store")


def check_ticket(event: dict[str, Any]) -> None:
    assert isinstance(event["ticket_id"], str)
    assert event["action"] in TRANSITIONS
    assert event["category"] in ("complaint", "inquiry", "billing")
    assert event["severity"] in SEVERITIES


def test_both_timestamp_forms_and_event_time_advances_per_step(events: list[Decoded]) -> None:
    forms = Counter(type(e["ts"]).__name__ for _, _, e in events)
    assert forms["int"] > 1000 and forms["str"] > 1000
    for n, (_, _, event) in enumerate(events[:500]):
        if type(event["ts"]) is int:
            assert event["ts"] == START + n * STEP


def test_parse_event_accepts_everything(events: list[Decoded]) -> None:
    events_module = pytest.importorskip("stream.domain.events")
    config = DemoConfig(start_ms=START, time_step_ms=STEP)
    for topic, _, raw in DemoGenerator(config).take(5000):
        parsed = events_module.parse_event(
            KIND_OF_TOPIC[topic], raw, currency="USD", max_bytes=1 << 20
        )
        if type(orjson.loads(raw)["ts"]) is str:
            assert START <= parsed.ts < START + 5000 * STEP


def test_mix_of_kinds_and_statuses(events: list[Decoded]) -> None:
    kinds = Counter(kind for kind, _, _ in events)
    assert kinds["order"] > 0.1 * len(events) and kinds["ticket"] > 0.01 * len(events)
    statuses = Counter(e["status"] for kind, _, e in events if kind == "order")
    assert statuses["paid"] > 0.8 * sum(statuses.values())
    assert all(statuses[s] > 0 for s in ("placed", "cancelled", "refunded"))


def test_spend_is_heavy_tailed(events: list[Decoded]) -> None:
    spend: dict[str, float] = defaultdict(float)
    for kind, _, event in events:
        if kind == "order" and event["status"] == "paid":
            spend[event["customer_id"]] += float(event["amount"])
    ranked = sorted(spend.values(), reverse=True)
    top = ranked[: max(1, len(ranked) // 20)]
    assert sum(top) / sum(ranked) > 0.25  # uniform spend would give 5%
    assert ranked[0] > 10 * ranked[len(ranked) // 2]


def test_some_customers_go_silent(events: list[Decoded]) -> None:
    last_seen = {e["customer_id"]: n for n, (_, _, e) in enumerate(events)}
    active_early = {e["customer_id"] for _, _, e in events[: len(events) // 3]}
    silent = [c for c in active_early if last_seen[c] < len(events) // 2]
    assert len(silent) >= 5


def test_ticket_lifecycles_are_consistent(events: list[Decoded]) -> None:
    history: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for kind, _, event in events:
        if kind == "ticket":
            history[event["ticket_id"]].append(event)
    assert len(history) > 50
    actions = Counter(e["action"] for h in history.values() for e in h)
    assert all(actions[a] > 0 for a in TRANSITIONS)
    for steps in history.values():
        assert steps[0]["action"] == "opened"
        assert len({(e["customer_id"], e["category"]) for e in steps}) == 1
        for before, after in zip(steps, steps[1:], strict=False):
            assert after["action"] in TRANSITIONS[before["action"]]
            assert SEVERITIES.index(after["severity"]) >= SEVERITIES.index(before["severity"])


def test_order_follow_ups_reuse_the_order(events: list[Decoded]) -> None:
    orders: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for kind, _, event in events:
        if kind == "order":
            orders[event["order_id"]].append(event)
    allowed = {("paid",), ("placed",), ("placed", "paid"), ("placed", "cancelled"),
               ("paid", "refunded"), ("placed", "paid", "refunded")}
    for steps in orders.values():
        assert tuple(e["status"] for e in steps) in allowed
        assert len({money(e["amount"]) for e in steps}) == 1
    assert any(len(s) > 1 for s in orders.values())


@pytest.mark.parametrize(
    "overrides",
    [{"customers": 0}, {"rate": -1}, {"rate": float("inf")}, {"time_step_ms": -5},
     {"topics": {"order": "orders"}}],
)
def test_config_rejects_nonsense(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        DemoConfig(**overrides)


def test_step_defaults_to_real_time() -> None:
    assert DemoConfig(rate=50).step_ms == 20
    assert DemoConfig(rate=0).step_ms is None
    assert DemoConfig(rate=50, time_step_ms=7).step_ms == 7


def test_single_customer_never_goes_fully_silent() -> None:
    assert len(generate(2000, customers=1)) == 2000


def test_pacer_schedules_from_a_fixed_origin() -> None:
    pacer = _Pacer(100.0)
    pacer.t0 -= 0.5  # half a second into the run: event 50 is due now, 60 in 0.1 s
    assert abs(pacer.delay(50)) < 0.05
    assert 0.05 < pacer.delay(60) <= 0.1
    assert _Pacer(0).delay(10**6) == 0
    behind = _Pacer(10.0)
    behind.t0 -= 10  # far behind: it restarts its schedule instead of flooding
    assert behind.delay(1) == 0 and behind.delay(2) > 0
