"""Rules on a live worker: manual tags, profiles, re-tiering by time, hot reload (real broker and Redis)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from rules import default_rules_dir

from .conftest import Namespace, wait_for
from .test_pipeline import DAY, T0, order, view_of

pytestmark = pytest.mark.integration


def command(cid: str, cmd_id: str, **fields: Any) -> dict[str, Any]:
    return {"command_id": cmd_id, "customer_id": cid, "author": "jane@sales", "note": "key account", **fields}


def change_where(ns: Namespace, cid: str, pred: Any) -> dict[str, Any]:
    """The first tag change of ``cid`` that satisfies ``pred``."""
    return next(c for c in ns.changes(cid, lambda cs: any(pred(c) for c in cs)) if pred(c))


def test_manual_tags_profiles_and_retiering_without_events(namespace: Namespace, tmp_path: Path) -> None:
    ns = namespace
    rules = tmp_path / "rules"
    shutil.copytree(default_rules_dir(), rules)
    ns.worker(sweep_interval=2, rules_dir=rules, rules_reload_interval=1, sweep_chunk=3)

    # manual tag with an expiry (stream clock: event time), shown as manual; expires by itself
    ns.produce("order", order("m-1", "m1", 1, 50))
    expiry = T0 + 3 * DAY
    ns.produce("manual", command("m-1", "c1", action="add_tag", tag="vip_watch", expires_at=expiry))
    added = change_where(ns, "m-1", lambda c: "vip_watch" in c["added"])
    assert added["reasons"]["vip_watch"] == "manual: jane@sales: key account"
    assert added["trigger"] == {"kind": "manual", "topic": ns.settings.tag_commands_topic, "event_id": "c1"}
    assert view_of(ns, "m-1", lambda v: "vip_watch" in v["manual"]["tags"])["manual"]["tags"]["vip_watch"][
        "author"] == "jane@sales"
    ns.produce("order", order("m-2", "m2", 4, 1))  # event time moves past the expiry
    expired = change_where(ns, "m-1", lambda c: "vip_watch" in c["removed"])
    assert expired["trigger"]["kind"] == "timer"

    # score adjustment within the cap; beyond it: dead-lettered with the reason
    ns.produce("manual", command("m-1", "c2", action="adjust_score", adjust_pct=20))
    ns.produce("manual", command("m-1", "c3", action="adjust_score", adjust_pct=35))
    adj = view_of(ns, "m-1", lambda v: v["manual"]["score_adjustment"] is not None)
    assert adj["manual"]["score_adjustment"]["pct"] == 20.0
    letters = ns.read(ns.settings.dead_letters_topic, lambda rs: len(rs) >= 1)
    assert "field 'adjust_pct': 35 is beyond the ±20% cap" in letters[0]["value"]["error"]

    # a profile update re-evaluates the customer: strategic value enters the score
    assert view_of(ns, "m-2", lambda v: True)["score_breakdown"]["strategic"] == 0.0
    ns.produce("profile", {"customer_id": "m-2", "strategic_account": True, "industry": "retail"})
    after = view_of(ns, "m-2", lambda v: v["profile"].get("industry") == "retail")
    assert after["score_breakdown"]["strategic"] == 10.0  # weight 10% x 100
    assert after["score"] == pytest.approx(sum(after["score_breakdown"].values()), abs=0.05)

    # dynamic thresholds: others' spend re-tiers r-1 within one sweep, with no event of its own
    ns.produce("order", order("r-1", "r1", 4, 300))
    assert view_of(ns, "r-1", lambda v: v["tier"] == "A")["tier"] == "A"
    for i in range(2, 22):
        ns.produce("order", order(f"r-{i}", f"r{i}", 4, 1000 + i))
    moved = change_where(ns, "r-1", lambda c: c["previous_tier"] == "A")
    assert moved["trigger"]["kind"] == "timer" and moved["tier"] != "A"

    # hot reload: a new rule file takes effect without a restart, with trigger kind "rules"
    (rules / "extra.yaml").write_text(
        "rules:\n  - tag: strategic\n    description: Strategic account.\n    owner: sales\n"
        "    when: strategic_account\n")
    reloaded = change_where(ns, "m-2", lambda c: "strategic" in c["added"])
    assert reloaded["trigger"]["kind"] == "rules"
    assert reloaded["reasons"]["strategic"] == "strategic_account=true"
    wait_for(lambda: ns.workers[0].get("/stats")[1]["ruleset_version"] == reloaded["ruleset_version"], 10, "version")
