"""The sweep-cost benchmark runs and reports a per-customer figure."""

from __future__ import annotations

from agents.bench import sweep_cost


def test_sweep_cost_reports_per_customer_time() -> None:
    result = sweep_cost(50)
    assert result["customers"] == 50
    assert 0 < result["us_per_customer"] < 100_000
