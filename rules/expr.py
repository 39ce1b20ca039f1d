"""One CEL expression: compiled once, run cheaply, and rendered as a reason.

The source is tokenized at load time so a reason such as
``spend_365d=12840.00 >= 10000`` is built by joining pre-split pieces, without
re-scanning the expression on the hot path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cel

from rules.exceptions import RulesetError

_TOKEN = re.compile(
    r"""
    (?P<str>[rRbB]{0,2}(?:\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''
        |"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'))
    |(?P<num>(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)[uU]?)
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<space>\s+)
    |(?P<other>.)
    """,
    re.VERBOSE,
)
# Identifiers that are never fact fields: literals, reserved words, type names.
_NOT_FIELDS = frozenset(
    "true false null in as break const continue else for function if import let loop "
    "package namespace return var void while "
    "int uint double bool string bytes list map null_type type dyn".split()
)
_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str


def _tokens(source: str) -> list[_Token]:
    return [_Token(m.lastgroup or "other", m.group()) for m in _TOKEN.finditer(source)]


def _significant(tokens: list[_Token]) -> list[int]:
    return [i for i, t in enumerate(tokens) if t.kind != "space"]


def _classify(tokens: list[_Token]) -> tuple[set[int], set[str]]:
    """Return indexes of free-variable tokens and the names bound by macros."""
    sig = _significant(tokens)
    text = [tokens[i].text for i in sig]
    free: set[int] = set()
    bound: set[str] = set()
    for pos, idx in enumerate(sig):
        tok = tokens[idx]
        if tok.kind != "ident" or tok.text in _NOT_FIELDS:
            continue
        prev = text[pos - 1] if pos > 0 else ""
        nxt = text[pos + 1] if pos + 1 < len(text) else ""
        if prev == "." or nxt == "(":
            continue  # field selection or function call
        if (
            nxt == ","
            and pos >= 3
            and text[pos - 1] == "("
            and text[pos - 2] in _MACROS
            and text[pos - 3] == "."
        ):
            bound.add(tok.text)  # e.g. the `t` in tags.exists(t, ...)
            continue
        free.add(idx)
    return free, bound


def macro_depth(source: str) -> int:
    """How deeply comprehension macros (``exists``, ``all``, ``map``, …) nest in ``source``."""
    text = [t.text for t in _tokens(source) if t.kind != "space"]
    parens = 0
    opened: list[int] = []  # paren level inside each open macro call
    deepest = 0
    for pos, tok in enumerate(text):
        if tok == "(":
            parens += 1
            if pos >= 2 and text[pos - 1] in _MACROS and text[pos - 2] == ".":
                opened.append(parens)
                deepest = max(deepest, len(opened))
        elif tok == ")":
            if opened and opened[-1] == parens:
                opened.pop()
            parens -= 1
    return deepest


def format_value(value: Any) -> str:
    """Format a fact value for a reason: floats with 2 decimals, None as null."""
    kind = value.__class__
    if kind is float:  # the usual cases first: this runs for every fact of every reason
        return f"{value:.2f}"
    if kind is int:
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, int):
        return str(value)
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


@dataclass(frozen=True, slots=True)
class CompiledExpr:
    """A compiled CEL program plus what is needed to run and explain it."""

    source: str
    program: cel.Program
    names: tuple[str, ...]
    """Free variables (fact fields) the expression reads."""
    functions: tuple[str, ...]
    """Named functions it calls (operators excluded)."""
    literals: tuple[str, ...]
    """Source text between substituted variables; one more than ``refs``."""
    refs: tuple[str, ...]
    """Variable tokens in source order, substituted as ``name=value``."""

    def run(self, facts: Mapping[str, Any]) -> Any:
        """Execute against only the referenced facts (small dict, cheap conversion)."""
        return self.program.execute({name: facts[name] for name in self.names})

    def render(self, facts: Mapping[str, Any]) -> str:
        """Return the source with each variable shown as ``name=value``."""
        parts = [self.literals[0]]
        for name, after in zip(self.refs, self.literals[1:], strict=True):
            parts.append(f"{name}={format_value(facts.get(name))}{after}")
        return "".join(parts)


def compile_expr(source: object) -> CompiledExpr:
    """Compile CEL source; raise :class:`RulesetError` on anything but valid CEL."""
    if not isinstance(source, str) or not source.strip():
        raise RulesetError(
            f"expression must be a non-empty string, got {source!r}",
            hint="write a CEL condition such as: spend_365d >= 10000",
        )
    try:
        program = cel.compile(source)
    except Exception as exc:  # ValueError on syntax errors; be defensive about others
        raise RulesetError(
            f"CEL syntax error: {exc}", hint="check the expression against rules/README.md"
        ) from exc
    tokens = _tokens(source)
    free, bound = _classify(tokens)
    names = tuple(v for v in program.variables() if v not in bound and v not in _NOT_FIELDS)
    literals: list[str] = []
    refs: list[str] = []
    current: list[str] = []
    for i, tok in enumerate(tokens):
        if i in free and tok.text in names:
            literals.append("".join(current))
            refs.append(tok.text)
            current = []
        else:
            current.append(tok.text)
    literals.append("".join(current))
    functions = tuple(f for f in program.functions() if f[:1].isalpha())
    return CompiledExpr(source, program, names, functions, tuple(literals), tuple(refs))
