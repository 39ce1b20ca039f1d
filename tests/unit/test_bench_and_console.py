"""The benchmark harness's pure helpers, the sweep-cost benchmark, and the terminal rendering of tag changes."""

from __future__ import annotations

from pathlib import Path

import click
import orjson
import pytest

from agents.bench.harness import parse_rates, render_table, sweep_cost
from agents.bench.latency import (
    latencies,
    latency_buckets,
    merge_buckets,
    percentile,
    priority_event,
    quantile,
    trigger_event_id,
)
from agents.bench.workers import backlog, finished_events
from stream.devtools.demo import DemoConfig


def test_sweep_cost_runs_incremental_sweeps_through_the_runtime() -> None:
    result = sweep_cost(50, hours=2)
    assert result["customers"] == 50 and result["first_sweep_evaluated"] == 50  # never evaluated before
    assert result["sweeps"] == 120 and result["restart_evaluated"] == 0  # a restart re-evaluates no one
    # every customer's days_since_* step at least once a day: roughly 2/24 of them in 2 hours
    assert 0 < result["evaluated_per_customer_per_day"] < 24


def test_console_renders_changes_and_alerts() -> None:
    import click

    from agents.cli.console import render_alert, render_change, wanted

    change = {"customer_id": "c1", "tier": "A", "previous_tier": "B", "score": 81.2, "added": ["big_spender"],
              "removed": [], "reasons": {"big_spender": "spend_365d=12840.00 >= 10000"},
              "event_time": "2026-11-22T10:00:00.000Z"}
    line = click.unstyle(render_change(change))
    assert "tier B→A" in line and "+big_spender" in line and "spend_365d=12840.00 >= 10000" in line
    assert wanted(change, {"big_spender"}, set()) and not wanted(change, {"vip"}, set())
    alert = {"customer_id": "c1", "level": "high", "previous_level": "medium", "risk": 0.81,
             "reasons": ["no paid order for 41 days; usual gap 7 days"], "event_time": "2026-11-22T10:00:00.000Z"}
    assert "churn medium→high (0.81)" in click.unstyle(render_alert(alert))


def test_rates_parse_to_sorted_fractions_and_reject_nonsense() -> None:
    assert parse_rates("0.8, 0.25,0.5") == [0.25, 0.5, 0.8]
    for bad in ("", "0", "fast", "0.5,2"):
        with pytest.raises(click.BadParameter):
            parse_rates(bad)


def test_priority_events_are_big_orders_and_complaints_of_new_customers() -> None:
    from stream.domain.events import parse_event
    from stream.domain.priority import priority_of

    kinds = []
    for n in range(2):
        kind, key, value, event_id = priority_event(n, "r1", 1_767_225_600_000)
        event = parse_event(kind, value, currency="USD", max_bytes=1 << 20)
        assert event.customer_id == key.decode() and event.event_id == event_id
        kinds.append(priority_of(event, lambda: (0.0, 0), multiple=3, absolute=10_000)[0])  # type: ignore[index]
    assert kinds == ["big_order", "complaint"]
    assert priority_event(0, "r1", 0)[1] != priority_event(2, "r1", 0)[1]  # a new customer each time


def test_tag_changes_are_matched_to_sent_events_by_trigger_event_id() -> None:
    change = orjson.dumps({"customer_id": "c", "trigger": {"kind": "event", "topic": "orders", "event_id": "e1"}})
    assert trigger_event_id(change) == "e1"
    assert trigger_event_id(orjson.dumps({"trigger": {"kind": "timer", "event_id": None}})) is None
    assert trigger_event_id(b"not json") is None and trigger_event_id(None) is None
    assert latencies({"e1": 10.0, "e2": 11.0}, {"e1": 10.25, "other": 1.0}) == [0.25]  # e2 not arrived


def test_quantile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert quantile(values, 0.5) == 50.0 and quantile(values, 0.99) == 99.0 and quantile(values, 1.0) == 100.0
    assert quantile([], 0.5) is None


def test_histograms_of_several_workers_are_added() -> None:
    page = ('tagger_emit_latency_seconds_bucket{output="tag_change",since="kafka_timestamp",le="0.1"} 3.0\n'
            'tagger_emit_latency_seconds_bucket{output="tag_change",since="kafka_timestamp",le="+Inf"} 4.0\n'
            'tagger_emit_latency_seconds_bucket{output="churn_alert",since="kafka_timestamp",le="0.1"} 9.0\n')
    one = latency_buckets(page)
    assert one == [(0.1, 3.0), (float("inf"), 4.0)]
    both = merge_buckets([one, one])
    assert both == [(0.1, 6.0), (float("inf"), 8.0)]
    assert percentile([], both, 0.5) == pytest.approx(0.1 * 4 / 6)


def test_finished_events_leave_out_envelopes_commands_and_events_waiting_for_evaluation() -> None:
    body = orjson.dumps({"outcomes": {"ok": 5, "duplicate": 1, "batch": 2, "command": 7}})
    assert finished_events(body) == 6 and finished_events(b"") == 0
    body = orjson.dumps({"outcomes": {"ok": 5, "duplicate": 1}, "events_waiting_evaluation": 4})
    assert finished_events(body) == 2


def test_backlog_envelopes_hold_every_event_once() -> None:
    config = DemoConfig(customers=20, rate=0, start_ms=1_767_225_600_000, time_step_ms=60_000)
    single = backlog(config, 100, 4, 0)
    envelopes = backlog(config, 100, 4, 8)
    assert len(single) == 100 and all(partition is None for _, _, partition, _ in single)
    ids = [e["event_id"] for *_, value in envelopes for e in orjson.loads(value)["events"]]
    assert sorted(ids) == sorted(orjson.loads(value)["event_id"] for *_, value in single)
    assert all(len(orjson.loads(value)["events"]) <= 8 for *_, value in envelopes)


def test_table_puts_each_rate_on_its_own_row() -> None:
    table = render_table({"events": 10, "worker_events_per_s": 1234.5, "latency_1k_p99_s": None,
                          "latency_by_rate": [{"fraction": 0.25, "offered_events_per_s": 300.0, "p99_s": 0.05}]})
    assert "1,234" in table and "—" in table
    assert "latency_by_rate[0.250]" in table and "p99_s=0.050" in table


def test_plot_is_a_png_even_with_unmeasured_points(tmp_path: Path) -> None:
    from agents.bench.harness import plot_latency

    rows = [{"fraction": f, "offered_events_per_s": 1000 * f, "events": 10, "p50_s": 0.02 * f, "p95_s": 0.05,
             "p99_s": 0.08 if f < 0.8 else None} for f in (0.25, 0.5, 0.8)]
    result = {"events": 10, "customers": 5, "batch": 0, "load_average_start": 0.5, "latency_by_rate": rows,
              "latency_1k_p99_s": None, "immediate_offered_events_per_s": 800.0, "immediate_p99_s": 0.09}
    plot_latency(result, tmp_path / "latency.png")
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quix_peer_windows_match_the_tagger_state_on_demo_events() -> None:
    """The Quix peer's spend/order windows (agents/bench/quix.py) equal stream.domain.state's on the same events."""
    import time

    from agents.bench.quix import apply_orders
    from stream.devtools.demo import DemoGenerator
    from stream.domain.events import parse_event
    from stream.domain.state import CustomerState

    now = int(time.time() * 1000)
    config = DemoConfig(customers=40, rate=0, start_ms=now - 3000 * 3_600_000, time_step_ms=3_600_000)
    states: dict[str, CustomerState] = {}
    records: dict[str, dict[str, object]] = {}
    for i, (topic, _key, value) in enumerate(DemoGenerator(config).take(3000)):
        if topic != "orders":
            continue
        event = orjson.loads(value)
        cid = event["customer_id"]
        state = states.setdefault(cid, CustomerState())
        state.apply(parse_event("order", value, currency="USD", max_bytes=1 << 20), "orders:0", i, f"o{i}")
        records[cid], _ = apply_orders(records.get(cid), [event], now)
    assert len(states) > 10 and any(s.aggregates(now)["spend_365d"] > 0 for s in states.values())
    for cid, state in states.items():
        facts = state.aggregates(now)
        _, mine = apply_orders(dict(records[cid], t=None), [], now)  # t=None: a "change", carrying the sums
        assert mine is not None
        for n in (30, 90, 365):
            assert mine[f"spend_{n}d"] == pytest.approx(facts[f"spend_{n}d"], abs=1e-9), (cid, n)
            assert mine[f"orders_{n}d"] == facts[f"orders_{n}d"], (cid, n)


def test_quix_peer_big_spender_has_the_rule_hysteresis_and_nets_refunds() -> None:
    from agents.bench.quix import DAY_MS, apply_orders

    now = 400 * DAY_MS

    def order(amount: float, status: str = "paid", days_ago: int = 0) -> dict[str, object]:
        return {"customer_id": "c1", "event_id": f"e{amount}{status}", "ts": now - days_ago * DAY_MS,
                "amount": amount, "status": status}

    record, change = apply_orders(None, [order(9_999.99)], now)
    assert change is None and not record["t"]
    record, change = apply_orders(record, [order(0.01)], now)
    assert change is not None and change["added"] and change["spend_365d"] == pytest.approx(10_000)
    record, change = apply_orders(record, [order(1_500, "refunded")], now)  # 8,500: still tagged
    assert change is None and record["t"]
    record, change = apply_orders(record, [order(600, "refunded")], now)  # 7,900 < 8,000: off
    assert change is not None and not change["added"] and change["orders_365d"] == 2
    record, change = apply_orders(record, [order(50_000, days_ago=366)], now)  # past the horizon: nowhere
    assert change is None and record["d"].keys() == {str(now // DAY_MS)}
    _, change = apply_orders(record, [order(20_000, "cancelled"), order(20_000, "placed")], now)
    assert change is None
