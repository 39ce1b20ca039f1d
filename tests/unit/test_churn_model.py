"""The learned churn model: scoring with reasons, loading it with the ruleset, and refusing bad model YAML."""

from __future__ import annotations

import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agents.engine.evaluate import facts_schema
from rules import RulesetError, default_rules_dir, load_ruleset
from rules.churn import ChurnPolicy, assess_churn
from rules.churn_model import FEATURES, ChurnModel, feature_values
from stream.domain.state import DAY_MS, CustomerState

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def facts(**overrides: Any) -> dict[str, Any]:
    """A complete set of facts (as the evaluator gives them), with ``overrides``."""
    return {**CustomerState().aggregates(NOW), **overrides}


MODEL = ChurnModel(names=("days_since_last_order", "orders_total_log", "open_complaints_log"),
                   means=(30.0, 1.0, 0.0), scales=(30.0, 1.0, 1.0), coefs=(1.0, -0.5, 0.8),
                   intercept=0.2, horizon_days=90.0)


def test_the_risk_is_the_logistic_of_the_standardised_sum_and_the_reasons_its_largest_raising_terms() -> None:
    customer = facts(days_since_last_order=90.0, days_since_first_order=200.0, orders_total=1, open_complaints=2)
    z = 0.2 + (90 - 30) / 30 * 1.0 + (math.log1p(1) - 1.0) * -0.5 + math.log1p(2) * 0.8
    got = assess_churn(ChurnPolicy(model=MODEL), customer)
    assert got.risk == pytest.approx(1 / (1 + math.exp(-z)))
    assert got.level == "high"
    assert got.reasons == ("no paid order for 90 days", "2 open complaints", "only one paid order so far")
    assert sum(got.components.values()) + MODEL.intercept == pytest.approx(z)


def test_features_lowering_the_risk_give_no_reason_and_the_level_follows_the_policy_cut_offs() -> None:
    loyal = facts(days_since_last_order=3.0, days_since_first_order=400.0, orders_total=20)
    got = assess_churn(ChurnPolicy(model=MODEL), loyal)
    assert got.reasons == (f"{100 * got.risk:.0f}% chance of no paid order in the next 90 days",)  # nothing raises it
    assert got.risk < 0.25 and got.level == "none"
    assert assess_churn(ChurnPolicy(model=MODEL, low=0.01), loyal).level == "low"


def test_an_open_escalated_ticket_still_lifts_the_level_with_a_model() -> None:
    loyal = facts(days_since_last_order=3.0, days_since_first_order=400.0, orders_total=20,
                  escalations_90d=1, open_tickets=1)
    got = assess_churn(ChurnPolicy(model=MODEL), loyal)
    assert got.level == "medium" and got.reasons[-1] == "escalated ticket open: level at least medium"


def test_at_most_three_reasons_each_once() -> None:
    names = ("days_since_last_order", "days_since_last_order_log", "one_time_buyer", "orders_90d_log",
             "no_paid_order")
    model = ChurnModel(names=names, means=(0.0,) * 5, scales=(1.0,) * 5, coefs=(1.0, 1.0, 1.0, -1.0, 1.0),
                       intercept=0.0, horizon_days=90.0)
    reasons: list[str] = []
    model.assess(facts(days_since_last_order=50.0, days_since_first_order=50.0, orders_total=1), reasons, {})
    # the two recency features say the same thing; orders_90d_log is 0 (no term); no_paid_order is 0
    assert reasons == ["no paid order for 50 days", "only one paid order so far"]


def test_the_bgnbd_feature_uses_the_model_parameters_and_horizon() -> None:
    customer = facts(days_since_last_order=10.0, days_since_first_order=100.0, orders_total=4)
    bgnbd = (0.25, 25.0, 0.7, 2.0)
    short = feature_values(("bgnbd_expected",), customer, bgnbd, 30.0)[0]
    long = feature_values(("bgnbd_expected",), customer, bgnbd, 90.0)[0]
    assert 0 < short < long
    assert feature_values(("bgnbd_expected",), facts(), bgnbd, 90.0) == [0.0]  # no paid order: nothing expected
    model = ChurnModel(names=("bgnbd_expected",), means=(1.0,), scales=(1.0,), coefs=(-1.0,), intercept=0.0,
                       horizon_days=90.0, bgnbd=bgnbd)
    reasons: list[str] = []
    model.assess(customer | {"days_since_last_order": 95.0}, reasons, {})
    assert len(reasons) == 1 and reasons[0].startswith("BG/NBD expects ") and reasons[0].endswith(
        " purchases in the next 90 days")


def test_every_feature_is_finite_on_empty_and_on_busy_facts() -> None:
    busy = CustomerState()
    from stream.domain.events import LoginEvent, OrderEvent, TicketEvent
    busy.apply(OrderEvent("o", "c", NOW - 40 * DAY_MS, "o", 10_000, "paid", None, 1), "s:0", 0, "order:o")
    busy.apply(LoginEvent("l", "c", NOW - DAY_MS, None, None, "web"), "s:0", 1, "login:l")
    busy.apply(TicketEvent("t", "c", NOW - DAY_MS, "t", "opened", "complaint", "high"), "s:0", 2, "ticket:t")
    names = tuple(FEATURES)
    for case in (facts(), {**busy.aggregates(NOW)}):
        values = feature_values(names, case, (0.3, 20.0, 0.8, 2.5), 90.0)
        assert all(math.isfinite(v) for v in values)


# --- loading --------------------------------------------------------------------------------------------


GOOD = """\
churn_model:
  kind: logistic_regression
  horizon_days: 90
  intercept: 0.5
  bgnbd: {r: 0.25, alpha: 25.0, a: 0.7, b: 2.0}
  features:
    - {name: days_since_last_order, mean: 30.0, scale: 30.0, coef: 1.0}
    - {name: bgnbd_expected_log, mean: 0.2, scale: 0.3, coef: -0.4}
  trained: {cuts: ['2026-01-01T00:00:00Z']}
"""


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "rules"
    shutil.copytree(default_rules_dir(), directory)
    return directory


def test_the_shipped_ruleset_has_no_model_and_the_mix_stays_the_default() -> None:
    ruleset = load_ruleset(default_rules_dir(), facts_schema())
    assert ruleset.churn.model is None
    customer = facts(days_since_last_order=41.0, days_since_first_order=400.0, orders_total=30,
                     mean_order_gap_days=7.0)
    mixed = assess_churn(ruleset.churn, customer)
    assert set(mixed.components) == {"recency", "trend", "engagement", "service"}
    assert mixed.reasons[0] == "no paid order for 41 days; usual gap 7 days"


def test_a_model_file_in_the_rules_directory_is_loaded_with_the_ruleset(rules_dir: Path) -> None:
    before = load_ruleset(rules_dir, facts_schema())
    (rules_dir / "churn_model.yaml").write_text(GOOD)
    ruleset = load_ruleset(rules_dir, facts_schema())
    model = ruleset.churn.model
    assert model is not None and ruleset.version != before.version
    assert model.names == ("days_since_last_order", "bgnbd_expected_log") and model.bgnbd == (0.25, 25.0, 0.7, 2.0)
    assert replace(ruleset.churn, model=None) == before.churn  # the rest of the churn policy is untouched
    customer = facts(days_since_last_order=60.0, days_since_first_order=100.0, orders_total=2)
    assert assess_churn(ruleset.churn, customer).risk == pytest.approx(model.assess(customer, [], {}))


def test_a_model_document_reads_back_as_the_same_model(rules_dir: Path) -> None:
    import yaml

    model = replace(MODEL, trained={"examples": 10})
    (rules_dir / "churn_model.yaml").write_text(yaml.safe_dump({"churn_model": model.document()}))
    loaded = load_ruleset(rules_dir, facts_schema()).churn.model
    assert loaded == model and loaded is not None and loaded.trained == {"examples": 10}


def _line(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


BAD = [  # (what replaces what in GOOD, the words of the error, the text on the line it names)
    (("days_since_last_order,", "days_since_last_ordr,"),
     "churn_model.features[0].name: unknown feature 'days_since_last_ordr' — did you mean 'days_since_last_order'?",
     "days_since_last_ordr"),
    (("{name: bgnbd_expected_log,", "{name: [a, b],"), "churn_model.features[1].name: unknown feature ['a', 'b']",
     "coef: -0.4"),
    (("scale: 30.0", "scale: 0"), "churn_model.features[0].scale must be positive, got 0", "scale: 0"),
    (("coef: -0.4", "coef: lots"), "churn_model.features[1].coef must be a finite number, got 'lots'", "coef: lots"),
    (("coef: -0.4", "coef: .nan"), "churn_model.features[1].coef must be a finite number, got nan", "coef: .nan"),
    (("  intercept: 0.5\n", ""), "churn_model: missing 'intercept'", "kind:"),  # the section's first line
    (("horizon_days: 90", "horizon_days: -3"), "churn_model.horizon_days must be positive, got -3", "horizon_days"),
    (("kind: logistic_regression", "kind: forest"), "churn_model.kind: 'forest' is not a known model", "kind:"),
    (("  bgnbd: {r: 0.25, alpha: 25.0, a: 0.7, b: 2.0}\n", ""),
     "churn_model: a bgnbd_* feature needs churn_model.bgnbd", "features:"),
    (("alpha: 25.0", "alpha: 0"), "churn_model.bgnbd.alpha must be positive, got 0", "bgnbd:"),
    (("  trained:", "  trainde:"), "unknown key 'trainde' in churn_model — did you mean 'trained'?", "trainde"),
    (("{name: bgnbd_expected_log,", "{name: days_since_last_order,"),
     "churn_model.features[1].name: feature 'days_since_last_order' is given twice", "coef: -0.4"),
    (("mean: 0.2, ", ""), "churn_model.features[1]: missing mean", "coef: -0.4"),
    (("features:\n", "features: []\n  old:\n"), "unknown key 'old' in churn_model", "old:"),
]


@pytest.mark.parametrize(("change", "problem", "at"), BAD, ids=[b[1][:40] for b in BAD])
def test_an_invalid_model_file_is_refused_naming_file_line_and_key(
        rules_dir: Path, change: tuple[str, str], problem: str, at: str) -> None:
    assert change[0] in GOOD
    text = GOOD.replace(*change)
    path = rules_dir / "churn_model.yaml"
    path.write_text(text)
    with pytest.raises(RulesetError) as caught:
        load_ruleset(rules_dir, facts_schema())
    assert str(caught.value).startswith(f"{path}:{_line(text, at)}: {problem}")


def test_an_empty_feature_list_and_a_second_model_are_refused(rules_dir: Path) -> None:
    path = rules_dir / "churn_model.yaml"
    path.write_text("churn_model:\n  kind: logistic_regression\n  horizon_days: 90\n  intercept: 0\n  features: []\n")
    with pytest.raises(RulesetError, match=r"churn_model\.yaml:5: churn_model\.features must be a non-empty list"):
        load_ruleset(rules_dir, facts_schema())
    path.write_text(GOOD)
    (rules_dir / "second.yaml").write_text(GOOD)
    with pytest.raises(RulesetError, match=r"second\.yaml:1: 'churn_model' is already defined in .*churn_model\.yaml"):
        load_ruleset(rules_dir, facts_schema())


def test_terms_reading_the_same_fact_are_summed_before_reasons_are_chosen() -> None:
    model = ChurnModel(names=("days_since_last_order", "days_since_last_order_log", "one_time_buyer"),
                       means=(100.0, 4.0, 0.5), scales=(50.0, 1.0, 0.5), coefs=(1.0, -0.4, 0.1), intercept=0.0,
                       horizon_days=90.0)
    reasons: list[str] = []
    components: dict[str, float] = {}
    model.assess(facts(days_since_last_order=0.0, days_since_first_order=0.0, orders_total=1), reasons, components)
    # the log term alone raises the risk (+1.6), but recency as a whole lowers it (-2 + 1.6)
    assert components["days_since_last_order_log"] == pytest.approx(1.6) and components[
        "days_since_last_order"] == pytest.approx(-2.0)
    assert reasons == ["only one paid order so far"]


def test_no_more_than_three_reasons_largest_first() -> None:
    names = ("open_tickets_log", "open_complaints_log", "escalations_90d_log", "complaints_90d_log")
    model = ChurnModel(names=names, means=(0.0,) * 4, scales=(1.0,) * 4, coefs=(0.1, 0.4, 0.3, 0.2),
                       intercept=0.0, horizon_days=90.0)
    reasons: list[str] = []
    model.assess(facts(open_tickets=1, open_complaints=1, escalations_90d=1, complaints_90d=1), reasons, {})
    assert reasons == ["1 open complaint", "1 escalation in the last 90 days", "1 complaint opened in the last 90 days"]
