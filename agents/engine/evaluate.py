"""Turn a customer's state into tags, tier, score and a tag-change message (pure).

No Faust, no I/O: the agent hands in the state, the time, the latest global
tier cut-offs and the trigger, and gets back the new view and, when the tag
set or tier changed, the ``tag-changes`` message to publish.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from rules import FieldType, RuleErrors, Ruleset, assign_tier, evaluate_tags, weighted_score
from rules.churn import assess_churn
from rules.tiers import TIERS
from stream.domain.due import TIER_DUE
from stream.domain.events import format_ts
from stream.domain.manual import adjusted_score, expire, manual_reason
from stream.domain.profiles import PROFILE_FIELDS, profile_facts
from stream.domain.reversals import KEY as LAST_CHANGES
from stream.domain.reversals import last_change_at
from stream.domain.state import AGGREGATE_FIELDS, CustomerState

Kind = Literal["int", "float", "bool", "string", "list", "map"]

#: engagement normalisation: this many logins in 30 days scores 100
ENGAGEMENT_FULL_LOGINS_30D = 20


def facts_schema() -> dict[str, FieldType]:
    """The rules engine's schema of the facts: aggregates and profile attributes."""
    fields = {**AGGREGATE_FIELDS, **PROFILE_FIELDS}
    return {name: FieldType(cast(Kind, kind), nullable) for name, (kind, nullable) in fields.items()}


@dataclass(frozen=True)
class Cutoffs:
    """Global spend-rank snapshot: tier cut-offs (entry, and exit: the bands' lower edges) and spend
    quantiles (ascending)."""

    a_cut: float | None = None
    b_cut: float | None = None
    a_exit_cut: float | None = None
    b_exit_cut: float | None = None
    quantiles: tuple[float, ...] = ()
    n: int = 0
    known: bool = True  # False: not read from the ranking yet (a worker's first moments): nobody is demoted


def spend_percentile(spend: float, quantiles: tuple[float, ...]) -> float:
    """Share (0–100) of spending customers whose spend is at or below ``spend``."""
    if spend <= 0 or not quantiles:
        return 0.0
    return 100.0 * bisect_right(quantiles, spend) / len(quantiles)


def score_dimensions(facts: Mapping[str, Any], cutoffs: Cutoffs) -> dict[str, float]:
    """Each score dimension normalised to 0–100 (documented in README)."""
    s90, prev = facts["spend_90d"], facts["spend_prev_90d"]
    growth = 0.0 if s90 <= 0 and prev <= 0 else 50.0 + 50.0 * (s90 - prev) / max(s90, prev)
    return {
        "spend": spend_percentile(facts["spend_365d"], cutoffs.quantiles),
        "engagement": min(100.0, 100.0 * facts["logins_30d"] / ENGAGEMENT_FULL_LOGINS_30D),
        "growth": growth,
        "strategic": 100.0 if facts["strategic_account"] else 0.0,
    }


def _manual_document(manual: Mapping[str, Any] | None) -> dict[str, Any]:
    """Manual tags (author, note, expiry) and score adjustment, for people."""
    def when(ms: int | None) -> str | None:
        return format_ts(ms) if ms is not None else None

    m = manual or {}
    adjust = m.get("adjust")
    return {
        "tags": {t: {"author": e["author"], "note": e["note"], "added_at": when(e["at"]),
                     "expires_at": when(e.get("expires_at"))} for t, e in m.get("tags", {}).items()},
        "score_adjustment": None if adjust is None else {
            "pct": adjust["pct"], "author": adjust["author"], "note": adjust["note"], "at": when(adjust["at"])},
    }


_TIMESTAMP_FIELDS = frozenset(k for k in AGGREGATE_FIELDS if k.endswith("_at"))


def public_aggregates(facts: Mapping[str, Any]) -> dict[str, Any]:
    """Facts as shown to people: epoch-ms timestamps as RFC 3339 text."""
    shown = {k: facts[k] for k in AGGREGATE_FIELDS}
    for k in _TIMESTAMP_FIELDS:
        if shown[k] is not None:
            shown[k] = format_ts(shown[k])
    return shown


class Evaluator:
    """Evaluates customers against one ruleset."""

    def __init__(self, ruleset: Ruleset) -> None:
        self.ruleset = ruleset

    def facts(self, state: CustomerState, now_ms: int) -> dict[str, Any]:
        """The aggregates plus the customer's current tags."""
        facts = state.aggregates(now_ms)
        facts.update(profile_facts(state.profile, now_ms))
        facts["tags"] = list(state.view["tags"]) if state.view else []
        return facts

    def evaluate(
        self,
        customer_id: str,
        state: CustomerState,
        now_ms: int,
        cutoffs: Cutoffs,
        trigger: dict[str, Any],
        event_time: int | None = None,
        errors: RuleErrors | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Re-evaluate; update ``state.view``; return (facts, tag-change or None)."""
        facts = self.facts(state, now_ms)
        old = state.view or {}
        state.manual = expire(state.manual, now_ms)
        manual_tags = (state.manual or {}).get("tags", {})
        reasons = evaluate_tags(self.ruleset, facts, facts["tags"], errors=errors)
        for tag, entry in manual_tags.items():
            reasons.setdefault(tag, manual_reason(entry))
        # until the ranking is first read, a tier A or B is held (exit cut 0) and nobody is promoted: a worker's
        # first evaluations would otherwise demote every customer they touch, and the first read promote them back
        a_exit, b_exit = (cutoffs.a_exit_cut, cutoffs.b_exit_cut) if cutoffs.known else (0.0, 0.0)
        tier = assign_tier(self.ruleset, facts, cutoffs.a_cut, cutoffs.b_cut, errors=errors, previous=old.get("tier"),
                           a_exit_cut=a_exit, b_exit_cut=b_exit)
        tier_due = self._dwell_until(old, tier, now_ms)
        if tier_due is not None:  # a demotion within the minimum dwell: published by the sweep at tier_due
            tier = old["tier"]
        base, breakdown = weighted_score(self.ruleset.weights, score_dimensions(facts, cutoffs))
        score = adjusted_score(base, state.manual)
        tags = sorted(reasons)
        state.view = {
            "tags": tags,
            "manual_tags": sorted(manual_tags),
            "tier": tier,
            "score": score,
            "score_breakdown": breakdown,
            "reasons": reasons,
            "evaluated_at": now_ms,
            "churn": old.get("churn"),  # updated by churn_alert()
        }
        if LAST_CHANGES in old:  # the reversal bookkeeping (stream.domain.reversals), never published
            state.view[LAST_CHANGES] = old[LAST_CHANGES]
        if tier_due is not None:
            state.view[TIER_DUE] = tier_due
        old_tags = old.get("tags", [])
        if tags == old_tags and tier == old.get("tier"):
            return facts, None
        change = {
            "customer_id": customer_id,
            "tags": tags,
            "manual_tags": sorted(manual_tags),
            "added": sorted(set(tags) - set(old_tags)),
            "removed": sorted(set(old_tags) - set(tags)),
            "tier": tier,
            "previous_tier": old.get("tier"),
            "score": score,
            "reasons": reasons,
            **self._output_tail(trigger, event_time, now_ms),
            "ruleset_name": self.ruleset.name,
        }
        return facts, change

    def _dwell_until(self, old: Mapping[str, Any], tier: str, now_ms: int) -> int | None:
        """When a demotion to ``tier`` may be published, if that is later than now (``min_tier_dwell`` after the
        customer's latest tier change); None: publish it now, or not a demotion."""
        dwell_ms = int(self.ruleset.tiers.min_tier_dwell * 1000)
        previous = old.get("tier")
        if not dwell_ms or previous not in TIERS or TIERS.index(tier) <= TIERS.index(previous):
            return None
        since = last_change_at(old, "tier")
        return since + dwell_ms if since is not None and now_ms - since < dwell_ms else None

    def churn_alert(self, customer_id: str, state: CustomerState, facts: Mapping[str, Any], now_ms: int,
                    trigger: dict[str, Any], event_time: int | None = None) -> dict[str, Any] | None:
        """Assess churn risk; store it in the view; return a ``churn-alerts`` message on a level change."""
        view = state.view if state.view is not None else {}
        previous = (view.get("churn") or {}).get("level", "none")
        assessment = assess_churn(self.ruleset.churn, facts, previous)
        view["churn"] = {"risk": round(assessment.risk, 4), "level": assessment.level,
                         "reasons": list(assessment.reasons)}
        state.view = view
        if assessment.level == previous:
            return None
        last_activity = facts.get("last_activity_at")
        return {
            "customer_id": customer_id,
            "risk": round(assessment.risk, 4),
            "level": assessment.level,
            "previous_level": previous,
            "reasons": list(assessment.reasons) if assessment.level != "none" else ["recovered"],
            "last_activity_at": format_ts(last_activity) if last_activity is not None else None,
            **self._output_tail(trigger, event_time, now_ms),
        }

    def _output_tail(self, trigger: dict[str, Any], event_time: int | None, now_ms: int) -> dict[str, Any]:
        """The fields a tag change and a churn alert end with, in this order (the wire format keeps it):
        what caused it, when it happened (the event's time, else the evaluation's), when it was sent,
        and under which ruleset."""
        return {
            "trigger": trigger,
            "event_time": format_ts(event_time if event_time is not None else now_ms),
            "emitted_at": format_ts(int(time.time() * 1000)),
            "ruleset_version": self.ruleset.version,
        }

    def view_document(self, customer_id: str, state: CustomerState, facts: Mapping[str, Any]) -> dict[str, Any]:
        """The customer view served by the API and stored in Redis."""
        view = state.view or {}
        return {
            "customer_id": customer_id,
            "tags": view.get("tags", []),
            "tier": view.get("tier"),
            "score": view.get("score"),
            "score_breakdown": view.get("score_breakdown", {}),
            "manual": _manual_document(state.manual),
            "churn": view.get("churn"),
            "profile": {k: v for k, v in (state.profile or {}).items() if k != "customer_id"},
            "reasons": view.get("reasons", {}),
            "aggregates": public_aggregates(facts),
            "evaluated_at": format_ts(view["evaluated_at"]) if "evaluated_at" in view else None,
            "ruleset_version": self.ruleset.version,
        }
