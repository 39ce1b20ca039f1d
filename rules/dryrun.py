"""Dry-run a candidate ruleset against customers' current tags and tiers (pure).

The caller feeds customers (id, facts, current tags, current tier) and the tier
cut-offs computed with the candidate's fractions; the report says who would
gain or lose each tag, who would move between tiers, and which rules failed.
Nothing is applied anywhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rules.exceptions import RuleErrors
from rules.model import Ruleset
from rules.schema import TAGS_FIELD
from rules.tagging import evaluate_tags
from rules.tiers import assign_tier

EXAMPLES = 3
"""Example customers kept per tag gain/loss, tier move and rule error."""

Customer = tuple[str, Mapping[str, Any], Collection[str], str | None]
"""(customer_id, facts without ``tags``, current tags, current tier)."""


@dataclass
class TagDelta:
    """How one tag would change: counts before/after and who gains or loses it."""

    before: int = 0
    after: int = 0
    gained: int = 0
    lost: int = 0
    gain_examples: list[tuple[str, str]] = field(default_factory=list)  # (customer, reason)
    loss_examples: list[str] = field(default_factory=list)


@dataclass
class Examples:
    """A count with up to :data:`EXAMPLES` examples."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, example: str) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(example)


@dataclass
class DryRunReport:
    """The outcome of a dry run; see :func:`dry_run`."""

    ruleset: Ruleset = field(repr=False, compare=False)
    a_cut: float | None = None
    b_cut: float | None = None
    a_exit_cut: float | None = None  # the tier bands' lower edges (None: no band), held from the current tier
    b_exit_cut: float | None = None
    evaluated: int = 0
    tags: dict[str, TagDelta] = field(default_factory=dict)
    tier_moves: dict[tuple[str, str], Examples] = field(default_factory=dict)
    tiers_before: Counter[str] = field(default_factory=Counter)
    tiers_after: Counter[str] = field(default_factory=Counter)
    errors: dict[str, Examples] = field(default_factory=dict)  # "rule 'x'" -> customers
    skipped: dict[str, Examples] = field(default_factory=dict)  # why -> customers

    @property
    def ruleset_version(self) -> str:
        return self.ruleset.version

    @property
    def defined_tags(self) -> tuple[str, ...]:
        return tuple(r.tag for r in self.ruleset.rules)

    @property
    def undefined_tags(self) -> list[str]:
        """Tags customers hold now that the candidate does not define (all would be lost)."""
        return sorted(t for t, d in self.tags.items() if t not in self.defined_tags and d.before)

    def add(self, customer_id: str, facts: Mapping[str, Any], current_tags: Collection[str],
            current_tier: str | None, *, manual_tags: Collection[str] = ()) -> None:
        """Evaluate one customer with the candidate and record the differences.

        ``manual_tags`` (set by people, not rules) are kept whatever the rules say, as live.
        """
        current = set(current_tags)
        full = {**facts, TAGS_FIELD: sorted(current)}
        errors = RuleErrors()
        new = {tag: "manual" for tag in manual_tags}
        new |= evaluate_tags(self.ruleset, full, current, errors=errors)
        tier = assign_tier(self.ruleset, full, self.a_cut, self.b_cut, errors=errors, previous=current_tier,
                           a_exit_cut=self.a_exit_cut, b_exit_cut=self.b_exit_cut)
        self.evaluated += 1
        for tag in current | new.keys():
            delta = self.tags.setdefault(tag, TagDelta())
            delta.before += tag in current
            delta.after += tag in new
            if tag in new and tag not in current:
                delta.gained += 1
                if len(delta.gain_examples) < EXAMPLES:
                    delta.gain_examples.append((customer_id, new[tag]))
            elif tag in current and tag not in new:
                delta.lost += 1
                if len(delta.loss_examples) < EXAMPLES:
                    delta.loss_examples.append(customer_id)
        before = current_tier or "-"
        self.tiers_before[before] += 1
        self.tiers_after[tier] += 1
        if before != tier:
            self.tier_moves.setdefault((before, tier), Examples()).add(customer_id)
        for error in errors:
            self.errors.setdefault(error.where, Examples()).add(f"{customer_id}: {error.detail}")

    def skip(self, customer_id: str, why: str) -> None:
        """Record a customer that could not be evaluated (e.g. an unreadable view)."""
        self.skipped.setdefault(why, Examples()).add(customer_id)

    def changed_tags(self) -> list[str]:
        """Tags anyone would gain or lose, by name."""
        return sorted(t for t, d in self.tags.items() if d.gained or d.lost)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (``--json``)."""
        return {
            "ruleset_version": self.ruleset_version,
            "ruleset_name": self.ruleset.name,
            "cutoffs": {"a": self.a_cut, "b": self.b_cut},
            "evaluated": self.evaluated,
            "tags": {
                tag: {
                    "before": d.before, "after": d.after, "gained": d.gained, "lost": d.lost,
                    "gain_examples": [{"customer_id": c, "reason": r} for c, r in d.gain_examples],
                    "loss_examples": d.loss_examples, "defined": tag in self.defined_tags,
                }
                for tag, d in sorted(self.tags.items())
            },
            "tier_moves": [
                {"from": a, "to": b, "count": m.count, "examples": m.examples}
                for (a, b), m in sorted(self.tier_moves.items())
            ],
            "tiers_before": dict(sorted(self.tiers_before.items())),
            "tiers_after": dict(sorted(self.tiers_after.items())),
            "errors": {k: {"count": e.count, "examples": e.examples} for k, e in sorted(self.errors.items())},
            "skipped": {k: {"count": e.count, "examples": e.examples} for k, e in sorted(self.skipped.items())},
        }


def dry_run(customers: Iterable[Customer], ruleset: Ruleset, a_cut: float | None,
            b_cut: float | None, a_exit_cut: float | None = None, b_exit_cut: float | None = None) -> DryRunReport:
    """Evaluate every customer with the candidate ``ruleset``; change nothing.

    Each customer's facts must hold every schema field (``tags`` is added from the
    current tags, which also drive hysteresis exactly as in the live worker; so does the
    current tier, within the exit cuts' bands).
    """
    report = DryRunReport(ruleset, a_cut, b_cut, a_exit_cut, b_exit_cut)
    for customer_id, facts, tags, tier in customers:
        report.add(customer_id, facts, tags, tier)
    return report


def _cut(value: float | None) -> str:
    return "nobody" if value is None else f">= {value:.2f}"


def render_text(report: DryRunReport) -> str:
    """A readable table of the report, for people."""
    name = f"{report.ruleset.name!r} " if report.ruleset.name else ""
    out = [f"dry run of candidate ruleset {name}{report.ruleset_version}: {report.evaluated} customers evaluated "
           f"(tier A {_cut(report.a_cut)}, B {_cut(report.b_cut)}); nothing was changed", ""]
    out.append(f"{'tag':<32}{'now':>8}{'after':>8}{'gained':>8}{'lost':>8}")
    for tag in sorted(set(report.tags) | set(report.defined_tags)):
        d = report.tags.get(tag, TagDelta())
        note = "" if tag in report.defined_tags else "  (not defined by the candidate)"
        out.append(f"{tag:<32}{d.before:>8}{d.after:>8}{'+' + str(d.gained):>8}{'-' + str(d.lost):>8}{note}")
        out += [f"    + {cid}: {reason}" for cid, reason in d.gain_examples]
        out += [f"    - {cid}" for cid in d.loss_examples]
    out += ["", "tier moves:" if report.tier_moves else "tier moves: none"]
    for (a, b), move in sorted(report.tier_moves.items()):
        out.append(f"    {a} -> {b}: {move.count:>8}   e.g. {', '.join(move.examples)}")
    for label, counts in (("tiers now:  ", report.tiers_before), ("tiers after:", report.tiers_after)):
        out.append(f"{label} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    out += ["", "rule errors:" if report.errors else "rule errors: none"]
    for where, err in sorted(report.errors.items()):
        out.append(f"    {where}: {err.count} customers, e.g. " + " | ".join(err.examples))
    for why, skipped in sorted(report.skipped.items()):
        out.append(f"skipped {skipped.count} customers ({why}), e.g. {', '.join(skipped.examples)}")
    return "\n".join(out)
