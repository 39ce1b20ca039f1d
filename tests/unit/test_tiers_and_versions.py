"""Tier cut-offs with ties, the optional B condition, and ruleset names (no broker)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agents.engine.evaluate import facts_schema
from rules import RulesetError, assign_tier, default_rules_dir, load_ruleset, tier_cutoffs
from stream.domain.state import CustomerState


def facts(spend: float, orders_365d: int = 1) -> dict[str, object]:
    f = CustomerState().aggregates(0)
    f.update(spend_365d=spend, orders_365d=orders_365d, strategic_account=False, company_size="", industry="",
             region="", customer_since_days=None, attributes={}, tags=[])
    return f


def copy_rules(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(default_rules_dir(), target)
    return target


def test_ties_at_the_cut_off_all_get_the_tier() -> None:
    spends = [500.0, 300.0, 300.0, 300.0, 100.0] + [50.0] * 15  # n = 20
    ranked = sorted(spends, reverse=True)
    pa, pb = tier_cutoffs(len(ranked), 0.05, 0.20)
    assert (pa, pb) == (1, 4)
    a_cut, b_cut = ranked[pa - 1], ranked[pb - 1]
    ruleset = load_ruleset(default_rules_dir(), facts_schema())
    tiers = [assign_tier(ruleset, facts(s), a_cut, b_cut) for s in spends]
    assert tiers[:4] == ["A", "B", "B", "B"] and tiers[4] in ("C", "D")
    assert tiers.count("A") == 1 and tiers.count("B") == 3  # the three tied at 300 are all B


def test_b_when_requires_stable_repeat_purchases(tmp_path: Path) -> None:
    rules = copy_rules(tmp_path)
    text = (rules / "tiers.yaml").read_text()
    (rules / "tiers.yaml").write_text(text.replace("tiers:\n", "tiers:\n  b_when: orders_365d >= 2\n", 1))
    ruleset = load_ruleset(rules, facts_schema())
    assert assign_tier(ruleset, facts(300.0, orders_365d=3), 500.0, 300.0) == "B"
    assert assign_tier(ruleset, facts(300.0, orders_365d=1), 500.0, 300.0) in ("C", "D")


def test_b_when_is_checked_at_load(tmp_path: Path) -> None:
    rules = copy_rules(tmp_path)
    text = (rules / "tiers.yaml").read_text()
    (rules / "tiers.yaml").write_text(text.replace("tiers:\n", "tiers:\n  b_when: orders_356d >= 2\n", 1))
    with pytest.raises(RulesetError, match="did you mean 'orders_365d'"):
        load_ruleset(rules, facts_schema())


def test_ruleset_name_and_content_version(tmp_path: Path) -> None:
    rules = copy_rules(tmp_path)
    plain = load_ruleset(rules, facts_schema())
    assert plain.name is None
    (rules / "name.yaml").write_text("name: spring-campaign\n")
    named = load_ruleset(rules, facts_schema())
    assert named.name == "spring-campaign" and named.version != plain.version
    (rules / "other.yaml").write_text("name: again\n")
    with pytest.raises(RulesetError, match="'name' is already defined"):
        load_ruleset(rules, facts_schema())


def test_score_dimensions_are_normalised_as_documented() -> None:
    from agents.engine.evaluate import Cutoffs, score_dimensions, spend_percentile

    quantiles = tuple(float(q) for q in range(0, 101))  # spend at percentile k is k
    assert spend_percentile(0.0, quantiles) == 0.0
    assert spend_percentile(50.0, quantiles) == 100.0 * 51 / 101
    assert spend_percentile(1e9, quantiles) == 100.0
    assert spend_percentile(10.0, ()) == 0.0
    f = facts(50.0)
    f.update(logins_30d=10, spend_90d=300.0, spend_prev_90d=100.0, strategic_account=True)
    dims = score_dimensions(f, Cutoffs(quantiles=quantiles))
    assert dims == {"spend": spend_percentile(50.0, quantiles), "engagement": 50.0,
                    "growth": 50.0 + 50.0 * 200.0 / 300.0, "strategic": 100.0}
    f.update(logins_30d=40, spend_90d=0.0, spend_prev_90d=100.0)
    dims = score_dimensions(f, Cutoffs(quantiles=quantiles))
    assert dims["engagement"] == 100.0 and dims["growth"] == 0.0
