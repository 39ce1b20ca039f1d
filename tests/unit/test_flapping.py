"""``tagger flapping``'s driver (agents/bench/flapping.py) on an in-memory view; no broker, no Redis."""

from __future__ import annotations

import asyncio

import pytest

from agents.bench.flapping import START_MS, bands_off, render, simulate, undone
from agents.engine.evaluate import facts_schema
from rules import Ruleset, default_rules_dir, load_ruleset
from stream.devtools.demo import DemoConfig, DemoGenerator
from stream.settings import Settings

from .fakes import FakeView


@pytest.fixture(scope="module")
def ruleset() -> Ruleset:
    return load_ruleset(default_rules_dir(), facts_schema())


def test_bands_off_sets_every_exit_to_its_entry(ruleset: Ruleset) -> None:
    plain = bands_off(ruleset)
    assert plain.tiers.exit_fractions == (0.05, 0.20) and ruleset.tiers.exit_fractions == (0.07, 0.25)
    assert plain.churn.exit_cutoffs == {"low": 0.25, "medium": 0.5, "high": 0.7}
    assert plain.rules == ruleset.rules and plain.churn.weights == ruleset.churn.weights


def test_undone_counts_per_customer() -> None:
    assert undone([("a", "A", "B"), ("b", "B", "A"), ("a", "B", "A"), ("a", "A", "B"), ("b", "A", "C")]) == 2


def test_flapping_driver_runs_the_demo_through_the_runtime(ruleset: Ruleset) -> None:
    events = DemoGenerator(DemoConfig(customers=50, start_ms=START_MS, time_step_ms=5000)).take(1500)
    settings = Settings(partitions=2)  # type: ignore[call-arg]
    off = asyncio.run(simulate(bands_off(ruleset), FakeView(), events, settings, "off"))  # type: ignore[arg-type]
    on = asyncio.run(simulate(ruleset, FakeView(), events, settings, "on"))  # type: ignore[arg-type]
    assert off.events == on.events == 1500
    assert off.first_tiers == on.first_tiers > 0  # every paying customer gets a first tier either way
    assert on.tier_changes < off.tier_changes and on.tier_undone < off.tier_undone
    assert 0 <= on.tier_reversals <= on.tier_undone and 0 <= off.tier_reversals <= off.tier_undone
    assert off.churn_alerts > 0 and on.churn_reversals <= on.churn_undone
    table = render([off, on])
    assert table.splitlines()[1].startswith("off") and f"{off.tier_changes}" in table.splitlines()[1]


