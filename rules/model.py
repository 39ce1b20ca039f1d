"""The immutable ruleset objects produced by the loader.

Each dataclass compiles its CEL source when it is built, so a value of these
types always carries a ready program; checking against the facts schema is the
loader's job (:func:`rules.loader.load_ruleset`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from rules.churn import ChurnPolicy
from rules.exceptions import RulesetError
from rules.expr import CompiledExpr, compile_expr
from rules.weights import Weights

Visibility = Literal["public", "team", "restricted"]
VISIBILITIES: tuple[Visibility, ...] = ("public", "team", "restricted")
TAG_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

DEFAULT_C_WHEN = (
    "orders_90d > 0 && (spend_90d > spend_prev_90d"
    " || days_since_first_order != null && days_since_first_order <= 90.0)"
)
"""Tier C ("growing"): paid orders in the last 90 days, and either spend grew
versus the previous 90 days or the first order is at most 90 days old."""


@dataclass(frozen=True)
class Rule:
    """One tag rule: the tag is held while ``when`` is true.

    With ``exit`` set, a held tag is kept until ``exit`` becomes true
    (hysteresis), so a value hovering around the threshold does not flap.
    """

    tag: str
    description: str
    owner: str
    visibility: Visibility
    when: str
    exit: str | None = None
    file: str | None = field(default=None, repr=False, compare=False)  # where it is defined: error reports
    line: int | None = field(default=None, repr=False, compare=False)
    _when_expr: CompiledExpr = field(init=False, repr=False, compare=False)
    _exit_expr: CompiledExpr | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not TAG_PATTERN.match(self.tag):
            raise RulesetError(
                f"invalid tag name '{self.tag}'",
                hint="use lower case letters, digits and _, starting with a letter "
                "(at most 64 characters), e.g. big_spender",
            )
        if self.visibility not in VISIBILITIES:
            raise RulesetError(
                f"invalid visibility '{self.visibility}'",
                hint="use one of: " + ", ".join(VISIBILITIES),
            )
        exit_expr = None if self.exit is None else compile_expr(self.exit)
        object.__setattr__(self, "_when_expr", compile_expr(self.when))
        object.__setattr__(self, "_exit_expr", exit_expr)


#: exit fractions when a ruleset gives none (never below the entry fraction: then there is no band)
DEFAULT_A_EXIT_FRACTION = 0.07
DEFAULT_B_EXIT_FRACTION = 0.25


@dataclass(frozen=True)
class TierPolicy:
    """How customers map to tiers A–D; see :mod:`rules.tiers` for the definition.

    ``a_exit_fraction`` / ``b_exit_fraction``: the band a customer already in A (in A or B) keeps
    its tier within; None (not given) is 0.07 / 0.25, or the entry fraction where that is larger.
    """

    a_top_fraction: float = 0.05
    b_top_fraction: float = 0.20
    c_when: str = DEFAULT_C_WHEN
    b_when: str = "true"  # extra condition for B, e.g. stable repeat purchases: orders_365d >= 2
    a_exit_fraction: float | None = None
    b_exit_fraction: float | None = None
    min_tier_dwell: float = 0.0  # seconds a tier is kept at least before a demotion is published (0: off)
    _c_expr: CompiledExpr = field(init=False, repr=False, compare=False)
    _b_expr: CompiledExpr = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("a_top_fraction", "b_top_fraction"):
            _fraction(name, getattr(self, name))
        if self.a_top_fraction > self.b_top_fraction:
            raise RulesetError(
                "a_top_fraction is larger than b_top_fraction",
                hint="tier A is the top slice of tier B's range, e.g. 0.05 and 0.20",
            )
        for name, entry, default in (("a_exit_fraction", "a_top_fraction", DEFAULT_A_EXIT_FRACTION),
                                     ("b_exit_fraction", "b_top_fraction", DEFAULT_B_EXIT_FRACTION)):
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, max(default, getattr(self, entry)))
                continue
            _fraction(name, value)
            if value < getattr(self, entry):
                raise RulesetError(
                    f"{name} {value} is smaller than {entry} {getattr(self, entry)}",
                    hint=f"a customer leaves the tier only outside its exit fraction: give {name} at least "
                    f"{entry} (equal: no band)",
                )
        dwell = self.min_tier_dwell
        if isinstance(dwell, bool) or not isinstance(dwell, int | float) or not 0 <= dwell < float("inf"):
            raise RulesetError(f"min_tier_dwell must be a number of seconds >= 0, got {dwell!r}",
                               hint="e.g. 3600 (an hour in a tier before a demotion is published); 0: off")
        a_exit, b_exit = self.exit_fractions
        if a_exit > b_exit:
            raise RulesetError(
                f"a_exit_fraction {a_exit} is larger than b_exit_fraction {b_exit}",
                hint="A's band lies within B's, e.g. 0.07 and 0.25",
            )
        object.__setattr__(self, "_c_expr", compile_expr(self.c_when))
        object.__setattr__(self, "_b_expr", compile_expr(self.b_when))

    @property
    def exit_fractions(self) -> tuple[float, float]:
        """``(a_exit_fraction, b_exit_fraction)`` as resolved (never None once built)."""
        return (float(self.a_exit_fraction if self.a_exit_fraction is not None else self.a_top_fraction),
                float(self.b_exit_fraction if self.b_exit_fraction is not None else self.b_top_fraction))


def _fraction(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RulesetError(f"{name} must be a number, got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise RulesetError(f"{name} must be between 0 and 1, got {value}")


@dataclass(frozen=True)
class ScoreWeights(Weights):
    """Weights of the 0..100 score dimensions; non-negative and summing to 1."""

    label: ClassVar[str] = "score"
    spend: float = 0.4
    engagement: float = 0.3
    growth: float = 0.2
    strategic: float = 0.1


@dataclass(frozen=True)
class Ruleset:
    """Everything loaded from a rules directory, checked and compiled."""

    version: str
    rules: tuple[Rule, ...]
    tiers: TierPolicy
    weights: ScoreWeights
    source_files: tuple[str, ...]
    name: str | None = None  # optional human name (top-level ``name:`` in one file)
    churn: ChurnPolicy = field(default_factory=ChurnPolicy)  # ``churn:`` section, else the defaults
