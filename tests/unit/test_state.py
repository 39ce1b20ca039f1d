"""Unit tests for stream.domain.state: windows, netting, ordering, dedupe, tickets, pruning, size."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.domain.events import (
    AMOUNT_SCALE,
    Event,
    LoginEvent,
    OrderEvent,
    TicketEvent,
    dedupe_key,
)
from stream.domain.state import AGGREGATE_FIELDS, DAY_MS, CustomerState, id_digest
from stream.exceptions import StateDecodeError

TODAY = 20_414  # 2025-11-22 (UTC day number)
NOW = TODAY * DAY_MS + 12 * 3_600_000  # noon
HOUR = 3_600_000
SOURCE = {OrderEvent: "orders:0", LoginEvent: "logins:0", TicketEvent: "support-tickets:0"}
_seq = iter(range(10**9))


def order(ts: int, amount: float = 10.0, status: str = "paid", eid: str | None = None) -> Event:
    return OrderEvent(eid or f"o{next(_seq)}", "c", ts, "ord", round(amount * AMOUNT_SCALE),
                      status, None, 0)


def login(ts: int, eid: str | None = None) -> Event:
    return LoginEvent(eid or f"l{next(_seq)}", "c", ts, None, None, None)


def ticket(ts: int, tid: str, action: str, category: str = "") -> Event:
    return TicketEvent(f"t{next(_seq)}", "c", ts, tid, action, category, "medium")


def build(*events: Event, state: CustomerState | None = None) -> CustomerState:
    s = state or CustomerState()
    for e in events:
        src = SOURCE[type(e)]
        offset = s.offsets.get(src, 1000) + 1
        assert not s.is_duplicate(src, offset, dedupe_key(e))
        s.apply(e, src, offset, dedupe_key(e))
    return s


def day_ts(age_days: int, hour: int = 12) -> int:
    """A ts in the UTC day ``age_days`` before TODAY, at ``hour``."""
    return (TODAY - age_days) * DAY_MS + hour * HOUR


# -- shape ---------------------------------------------------------------------------------

def test_aggregate_keys_and_types_match_the_schema() -> None:
    for s in (CustomerState(), build(order(day_ts(3)), order(day_ts(1)), login(day_ts(0)))):
        agg = s.aggregates(NOW)
        assert list(agg) == list(AGGREGATE_FIELDS)
        for key, (kind, nullable) in AGGREGATE_FIELDS.items():
            value = agg[key]
            if value is None:
                assert nullable or s.first_seen_at is None, key
            else:
                assert type(value) is {"int": int, "float": float}[kind], key


def test_empty_state() -> None:
    agg = CustomerState().aggregates(NOW)
    assert agg["orders_total"] == 0 and agg["spend_365d"] == 0.0
    assert agg["days_since_first_seen"] == 0.0 and agg["mean_order_gap_days"] is None


# -- windows -------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "orders_key", "spend_key"), [
    (30, "orders_30d", "spend_30d"), (90, "orders_90d", "spend_90d"),
    (365, "orders_365d", "spend_365d"),
])
def test_order_window_edges(n: int, orders_key: str, spend_key: str) -> None:
    inside = build(order(day_ts(n - 1, hour=0), 5.0)).aggregates(NOW)
    assert (inside[orders_key], inside[spend_key]) == (1, 5.0)
    # exactly N days old by bucket, although less than N x 24h ago: out
    outside = build(order(day_ts(n, hour=23), 5.0)).aggregates(NOW)
    assert (outside[orders_key], outside[spend_key]) == (0, 0.0)
    assert outside["orders_total"] == 1


@pytest.mark.parametrize(("n", "key"), [(7, "logins_7d"), (30, "logins_30d")])
def test_login_window_edges(n: int, key: str) -> None:
    assert build(login(day_ts(n - 1, hour=0))).aggregates(NOW)[key] == 1
    assert build(login(day_ts(n, hour=23))).aggregates(NOW)[key] == 0


@pytest.mark.parametrize(("age", "prev"), [(89, 0.0), (90, 1.0), (179, 1.0), (180, 0.0)])
def test_spend_prev_90d_edges(age: int, prev: float) -> None:
    assert build(order(day_ts(age), 1.0)).aggregates(NOW)["spend_prev_90d"] == prev


def test_ticket_window_edges() -> None:
    s = build(ticket(day_ts(89), "a", "opened", "COMPLAINT"), ticket(day_ts(90), "b", "opened",
              "complaint"), ticket(day_ts(89), "c", "escalated"), ticket(day_ts(90), "d",
              "escalated"), ticket(day_ts(1), "e", "opened", "billing"))
    agg = s.aggregates(NOW)
    assert (agg["complaints_90d"], agg["escalations_90d"]) == (1, 1)
    assert (agg["open_tickets"], agg["open_complaints"]) == (5, 2)


def test_future_events_count_only_in_lifetime() -> None:
    s = build(order(day_ts(-1), 7.0), login(day_ts(-2)))
    agg = s.aggregates(NOW)
    assert agg["orders_30d"] == 0 and agg["spend_30d"] == 0.0 and agg["logins_7d"] == 0
    assert agg["orders_total"] == 1 and agg["max_order"] == 7.0
    assert agg["days_since_last_order"] == 0.0 and agg["days_since_last_activity"] == 0.0
    assert build(order(day_ts(-1), 7.0)).aggregates(NOW + DAY_MS)["orders_30d"] == 1
    # later today is today's bucket: windows are exact to the day, not to the ms
    assert build(order(NOW + HOUR, 7.0)).aggregates(NOW)["orders_30d"] == 1


def test_lifetime_fields() -> None:
    s = build(order(day_ts(10), 3.0), order(day_ts(30), 9.5), order(day_ts(0), 1.0),
              login(day_ts(400)), order(day_ts(5), 4.0, status="cancelled"),
              ticket(day_ts(500), "x", "opened"))
    agg = s.aggregates(NOW)
    assert agg["orders_total"] == 3 and agg["max_order"] == 9.5
    assert agg["first_order_at"] == day_ts(30) and agg["last_order_at"] == day_ts(0)
    assert agg["mean_order_gap_days"] == 15.0
    assert agg["days_since_first_order"] == 30.0 and agg["days_since_last_order"] == 0.0
    assert agg["last_login_at"] == day_ts(400) and agg["days_since_last_login"] == 400.0
    assert agg["first_seen_at"] == day_ts(500) and agg["days_since_first_seen"] == 500.0
    assert agg["last_activity_at"] == day_ts(0)
    assert s.last_event_ts == day_ts(0)


# -- refunds, ordering ---------------------------------------------------------------------

def test_refunds_net_against_spend_in_their_own_day() -> None:
    s = build(order(day_ts(100), 100.0), order(day_ts(10), 50.0),
              order(day_ts(10), 20.0, status="refunded"), order(day_ts(2), 30.0, "refunded"),
              order(day_ts(1), 99.0, status="placed"))
    agg = s.aggregates(NOW)
    assert agg["spend_30d"] == 0.0  # 50 - 20 - 30
    assert agg["spend_90d"] == 0.0 and agg["spend_365d"] == 100.0
    assert agg["spend_prev_90d"] == 100.0
    assert agg["orders_30d"] == 1 and agg["orders_total"] == 2 and agg["max_order"] == 100.0
    assert build(order(day_ts(5), 8.0, "refunded")).aggregates(NOW)["spend_30d"] == -8.0


def test_late_and_out_of_order_events_land_in_their_day() -> None:
    events = [order(day_ts(a), float(a + 1)) for a in range(0, 400, 7)]
    events += [login(day_ts(a)) for a in range(0, 40, 3)]
    in_order = build(*events)
    backwards = build(*reversed(events))
    for now in (NOW, NOW + 45 * DAY_MS, NOW + 200 * DAY_MS):
        assert in_order.aggregates(now) == backwards.aggregates(now)
    late = build(login(day_ts(0)), order(day_ts(20), 2.5))  # a late order arrives after
    assert late.aggregates(NOW)["spend_30d"] == 2.5


def test_exact_money_sums() -> None:
    s = build(*(order(day_ts(1), 0.1) for _ in range(10)), order(day_ts(1), 0.0001))
    assert s.aggregates(NOW)["spend_30d"] == 1.0001


# -- dedupe --------------------------------------------------------------------------------

def test_duplicates_by_offset_and_by_id() -> None:
    s = CustomerState()
    e = order(day_ts(1))
    s.apply(e, "orders:3", 10, "order:a")
    assert s.is_duplicate("orders:3", 10, "order:other")  # redelivery
    assert s.is_duplicate("orders:3", 2, "order:other")
    assert not s.is_duplicate("orders:3", 11, "order:other")
    assert not s.is_duplicate("rekey:orders:3", 10, "order:other")  # other source
    assert s.is_duplicate("orders:3", 99, "order:a")  # producer retry, new offset
    assert s.is_duplicate("rekey:orders:5", 0, "order:a")
    for i in range(64):
        s.apply(e, "orders:3", 11 + i, f"order:n{i}")
    assert not s.is_duplicate("orders:3", 1000, "order:a")  # beyond the last 64 ids
    assert s.is_duplicate("orders:3", 1000, "order:n0")
    assert len(s.recent_ids) == 64 and s.offsets == {"orders:3": 74}


def test_the_id_filter_answers_like_a_scan_of_the_last_64_ids() -> None:
    """The in-memory hash filter in front of recent_ids (rebuilt after 64 drops, and after a decode)
    never hides a duplicate nor makes one up, over several rebuilds."""
    rng = random.Random(3)
    s = CustomerState()
    marked: list[str] = []
    for i in range(400):
        if i == 150:
            s = CustomerState.from_bytes(s.to_bytes())  # the filter is not persisted: built again
        for probe in (*marked[-70:], f"order:never{i}"):
            assert s.is_duplicate("replay", -1, probe) == (probe in marked[-64:]), (i, probe)
        new_id = f"order:{rng.getrandbits(64):x}"
        s.mark("replay", -1, new_id)
        marked.append(new_id)
    assert s.recent_ids.tolist() == [id_digest(i) for i in marked[-64:]]


def test_recent_ids_are_digests_in_the_changelog_and_old_records_still_dedupe() -> None:
    """The changelog keeps 8 bytes (base64) an id, not the id; a record written before (ids as
    strings under "i") is read, converted, and still recognises its ids."""
    ids = [f"order:{n:032x}" for n in range(64)]
    doc = orjson.loads(_marked(ids).to_bytes())
    assert "i" not in doc and len(doc["j"]) == 684  # 64 × 8 bytes in base64, against ~2,600 bytes of ids
    old = {**{k: v for k, v in doc.items() if k != "j"}, "i": ids[-3:]}
    converted = CustomerState.from_bytes(orjson.dumps(old))
    assert converted.is_duplicate("replay", -1, ids[-1]) and not converted.is_duplicate("replay", -1, ids[0])
    assert orjson.loads(converted.to_bytes())["j"] == orjson.loads(_marked(ids[-3:]).to_bytes())["j"]


def _marked(ids: list[str]) -> CustomerState:
    s = CustomerState()
    for dedupe_id in ids:
        s.mark("replay", -1, dedupe_id)
    return s


def test_negative_offset_checks_only_the_id() -> None:
    s = CustomerState()
    s.apply(order(day_ts(1)), "replay", -1, "order:a")
    assert s.offsets == {} and not s.is_duplicate("replay", -1, "order:b")
    assert s.is_duplicate("replay", -1, "order:a")


# -- tickets -------------------------------------------------------------------------------

def test_ticket_resolve_before_open_stays_closed() -> None:
    s = build(ticket(day_ts(1), "t", "resolved"), ticket(day_ts(3), "t", "opened", "complaint"))
    agg = s.aggregates(NOW)
    assert (agg["open_tickets"], agg["open_complaints"], agg["complaints_90d"]) == (0, 0, 1)
    build(ticket(day_ts(0), "t", "reopened"), state=s)
    assert (s.aggregates(NOW)["open_tickets"], s.aggregates(NOW)["open_complaints"]) == (1, 1)


def test_ticket_category_latest_wins_in_any_order() -> None:
    events = [ticket(day_ts(5), "t", "opened", "complaint"), ticket(day_ts(3), "t", "escalated"),
              ticket(day_ts(2), "t", "escalated", "billing")]
    for perm in (events, events[::-1], [events[1], events[2], events[0]]):
        agg = build(*perm).aggregates(NOW)
        assert (agg["open_tickets"], agg["open_complaints"], agg["escalations_90d"]) == (1, 0, 2)
    agg = build(*events[:2]).aggregates(NOW)
    assert agg["open_complaints"] == 1


def test_ticket_bound_drops_closed_then_oldest() -> None:
    s = build(*(ticket(day_ts(10), f"closed{i}", "resolved") for i in range(50)))
    build(*(ticket(day_ts(5) + i, f"open{i}", "opened") for i in range(200)), state=s)
    assert len(s.tickets) == 200 and s.aggregates(NOW)["open_tickets"] == 200
    build(ticket(day_ts(1), "new", "opened"), state=s)
    assert len(s.tickets) == 200 and "open0" not in s.tickets and "new" in s.tickets


def test_prune_drops_stale_closed_tickets_only() -> None:
    s = build(ticket(day_ts(120), "old-open", "opened"), ticket(day_ts(91), "stale", "resolved"),
              ticket(day_ts(89), "recent", "resolved"))
    before = s.aggregates(NOW)
    s.prune(NOW)
    assert set(s.tickets) == {"old-open", "recent"}
    assert s.aggregates(NOW) == before


# -- pruning -------------------------------------------------------------------------------

def test_prune_horizon_and_old_late_events() -> None:
    s = build(order(day_ts(366), 1.0), order(day_ts(365), 2.0), order(day_ts(0), 4.0))
    before = s.aggregates(NOW)
    s.prune(NOW)
    assert sorted(TODAY - d for d in s.days) == [0, 365]
    assert s.aggregates(NOW) == before
    build(order(day_ts(400), 8.0), state=s)  # older than the horizon: lifetime only
    assert sorted(TODAY - d for d in s.days) == [0, 365]
    agg = s.aggregates(NOW)
    assert agg["orders_total"] == 4 and agg["max_order"] == 8.0
    assert agg["first_order_at"] == day_ts(400) and agg["spend_365d"] == 4.0


def test_prune_is_idempotent_and_cheap_the_same_day() -> None:
    s = build(order(day_ts(500)))
    s.prune(NOW)
    assert s.days == {} and s.horizon_day == TODAY - 366
    s.prune(NOW - DAY_MS)  # an earlier clock never moves the horizon back
    assert s.horizon_day == TODAY - 366


# -- round trip and size -------------------------------------------------------------------

def test_round_trip_is_exact() -> None:
    s = build(order(day_ts(3), 12.3456), order(day_ts(3), 1.0, "refunded"), login(day_ts(0)),
              ticket(day_ts(2), "t", "opened", "complaint"), ticket(day_ts(1), "t", "resolved"))
    s.view = {"tags": ["vip"], "tier": "A", "score": 0.1 + 0.2, "reasons": {"vip": ["x"]}}
    s.prune(NOW)
    copy = CustomerState.from_bytes(s.to_bytes())
    assert copy == s and copy.to_bytes() == s.to_bytes()
    assert copy.aggregates(NOW) == s.aggregates(NOW)
    assert CustomerState.from_bytes(CustomerState().to_bytes()) == CustomerState()
    s.view = {}
    assert CustomerState.from_bytes(s.to_bytes()).view == {}


@pytest.mark.parametrize("raw", [b"", b"[]", b"{}", b'{"v": 2, "l": []}', b'{"v": 1}',
                                 b'{"v": 1, "l": [0], "h": 0}', b"\xff",
                                 b'{"v":1,"l":[0,0,null,null,null,null,null,null],"h":0,"d":[1]}',
                                 b'{"v":1,"l":[0,0,null,null,null,null,null,null],"h":0,"j":"AAAA"}',
                                 b'{"v":1,"l":[0,0,null,null,null,null,null,null],"h":0,"j":"not base64!"}',
                                 b'{"v":1,"l":[0,0,null,null,null,null,null,null],"h":0,"i":"a"}'])
def test_corrupt_state_raises_state_decode_error(raw: bytes) -> None:
    with pytest.raises(StateDecodeError):
        CustomerState.from_bytes(raw)


def test_serialized_size_stays_bounded() -> None:
    rng = random.Random(7)
    s = CustomerState()
    start = (TODAY - 3 * 365) * DAY_MS
    step = 3 * 365 * DAY_MS // 100_000
    open_tickets: list[tuple[str, int]] = []
    biggest = 0
    for i in range(100_000):
        ts = start + i * step
        r = rng.random()
        if r < 0.4:
            e: Event = login(ts, eid=f"evt-{i:07d}")
        elif r < 0.8:
            e = order(ts, rng.uniform(1, 500), rng.choice(["paid", "paid", "refunded"]),
                      eid=f"evt-{i:07d}")
        elif open_tickets and (r < 0.9 or len(open_tickets) > 5):
            tid, _ = open_tickets.pop(0)
            e = TicketEvent(f"evt-{i:07d}", "c", ts, tid, "resolved", "", "low")
        else:
            open_tickets.append((f"tkt-{i:07d}", ts))
            e = TicketEvent(f"evt-{i:07d}", "c", ts, open_tickets[-1][0], "opened",
                            rng.choice(["complaint", "billing"]), "low")
        s.apply(e, SOURCE[type(e)], i, dedupe_key(e))
        s.prune(ts)
        if i % 997 == 0:
            biggest = max(biggest, len(s.to_bytes()))
    assert len(s.days) <= 366 and len(s.tickets) <= 200 and len(s.recent_ids) == 64
    assert biggest < 20_000, biggest


# -- property: equals a naive recomputation from the raw events ----------------------------

def naive(events: list[Event], now: int) -> dict[str, Any]:
    """Aggregates straight from the definitions, one event at a time."""
    today = now // DAY_MS

    def within(e: Event, lo: int, hi: int) -> bool:
        return lo <= today - e.ts // DAY_MS < hi

    def since(t: int | None) -> float | None:
        return None if t is None else float(max(0, now - t) // DAY_MS)  # whole days

    paid = [e for e in events if isinstance(e, OrderEvent) and e.status == "paid"]
    refunds = [e for e in events if isinstance(e, OrderEvent) and e.status == "refunded"]
    logins = [e for e in events if isinstance(e, LoginEvent)]
    tickets = [e for e in events if isinstance(e, TicketEvent)]

    def spend(lo: int, hi: int) -> float:
        units = sum(e.amount for e in paid if within(e, lo, hi))
        return (units - sum(e.amount for e in refunds if within(e, lo, hi))) / AMOUNT_SCALE

    open_t = open_c = reopened = 0
    for tid in {e.ticket_id for e in tickets}:
        mine = sorted((e for e in tickets if e.ticket_id == tid), key=lambda e: e.ts)
        with_cat = [e for e in mine if e.category]
        if mine[-1].action != "resolved":
            open_t += 1
            open_c += bool(with_cat) and with_cat[-1].category.lower() == "complaint"
            reopened += any(e.action == "reopened" for e in mine)
    first = min((e.ts for e in paid), default=None)
    last = max((e.ts for e in paid), default=None)
    active = [e.ts for e in paid + logins]
    first_seen = min((e.ts for e in events), default=None)
    return {
        "orders_30d": sum(within(e, 0, 30) for e in paid),
        "orders_90d": sum(within(e, 0, 90) for e in paid),
        "orders_365d": sum(within(e, 0, 365) for e in paid),
        "orders_total": len(paid),
        "logins_7d": sum(within(e, 0, 7) for e in logins),
        "logins_30d": sum(within(e, 0, 30) for e in logins),
        "open_tickets": open_t, "open_complaints": open_c, "reopened_tickets": reopened,
        "complaints_90d": sum(within(e, 0, 90) for e in tickets
                              if e.action == "opened" and e.category.lower() == "complaint"),
        "escalations_90d": sum(within(e, 0, 90) for e in tickets if e.action == "escalated"),
        "orders_prev_90d": sum(within(e, 90, 180) for e in paid),
        "logins_365d": sum(within(e, 0, 365) for e in logins),
        "spend_30d": spend(0, 30), "spend_90d": spend(0, 90), "spend_365d": spend(0, 365),
        "spend_prev_90d": spend(90, 180),
        "max_order": max((e.amount for e in paid), default=0) / AMOUNT_SCALE,
        "days_since_first_seen": since(first_seen) or 0.0,
        "mean_order_gap_days": (None if len(paid) < 2 or first is None or last is None
                                else (last - first) / (len(paid) - 1) / DAY_MS),
        "days_since_first_order": since(first), "days_since_last_order": since(last),
        "days_since_last_login": since(max((e.ts for e in logins), default=None)),
        "days_since_last_activity": since(max(active, default=None)),
        "first_order_at": first, "last_order_at": last,
        "last_login_at": max((e.ts for e in logins), default=None),
        "first_seen_at": first_seen, "last_activity_at": max(active, default=None),
    }


@st.composite
def event_lists(draw: st.DrawFn, ticket_min_age: int) -> list[Event]:
    """Events with unique ts (so ticket order is well defined) across ~2 years."""
    events: list[Event] = []
    for i in range(draw(st.integers(0, 50))):
        kind = draw(st.sampled_from("oolt"))
        age = draw(st.integers(-3, 89 if kind == "t" and ticket_min_age else 800))
        ts = (TODAY - age) * DAY_MS + draw(st.integers(0, 1439)) * 60_000 + i
        if kind == "o":
            status = draw(st.sampled_from(["paid", "paid", "refunded", "placed", "cancelled"]))
            events.append(OrderEvent(f"e{i}", "c", ts, "o", draw(st.integers(0, 10**8)),
                                     status, None, 0))
        elif kind == "l":
            events.append(LoginEvent(f"e{i}", "c", ts, None, None, None))
        else:
            events.append(TicketEvent(
                f"e{i}", "c", ts, draw(st.sampled_from("abcd")),
                draw(st.sampled_from(["opened", "escalated", "resolved", "reopened"])),
                draw(st.sampled_from(["", "complaint", "Complaint", "billing"])), "low"))
    return events


def deliver(events: list[Event], rng: random.Random) -> list[tuple[Event, str, int]]:
    """Shuffled delivery with producer retries (new offset) and rewinds (old offsets)."""
    order_ = events[:]
    rng.shuffle(order_)
    next_offset: dict[str, int] = defaultdict(int)
    seq: list[tuple[Event, str, int]] = []
    for e in order_:
        src = rng.choice([SOURCE[type(e)], "rekey:" + SOURCE[type(e)]])
        for _ in range(2 if rng.random() < 0.15 else 1):  # the retry gets a new offset
            seq.append((e, src, next_offset[src]))
            next_offset[src] += 1
        if seq and rng.random() < 0.1:  # crash: redeliver a tail of the stream
            seq.extend(seq[-rng.randint(1, 10):])
    return seq


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_lists(ticket_min_age=1), st.randoms(use_true_random=False))
def test_matches_naive_with_shuffling_duplicates_and_pruning(
        events: list[Event], rng: random.Random) -> None:
    s = CustomerState()
    applied = 0
    for e, src, offset in deliver(events, rng):
        if not s.is_duplicate(src, offset, dedupe_key(e)):
            s.apply(e, src, offset, dedupe_key(e))
            applied += 1
        if rng.random() < 0.2:
            s.prune(NOW - rng.randint(0, 500) * DAY_MS)
        if rng.random() < 0.2:
            s.aggregates(rng.choice([NOW, NOW - rng.randint(0, 400) * DAY_MS]))
        if rng.random() < 0.1:  # the priority test's read (stream.domain.priority) keeps the same sums
            s.spend_orders_365d(rng.choice([NOW, NOW - rng.randint(0, 400) * DAY_MS]))
    assert applied == len(events)
    for now in (NOW, NOW + 1, NOW + 5 * DAY_MS, NOW + 200 * DAY_MS, NOW + 400 * DAY_MS):
        expected = naive(events, now)
        assert s.spend_orders_365d(now) == (expected["spend_365d"], expected["orders_365d"])
        assert s.aggregates(now) == expected
    assert CustomerState.from_bytes(s.to_bytes()) == s


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_lists(ticket_min_age=0), st.randoms(use_true_random=False),
       st.integers(-5, 800))
def test_prune_never_changes_aggregates_at_or_after_now(
        events: list[Event], rng: random.Random, prune_age: int) -> None:
    s = CustomerState()
    for e, src, offset in deliver(events, rng):
        if not s.is_duplicate(src, offset, dedupe_key(e)):
            s.apply(e, src, offset, dedupe_key(e))
    unpruned = CustomerState.from_bytes(s.to_bytes())
    prune_now = NOW - prune_age * DAY_MS + rng.randint(0, DAY_MS - 1)
    s.prune(prune_now)
    for now in (prune_now, prune_now + DAY_MS, prune_now + 100 * DAY_MS, NOW + 400 * DAY_MS):
        assert s.aggregates(now) == unpruned.aggregates(now) == naive(events, now)
