"""The fault suite's input history and its independent batch recomputation.

The history is plain JSON events (orders, logins, support tickets) with producer
retries mixed in. The oracle recomputes every customer's aggregates straight from
the definitions (``naive`` in tests/unit/test_state.py, one pass over that
customer's events, nothing shared with the streaming state code), then the tags
and tiers those aggregates imply under the default ruleset.

With tier bands (``a_exit_fraction`` / ``b_exit_fraction`` above the entry fractions) a
customer's tier depends on its previous one, which a batch recomputation does not know: under the
final cut-offs the oracle allows exactly the tiers a worker can reach from some previous tier
(:func:`rules.possible_tiers`). The fault suite runs its workers and this oracle on the shipped
rules with equal entry and exit fractions (``rules_without_bands``), where that is the plain
tier alone: the check stays exact.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from agents.engine.evaluate import facts_schema
from rules import default_rules_dir, evaluate_tags, load_ruleset, possible_tiers, tier_ranks
from stream.domain.events import Event, parse_event
from stream.domain.profiles import profile_facts

from ..unit.test_state import naive

DAY = 86_400_000
T_END = 1_790_000_000_000  # 2026-09-21T…Z: the latest event time of every history
NUMERIC = ("orders_30d", "orders_90d", "orders_365d", "orders_total", "logins_7d", "logins_30d", "logins_365d",
           "open_tickets", "open_complaints", "reopened_tickets", "complaints_90d", "escalations_90d",
           "orders_prev_90d", "spend_30d", "spend_90d", "spend_365d", "spend_prev_90d", "max_order",
           "days_since_first_seen", "mean_order_gap_days", "days_since_first_order", "days_since_last_order",
           "days_since_last_login", "days_since_last_activity")


def history(events: int, customers: int, seed: int = 1, retries: float = 0.01) -> list[tuple[str, dict[str, Any]]]:
    """``events`` distinct events over ``customers`` and 400 days, shuffled, plus producer retries."""
    rng = random.Random(seed)
    out: list[tuple[str, dict[str, Any]]] = [("login", {"event_id": "latest", "customer_id": "f-0", "ts": T_END})]
    for i in range(events - 1):
        cid = f"f-{rng.randrange(customers)}"
        ts = T_END - rng.randrange(400 * DAY)
        roll = rng.random()
        if roll < 0.45:
            status = rng.choice(["paid"] * 8 + ["refunded", "placed"])
            out.append(("order", {"event_id": f"e{i}", "customer_id": cid, "ts": ts, "order_id": f"o{i}",
                                  "amount": round(rng.uniform(1, 3000), 2), "status": status}))
        elif roll < 0.85:
            out.append(("login", {"event_id": f"e{i}", "customer_id": cid, "ts": ts}))
        else:  # tickets within the last 89 days: a closed ticket idle 90+ days is pruned (see stream.domain.state)
            ts = T_END - rng.randrange(89 * DAY)
            out.append(("ticket", {"event_id": f"e{i}", "customer_id": cid, "ts": ts,
                                   "ticket_id": f"T{rng.randrange(3)}", "severity": "low",
                                   "action": rng.choice(["opened", "opened", "escalated", "resolved", "reopened"]),
                                   "category": rng.choice(["complaint", "billing", ""])}))
    out += rng.sample(out, int(len(out) * retries))  # producer retries: the same events again, later
    rng.shuffle(out)
    return out


def expected(events: list[tuple[str, dict[str, Any]]], rules_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """Per customer: ``facts`` (aggregates), ``must``/``may`` tags (hysteresis band) and ``tiers`` (the tiers
    its bands allow: one, the plain tier, with equal entry and exit fractions)."""
    ruleset = load_ruleset(rules_dir or default_rules_dir(), facts_schema())
    now = max(e["ts"] for _, e in events)
    seen: set[tuple[str, str]] = set()
    per: dict[str, list[Event]] = defaultdict(list)
    for kind, raw in events:
        if (kind, raw["event_id"]) not in seen:
            seen.add((kind, raw["event_id"]))
            per[raw["customer_id"]].append(parse_event(kind, orjson.dumps(raw), currency="USD", max_bytes=1 << 20))
    facts = {cid: naive(evs, now) | profile_facts(None, now) for cid, evs in per.items()}
    spends = sorted((f["spend_365d"] for f in facts.values() if f["spend_365d"] > 0), reverse=True)
    cuts = [spends[rank - 1] if rank else None for rank in tier_ranks(len(spends), ruleset.tiers)]
    every_tag = [r.tag for r in ruleset.rules]
    out = {}
    for cid, f in facts.items():
        must = set(evaluate_tags(ruleset, {**f, "tags": []}, []))
        may = must | set(evaluate_tags(ruleset, {**f, "tags": every_tag}, every_tag))
        out[cid] = {"facts": f, "must": must, "may": may, "tiers": possible_tiers(ruleset, f, *cuts)}
    return out


def mismatches(want: dict[str, dict[str, Any]], views: dict[str, dict[str, Any] | None]) -> list[str]:
    """Every difference between the oracle and the customer views (empty: exact)."""
    bad = []
    for cid, exp in want.items():
        view = views.get(cid)
        if view is None:
            bad.append(f"{cid}: no view")
            continue
        got = view["aggregates"]
        for name in NUMERIC:
            if got.get(name) != exp["facts"][name]:
                bad.append(f"{cid}.{name}: got {got.get(name)!r}, want {exp['facts'][name]!r}")
        tags = set(view["tags"])
        if not exp["must"] <= tags <= exp["may"]:
            bad.append(f"{cid}.tags: got {sorted(tags)}, want {sorted(exp['must'])} (+ maybe {sorted(exp['may'])})")
        if view["tier"] not in exp["tiers"]:
            bad.append(f"{cid}.tier: got {view['tier']}, want {' or '.join(sorted(exp['tiers']))}")
    return bad
