"""Manual tags, score adjustments and customer profiles: parsing and evaluation (no broker)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from agents.engine.evaluate import Cutoffs, Evaluator, facts_schema
from rules import default_rules_dir, load_ruleset
from stream.domain.manual import adjusted_score, apply_command, expire, parse_command, stray_field
from stream.domain.profiles import parse_profile, profile_facts
from stream.domain.state import CustomerState
from stream.exceptions import InvalidEvent

NOW = 1_767_225_600_000
DAY = 86_400_000
MB = 1 << 20


def cmd(**fields: Any) -> dict[str, Any]:
    base = {"command_id": "c1", "customer_id": "cust-1", "author": "jane@sales", "note": "met at fair"}
    return parse_command(orjson.dumps({**base, **fields}), max_bytes=MB, now_ms=NOW)


def evaluator() -> Evaluator:
    return Evaluator(load_ruleset(default_rules_dir(), facts_schema()))


def test_add_remove_and_expire_manual_tags() -> None:
    manual = apply_command(None, cmd(action="add_tag", tag="vip_watch", expires_at=NOW + DAY), NOW)
    assert manual and manual["tags"]["vip_watch"]["author"] == "jane@sales"
    assert expire(manual, NOW + DAY - 1) == manual
    assert expire(manual, NOW + DAY) is None
    assert apply_command(manual, cmd(action="remove_tag", tag="vip_watch"), NOW) is None


@pytest.mark.parametrize(("fields", "reason"), [
    ({"action": "adjust_score", "adjust_pct": 25}, "field 'adjust_pct': 25 is beyond the ±20% cap"),
    ({"action": "adjust_score", "adjust_pct": -20.5}, "beyond the ±20% cap"),
    ({"action": "adjust_score", "adjust_pct": True}, "field 'adjust_pct': must be a number"),
    ({"action": "add_tag", "tag": "VIP!"}, "field 'tag'"),
    ({"action": "add_tag", "tag": "vip", "expires_at": NOW - 1}, "field 'expires_at': is already in the past"),
    ({"action": "promote"}, "field 'action'"),
    ({"action": "add_tag", "tag": "vip", "author": None}, "field 'author'"),
])
def test_bad_commands_are_rejected_with_the_field(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason.replace("(", r"\(")):
        cmd(**fields)


def test_score_adjustment_is_a_percentage_within_bounds() -> None:
    manual = apply_command(None, cmd(action="adjust_score", adjust_pct=20), NOW)
    assert adjusted_score(50.0, manual) == 60.0
    assert adjusted_score(90.0, manual) == 100.0  # kept within 0-100
    assert adjusted_score(50.0, apply_command(manual, cmd(action="clear_adjustment"), NOW)) == 50.0


def test_manual_tags_survive_evaluation_and_show_author_and_note() -> None:
    state = CustomerState()
    state.manual = apply_command(None, cmd(action="add_tag", tag="vip_watch", expires_at=NOW + DAY), NOW)
    ev = evaluator()
    _, change = ev.evaluate("cust-1", state, NOW, Cutoffs(), {"kind": "manual"})
    assert change and "vip_watch" in change["tags"] and change["manual_tags"] == ["vip_watch"]
    assert change["reasons"]["vip_watch"] == "manual: jane@sales: met at fair"
    _, again = ev.evaluate("cust-1", state, NOW + 1000, Cutoffs(), {"kind": "timer"})
    assert again is None  # re-evaluation keeps it
    _, expired = ev.evaluate("cust-1", state, NOW + DAY, Cutoffs(), {"kind": "timer"})
    assert expired and expired["removed"] == ["vip_watch"] and state.manual is None
    doc = ev.view_document("cust-1", state, ev.facts(state, NOW + DAY))
    assert doc["manual"] == {"tags": {}, "score_adjustment": None}


def test_profile_parsing_and_facts() -> None:
    raw = orjson.dumps({"customer_id": "cust-1", "company_size": "enterprise", "industry": "retail",
                        "region": "EMEA", "customer_since": "2020-01-01", "strategic_account": True,
                        "attributes": {"segment": "b2b", "seats": 40}})
    profile = parse_profile(raw, max_bytes=MB)
    facts = profile_facts(profile, NOW)
    assert facts["strategic_account"] is True and facts["attributes"]["seats"] == 40
    assert facts["customer_since_days"] == (NOW - 1_577_836_800_000) / DAY
    assert profile_facts(None, NOW)["customer_since_days"] is None
    for bad, field in [({"strategic_account": "yes"}, "strategic_account"),
                       ({"attributes": {"x": [1]}}, "attributes.x"),
                       ({"customer_since": "someday"}, "customer_since")]:
        with pytest.raises(InvalidEvent, match=f"field '{field}'"):
            parse_profile(orjson.dumps({"customer_id": "c", **bad}), max_bytes=MB)


def test_strategic_account_feeds_the_score_and_profile_round_trips() -> None:
    state = CustomerState()
    ev = evaluator()
    ev.evaluate("c", state, NOW, Cutoffs(), {"kind": "event"})
    plain = state.view["score"] if state.view else None
    state.profile = parse_profile(orjson.dumps({"customer_id": "c", "strategic_account": True}), max_bytes=MB)
    ev.evaluate("c", state, NOW, Cutoffs(), {"kind": "event"})
    assert state.view and plain is not None and state.view["score"] == plain + 10.0
    assert state.view["score_breakdown"]["strategic"] == 10.0
    assert CustomerState.from_bytes(state.to_bytes()) == state


def test_shipped_schemas_examples_are_accepted() -> None:
    import json
    from pathlib import Path

    import jsonschema

    import stream

    folder = Path(stream.__file__).parent / "schemas"
    profile = json.loads((folder / "customer-profile.schema.json").read_text())
    command = json.loads((folder / "tag-command.schema.json").read_text())
    for schema in (profile, command):
        jsonschema.Draft202012Validator.check_schema(schema)
        jsonschema.validate(schema["examples"][0], schema)
    parse_profile(orjson.dumps(profile["examples"][0]), max_bytes=MB)
    parse_command(orjson.dumps(command["examples"][0]), max_bytes=MB, now_ms=NOW)
    bad = {**command["examples"][0], "action": "adjust_score", "adjust_pct": 30}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, command)
    with pytest.raises(InvalidEvent):
        parse_command(orjson.dumps(bad), max_bytes=MB, now_ms=NOW)


def test_churn_alerts_only_on_level_transitions_including_recovery() -> None:
    ev = evaluator()
    state = CustomerState()
    trigger = {"kind": "timer", "topic": None, "event_id": None}

    def step(**facts_override: Any) -> dict[str, Any] | None:
        ev.evaluate("c", state, NOW, Cutoffs(), trigger)
        facts = {**ev.facts(state, NOW), **facts_override}
        return ev.churn_alert("c", state, facts, NOW, trigger)

    assert step() is None  # none -> none: nothing to say
    first = step(escalations_90d=1, open_tickets=1)
    assert first and (first["previous_level"], first["level"]) == ("none", "medium")
    assert step(escalations_90d=1, open_tickets=1) is None  # still medium: no repeat
    recovered = step()
    assert recovered and recovered["level"] == "none" and recovered["reasons"] == ["recovered"]
    assert CustomerState.from_bytes(state.to_bytes()).view == state.view  # the level survives restarts


def test_manual_tags_are_capped_per_customer() -> None:
    from stream.domain.manual import MAX_MANUAL_TAGS

    manual = None
    for i in range(MAX_MANUAL_TAGS):
        manual = apply_command(manual, {"action": "add_tag", "tag": f"t{i}", "author": "a", "note": ""}, 0)
    again = apply_command(manual, {"action": "add_tag", "tag": "t0", "author": "b", "note": "x"}, 1)
    assert again is not None and again["tags"]["t0"]["author"] == "b"  # re-adding a held tag is fine
    with pytest.raises(InvalidEvent, match="already has 100 manual tags"):
        apply_command(manual, {"action": "add_tag", "tag": "one_more", "author": "a", "note": ""}, 0)


def test_a_field_the_action_does_not_take_is_named() -> None:
    """The API refuses it (the worker would ignore it): an add_tag's adjust_pct, a clear_adjustment's tag."""
    assert stray_field({"action": "add_tag", "tag": "vip", "adjust_pct": 21}) == (
        "field 'adjust_pct': not taken by action 'add_tag'")
    assert stray_field({"action": "clear_adjustment", "tag": "vip"}) == (
        "field 'tag': not taken by action 'clear_adjustment'")
    assert stray_field({"action": "remove_tag", "tag": "vip", "expires_at": None, "note": "x"}) is None  # null: absent
    assert stray_field({"action": "adjust_score", "adjust_pct": 5, "command_id": "c1"}) is None
    for action in ("nope", {}, None):  # parse_command names the action
        assert stray_field({"action": action, "tag": "vip"}) is None
