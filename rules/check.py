"""Load-time checks of a compiled expression against the facts schema.

Unknown fields and functions are found statically; types are checked by trial
evaluation against sample facts built from the schema, because CEL here has no
static type checker. A rule that passes these checks cannot fail on the hot
path for a type reason the samples can reach.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from rules.exceptions import RulesetError
from rules.expr import CompiledExpr, macro_depth
from rules.schema import FieldType, sample_values, with_tags

# Functions native to the CEL runtime (macros such as has/exists never show up).
KNOWN_FUNCTIONS = frozenset(
    "size contains startsWith endsWith matches int uint double string bytes "
    "timestamp duration dyn type getFullYear getMonth getDayOfYear getDayOfMonth "
    "getDate getDayOfWeek getHours getMinutes getSeconds getMilliseconds".split()
)

_Sample = tuple[dict[str, Any], tuple[str, ...]]  # facts, nullable fields set to None

# Cost limits for rules written by people we need not trust. CEL has no loops, recursion,
# I/O or code execution; its only iteration is the comprehension macros over list and map
# facts, whose cost is (facts' size) ** (nesting depth). So: bounded source, bounded
# nesting, and a timed trial on the largest facts the stream can hold.
MAX_SOURCE_CHARS = 2000
MAX_MACRO_DEPTH = 2
MAX_EVAL_MS = 5.0
#: the largest list and map facts: more tags than any sane ruleset plus the manual-tag cap,
#: and the profile attribute cap (stream.domain.profiles.MAX_ATTRIBUTES) with long values
WORST_LIST = tuple(f"tag_{i:03d}" for i in range(300))
WORST_MAP = {f"attribute_{i:03d}": "v" * 256 for i in range(100)}
WORST_STRING = "x" * 4096


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


def check_cost(expr: CompiledExpr, schema: Mapping[str, FieldType], limit_ms: float = MAX_EVAL_MS) -> float:
    """Reject expressions that could be slow on the hot path; return the worst trial time in ms."""
    if len(expr.source) > MAX_SOURCE_CHARS:
        raise RulesetError(f"expression is {len(expr.source)} characters; the limit is {MAX_SOURCE_CHARS}",
                           hint="split it into several rules")
    depth = macro_depth(expr.source)
    if depth > MAX_MACRO_DEPTH:
        raise RulesetError(f"comprehension macros nest {depth} deep; the limit is {MAX_MACRO_DEPTH}",
                           hint="exists/all/map/filter inside each other multiply their cost")
    worst = {"list": list(WORST_LIST), "map": dict(WORST_MAP), "string": WORST_STRING}
    fields = with_tags(schema)
    facts = {n: worst.get(fields[n].kind, sample_values(fields[n])[-1]) for n in expr.names}
    best = float("inf")
    for _ in range(3):  # best of three: a busy machine must not reject a cheap rule
        started = time.perf_counter()
        try:
            expr.run(facts)
        except Exception:  # noqa: BLE001, S110 - only the cost matters here; types were checked already
            pass
        best = min(best, (time.perf_counter() - started) * 1000)
        if best <= limit_ms:
            return best
    raise RulesetError(f"evaluation takes {best:.1f} ms on the largest facts; the limit is {limit_ms:g} ms",
                       hint="avoid comprehensions over tags or attributes inside other comprehensions")


def check_expression(expr: CompiledExpr, schema: Mapping[str, FieldType]) -> None:
    """Raise :class:`RulesetError` unless ``expr`` is a well-typed, cheap boolean condition."""
    _check_names(expr, schema)
    if len(expr.source) > MAX_SOURCE_CHARS or macro_depth(expr.source) > MAX_MACRO_DEPTH:
        check_cost(expr, schema)  # raises before any trial can run long
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
    check_cost(expr, schema)
