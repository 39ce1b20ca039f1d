"""Tag evaluation: the hot path, called once per customer update.

No compilation, no YAML and no per-rule allocation beyond the small context
dict CEL needs. One bad rule never stops the others: its error is recorded (a
:class:`~rules.exceptions.RuleEvaluationError`) and the rule counts as not fired.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from rules.exceptions import RuleErrors, RuleEvaluationError, record
from rules.expr import CompiledExpr
from rules.model import Ruleset

HELD_PREFIX = "held: not yet "


def _truth(expr: CompiledExpr, facts: Mapping[str, Any]) -> bool:
    result = expr.run(facts)
    if result is True or result is False:
        return result
    raise TypeError(f"'{expr.source}' returned {result!r}, not true/false")


def evaluate_tags(
    ruleset: Ruleset,
    facts: Mapping[str, Any],
    current_tags: Collection[str],
    errors: RuleErrors | list[str] | None = None,
) -> dict[str, str]:
    """Return the tags the customer holds now, each with a human-readable reason.

    A tag already in ``current_tags`` whose rule has ``exit`` stays until
    ``exit`` is true (hysteresis; reason ``"held: not yet <exit with values>"``);
    otherwise a tag is held iff ``when`` is true (reason: ``when`` with values).
    A rule that raises is treated as not fired and, if ``errors`` is given, its
    :class:`RuleEvaluationError` is added to it (``"rule '<tag>': <message>"`` to a list of str).
    """
    fired: dict[str, str] = {}
    for rule in ruleset.rules:
        exit_expr = rule._exit_expr  # package-internal compiled program
        condition = "when"
        try:
            if exit_expr is not None and rule.tag in current_tags:
                condition = "exit"
                if not _truth(exit_expr, facts):
                    fired[rule.tag] = HELD_PREFIX + exit_expr.render(facts)
            elif _truth(rule._when_expr, facts):
                fired[rule.tag] = rule._when_expr.render(facts)
        except Exception as exc:  # any runtime failure stays inside this rule
            record(errors, RuleEvaluationError(condition, exc, rule=rule.tag, file=rule.file, line=rule.line))
    return fired
