"""What each role may see of a customer, pure: tag visibility and field filtering.

The matrix (also in README, "Access control, audit and erasure"):

- tags follow their rule's ``visibility``: ``public`` for every role; ``team``
  for sales, finance and admin; ``restricted`` for admin and for tokens whose
  ``teams`` include the rule's ``owner``. A tag without a rule (a manual tag)
  counts as ``team``.
- ``viewer`` sees the customer id, tier, visible tags and when it was evaluated;
- ``sales`` and ``finance`` also see the score, the evidence (reasons) of the
  tags they see, manual tags, churn, profile and the non-monetary aggregates;
- monetary figures (``spend_*``, ``max_order``, and the amounts inside reasons)
  only reach ``finance`` and ``admin``; for the others they are masked;
- ``admin`` sees the whole document.

Unknown fields of the customer document are dropped for every role but admin,
so a field added later stays hidden until it is placed in this matrix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from stream.access.auth import Principal

Visibility = str  # "public" | "team" | "restricted"
TagRules = Mapping[str, tuple[Visibility, str]]  # tag -> (visibility, owner team)

MONETARY_AGGREGATES = frozenset({"spend_30d", "spend_90d", "spend_365d", "spend_prev_90d", "max_order"})
MASK = "…"
_NUMBER = r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"
_MONEY_FACT = re.compile(r"\b(" + "|".join(sorted(MONETARY_AGGREGATES)) + r")=" + _NUMBER)
_SPEND_SENTENCE = re.compile(r"\s*spend\s", re.IGNORECASE)  # a churn reason, not a rule's fact list
_AMOUNT = re.compile(r"-?[0-9]+\.[0-9]+")  # amounts are printed with decimals; day counts are not
_ALWAYS = ("customer_id", "tier", "evaluated_at", "ruleset_version")


def tag_rule(tag: str, rules: TagRules) -> tuple[Visibility, str | None]:
    """A tag's visibility and owner; a tag without a rule (manual) is ``team`` with no owner."""
    found = rules.get(tag)
    return (found[0], found[1]) if found is not None else ("team", None)


def can_see_tag(principal: Principal, tag: str, rules: TagRules) -> bool:
    """Whether ``principal`` may see that a customer holds ``tag`` (and its evidence)."""
    visibility, owner = tag_rule(tag, rules)
    if visibility == "public" or principal.role == "admin":
        return True
    if visibility == "team":
        return principal.role != "viewer"
    return owner is not None and owner in principal.teams


def sees_money(principal: Principal) -> bool:
    """Monetary figures: finance and admin only."""
    return principal.role in ("finance", "admin")


def mask_money(text: str) -> str:
    """Hide the amounts in a reason: ``spend_365d=12840.00 >= 10000`` → ``spend_365d=… >= 10000``.

    Rule reasons print each fact as ``name=value``; the values of monetary facts
    are masked (the rule's own thresholds are policy, not customer data). A
    churn reason about spend (``spend fell from 900.00 to 120.00 …``) loses its
    amounts.
    """
    masked = _MONEY_FACT.sub(lambda m: f"{m.group(1)}={MASK}", text)
    if _SPEND_SENTENCE.match(masked):
        masked = _AMOUNT.sub(MASK, masked)
    return masked


def filter_customer(doc: Mapping[str, Any], principal: Principal,
                    rules: TagRules) -> tuple[dict[str, Any], list[str]]:
    """The customer document as ``principal`` may see it, and the field groups disclosed (for the audit)."""
    if principal.role == "admin":
        return dict(doc), ["all"]
    tags = [t for t in doc.get("tags", []) if can_see_tag(principal, t, rules)]
    out: dict[str, Any] = {k: doc.get(k) for k in _ALWAYS}
    out["tags"] = tags
    disclosed = ["tier", *sorted({f"tags:{tag_rule(t, rules)[0]}" for t in tags})]
    if principal.role == "viewer":
        return out, disclosed
    money = sees_money(principal)

    def show(text: str) -> str:
        return text if money else mask_money(text)

    out["score"] = doc.get("score")
    out["score_breakdown"] = doc.get("score_breakdown", {})
    out["reasons"] = {t: show(r) for t, r in (doc.get("reasons") or {}).items() if t in tags}
    manual = doc.get("manual") or {}
    out["manual"] = {"tags": {t: e for t, e in (manual.get("tags") or {}).items() if can_see_tag(principal, t, rules)},
                     "score_adjustment": manual.get("score_adjustment")}
    churn = doc.get("churn")
    out["churn"] = None if churn is None else {**churn, "reasons": [show(r) for r in churn.get("reasons", [])]}
    out["profile"] = doc.get("profile", {})
    aggregates = doc.get("aggregates") or {}
    out["aggregates"] = {k: v for k, v in aggregates.items() if money or k not in MONETARY_AGGREGATES}
    disclosed += ["score", "reasons", "manual", "churn", "profile", "aggregates"]
    if money:
        disclosed.append("aggregates:monetary")
    return out, disclosed


def list_row(doc: Mapping[str, Any], principal: Principal, rules: TagRules) -> dict[str, Any]:
    """A row of ``GET /customers`` as ``principal`` may see it (the same for finance and admin)."""
    row: dict[str, Any] = {"customer_id": doc.get("customer_id"), "tier": doc.get("tier"),
                           "tags": [t for t in doc.get("tags", []) if can_see_tag(principal, t, rules)],
                           "evaluated_at": doc.get("evaluated_at")}
    if principal.role == "viewer":
        return row
    churn, aggregates = doc.get("churn") or {}, doc.get("aggregates") or {}
    row.update(score=doc.get("score"), churn={"risk": churn.get("risk"), "level": churn.get("level")},
               team=(doc.get("profile") or {}).get("team", ""), last_activity_at=aggregates.get("last_activity_at"))
    if sees_money(principal):
        row["spend_365d"] = aggregates.get("spend_365d")
    return row


def list_disclosed(principal: Principal) -> list[str]:
    """The field groups a list's rows disclose to ``principal`` (for the audit)."""
    groups = ["customer_ids", "tier", "tags"]
    if principal.role != "viewer":
        groups += ["score", "churn", "profile", "aggregates"]
    return groups + (["aggregates:monetary"] if sees_money(principal) else [])


def filter_history(entry: Mapping[str, Any], principal: Principal, rules: TagRules) -> dict[str, Any] | None:
    """A history entry (:mod:`stream.view.timeline`) as ``principal`` may see it; None: not at all.

    Viewers see tier moves and the visible tags added or removed, no reasons or trigger; sales and
    finance every kind, with the evidence of the tags they see (money masked for sales); admin all.
    """
    if principal.role == "admin":
        return dict(entry)
    kind = entry.get("kind")
    show = (lambda text: text) if sees_money(principal) else mask_money
    if kind in ("tag_change", "rebuilt"):
        out = {k: entry[k] for k in ("at", "kind", "tier", "previous_tier") if k in entry}
        for name in ("added", "removed", "tags"):
            if name in entry:
                out[name] = [t for t in entry[name] or [] if can_see_tag(principal, t, rules)]
        if kind == "tag_change" and not (out["added"] or out["removed"]) and out["tier"] == out["previous_tier"]:
            return None  # a change of tags this role does not see
        if principal.role != "viewer" and kind == "tag_change":
            out.update(score=entry.get("score"), trigger=entry.get("trigger"), change_id=entry.get("change_id"),
                       reasons={t: show(r) for t, r in (entry.get("reasons") or {}).items() if t in out["added"]})
        return out
    if principal.role == "viewer":
        return None
    if kind == "churn":
        return {**entry, "reasons": [show(r) for r in entry.get("reasons") or []]}
    if kind == "manual" and ("tag" not in entry or can_see_tag(principal, entry["tag"], rules)):
        return dict(entry)
    return None
