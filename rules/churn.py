"""Churn risk per customer: a weighted mix of five explainable components, each in [0, 1].

- ``recency``: days since the last paid order against the customer's own rhythm
  (``mean_order_gap_days``; below 2 orders ``default_gap_days``). With
  ``ratio = days_since_last_order / max(gap, min_gap_days)`` the component is 0 up to
  ratio 1 and rises linearly to 1 at ``silence_multiple``.
- ``trend``: the fall of paid orders and of net spend, last 90 days against the 90 before,
  each ``max(0, 1 - now / before)`` when there was something before; the mean of the two.
- ``engagement``: ``1 - logins_30d / (logins_365d / 12.17)`` clipped to [0, 1], when the
  monthly login baseline is at least ``min_login_baseline`` (else 0: too few logins to judge).
- ``service``: ``load / (load + service_half_load)`` with ``load = open_complaints +
  escalations_90d + 0.5 complaints_90d + 0.5 reopened_tickets + 0.25 open_tickets``; saturating, 0.5 at the half load.
- ``model``: BG/NBD (see :mod:`rules.bgnbd`) with the population parameters in ``bgnbd``:
  ``exp(-E)``, where E is the expected number of purchases in the next ``horizon_days``. That is
  the chance of no purchase in the horizon if purchases were Poisson with that mean. P(alive) alone
  is not used: it is 1 for every one-time buyer.

``risk`` is the weighted mean over the components that apply, with ``weights`` when BG/NBD
parameters are configured and ``weights_without_model`` (if given) when not: ``model`` needs ``bgnbd`` and
a paid order; ``recency`` and ``trend`` need a paid order. A customer without any paid order is
judged on engagement and service alone; weights of components that do not apply are spread over
the others in proportion. ``level`` is the highest cut-off the risk reaches, except that a level
once reached is left only below its exit cut-off (``exit_levels``, each at most its entry cut-off):
given the customer's previous level, the level is the higher of the one the risk reaches and the
highest level at or below the previous one whose exit cut-off the risk still reaches. Back to
``none`` ("recovered") therefore only below the lowest exit cut-off. Equal exit and entry
cut-offs: the plain levels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rules.bgnbd import expected_purchases
from rules.churn_model import ChurnModel
from rules.exceptions import RulesetError
from rules.weights import Weights

__all__ = ["LEVELS", "BGNBDParams", "ChurnAssessment", "ChurnPolicy", "ChurnWeights", "assess_churn"]

LEVELS = ("none", "low", "medium", "high")
#: exit cut-offs when a ruleset gives none (never above the entry cut-off: then there is no band)
DEFAULT_EXIT_LEVELS = {"low": 0.2, "medium": 0.45, "high": 0.65}
MONTHS_PER_YEAR = 12.17  # logins_365d / 12.17 = logins in an average 30-day month


def _number(name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RulesetError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise RulesetError(f"{name} must be {'positive' if positive else 'non-negative'}, got {value}")
    return float(value)


@dataclass(frozen=True)
class BGNBDParams:
    """BG/NBD population parameters, time in days (``tagger churn fit`` prints them)."""

    r: float
    alpha: float
    a: float
    b: float

    def __post_init__(self) -> None:
        for name in ("r", "alpha", "a", "b"):
            object.__setattr__(self, name, _number(f"bgnbd.{name}", getattr(self, name), positive=True))


@dataclass(frozen=True)
class ChurnWeights(Weights):
    """Component weights: non-negative and summing to 1."""

    label: ClassVar[str] = "churn"
    recency: float = 0.15
    trend: float = 0.05
    engagement: float = 0.1
    service: float = 0.1
    model: float = 0.6


#: the default weights while no BG/NBD parameters are configured: recency leads, so a weekly
#: buyer silent for five weeks (recency 1) is at least ``medium`` on that alone
WEIGHTS_WITHOUT_MODEL = ChurnWeights(recency=0.5, trend=0.2, engagement=0.15, service=0.15, model=0.0)


@dataclass(frozen=True)
class ChurnPolicy:
    """How churn risk is computed; the defaults are those of ``rules/default/churn.yaml``."""

    weights: ChurnWeights = field(default_factory=ChurnWeights)
    # used instead of ``weights`` while there are no BG/NBD parameters (None: spread ``weights``)
    weights_without_model: ChurnWeights | None = field(default_factory=lambda: WEIGHTS_WITHOUT_MODEL)
    low: float = 0.25
    medium: float = 0.5
    high: float = 0.7
    silence_multiple: float = 3.0  # recency is 1 once silent for this many usual gaps
    default_gap_days: float = 30.0  # usual gap assumed below 2 paid orders
    min_gap_days: float = 1.0  # floor of the usual gap (a burst of same-day orders is not a rhythm)
    min_login_baseline: float = 1.0  # monthly logins needed before a login drop counts
    service_half_load: float = 2.0  # service trouble load at which the component is 0.5
    horizon_days: float = 90.0  # BG/NBD looks this far ahead
    bgnbd: BGNBDParams | None = None
    model: ChurnModel | None = None  # learned (a ``churn_model:`` section, rules/churn_model.py): replaces the mix
    escalation_level: str = "medium"  # least level while an escalated ticket is open ("none": off)
    # a level is left only below its exit cut-off; None: DEFAULT_EXIT_LEVELS, or the entry cut-off if lower
    low_exit: float | None = None
    medium_exit: float | None = None
    high_exit: float | None = None

    def __post_init__(self) -> None:
        for name in ("low", "medium", "high", "silence_multiple", "default_gap_days", "min_gap_days",
                     "min_login_baseline", "service_half_load", "horizon_days"):
            object.__setattr__(self, name, _number(name, getattr(self, name)))
        if self.escalation_level not in LEVELS:
            raise RulesetError(f"escalation_level must be one of {', '.join(LEVELS)}, got {self.escalation_level!r}")
        for name in ("low", "medium", "high"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise RulesetError(f"{name} must be in (0, 1], got {value}")
        if not self.low <= self.medium <= self.high:
            raise RulesetError(
                f"cut-offs must rise: low {self.low}, medium {self.medium}, high {self.high}",
                hint="e.g. low: 0.25, medium: 0.5, high: 0.7",
            )
        self._check_exits()
        if self.weights_without_model is not None and self.weights_without_model.model:
            raise RulesetError("weights_without_model.model must be 0: it applies when there is no model")
        if self.silence_multiple <= 1.0:
            raise RulesetError(f"silence_multiple must be above 1, got {self.silence_multiple}")
        for name in ("default_gap_days", "min_gap_days", "service_half_load", "horizon_days"):
            _number(name, getattr(self, name), positive=True)


    def _check_exits(self) -> None:
        for level in ("low", "medium", "high"):
            name, entry = f"{level}_exit", getattr(self, level)
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, min(DEFAULT_EXIT_LEVELS[level], entry))
                continue
            value = _number(f"exit_levels.{level}", value)
            if not 0.0 < value <= entry:
                raise RulesetError(f"exit_levels.{level} must be in (0, levels.{level} = {entry}], got {value}",
                                   hint=f"a level is left only below its exit cut-off, e.g. {level}: "
                                   f"{DEFAULT_EXIT_LEVELS[level]} (equal to the entry cut-off: no band)")
            object.__setattr__(self, name, value)
        exits = self.exit_cutoffs
        if not exits["low"] <= exits["medium"] <= exits["high"]:
            raise RulesetError(
                f"exit_levels must rise: low {exits['low']}, medium {exits['medium']}, high {exits['high']}",
                hint="e.g. low: 0.2, medium: 0.45, high: 0.65")

    @property
    def exit_cutoffs(self) -> dict[str, float]:
        """The exit cut-off of each level above ``none`` (resolved: never None once built)."""
        return {level: float(getattr(self, f"{level}_exit") if getattr(self, f"{level}_exit") is not None
                             else getattr(self, level)) for level in ("low", "medium", "high")}


@dataclass(frozen=True)
class ChurnAssessment:
    """Risk in [0, 1], its level, human reasons, and the components that applied."""

    risk: float
    level: str
    reasons: tuple[str, ...]
    components: dict[str, float]


def _num(facts: Mapping[str, Any], key: str) -> float:
    value = facts.get(key)
    return 0.0 if value is None else float(value)


def _clip(value: float) -> float:
    return 0.0 if value <= 0.0 else 1.0 if value >= 1.0 else value


def _recency(policy: ChurnPolicy, facts: Mapping[str, Any], since: float) -> tuple[float, str]:
    gap = facts.get("mean_order_gap_days")
    usual = f"usual gap {gap:.0f} days" if gap is not None else f"assumed gap {policy.default_gap_days:g} days"
    gap = policy.default_gap_days if gap is None else float(gap)
    ratio = since / max(gap, policy.min_gap_days)
    value = _clip((ratio - 1.0) / (policy.silence_multiple - 1.0))
    return value, f"no paid order for {since:.0f} days; {usual}"


def _fall(now: float, before: float) -> float | None:
    return None if before <= 0 else _clip(1.0 - max(now, 0.0) / before)


def _trend(facts: Mapping[str, Any], reasons: list[str]) -> float:
    o_now, o_before = _num(facts, "orders_90d"), _num(facts, "orders_prev_90d")
    s_now, s_before = _num(facts, "spend_90d"), _num(facts, "spend_prev_90d")
    falls = [f for f in (_fall(o_now, o_before), _fall(s_now, s_before)) if f is not None]
    if o_now < o_before:
        reasons.append(f"orders fell from {o_before:.0f} to {o_now:.0f} (last 90 days vs the 90 before)")
    if s_now < s_before:
        reasons.append(f"spend fell from {s_before:.2f} to {s_now:.2f} (last 90 days vs the 90 before)")
    return sum(falls) / len(falls) if falls else 0.0


def _engagement(policy: ChurnPolicy, facts: Mapping[str, Any], reasons: list[str]) -> float:
    baseline = _num(facts, "logins_365d") / MONTHS_PER_YEAR
    if baseline <= 0 or baseline < policy.min_login_baseline:
        return 0.0
    recent = _num(facts, "logins_30d")
    value = _clip(1.0 - recent / baseline)
    if value > 0:
        noun = "login" if recent == 1 else "logins"
        reasons.append(f"{recent:.0f} {noun} in the last 30 days; usual {baseline:.1f} a month")
    return value


_SERVICE = (  # fact, weight in the load, reason (singular, plural)
    ("open_complaints", 1.0, ("open complaint", "open complaints")),
    ("escalations_90d", 1.0, ("escalation in the last 90 days", "escalations in the last 90 days")),
    ("complaints_90d", 0.5, ("complaint opened in the last 90 days", "complaints opened in the last 90 days")),
    ("reopened_tickets", 0.5, ("open ticket was reopened", "open tickets were reopened")),
    ("open_tickets", 0.25, ("open ticket", "open tickets")),
)


def _service(policy: ChurnPolicy, facts: Mapping[str, Any], reasons: list[str]) -> float:
    load = 0.0
    for key, weight, label in _SERVICE:
        count = _num(facts, key)
        if count > 0:
            load += weight * count
            reasons.append(f"{count:.0f} {label[0] if count == 1 else label[1]}")
    return load / (load + policy.service_half_load)


def _mixed_risk(policy: ChurnPolicy, facts: Mapping[str, Any], reasons: list[str],
                components: dict[str, float]) -> float:
    """The weighted mix of the components that apply (the risk without a learned model)."""
    since_value = facts.get("days_since_last_order")
    if since_value is not None and _num(facts, "orders_total") > 0:
        since = float(since_value)
        components["recency"], text = _recency(policy, facts, since)
        if components["recency"] > 0:
            reasons.append(text)
        components["trend"] = _trend(facts, reasons)
        if policy.bgnbd is not None:
            components["model"], text = _model(policy.bgnbd, policy.horizon_days, facts, since)
            reasons.append(text)
    components["engagement"] = _engagement(policy, facts, reasons)
    components["service"] = _service(policy, facts, reasons)
    weights = policy.weights
    if policy.bgnbd is None and policy.weights_without_model is not None:
        weights = policy.weights_without_model
    total = sum(getattr(weights, name) for name in components)
    return 0.0 if total <= 0 else _clip(sum(getattr(weights, k) * v for k, v in components.items()) / total)


def _model(params: BGNBDParams, horizon: float, facts: Mapping[str, Any], since: float) -> tuple[float, str]:
    age = max(_num(facts, "days_since_first_order"), since)
    x = max(_num(facts, "orders_total") - 1.0, 0.0)
    expected = expected_purchases(params.r, params.alpha, params.a, params.b, x, age - since, age, horizon)
    return math.exp(-expected), f"BG/NBD expects {expected:.1f} purchases in the next {horizon:g} days"


def level_of(policy: ChurnPolicy, risk: float, previous: str = "none") -> str:
    """The highest level whose cut-off ``risk`` reaches, or the highest level at or below ``previous``
    (the customer's level so far) whose exit cut-off ``risk`` still reaches, whichever is higher."""
    entered = "high" if risk >= policy.high else "medium" if risk >= policy.medium else (
        "low" if risk >= policy.low else "none")
    floor, top = LEVELS.index(entered), LEVELS.index(previous) if previous in LEVELS else 0
    exits = policy.exit_cutoffs
    for index in range(top, floor, -1):
        if risk >= exits[LEVELS[index]]:
            return LEVELS[index]
    return entered


def assess_churn(policy: ChurnPolicy, facts: Mapping[str, Any], previous: str = "none") -> ChurnAssessment:
    """Churn risk of one customer from the stream's aggregates (keys of ``AGGREGATE_FIELDS``);
    ``previous``: its level so far (the exit cut-offs hold it)."""
    reasons: list[str] = []
    components: dict[str, float] = {}
    risk = _mixed_risk(policy, facts, reasons, components) if policy.model is None else \
        policy.model.assess(facts, reasons, components)  # learned: P(no paid order in its horizon), top features
    level = level_of(policy, risk, previous)
    if _num(facts, "escalations_90d") > 0 and _num(facts, "open_tickets") > 0:
        floor = policy.escalation_level  # an escalation is news now, whatever the score says
        if LEVELS.index(floor) > LEVELS.index(level):
            level = floor
            reasons.append(f"escalated ticket open: level at least {floor}")
    return ChurnAssessment(risk=risk, level=level, reasons=tuple(reasons), components=components)
