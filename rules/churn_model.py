"""A learned churn model: logistic regression over the worker's own facts, with reasons.

``tagger churn train`` fits it on an order history and writes it as a ``churn_model:``
section (its own YAML file in the rules directory); the loader checks it here
(:func:`parse_churn_model`), and :func:`rules.churn.assess_churn` then scores with it
instead of the weighted mix. The risk is

    P(no paid order within horizon_days) = 1 / (1 + exp(-(intercept + sum_i coef_i * (x_i - mean_i) / scale_i)))

where each ``x_i`` is one of :data:`FEATURES`, computed from the facts by the same function in
training and in the worker (:func:`feature_values`). A feature's contribution is its term of the
sum; the reasons are the words of the largest contributions that raise the risk.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rules.bgnbd import expected_purchases
from rules.check import suggest
from rules.exceptions import RulesetError
from rules.yamlsrc import Located

__all__ = ["FEATURES", "BGNBD_FEATURES", "ChurnModel", "ModelFeature", "feature_values", "parse_churn_model"]

KIND = "logistic_regression"
MAX_REASONS = 3
_MODEL_KEYS = ("kind", "horizon_days", "intercept", "features", "bgnbd", "trained")
_FEATURE_KEYS = ("name", "mean", "scale", "coef")
_BGNBD_KEYS = ("r", "alpha", "a", "b")


def _n(facts: Mapping[str, Any], key: str) -> float:
    value = facts.get(key)
    return 0.0 if value is None else float(value)


def _since(facts: Mapping[str, Any]) -> float:
    """Days since the last paid order; without one, days since the customer was first seen."""
    value = facts.get("days_since_last_order")
    return _n(facts, "days_since_first_seen") if value is None else float(value)


def _age(facts: Mapping[str, Any]) -> float:
    value = facts.get("days_since_first_order")
    return _n(facts, "days_since_first_seen") if value is None else float(value)


def _login_silence(facts: Mapping[str, Any]) -> float:
    """Days since the last login; 0 without one (``never_logged_in`` tells those apart)."""
    value = facts.get("days_since_last_login")
    return 0.0 if value is None else float(value)


def _log(key: str) -> Callable[[Mapping[str, Any], float], float]:
    """log(1 + x) of a count or amount that is never null in the facts (net spend may be negative: 0)."""
    log1p = math.log1p
    return lambda facts, _e: log1p(facts[key]) if facts[key] > 0 else 0.0


def _count(key: str, one: str, many: str) -> Callable[[Mapping[str, Any], float], str]:
    def text(facts: Mapping[str, Any], _e: float) -> str:
        count = _n(facts, key)
        return f"{count:.0f} {one if count == 1 else many}"
    return text


def _money(key: str, label: str) -> Callable[[Mapping[str, Any], float], str]:
    return lambda facts, _e: f"{label} {_n(facts, key):.2f}"


def _orders_in_all(facts: Mapping[str, Any], _e: float) -> str:
    count = _n(facts, "orders_total")
    return "no paid order yet" if count == 0 else "only one paid order so far" if count == 1 else \
        f"{count:.0f} paid orders in all"


def _silent(facts: Mapping[str, Any], _e: float) -> str:
    if facts.get("days_since_last_order") is None:
        return f"no paid order yet, first seen {_since(facts):.0f} days ago"
    return f"no paid order for {_since(facts):.0f} days"


def _expects(_facts: Mapping[str, Any], expected: float) -> str:
    return f"BG/NBD expects {expected:.1f} purchases"


@dataclass(frozen=True)
class ModelFeature:
    """One input of the model: its value from the facts (and the BG/NBD expectation ``e``) and its words.

    Features with the same ``reason`` function read the same fact (days since the last order, plain and
    log): their terms are summed before the reasons are chosen, so the words follow the fact's net effect.
    """

    value: Callable[[Mapping[str, Any], float], float]
    reason: Callable[[Mapping[str, Any], float], str]


#: Every feature a model may use, by the name the YAML gives it. Counts and amounts enter as log(1 + x).
FEATURES: dict[str, ModelFeature] = {
    "days_since_last_order": ModelFeature(lambda f, _e: _since(f), _silent),
    "days_since_last_order_log": ModelFeature(lambda f, _e: math.log1p(_since(f)), _silent),
    "days_since_first_order_log": ModelFeature(
        lambda f, _e: math.log1p(_age(f)), lambda f, _e: f"first paid order {_age(f):.0f} days ago"),
    "orders_total_log": ModelFeature(_log("orders_total"), _orders_in_all),
    "one_time_buyer": ModelFeature(lambda f, _e: float(_n(f, "orders_total") == 1), _orders_in_all),
    "no_paid_order": ModelFeature(lambda f, _e: float(_n(f, "orders_total") == 0), _orders_in_all),
    "orders_30d_log": ModelFeature(_log("orders_30d"), _count("orders_30d", "paid order in the last 30 days",
                                                               "paid orders in the last 30 days")),
    "orders_90d_log": ModelFeature(_log("orders_90d"), _count("orders_90d", "paid order in the last 90 days",
                                                               "paid orders in the last 90 days")),
    "orders_prev_90d_log": ModelFeature(_log("orders_prev_90d"), _count(
        "orders_prev_90d", "paid order in the 90 days before the last 90",
        "paid orders in the 90 days before the last 90")),
    "spend_365d_log": ModelFeature(_log("spend_365d"), _money("spend_365d", "spend in the last 365 days")),
    "max_order_log": ModelFeature(_log("max_order"), _money("max_order", "largest order")),
    "logins_30d_log": ModelFeature(_log("logins_30d"), _count("logins_30d", "login in the last 30 days",
                                                               "logins in the last 30 days")),
    "logins_365d_log": ModelFeature(_log("logins_365d"), _count("logins_365d", "login in the last 365 days",
                                                                 "logins in the last 365 days")),
    "days_since_last_login_log": ModelFeature(lambda f, _e: math.log1p(_login_silence(f)),
                                              lambda f, _e: f"no login for {_login_silence(f):.0f} days"),
    "never_logged_in": ModelFeature(lambda f, _e: float(f.get("days_since_last_login") is None),
                                    lambda f, _e: "never logged in"),
    "open_tickets_log": ModelFeature(_log("open_tickets"), _count("open_tickets", "open ticket", "open tickets")),
    "open_complaints_log": ModelFeature(_log("open_complaints"), _count("open_complaints", "open complaint",
                                                                         "open complaints")),
    "complaints_90d_log": ModelFeature(_log("complaints_90d"), _count(
        "complaints_90d", "complaint opened in the last 90 days", "complaints opened in the last 90 days")),
    "escalations_90d_log": ModelFeature(_log("escalations_90d"), _count(
        "escalations_90d", "escalation in the last 90 days", "escalations in the last 90 days")),
    "reopened_tickets_log": ModelFeature(_log("reopened_tickets"), _count(
        "reopened_tickets", "open ticket was reopened", "open tickets were reopened")),
    "bgnbd_expected": ModelFeature(lambda _f, e: e, _expects),
    "bgnbd_expected_log": ModelFeature(lambda _f, e: math.log1p(e), _expects),
}
#: the features that need the model's ``bgnbd`` parameters
BGNBD_FEATURES = frozenset(("bgnbd_expected", "bgnbd_expected_log"))


def bgnbd_expectation(params: tuple[float, float, float, float] | None, horizon: float,
                      facts: Mapping[str, Any]) -> float:
    """Expected paid orders in the next ``horizon`` days under BG/NBD (0 without parameters or orders)."""
    if params is None or _n(facts, "orders_total") <= 0 or facts.get("days_since_last_order") is None:
        return 0.0
    since = float(facts["days_since_last_order"])
    age = max(_n(facts, "days_since_first_order"), since)
    r, alpha, a, b = params
    return expected_purchases(r, alpha, a, b, _n(facts, "orders_total") - 1.0, age - since, age, horizon)


def feature_values(names: tuple[str, ...], facts: Mapping[str, Any],
                   bgnbd: tuple[float, float, float, float] | None, horizon: float) -> list[float]:
    """The raw (unscaled) values of ``names`` for one customer: training and scoring both call this."""
    expected = bgnbd_expectation(bgnbd, horizon, facts) if BGNBD_FEATURES.intersection(names) else 0.0
    return [FEATURES[name].value(facts, expected) for name in names]


@dataclass(frozen=True)
class ChurnModel:
    """A fitted logistic regression: P(no paid order within ``horizon_days``) from standardised features."""

    names: tuple[str, ...]
    means: tuple[float, ...]
    scales: tuple[float, ...]
    coefs: tuple[float, ...]
    intercept: float
    horizon_days: float
    bgnbd: tuple[float, float, float, float] | None = None  # r, alpha, a, b (days) for the bgnbd_* features
    # provenance written by `tagger churn train`; not used to score
    trained: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not len(self.names) == len(self.means) == len(self.scales) == len(self.coefs):
            raise RulesetError("churn_model: names, means, scales and coefs differ in length")
        uses_bgnbd = bool(BGNBD_FEATURES.intersection(self.names))
        if uses_bgnbd and self.bgnbd is None:
            raise RulesetError("churn_model: a bgnbd_* feature needs churn_model.bgnbd")
        object.__setattr__(self, "_uses_bgnbd", uses_bgnbd)
        reasons = list(dict.fromkeys(FEATURES[n].reason for n in self.names))  # one group per fact, in order
        object.__setattr__(self, "_reasons", tuple(reasons))
        object.__setattr__(self, "_group_of", tuple(reasons.index(FEATURES[n].reason) for n in self.names))
        # (value function, coef / scale, mean) per feature: one call and a multiply-add each on the hot path
        object.__setattr__(self, "_terms", tuple((FEATURES[n].value, c / s, m) for n, c, s, m in
                                                 zip(self.names, self.coefs, self.scales, self.means, strict=True)))

    def contributions(self, facts: Mapping[str, Any]) -> tuple[float, list[float], float]:
        """(log-odds, each feature's term of it, the BG/NBD expectation used)."""
        expected = bgnbd_expectation(self.bgnbd, self.horizon_days, facts) if self._uses_bgnbd else 0.0  # type: ignore[attr-defined]
        terms: tuple[tuple[Callable[[Mapping[str, Any], float], float], float, float], ...] = self._terms  # type: ignore[attr-defined]
        parts = [w * (value(facts, expected) - m) for value, w, m in terms]
        return self.intercept + sum(parts), parts, expected

    def assess(self, facts: Mapping[str, Any], reasons: list[str], components: dict[str, float]) -> float:
        """The risk of one customer; appends the words of the top features raising it and fills ``components``
        (each feature's contribution to the log-odds)."""
        z, parts, expected = self.contributions(facts)
        groups: list[float] = [0.0] * len(self._reasons)  # type: ignore[attr-defined]
        for group, part in zip(self._group_of, parts, strict=True):  # type: ignore[attr-defined]
            groups[group] += part
        for _, group in sorted([(p, g) for g, p in enumerate(groups) if p > 0], reverse=True)[:MAX_REASONS]:
            text = self._reasons[group](facts, expected)  # type: ignore[attr-defined]
            reasons.append(text + f" in the next {self.horizon_days:g} days" if text.startswith("BG/NBD") else text)
        components.update(zip(self.names, parts, strict=True))
        risk = 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0
        if not reasons:  # nothing above the average customer's: say what the risk means
            reasons.append(f"{100 * risk:.0f}% chance of no paid order in the next {self.horizon_days:g} days")
        return risk

    def document(self) -> dict[str, Any]:
        """The ``churn_model:`` section as plain data (``yaml.safe_dump`` writes it)."""
        doc: dict[str, Any] = {"kind": KIND, "horizon_days": self.horizon_days, "intercept": self.intercept}
        if self.bgnbd is not None:
            doc["bgnbd"] = dict(zip(_BGNBD_KEYS, self.bgnbd, strict=True))
        doc["features"] = [{"name": n, "mean": m, "scale": s, "coef": c}
                           for n, m, s, c in zip(self.names, self.means, self.scales, self.coefs, strict=True)]
        if self.trained is not None:
            doc["trained"] = dict(self.trained)
        return doc


def _finite(doc: Located, key: str, what: str, *, positive: bool = False) -> float:
    value = doc.value.get(key) if isinstance(doc.value, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise doc.error(f"{what} must be a finite number, got {value!r}", key=key)
    if positive and value <= 0:
        raise doc.error(f"{what} must be positive, got {value}", key=key)
    return float(value)


def _feature(item: Located, index: int, seen: set[str]) -> tuple[str, float, float, float]:
    where = f"churn_model.features[{index}]"
    item.mapping(where, _FEATURE_KEYS)
    missing = [k for k in _FEATURE_KEYS if k not in item.value]
    if missing:
        raise item.error(f"{where}: missing {', '.join(missing)}", hint="each feature has name, mean, scale, coef")
    name = item.value["name"]
    if not isinstance(name, str) or name not in FEATURES:
        close = suggest(str(name), frozenset(FEATURES))
        raise item.error(f"{where}.name: unknown feature {name!r}", key="name",
                         hint=f"did you mean '{close}'?" if close else "known: " + ", ".join(FEATURES))
    if name in seen:
        raise item.error(f"{where}.name: feature {name!r} is given twice", key="name")
    seen.add(name)
    return (name, _finite(item, "mean", f"{where}.mean"), _finite(item, "scale", f"{where}.scale", positive=True),
            _finite(item, "coef", f"{where}.coef"))


def _bgnbd(doc: Located) -> tuple[float, float, float, float] | None:
    part = doc.child("bgnbd")
    if part.value is None:
        return None
    part.mapping("churn_model.bgnbd", _BGNBD_KEYS)
    r, alpha, a, b = (_finite(part, k, f"churn_model.bgnbd.{k}", positive=True) for k in _BGNBD_KEYS)
    return r, alpha, a, b


def parse_churn_model(doc: Located) -> ChurnModel:
    """The ``churn_model:`` section, checked; every problem names the file, the line and the key."""
    doc.mapping("churn_model", _MODEL_KEYS)
    for key in ("kind", "horizon_days", "intercept", "features"):
        if key not in doc.value:
            raise doc.error(f"churn_model: missing '{key}'", hint="write the file with `tagger churn train`")
    if doc.value["kind"] != KIND:
        raise doc.error(f"churn_model.kind: {doc.value['kind']!r} is not a known model", key="kind",
                        hint=f"the only kind is {KIND}")
    listed = doc.child("features")
    if not isinstance(listed.value, list) or not listed.value:
        raise doc.error("churn_model.features must be a non-empty list", key="features")
    seen: set[str] = set()
    rows = [_feature(item, i, seen) for i, item in enumerate(listed.items())]
    bgnbd = _bgnbd(doc)
    if bgnbd is None and seen & BGNBD_FEATURES:
        raise doc.error("churn_model: a bgnbd_* feature needs churn_model.bgnbd", key="features",
                        hint="give bgnbd: {r, alpha, a, b} (time in days) or drop the feature")
    trained = doc.value.get("trained")
    if trained is not None and not isinstance(trained, dict):
        raise doc.error("churn_model.trained must be a mapping", key="trained")
    names, means, scales, coefs = (tuple(column) for column in zip(*rows, strict=True))
    return ChurnModel(names=names, means=means, scales=scales, coefs=coefs,  # type: ignore[arg-type]
                      intercept=_finite(doc, "intercept", "churn_model.intercept"),
                      horizon_days=_finite(doc, "horizon_days", "churn_model.horizon_days", positive=True),
                      bgnbd=bgnbd, trained=trained)
