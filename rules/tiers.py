"""Customer tiers A–D.

Definition (also in ``rules/README.md``): let *n* be the number of customers
with ``spend_365d > 0``, ranked by ``spend_365d`` descending (rank 1 = highest).
With the policy fractions *a* and *b*, the cut-off ranks are
``pA = ceil(a * n)`` and ``pB = ceil(b * n)`` (exact arithmetic). The caller
reads the spend at those ranks (``a_cut``, ``b_cut``) from the global ranking.
A customer is

* **A** if ``spend_365d > 0`` and ``spend_365d >= a_cut``;
* else **B** if ``spend_365d > 0`` and ``spend_365d >= b_cut``;
* else **C** if the policy's ``c_when`` expression is true ("growing");
* else **D**.

A cut of ``None`` means nobody qualifies for that tier (e.g. ``n == 0``).
Ties at a cut-off all get the better tier.

Bands (hysteresis): with the exit fractions *a'* >= *a* and *b'* >= *b*, the exit cut-off
ranks are ``ceil(a' * n)`` and ``ceil(b' * n)``, and the caller reads ``a_exit_cut`` and
``b_exit_cut`` (<= the entry cuts) likewise. Given the customer's ``previous`` tier (the one
its view holds; None for a new customer), a customer is

* **A** if ``spend_365d > 0`` and either ``spend_365d >= a_cut``, or it was A and
  ``spend_365d >= a_exit_cut``;
* else **B** if ``spend_365d > 0``, B's condition holds and either ``spend_365d >= b_cut``,
  or it was A or B and ``spend_365d >= b_exit_cut``;
* else C or D as above.

A promotion is immediate; only the way down waits for the band. With the exit fractions equal
to the entry fractions the exit cuts are the entry cuts, and the tier is the plain one above
whatever ``previous`` is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from rules.exceptions import RuleErrors, RuleEvaluationError, record
from rules.model import Ruleset, TierPolicy

TIERS = ("A", "B", "C", "D")  # best first


def _exact(fraction: float) -> Fraction:
    # Fraction(str(x)) reads 0.05 as exactly 1/20; Fraction(0.05) would be a hair
    # above it and ceil(0.05 * 20) would give 2 instead of 1.
    return Fraction(str(fraction))


def tier_cutoffs(n: int, a_fraction: float, b_fraction: float) -> tuple[int, int]:
    """1-based ranks ``(ceil(a*n), ceil(b*n))`` of the A and B cut-offs; (0, 0) if n == 0.

    A rank of 0 means the tier is empty (pass ``None`` as its cut).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not (0 <= a_fraction <= 1 and 0 <= b_fraction <= 1):
        raise ValueError(f"fractions must be within 0..1, got {a_fraction}, {b_fraction}")
    if n == 0:
        return (0, 0)
    return (math.ceil(_exact(a_fraction) * n), math.ceil(_exact(b_fraction) * n))


def tier_ranks(n: int, policy: TierPolicy) -> tuple[int, int, int, int]:
    """The cut-off ranks of ``policy`` among ``n`` paying customers: entry A, entry B, exit A, exit B
    (:func:`tier_cutoffs` of the entry fractions, then of the exit fractions)."""
    a_exit, b_exit = policy.exit_fractions
    return (*tier_cutoffs(n, policy.a_top_fraction, policy.b_top_fraction), *tier_cutoffs(n, a_exit, b_exit))


def assign_tier(
    ruleset: Ruleset,
    facts: Mapping[str, Any],
    a_cut: float | None,
    b_cut: float | None,
    errors: RuleErrors | list[str] | None = None,
    *,
    previous: str | None = None,
    a_exit_cut: float | None = None,
    b_exit_cut: float | None = None,
) -> str:
    """Return "A", "B", "C" or "D" for one customer; see the module docstring.

    Without ``previous`` (or without exit cuts) this is the plain rank definition.
    A tier condition that raises counts as false and, if ``errors`` is given, its
    :class:`RuleEvaluationError` (``tiers.b_when`` or ``tiers.c_when``) is added to it.
    """
    spend = facts["spend_365d"]
    if spend is not None and spend > 0:
        if _reaches(spend, a_cut) or previous == "A" and _reaches(spend, a_exit_cut):
            return "A"
        if (_reaches(spend, b_cut) or previous in ("A", "B") and _reaches(spend, b_exit_cut)) and _holds(
                ruleset.tiers._b_expr, "b_when", facts, errors):
            return "B"
    return "C" if _holds(ruleset.tiers._c_expr, "c_when", facts, errors) else "D"


def possible_tiers(
    ruleset: Ruleset,
    facts: Mapping[str, Any],
    a_cut: float | None,
    b_cut: float | None,
    a_exit_cut: float | None,
    b_exit_cut: float | None,
) -> set[str]:
    """Every tier :func:`assign_tier` can give these facts under these cuts, whatever the previous tier.

    For a check that does not know a customer's path (a batch recomputation): one tier with
    equal entry and exit fractions, else the plain tier and the tiers a band can hold.
    """
    return {assign_tier(ruleset, facts, a_cut, b_cut, previous=p, a_exit_cut=a_exit_cut, b_exit_cut=b_exit_cut)
            for p in (None, "A", "B")}


def _reaches(spend: float, cut: float | None) -> bool:
    return cut is not None and spend >= cut


def _holds(expr: Any, key: str, facts: Mapping[str, Any], errors: RuleErrors | list[str] | None) -> bool:
    try:
        return expr.run(facts) is True
    except Exception as exc:  # a broken tier condition must not break the stream
        record(errors, RuleEvaluationError(f"tiers.{key}", exc))
        return False
