"""Stable outputs (issue 29): tier bands on rank, churn exit cut-offs, the reversal counter, and
``tagger flapping``'s driver; no broker, no Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from agents.engine.evaluate import Cutoffs, facts_schema
from rules import (
    ChurnPolicy,
    Ruleset,
    RulesetError,
    TierPolicy,
    assess_churn,
    assign_tier,
    default_rules_dir,
    load_ruleset,
    possible_tiers,
    tier_cutoffs,
    tier_ranks,
)
from rules.churn import level_of
from stream.domain.reversals import KEY, note_change, reverses
from stream.domain.state import CustomerState
from stream.settings import Settings

from .fakes import FakeView, make_runtime

HOUR = 3_600_000
START_MS = 1_790_000_000_000


def bands_off(ruleset: Ruleset) -> Ruleset:
    """``ruleset`` with every exit cut-off equal to its entry cut-off."""
    tiers, churn = ruleset.tiers, ruleset.churn
    return dataclasses.replace(
        ruleset,
        tiers=dataclasses.replace(tiers, a_exit_fraction=tiers.a_top_fraction, b_exit_fraction=tiers.b_top_fraction),
        churn=dataclasses.replace(churn, low_exit=churn.low, medium_exit=churn.medium, high_exit=churn.high))


@pytest.fixture(scope="module")
def ruleset() -> Ruleset:
    return load_ruleset(default_rules_dir(), facts_schema())


def facts(spend: float, orders_365d: int = 1) -> dict[str, Any]:
    f = CustomerState().aggregates(0)
    f.update(spend_365d=spend, orders_365d=orders_365d, strategic_account=False, company_size="", industry="",
             region="", customer_since_days=None, attributes={}, tags=[])
    return f


def rules_with(tmp_path: Path, name: str, old: str, new: str) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(default_rules_dir(), target)
    text = (target / name).read_text()
    assert old in text
    (target / name).write_text(text.replace(old, new, 1))
    return target


# -- tier bands ---------------------------------------------------------------------------------------

CUTS = {"a_cut": 1000.0, "b_cut": 500.0, "a_exit_cut": 800.0, "b_exit_cut": 300.0}


def tier(ruleset: Ruleset, spend: float, previous: str | None, **kw: Any) -> str:
    cuts = CUTS | kw
    return assign_tier(ruleset, facts(spend), cuts["a_cut"], cuts["b_cut"], previous=previous,
                       a_exit_cut=cuts["a_exit_cut"], b_exit_cut=cuts["b_exit_cut"])


def test_default_tiers_have_the_issue_bands(ruleset: Ruleset) -> None:
    assert (ruleset.tiers.a_exit_fraction, ruleset.tiers.b_exit_fraction) == (0.07, 0.25)
    assert tier_ranks(100, ruleset.tiers) == (5, 20, 7, 25)


@pytest.mark.parametrize("previous", [None, "A", "B", "C", "D"])
def test_promotion_is_immediate(ruleset: Ruleset, previous: str | None) -> None:
    assert tier(ruleset, 1000.0, previous) == "A"  # at the entry cut, whatever came before
    assert tier(ruleset, 500.0, previous) == "B"  # at B's entry cut (below A's exit cut)


def test_the_way_down_waits_for_the_band(ruleset: Ruleset) -> None:
    assert tier(ruleset, 900.0, "A") == "A"  # below A's entry cut, within its band: held
    assert tier(ruleset, 800.0, "A") == "A"  # at the exit cut: still held (ties get the better tier)
    assert tier(ruleset, 799.0, "A") == "B"  # past A's band: down one tier, not to C/D
    assert tier(ruleset, 400.0, "A") == "B"  # from A into B's band: B is held too
    assert tier(ruleset, 400.0, "B") == "B"
    assert tier(ruleset, 300.0, "B") == "B"
    assert tier(ruleset, 299.0, "B") in ("C", "D")
    assert tier(ruleset, 299.0, "A") in ("C", "D")


@pytest.mark.parametrize("previous", [None, "C", "D"])
def test_without_a_tier_to_hold_the_plain_definition_applies(ruleset: Ruleset, previous: str | None) -> None:
    assert tier(ruleset, 900.0, previous) == "B"  # in A's band but not in A before: B
    assert tier(ruleset, 400.0, previous) in ("C", "D")  # in B's band but not in A or B before


def test_the_band_needs_b_when_and_spend(tmp_path: Path) -> None:
    rules = rules_with(tmp_path, "tiers.yaml", "tiers:\n", "tiers:\n  b_when: orders_365d >= 2\n")
    strict = load_ruleset(rules, facts_schema())
    held = assign_tier(strict, facts(400.0, orders_365d=1), 1000.0, 500.0, previous="B", a_exit_cut=800.0,
                       b_exit_cut=300.0)
    assert held in ("C", "D")
    assert assign_tier(strict, facts(400.0, orders_365d=2), 1000.0, 500.0, previous="B", a_exit_cut=800.0,
                       b_exit_cut=300.0) == "B"
    assert tier(load_ruleset(default_rules_dir(), facts_schema()), 0.0, "A", a_exit_cut=0.0, b_exit_cut=0.0) in (
        "C", "D")  # no spend, no tier A or B, whatever the cuts


def test_equal_fractions_are_exactly_the_plain_rank_definition(ruleset: Ruleset) -> None:
    plain = bands_off(ruleset)
    assert plain.tiers.exit_fractions == (plain.tiers.a_top_fraction, plain.tiers.b_top_fraction)
    rng = random.Random(29)
    for _ in range(200):
        spends = sorted((round(rng.choice([0, rng.uniform(1, 5000)]), 2) for _ in range(rng.randint(1, 60))),
                        reverse=True)
        paying = [s for s in spends if s > 0]
        pa, pb, pae, pbe = tier_ranks(len(paying), plain.tiers)
        assert (pa, pb) == (pae, pbe) == tier_cutoffs(len(paying), 0.05, 0.20)
        cut = {rank: paying[rank - 1] if rank else None for rank in (pa, pb)}
        for spend in spends:
            want = assign_tier(plain, facts(spend), cut[pa], cut[pb])
            for previous in (None, "A", "B", "C", "D"):
                assert assign_tier(plain, facts(spend), cut[pa], cut[pb], previous=previous,
                                   a_exit_cut=cut[pae], b_exit_cut=cut[pbe]) == want
            assert possible_tiers(plain, facts(spend), cut[pa], cut[pb], cut[pae], cut[pbe]) == {want}


def test_possible_tiers_with_bands(ruleset: Ruleset) -> None:
    assert possible_tiers(ruleset, facts(900.0), **CUTS) == {"A", "B"}
    assert possible_tiers(ruleset, facts(400.0), **CUTS) == {"B", assign_tier(ruleset, facts(400.0), 1000.0, 500.0)}
    assert possible_tiers(ruleset, facts(1200.0), **CUTS) == {"A"}


def test_a_customer_at_the_boundary_keeps_its_tier_while_the_cut_moves_within_the_band(ruleset: Ruleset) -> None:
    current: str | None = None
    changes = 0
    for a_cut in [1000.0, 1010.0, 1030.0, 995.0, 1040.0, 1000.0, 1050.0]:  # the customer spends 1000
        new = tier(ruleset, 1000.0, current, a_cut=a_cut, a_exit_cut=a_cut * 0.9)
        changes += current is not None and new != current
        current = new
    assert (current, changes) == ("A", 0)
    assert tier(ruleset, 1000.0, current, a_cut=1200.0, a_exit_cut=1001.0) == "B"  # past the band: one change


def test_tier_exit_fractions_are_validated_naming_file_and_key(tmp_path: Path) -> None:
    rules = rules_with(tmp_path, "tiers.yaml", "a_exit_fraction: 0.07", "a_exit_fraction: 0.04")
    with pytest.raises(RulesetError, match=r"tiers\.yaml:\d+: tiers: a_exit_fraction 0.04 is smaller than "
                                           r"a_top_fraction 0.05") as caught:
        load_ruleset(rules, facts_schema())
    assert caught.value.line is not None and "a_exit_fraction" in (tmp_path / "rules/tiers.yaml").read_text(
        ).splitlines()[caught.value.line - 1]
    rules = rules_with(tmp_path / "b", "tiers.yaml", "b_exit_fraction: 0.25", "b_exit_fraction: 0.1")
    with pytest.raises(RulesetError, match=r"tiers\.yaml:\d+: tiers: b_exit_fraction 0.1 is smaller than b_top"):
        load_ruleset(rules, facts_schema())
    rules = rules_with(tmp_path / "c", "tiers.yaml", "a_exit_fraction: 0.07", "a_exit_fraction: 0.3")
    with pytest.raises(RulesetError, match="a_exit_fraction 0.3 is larger than b_exit_fraction 0.25"):
        load_ruleset(rules, facts_schema())
    rules = rules_with(tmp_path / "d", "tiers.yaml", "a_exit_fraction: 0.07", "a_exit_fraction: lots")
    with pytest.raises(RulesetError, match="a_exit_fraction must be a number"):
        load_ruleset(rules, facts_schema())


def test_absent_exit_fractions_default_but_never_below_the_entry() -> None:
    assert TierPolicy().exit_fractions == (0.07, 0.25)
    assert TierPolicy(a_top_fraction=0.1, b_top_fraction=0.3).exit_fractions == (0.1, 0.3)  # no band, no error
    assert TierPolicy(a_exit_fraction=0.05, b_exit_fraction=0.2).exit_fractions == (0.05, 0.2)


def test_evaluator_holds_the_previous_tier_from_the_view(ruleset: Ruleset) -> None:
    from agents.engine.evaluate import Evaluator

    state = CustomerState()
    state.view = {"tags": [], "tier": "A"}
    evaluator = Evaluator(ruleset)
    cutoffs = Cutoffs(a_cut=float("inf"), b_cut=float("inf"), a_exit_cut=0.0, b_exit_cut=0.0)
    # no spend: nothing to hold
    _, change = evaluator.evaluate("c", state, 0, cutoffs, {"kind": "timer"})
    assert change is not None and change["previous_tier"] == "A" and change["tier"] in ("C", "D")


def test_before_the_ranking_is_first_read_nobody_is_demoted_or_promoted(ruleset: Ruleset) -> None:
    """A worker's first evaluations come before its first cut-off read: holding A and B then avoids a
    demotion that the first read would undo (a flap at every restart)."""
    from agents.engine.pipeline.types import Message

    async def run() -> list[tuple[str | None, str]]:
        state = CustomerState()
        state.view = {"tags": [], "tier": "A"}  # as recovered from the changelog
        runtime, senders = make_runtime(Settings(partitions=1), table={"held": state},  # type: ignore[call-arg]
                                        view=FakeView())
        assert not runtime.cutoffs.known
        await runtime.handle(Message("orders", 0, 1, b"held", order("held", 50.0, 1)))
        await runtime.handle(Message("orders", 0, 2, b"new", order("new", 5000.0, 2)))
        changes = [orjson.loads(v) for _, v, _ in senders["tag_changes"].sent]
        return [(c["customer_id"], c["previous_tier"], c["tier"]) for c in changes]

    # held stays A (its tags changed, its tier did not); the newcomer's A waits for the first read
    assert asyncio.run(run()) == [("held", "A", "A"), ("new", None, "C")]
    assert Cutoffs().known  # cut-offs given or read are used as they are


def test_min_tier_dwell_holds_a_demotion_and_the_sweep_publishes_it(ruleset: Ruleset) -> None:
    """min_tier_dwell (bands off here, so the demotion is plain): edge, A since its promotion, is overtaken
    within the dwell; the demotion waits, survives a restart as a due time, and the sweep at that time
    publishes it (trigger timer)."""
    from agents.engine.pipeline.types import Message
    from stream.domain.due import TIER_DUE, due_after_restore

    dwelling = dataclasses.replace(bands_off(ruleset), tiers=dataclasses.replace(
        bands_off(ruleset).tiers, min_tier_dwell=3600.0))

    async def run() -> tuple[list[tuple[str | None, str, str]], int, int]:
        runtime, senders = make_runtime(Settings(partitions=1), view=FakeView())  # type: ignore[call-arg]
        runtime.use_ruleset(dwelling)
        runtime.due.track(0)
        offset = 0

        async def buy(cid: str, amount: float, ts: int) -> None:
            nonlocal offset
            offset += 1
            event = {"event_id": f"e{offset}", "customer_id": cid, "ts": ts, "order_id": f"o{offset}",
                     "amount": amount, "status": "paid"}
            await runtime.handle(Message("orders", 0, offset, cid.encode(), orjson.dumps(event)))

        for i in range(18):
            await buy(f"c{i}", 10.0 + i, START_MS)
        await buy("edge", 1000.0, START_MS)
        await buy("rival", 900.0, START_MS)
        await runtime.refresh_cutoffs()
        await runtime.sweep(["edge"], {"kind": "timer", "topic": None, "event_id": None})  # edge: A at START_MS
        await buy("rival", 200.0, START_MS + 60_000)  # rival overtakes edge one minute later
        await runtime.refresh_cutoffs()
        await runtime.sweep(["edge"], {"kind": "timer", "topic": None, "event_id": None})
        state = runtime.table["edge"]
        assert state.view is not None and state.view["tier"] == "A"  # held: within the dwell
        due = state.view[TIER_DUE]
        assert due_after_restore(type(state).from_bytes(state.to_bytes())) == due  # a restart keeps it due
        await buy("c0", 1.0, due + 1)  # the stream clock passes the due time
        await runtime.command(0, {"cmd": "sweep"})
        changes = [orjson.loads(v) for _, v, _ in senders["tag_changes"].sent]
        moves = [(c["previous_tier"], c["tier"], c["trigger"]["kind"]) for c in changes
                 if c["customer_id"] == "edge" and c["previous_tier"] != c["tier"]]
        return moves, due, TIER_DUE in (runtime.table["edge"].view or {})

    moves, due, still_held = asyncio.run(run())
    assert due == START_MS + 3_600_000  # an hour after edge entered A
    assert moves == [(None, "C", "event"), ("C", "A", "timer"), ("A", "B", "timer")] and not still_held


def test_min_tier_dwell_is_validated_naming_file_and_key(tmp_path: Path) -> None:
    rules = rules_with(tmp_path, "tiers.yaml", "  a_exit_fraction: 0.07\n", "  a_exit_fraction: 0.07\n"
                       "  min_tier_dwell: -5\n")
    with pytest.raises(RulesetError, match=r"tiers\.yaml:\d+: tiers: min_tier_dwell must be a number of seconds"):
        load_ruleset(rules, facts_schema())
    assert TierPolicy().min_tier_dwell == 0.0  # off unless given


# -- churn exit cut-offs ------------------------------------------------------------------------------


def test_churn_levels_are_left_only_below_their_exit_cut_offs(ruleset: Ruleset) -> None:
    policy = ruleset.churn
    assert policy.exit_cutoffs == {"low": 0.2, "medium": 0.45, "high": 0.65}
    assert level_of(policy, 0.5) == "medium"  # entry
    assert level_of(policy, 0.47, "medium") == "medium"  # hold
    assert level_of(policy, 0.47, "none") == "low"  # not held when not reached before
    assert level_of(policy, 0.449, "medium") == "low"  # exit
    assert level_of(policy, 0.66, "high") == "high"
    assert level_of(policy, 0.6, "high") == "medium"  # past high's band, within medium's
    assert level_of(policy, 0.72, "low") == "high"  # a rise is immediate


def test_recovered_only_below_the_lowest_exit_cut_off(ruleset: Ruleset) -> None:
    policy = ruleset.churn
    for previous in ("low", "medium", "high"):
        assert level_of(policy, 0.2, previous) == "low"
        assert level_of(policy, 0.199, previous) == "none"


def test_equal_churn_exits_are_the_plain_levels(ruleset: Ruleset) -> None:
    plain = bands_off(ruleset).churn
    for risk in [i / 200 for i in range(201)]:
        for previous in ("none", "low", "medium", "high"):
            assert level_of(plain, risk, previous) == level_of(plain, risk)


def test_assess_churn_holds_the_previous_level() -> None:
    policy = ChurnPolicy()
    f = facts(0.0) | {"logins_365d": 110, "logins_30d": 5}  # no order: engagement and service only
    risk = assess_churn(policy, f).risk
    assert 0.2 <= risk < 0.25  # within low's band
    assert assess_churn(policy, f).level == assess_churn(policy, f, "none").level == "none"
    assert assess_churn(policy, f, "low").level == assess_churn(policy, f, "medium").level == "low"


def test_churn_exits_are_validated_naming_file_and_key(tmp_path: Path) -> None:
    for old, new, match in [
        ("    medium: 0.45\n", "    medium: 0.55\n", r"exit_levels\.medium must be in \(0, levels\.medium = 0\.5\]"),
        ("    low: 0.2\n", "    low: 0.5\n", r"exit_levels\.low must be in \(0, levels\.low = 0\.25\]"),
        ("    high: 0.65\n", "    high: 0.3\n", "exit_levels must rise: low 0.2, medium 0.45, high 0.3"),
        ("    low: 0.2\n", "    low: 0\n", r"exit_levels\.low must be in \(0,"),
        ("    low: 0.2\n", "    lo: 0.2\n", "unknown key 'lo'"),
    ]:
        rules = rules_with(tmp_path / new.strip().replace(":", "").replace(" ", "_"), "churn.yaml",
                           "  exit_levels:\n    low: 0.2\n    medium: 0.45\n    high: 0.65\n",
                           "  exit_levels:\n    low: 0.2\n    medium: 0.45\n    high: 0.65\n".replace(old, new))
        with pytest.raises(RulesetError, match=match) as caught:
            load_ruleset(rules, facts_schema())
        assert "churn.yaml:" in str(caught.value)
        assert caught.value.line is not None


def test_absent_churn_exits_default_but_never_above_the_entry() -> None:
    assert ChurnPolicy().exit_cutoffs == {"low": 0.2, "medium": 0.45, "high": 0.65}
    assert ChurnPolicy(low=0.1, medium=0.3, high=0.6).exit_cutoffs == {"low": 0.1, "medium": 0.3, "high": 0.6}


# -- the reversal counter -----------------------------------------------------------------------------


def test_a_change_undoing_the_previous_one_without_input_is_a_reversal() -> None:
    view: dict[str, Any] = {}
    assert not note_change(view, "tier", "A", "B", 0, 7, HOUR)
    assert note_change(view, "tier", "B", "A", HOUR, 7, HOUR)  # at the window's edge: still one
    assert note_change(view, "tier", "A", "B", HOUR + 1, 7, HOUR)  # B→A→B: the reversal reversed, again
    assert view[KEY] == {"tier": ["A", "B", HOUR + 1, 7]}


def test_input_in_between_a_late_undo_or_another_move_is_no_reversal() -> None:
    assert not reverses(["A", "B", 0, 7], "B", "A", 10, 8, HOUR)  # an input of the customer came in between
    assert not reverses(["A", "B", 0, 7], "B", "A", HOUR + 1, 7, HOUR)  # outside the window
    assert not reverses(["A", "B", 0, 7], "B", "C", 10, 7, HOUR)  # a further move, not an undo
    assert not reverses(None, "B", "A", 10, 7, HOUR)
    assert not reverses(["A", "B", 10, 7], "B", "A", 5, 7, HOUR)  # the clock went back: not within the window


def test_tier_and_churn_are_kept_apart_and_bounded() -> None:
    view: dict[str, Any] = {}
    note_change(view, "tier", "A", "B", 0, 1, HOUR)
    assert not note_change(view, "churn", "B", "A", 1, 1, HOUR)  # another kind's history
    for i in range(100):
        note_change(view, "churn", "none", "low", i, i, HOUR)
    assert len(orjson.dumps(view[KEY])) < 80
    with pytest.raises(ValueError, match="no reversal kind"):
        note_change(view, "score", "1", "2", 0, 0, HOUR)


def test_the_input_mark_moves_with_every_applied_message() -> None:
    state = CustomerState()
    assert state.input_mark() == 0
    state.mark("profiles:0", 1, "profile:a")
    first = state.input_mark()
    state.mark("profiles:0", 2, "profile:b")
    assert first != state.input_mark() != 0
    assert CustomerState.from_bytes(state.to_bytes()).input_mark() == state.input_mark()


def runtime_counts(runtime: Any, kind: str) -> float:
    return runtime.metrics.registry.get_sample_value("tagger_reversals_total", {"kind": kind}) or 0.0


def order(cid: str, amount: float, i: int) -> bytes:
    return orjson.dumps({"event_id": f"o{cid}{i}", "customer_id": cid, "ts": START_MS + i, "order_id": f"{cid}{i}",
                         "amount": amount, "status": "paid"})


@pytest.mark.parametrize("bands", ["off", "on"])
def test_the_runtime_counts_a_flap_caused_by_others_only_without_bands(ruleset: Ruleset, bands: str) -> None:
    """Twenty paying customers: 'edge' is rank 1, the whole of tier A (ceil(0.05 * 20) = 1). A rival's
    purchase takes rank 1; then a newcomer makes 21 payers, A's cut rank becomes 2, which is edge again.
    Without bands edge goes A→B→A with no event of its own: one reversal. With them (A's exit rank
    ceil(0.07 * 20) = 2) edge stays A throughout."""
    from agents.engine.pipeline.types import Message

    async def run() -> tuple[list[tuple[str | None, str]], float]:
        runtime, senders = make_runtime(Settings(partitions=1), view=FakeView())  # type: ignore[call-arg]
        runtime.use_ruleset(bands_off(ruleset) if bands == "off" else ruleset)
        offset = 0

        async def buy(cid: str, amount: float) -> None:
            nonlocal offset
            offset += 1
            await runtime.handle(Message("orders", 0, offset, cid.encode(), order(cid, amount, offset)))

        async def timers() -> None:  # the cut-off refresh, then a sweep of edge (marked due by the move)
            await runtime.refresh_cutoffs()
            await runtime.sweep(["edge"], {"kind": "timer", "topic": None, "event_id": None})

        for i in range(18):
            await buy(f"c{i}", 10.0 + i)
        await buy("edge", 1000.0)
        await buy("rival", 900.0)
        await timers()
        await buy("rival", 200.0)  # rival 1100: rank 1
        await timers()
        await buy("newcomer", 5.0)  # 21 payers: A is ranks 1-2
        await timers()
        changes = [orjson.loads(v) for _, v, _ in senders["tag_changes"].sent]
        moves = [(c["previous_tier"], c["tier"]) for c in changes
                 if c["customer_id"] == "edge" and c["previous_tier"] != c["tier"]]
        return moves, runtime_counts(runtime, "tier")

    moves, reversals = asyncio.run(run())
    if bands == "off":
        assert moves == [(None, "C"), ("C", "A"), ("A", "B"), ("B", "A")] and reversals == 1
    else:
        assert moves == [(None, "C"), ("C", "A")] and reversals == 0


def test_a_moved_exit_cut_makes_the_customers_it_passed_due(ruleset: Ruleset) -> None:
    """Only the exit cut of A moves (a reload widens a_exit_fraction): the customers between its old and
    new value may leave or keep A now, so they are due at once, though no entry cut moved."""
    from agents.engine.pipeline.types import Message

    async def run() -> list[str]:
        runtime, _ = make_runtime(Settings(partitions=1), view=FakeView())  # type: ignore[call-arg]
        runtime.due.track(0)
        for i in range(1, 21):  # c1..c20 spend 100..2000
            await runtime.handle(Message("orders", 0, i, f"c{i}".encode(), order(f"c{i}", 100.0 * i, i)))
        await runtime.refresh_cutoffs()
        now = runtime.clock.now()
        runtime.due.pop_due(0, now, 100)  # the first cut-offs made everyone due
        before = runtime.cutoffs
        runtime.use_ruleset(dataclasses.replace(ruleset, tiers=dataclasses.replace(
            ruleset.tiers, a_exit_fraction=0.25)))
        after = await runtime.refresh_cutoffs()
        assert (before.a_cut, before.b_cut, before.b_exit_cut) == (after.a_cut, after.b_cut, after.b_exit_cut)
        assert (before.a_exit_cut, after.a_exit_cut) == (1900.0, 1600.0)
        return sorted(runtime.due.pop_due(0, now, 100))

    assert asyncio.run(run()) == ["c16", "c17", "c18", "c19"]


# -- the fault suite's oracle -------------------------------------------------------------------------


def test_the_fault_oracle_allows_exactly_the_tiers_a_band_can_hold(ruleset: Ruleset) -> None:
    from tests.fault.oracle import expected, history, mismatches

    want = expected(history(3000, 300, seed=3))
    plain_only = sum(len(exp["tiers"]) == 1 for exp in want.values())
    banded = [cid for cid, exp in want.items() if len(exp["tiers"]) > 1]
    assert banded and plain_only > len(banded)  # only customers inside a band have a choice
    for cid in banded:
        assert want[cid]["tiers"] <= {"A", "B", "C", "D"} and want[cid]["tiers"] & {"A", "B"}
    cid = banded[0]
    exp = want[cid]
    view = {"aggregates": {k: exp["facts"][k] for k in exp["facts"]}, "tags": sorted(exp["must"])}
    assert all(not mismatches({cid: exp}, {cid: view | {"tier": t}}) for t in exp["tiers"])
    outside = sorted({"A", "B", "C", "D"} - exp["tiers"])[0]
    assert mismatches({cid: exp}, {cid: view | {"tier": outside}}) == [
        f"{cid}.tier: got {outside}, want {' or '.join(sorted(exp['tiers']))}"]
