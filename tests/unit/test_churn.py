"""Churn risk: components, weights, levels, reasons, and the ``churn:`` ruleset section."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from agents.cli.churn_cli import churn_group
from agents.engine.evaluate import facts_schema
from rules import (
    BGNBDParams,
    ChurnPolicy,
    ChurnWeights,
    RulesetError,
    assess_churn,
    default_rules_dir,
    load_ruleset,
)
from rules.churn import level_of

QUIET: dict[str, Any] = {
    "orders_total": 0, "days_since_last_order": None, "mean_order_gap_days": None,
    "days_since_first_order": None, "orders_90d": 0, "orders_prev_90d": 0, "spend_90d": 0.0,
    "spend_prev_90d": 0.0, "logins_30d": 0, "logins_365d": 0, "open_complaints": 0,
    "escalations_90d": 0, "complaints_90d": 0, "open_tickets": 0,
}
ONLY = {name: ChurnWeights(**{k: 1.0 if k == name else 0.0 for k in ChurnWeights().as_dict()})
        for name in ChurnWeights().as_dict()}


def facts(**overrides: Any) -> dict[str, Any]:
    return {**QUIET, **overrides}


def buyer(gap: float, silent: float, orders: int = 20) -> dict[str, Any]:
    first = gap * (orders - 1) + silent
    return facts(orders_total=orders, mean_order_gap_days=gap, days_since_last_order=silent,
                 days_since_first_order=first)


def test_recency_against_own_rhythm() -> None:
    policy = ChurnPolicy(weights=ONLY["recency"], weights_without_model=None)
    weekly, yearly = assess_churn(policy, buyer(7.0, 35.0)), assess_churn(policy, buyer(365.0, 35.0))
    assert weekly.components["recency"] == 1.0 and weekly.level == "high"
    assert yearly.components["recency"] == 0.0 and yearly.level == "none"
    assert weekly.reasons == ("no paid order for 35 days; usual gap 7 days",)
    assert yearly.reasons == ()
    # linear between one gap (0) and silence_multiple gaps (1)
    assert assess_churn(policy, buyer(10.0, 20.0)).risk == pytest.approx(0.5)
    one = facts(orders_total=1, days_since_last_order=60.0, days_since_first_order=60.0)
    assert assess_churn(policy, one).components["recency"] == pytest.approx(0.5)  # default gap 30
    assert assess_churn(policy, one).reasons == ("no paid order for 60 days; assumed gap 30 days",)
    burst = buyer(0.0, 2.0, orders=3)  # same-day orders: min_gap_days keeps the ratio finite
    assert assess_churn(policy, burst).components["recency"] == pytest.approx(0.5)


def test_default_policy_weekly_vs_yearly_buyer_silent_five_weeks() -> None:
    weekly = assess_churn(ChurnPolicy(), buyer(7.0, 35.0))
    yearly = assess_churn(ChurnPolicy(), buyer(365.0, 35.0))
    assert weekly.level == "medium" and yearly.level == "none"
    assert "model" not in weekly.components  # no bgnbd params: weights_without_model apply
    assert weekly.risk == pytest.approx(0.5)  # recency 1 x 0.5; no trend, logins or tickets
    spread = ChurnPolicy(weights_without_model=None)  # None: the model's weight spread over the others
    assert assess_churn(spread, buyer(7.0, 35.0)).risk == pytest.approx(0.15 / 0.4)
    with pytest.raises(RulesetError, match="weights_without_model.model must be 0"):
        ChurnPolicy(weights_without_model=ChurnWeights())


def test_trend() -> None:
    policy = ChurnPolicy(weights=ONLY["trend"], weights_without_model=None)
    got = assess_churn(policy, dict(buyer(7.0, 3.0), orders_90d=1, orders_prev_90d=6,
                                     spend_90d=50.0, spend_prev_90d=400.0))
    assert got.components["trend"] == pytest.approx(((1 - 1 / 6) + (1 - 50 / 400)) / 2)
    assert got.reasons == ("orders fell from 6 to 1 (last 90 days vs the 90 before)",
                           "spend fell from 400.00 to 50.00 (last 90 days vs the 90 before)")
    grew = assess_churn(policy, dict(buyer(7.0, 3.0), orders_90d=8, orders_prev_90d=6))
    assert grew.components["trend"] == 0.0 and grew.reasons == ()
    refunds = assess_churn(policy, dict(buyer(7.0, 3.0), spend_90d=-20.0, spend_prev_90d=100.0))
    assert refunds.components["trend"] == 1.0


def test_engagement() -> None:
    policy = ChurnPolicy(weights=ONLY["engagement"], weights_without_model=None)
    got = assess_churn(policy, facts(logins_30d=1, logins_365d=120))
    assert got.components["engagement"] == pytest.approx(1 - 1 / (120 / 12.17))
    assert got.reasons == ("1 login in the last 30 days; usual 9.9 a month",)
    assert assess_churn(policy, facts(logins_30d=0, logins_365d=6)).components["engagement"] == 0.0  # < 1 a month
    assert assess_churn(policy, facts(logins_30d=20, logins_365d=120)).components["engagement"] == 0.0


def test_service_saturates() -> None:
    policy = ChurnPolicy(weights=ONLY["service"], weights_without_model=None)
    two = assess_churn(policy, facts(open_complaints=2, open_tickets=2))
    assert two.components["service"] == pytest.approx(2.5 / 4.5)
    assert two.reasons == ("2 open complaints", "2 open tickets")
    one = assess_churn(policy, facts(escalations_90d=1, complaints_90d=1))
    assert one.reasons == ("1 escalation in the last 90 days", "1 complaint opened in the last 90 days")
    many = assess_churn(policy, facts(open_complaints=50)).components["service"]
    assert 0.95 < many < 1.0
    assert assess_churn(policy, QUIET).components["service"] == 0.0


def test_model_component_uses_expected_purchases() -> None:
    params = BGNBDParams(r=0.6, alpha=20.0, a=0.8, b=3.0)
    policy = ChurnPolicy(weights=ONLY["model"], bgnbd=params)
    frequent = assess_churn(policy, buyer(3.0, 1.0))
    one_time = assess_churn(policy, facts(orders_total=1, days_since_last_order=200.0, days_since_first_order=200.0))
    assert frequent.risk < 0.01 < one_time.risk
    from rules.bgnbd import expected_purchases

    e = expected_purchases(0.6, 20.0, 0.8, 3.0, 0.0, 0.0, 200.0, 90.0)
    assert one_time.risk == pytest.approx(math.exp(-e))
    assert one_time.reasons[-1] == f"BG/NBD expects {e:.1f} purchases in the next 90 days"


def test_no_orders_uses_engagement_and_service_only() -> None:
    policy = ChurnPolicy(bgnbd=BGNBDParams(0.6, 20.0, 0.8, 3.0))
    got = assess_churn(policy, facts(open_complaints=2, logins_30d=0, logins_365d=60))
    assert set(got.components) == {"engagement", "service"}
    assert got.risk == pytest.approx((0.1 * 1.0 + 0.1 * 0.5) / 0.2)
    assert assess_churn(ChurnPolicy(), QUIET) == assess_churn(ChurnPolicy(), {})


def test_levels_and_cutoffs() -> None:
    policy = ChurnPolicy(low=0.2, medium=0.4, high=0.6)
    assert [level_of(policy, v) for v in (0.0, 0.19, 0.2, 0.39, 0.4, 0.59, 0.6, 1.0)] == [
        "none", "none", "low", "low", "medium", "medium", "high", "high"]
    default = ChurnPolicy()
    assert [level_of(default, v) for v in (0.24, 0.25, 0.5, 0.7)] == ["none", "low", "medium", "high"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"low": 0.6, "medium": 0.5}, "cut-offs must rise"),
    ({"high": 1.5}, "high must be in"),
    ({"silence_multiple": 1.0}, "silence_multiple must be above 1"),
    ({"default_gap_days": 0}, "default_gap_days must be positive"),
    ({"horizon_days": "x"}, "horizon_days must be a finite number"),
])
def test_policy_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(RulesetError, match=message):
        ChurnPolicy(**kwargs)
    with pytest.raises(RulesetError, match="sum to 1.35"):
        ChurnWeights(recency=0.5)
    with pytest.raises(RulesetError, match="bgnbd.alpha must be positive"):
        BGNBDParams(1.0, 0.0, 1.0, 1.0)


def _write(tmp_path: Path, churn: str, other: str = "") -> Path:
    (tmp_path / "a.yaml").write_text("rules: []\n" + other)
    (tmp_path / "b.yaml").write_text(textwrap.dedent(churn))
    return tmp_path


def test_default_ruleset_has_default_policy() -> None:
    assert load_ruleset(default_rules_dir(), facts_schema()).churn == ChurnPolicy()


def test_churn_section_loads(tmp_path: Path) -> None:
    ruleset = load_ruleset(_write(tmp_path, """\
        churn:
          weights: {recency: 0.5, trend: 0.2, engagement: 0.1, service: 0.1, model: 0.1}
          weights_without_model: {recency: 1, trend: 0, engagement: 0, service: 0, model: 0}
          levels: {low: 0.3, medium: 0.6, high: 0.8}
          silence_multiple: 4
          bgnbd: {r: 0.5, alpha: 15, a: 0.8, b: 4}
        """), facts_schema())
    churn = ruleset.churn
    assert churn.weights.recency == 0.5 and (churn.low, churn.medium, churn.high) == (0.3, 0.6, 0.8)
    assert churn.weights_without_model is not None and churn.weights_without_model.recency == 1.0
    assert churn.silence_multiple == 4.0 and churn.bgnbd == BGNBDParams(0.5, 15.0, 0.8, 4.0)
    assert churn.default_gap_days == 30.0
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.yaml").write_text("rules: []\n")
    assert load_ruleset(empty, facts_schema()).churn == ChurnPolicy()


@pytest.mark.parametrize(("body", "line", "message"), [
    ("churn:\n  silence_multipel: 3\n", 2, "unknown key 'silence_multipel' in churn"),
    ("churn:\n  weights:\n    recency: 0.9\n", 2, "churn.weights: churn weights sum to"),
    ("churn:\n  levels: {low: 0.9, medium: 0.5, high: 0.95}\n", 2, "cut-offs must rise"),
    ("churn:\n  horizon_days: -1\n", 2, "horizon_days must be"),
    ("churn:\n  bgnbd: {r: 1, alpha: 2}\n", 2, "churn.bgnbd: missing a, b"),
    ("churn:\n  bgnbd: {r: 1, alpha: 2, a: 1, b: 0}\n", 2, "bgnbd.b must be positive"),
    ("churn: 3\n", 1, "churn must be a mapping"),
])
def test_churn_errors_name_file_and_line(tmp_path: Path, body: str, line: int, message: str) -> None:
    with pytest.raises(RulesetError) as info:
        load_ruleset(_write(tmp_path, body), facts_schema())
    assert info.value.file is not None and info.value.file.endswith("b.yaml")
    assert info.value.line == line and message in info.value.problem


def test_churn_section_at_most_once(tmp_path: Path) -> None:
    with pytest.raises(RulesetError, match="'churn' is already defined in"):
        load_ruleset(_write(tmp_path, "churn: {silence_multiple: 3}\n", "churn: {}\n"), facts_schema())


def test_fit_cli_writes_snippet(tmp_path: Path) -> None:
    rows = ["customer_id,ts,status"]
    for n in range(40):
        for k in range(n % 5 + 1):
            rows.append(f"c{n},2025-0{1 + k}-{10 + n % 9}T00:00:00Z,{'refunded' if k == 3 else 'paid'}")
    history = tmp_path / "orders.csv"
    history.write_text("\n".join(rows) + "\n")
    out = tmp_path / "snippet.yaml"
    result = CliRunner().invoke(churn_group, ["fit", str(history), "--format", "csv", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("churn:\n  bgnbd: {r: ")
    import yaml

    params = yaml.safe_load(out.read_text())["churn"]["bgnbd"]
    assert BGNBDParams(**params)


def test_report_cli(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = CliRunner().invoke(churn_group, ["report", "--customers", "300", "--out", str(out)])
    assert result.exit_code == 0, result.output
    import json

    doc = json.loads(out.read_text())
    assert set(doc["metrics"]) == {"combined", "bgnbd_only"}
    assert 0.5 < doc["metrics"]["bgnbd_only"]["auc_no_purchase_next_90d"] <= 1.0
    assert "beat" in doc["verdict"]


def test_an_open_escalated_ticket_raises_the_level_at_once() -> None:
    from rules.churn import ChurnPolicy, assess_churn
    from stream.domain.state import CustomerState

    facts = CustomerState().aggregates(0)
    facts.update(escalations_90d=1, open_tickets=1, open_complaints=1)
    assessment = assess_churn(ChurnPolicy(), facts)
    assert assessment.level == "medium"
    assert "escalated ticket open: level at least medium" in assessment.reasons
    assert assess_churn(ChurnPolicy(escalation_level="none"), facts).level in ("none", "low")
    facts.update(open_tickets=0, open_complaints=0)  # resolved: the floor no longer applies
    assert assess_churn(ChurnPolicy(), facts).level in ("none", "low")


def test_reopened_tickets_count_as_service_trouble() -> None:
    policy = ChurnPolicy()
    plain = assess_churn(policy, facts(open_tickets=1))
    reopened = assess_churn(policy, facts(open_tickets=1, reopened_tickets=1))
    assert reopened.components["service"] > plain.components["service"]
    assert "1 open ticket was reopened" in reopened.reasons
