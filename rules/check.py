"""Load-time checks of a compiled expression against the facts schema.

Unknown fields and functions are found statically; types are checked by trial
evaluation against sample facts built from the schema, because CEL here has no
static type checker. A rule that passes these checks cannot fail on the hot
path for a type reason the samples can reach.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from rules.exceptions import RulesetError
from rules.expr import CompiledExpr
from rules.schema import FieldType, sample_values

# Functions native to the CEL runtime (macros such as has/exists never show up).
KNOWN_FUNCTIONS = frozenset(
    "size contains startsWith endsWith matches int uint double string bytes "
    "timestamp duration dyn type getFullYear getMonth getDayOfYear getDayOfMonth "
    "getDate getDayOfWeek getHours getMinutes getSeconds getMilliseconds".split()
)

_Sample = tuple[dict[str, Any], tuple[str, ...]]  # facts, nullable fields set to None


def suggest(name: str, choices: Mapping[str, Any] | frozenset[str]) -> str | None:
    """Closest valid name, for 'did you mean' hints."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _require_known(what: str, names: Iterable[str], known: Mapping[str, Any] | frozenset[str],
                   listing: str) -> None:
    for name in names:
        if name not in known:
            close = suggest(name, known)
            hint = f"did you mean '{close}'?" if close else f"{listing}: " + ", ".join(sorted(known))
            raise RulesetError(f"unknown {what} '{name}'", hint=hint)


def _check_names(expr: CompiledExpr, schema: Mapping[str, FieldType]) -> None:
    _require_known("field", expr.names, schema, "known fields")
    _require_known("function", expr.functions, KNOWN_FUNCTIONS, "available functions")


def _samples(names: tuple[str, ...], schema: Mapping[str, FieldType]) -> Iterator[_Sample]:
    nullable = tuple(n for n in names if schema[n].nullable)
    for pick in (0, -1):
        base = {n: sample_values(schema[n])[pick] for n in names}
        yield base, ()
        for name in names:
            for value in sample_values(schema[name]):
                yield {**base, name: value}, ()
        for name in nullable:
            yield {**base, name: None}, (name,)
        if len(nullable) > 1:
            yield {**base, **dict.fromkeys(nullable)}, nullable


def _trial(expr: CompiledExpr, facts: dict[str, Any]) -> str | None:
    """Run once; return a problem description or None if it yields a bool."""
    try:
        result = expr.run(facts)
    except Exception as exc:  # TypeError/RuntimeError/KeyError from the CEL runtime
        return str(exc)
    if not isinstance(result, bool):
        return f"must evaluate to true/false, got {type(result).__name__} {result!r}"
    return None


def _guard_hint(field: str, source: str) -> str:
    body = f"({source})" if ("||" in source or "?" in source) else source
    return f"guard it: {field} != null && {body}"


def check_expression(expr: CompiledExpr, schema: Mapping[str, FieldType]) -> None:
    """Raise :class:`RulesetError` unless ``expr`` is a well-typed boolean condition."""
    _check_names(expr, schema)
    null_failures: list[tuple[str, ...]] = []
    for facts, nulls in _samples(expr.names, schema):
        problem = _trial(expr, facts)
        if problem is None:
            continue
        if not nulls:
            raise RulesetError(
                f"type error in '{expr.source}' with sample {facts}: {problem}",
                hint="compare like with like; convert with double(x) or int(x)",
            )
        null_failures.append(nulls)
    if null_failures:
        field = null_failures[0][0]
        singles = [n[0] for n in null_failures if len(n) == 1]
        field = singles[0] if singles else field
        raise RulesetError(
            f"'{field}' can be null; {_guard_hint(field, expr.source)}",
        )
