"""The sweep-cost benchmark and the terminal rendering of tag changes and churn alerts."""

from __future__ import annotations

from agents.bench import sweep_cost


def test_sweep_cost_runs_incremental_sweeps_through_the_runtime() -> None:
    result = sweep_cost(50, hours=2)
    assert result["customers"] == 50 and result["first_sweep_evaluated"] == 50  # never evaluated before
    assert result["sweeps"] == 120 and result["restart_evaluated"] == 0  # a restart re-evaluates no one
    # every customer's days_since_* step at least once a day: roughly 2/24 of them in 2 hours
    assert 0 < result["evaluated_per_customer_per_day"] < 24


def test_console_renders_changes_and_alerts() -> None:
    import click

    from agents.console import render_alert, render_change, wanted

    change = {"customer_id": "c1", "tier": "A", "previous_tier": "B", "score": 81.2, "added": ["big_spender"],
              "removed": [], "reasons": {"big_spender": "spend_365d=12840.00 >= 10000"},
              "event_time": "2026-11-22T10:00:00.000Z"}
    line = click.unstyle(render_change(change))
    assert "tier B→A" in line and "+big_spender" in line and "spend_365d=12840.00 >= 10000" in line
    assert wanted(change, {"big_spender"}, set()) and not wanted(change, {"vip"}, set())
    alert = {"customer_id": "c1", "level": "high", "previous_level": "medium", "risk": 0.81,
             "reasons": ["no paid order for 41 days; usual gap 7 days"], "event_time": "2026-11-22T10:00:00.000Z"}
    assert "churn medium→high (0.81)" in click.unstyle(render_alert(alert))
