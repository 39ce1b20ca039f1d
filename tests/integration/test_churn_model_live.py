"""A learned churn model on a live worker: its risk and reasons in the view and on churn-alerts, hot reload."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents.cli.churn_train import cut_ms, model_yaml, train
from agents.engine.evaluate import facts_schema
from rules import default_rules_dir, load_ruleset
from stream.domain.events import Event, OrderEvent
from stream.domain.state import DAY_MS

from .conftest import Namespace, wait_for
from .test_churn_live import alerts_for
from .test_pipeline import login, order, view_of

pytestmark = pytest.mark.integration


def history(seed: int = 11, customers: int = 300) -> list[Event]:
    """Customers buying at their own Poisson rates until an exponential dropout day."""
    rng = np.random.default_rng(seed)
    start = cut_ms("2025-01-01") + 1
    events: list[Event] = []
    for c in range(customers):
        rate, stop, t, k = rng.gamma(0.8, 1 / 25), rng.exponential(300), rng.uniform(0, 200), 0
        while t < min(stop, 420):
            events.append(OrderEvent(f"h{c}-{k}", f"h{c}", start + int(t * DAY_MS), f"o{c}-{k}", 3000, "paid", None, 1))
            t, k = t + rng.exponential(1 / rate), k + 1
    return events


def test_a_trained_model_scores_alerts_and_reloads(namespace: Namespace, tmp_path: Path) -> None:
    ns = namespace
    rules = tmp_path / "rules"
    shutil.copytree(default_rules_dir(), rules)
    ruleset = load_ruleset(rules, facts_schema())
    model = train(history(), [cut_ms("2025-09-30"), cut_ms("2025-10-30")], 60, ruleset).model
    (rules / "churn_model.yaml").write_text(model_yaml(model))
    ns.worker(sweep_interval=2, rules_dir=rules, rules_reload_interval=1)

    for n, day in enumerate((0, 10, 20)):  # a buyer every ten days, then silence
        ns.produce("order", order("l-1", f"l{n}", day, 30))
    view_of(ns, "l-1", lambda v: v["aggregates"]["orders_total"] == 3)
    ns.produce("login", login("f-1", "f1", 200))  # stream time moves on: l-1 is 180 days silent
    silent = view_of(ns, "l-1", lambda v: v["aggregates"]["days_since_last_order"] == 180.0
                     and (v.get("churn") or {}).get("level") == "high")
    reasons: list[str] = []
    assert silent["churn"]["risk"] == round(model.assess(silent["aggregates"], reasons, {}), 4)
    assert silent["churn"]["reasons"] == reasons and len(reasons) == 3  # the model's words, not the mix's
    assert not any("usual gap" in r for r in reasons)
    def by_sweep(x: dict[str, Any]) -> bool:  # the first order alone was high too (one-time buyer)
        return bool(x["level"] == "high" and x["trigger"]["kind"] == "timer")

    alert = next(x for x in alerts_for(ns, "l-1", lambda a: any(by_sweep(x) for x in a)) if by_sweep(x))
    assert (alert["level"], alert["risk"], alert["reasons"]) == ("high", silent["churn"]["risk"], reasons)
    assert alert["ruleset_version"] == ruleset_with_model_version(rules)

    # removing the model file goes back to the weighted mix, without a restart
    (rules / "churn_model.yaml").unlink()
    mixed = view_of(ns, "l-1", lambda v: v["churn"]["reasons"][:1] == ["no paid order for 180 days; usual gap 10 days"])
    assert mixed["ruleset_version"] == load_ruleset(rules, facts_schema()).version
    wait_for(lambda: ns.workers[0].get("/stats")[1]["ruleset_version"] == mixed["ruleset_version"], 10, "version")


def ruleset_with_model_version(rules: Path) -> str:
    return load_ruleset(rules, facts_schema()).version
