"""Unit tests for a ruleset, written in YAML by the people who own the rules.

A case file lists customers (facts, current tags and tier, tier cut-offs) and what the
ruleset must make of them; the format is in rules/README.md ("Testing rules")
and rules/examples/. Pure: nothing here touches Redis or Kafka; the caller passes
the facts schema and the loaded ruleset.
"""

from __future__ import annotations

from collections.abc import Mapping
from copy import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rules.check import suggest
from rules.exceptions import RuleErrors, RulesetError
from rules.model import Ruleset
from rules.schema import TAGS_FIELD, FieldType
from rules.tagging import evaluate_tags
from rules.tiers import TIERS, assign_tier
from rules.yamlsrc import Located, read_yaml

_NEUTRAL: Mapping[str, Any] = {"int": 0, "float": 0.0, "bool": False, "string": "", "list": [], "map": {}}
_FILE_KEYS = ("defaults", "cases")
_DEFAULT_KEYS = ("facts", "tags", "tier", "cutoffs")
_CASE_KEYS = ("name", "facts", "tags", "tier", "cutoffs", "expect")
_CUT_KEYS = ("a", "b", "a_exit", "b_exit")
_EXPECT_KEYS = ("tags", "has", "lacks", "tier", "reasons")


class CaseFileError(RulesetError):
    """A rule test file is invalid: open it at the line given, fix the case named, rerun."""

    def _render(self) -> str:
        where = self.file or ""
        if self.file is not None and self.line is not None:
            where = f"{self.file}:{self.line}"
        if self.rule is not None:
            where = f"{where} case '{self.rule}'".strip()
        text = f"{where}: {self.problem}" if where else self.problem
        return f"{text} — {self.hint}" if self.hint else text


@dataclass(frozen=True)
class Expect:
    """What a case expects; ``None`` / empty means "not checked"."""

    tags: frozenset[str] | None = None
    has: frozenset[str] = frozenset()
    lacks: frozenset[str] = frozenset()
    tier: str | None = None
    reasons: Mapping[str, str] | None = None

    def named_tags(self) -> set[str]:
        """Every tag the expectation mentions."""
        return set(self.tags or ()) | self.has | self.lacks | set(self.reasons or {})


@dataclass(frozen=True)
class Case:
    """One customer and the expected outcome."""

    name: str
    facts: Mapping[str, Any]  # every schema field, without ``tags``
    tags: tuple[str, ...]
    a_cut: float | None
    b_cut: float | None
    expect: Expect
    file: str
    line: int | None
    tier: str | None = None  # the tier before evaluation (the bands hold it)
    a_exit_cut: float | None = None
    b_exit_cut: float | None = None


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one case: actual tags (with reasons) and tier, and any problems."""

    case: Case
    tags: Mapping[str, str]
    tier: str
    problems: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        """One line: ``PASS  name`` or ``FAIL  name: problem; problem``."""
        if self.passed:
            return f"PASS  {self.case.name}"
        return f"FAIL  {self.case.name}: " + "; ".join(self.problems)


def neutral_facts(schema: Mapping[str, FieldType]) -> dict[str, Any]:
    """Every schema field at its neutral value: null if nullable, else 0 / 0.0 / empty."""
    return {n: None if t.nullable else copy(_NEUTRAL[t.kind]) for n, t in schema.items()}


def _fail(doc: Located, problem: str, case: str | None, *, key: str | None = None,
          hint: str | None = None) -> CaseFileError:
    line = doc.line if key is None else doc.key_line(key)
    return CaseFileError(problem, file=doc.file, line=line, rule=case, hint=hint)


def _mapping(doc: Located, what: str, allowed: tuple[str, ...], case: str | None) -> None:
    try:
        doc.mapping(what, allowed, rule=case)
    except RulesetError as exc:
        raise CaseFileError(exc.problem, file=exc.file, line=exc.line, rule=case, hint=exc.hint) from exc


def _strings(doc: Located, key: str, case: str | None) -> tuple[str, ...]:
    value = doc.value.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(doc, f"'{key}' must be a list of tag names, got {value!r}", case, key=key,
                    hint=f"write e.g. {key}: [big_spender]")
    return tuple(value)


def coerce_fact(name: str, value: Any, ftype: FieldType) -> Any:
    """Check one fact value against its type; ints are accepted for decimals."""
    if value is None:
        if ftype.nullable:
            return None
        raise ValueError(f"fact '{name}' cannot be null")
    kind, is_num = ftype.kind, isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "float" and is_num:
        return float(value)
    ok = {"int": isinstance(value, int) and not isinstance(value, bool), "bool": isinstance(value, bool),
          "string": isinstance(value, str), "list": isinstance(value, list), "map": isinstance(value, dict)}
    if ok[kind]:
        return value
    raise ValueError(f"fact '{name}' must be {'a whole number' if kind == 'int' else kind}, got {value!r}")


def _facts(doc: Located, schema: Mapping[str, FieldType], case: str | None) -> dict[str, Any]:
    facts = doc.child("facts")
    if facts.value is None:
        return {}
    if not isinstance(facts.value, dict):
        raise _fail(doc, "'facts' must be a mapping of field: value", case, key="facts")
    out: dict[str, Any] = {}
    for name, value in facts.value.items():
        if name == TAGS_FIELD:
            raise _fail(facts, "current tags go in the case's 'tags:', not in 'facts'", case, key=name)
        if name not in schema:
            close = suggest(str(name), schema)
            hint = f"did you mean '{close}'?" if close else "see the field list in rules/README.md"
            raise _fail(facts, f"unknown fact '{name}'", case, key=str(name), hint=hint)
        try:
            out[name] = coerce_fact(name, value, schema[name])
        except ValueError as exc:
            raise _fail(facts, str(exc), case, key=name) from exc
    return out


def _cutoffs(doc: Located, case: str | None) -> dict[str, float | None]:
    cut = doc.child("cutoffs")
    if cut.value is None:
        return {}
    _mapping(cut, "cutoffs", _CUT_KEYS, case)
    for key, value in cut.value.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise _fail(cut, f"cut-off '{key}' must be a number or null, got {value!r}", case, key=key)
    return {k: None if v is None else float(v) for k, v in cut.value.items()}


def _tier(doc: Located, case: str | None) -> str | None:
    """The current tier under ``tier`` (absent: none yet)."""
    tier = doc.value.get("tier")
    if tier is not None and tier not in TIERS:
        raise _fail(doc, f"tier must be one of A, B, C, D, got {tier!r}", case, key="tier")
    return tier if isinstance(tier, str) else None


def _expect(doc: Located, case: str) -> Expect:
    exp = doc.child("expect")
    if exp.value is None:
        raise _fail(doc, "missing 'expect'", case, hint="add expect: with tags, has, lacks, tier or reasons")
    _mapping(exp, "expect", _EXPECT_KEYS, case)
    raw = exp.value
    tier = raw.get("tier")
    if tier is not None and tier not in TIERS:
        raise _fail(exp, f"tier must be one of A, B, C, D, got {tier!r}", case, key="tier")
    reasons = raw.get("reasons")
    if reasons is not None and not (isinstance(reasons, dict) and all(isinstance(v, str) for v in reasons.values())):
        raise _fail(exp, "'reasons' must map tag names to reason text", case, key="reasons")
    if not raw:
        raise _fail(exp, "'expect' checks nothing", case, hint="add tags, has, lacks, tier or reasons")
    named = {k: frozenset(_strings(exp, k, case)) for k in ("tags", "has", "lacks") if k in raw}
    return Expect(named.get("tags"), named.get("has", frozenset()), named.get("lacks", frozenset()), tier, reasons)


def load_cases(path: Path, schema: Mapping[str, FieldType]) -> list[Case]:
    """Read and check a case file; raise :class:`CaseFileError` naming file, line and case."""
    try:
        doc = read_yaml(Path(path))
    except RulesetError as exc:
        raise CaseFileError(exc.problem, file=exc.file, line=exc.line, hint=exc.hint) from exc
    _mapping(doc, "a case file", _FILE_KEYS, None)
    defaults = doc.child("defaults")
    base_tags: tuple[str, ...] = ()
    base_facts = neutral_facts(schema)
    base_cut: dict[str, float | None] = {}
    base_tier: str | None = None
    if defaults.value is not None:
        _mapping(defaults, "defaults", _DEFAULT_KEYS, None)
        base_facts |= _facts(defaults, schema, None)
        base_cut = _cutoffs(defaults, None)
        base_tags = _strings(defaults, "tags", None) if "tags" in defaults.value else ()
        base_tier = _tier(defaults, None)
    listed = doc.child("cases")
    if not isinstance(listed.value, list) or not listed.value:
        raise _fail(doc, "'cases' must be a non-empty list", None, key="cases")
    cases: list[Case] = []
    for item in listed.items():
        name = item.value.get("name") if isinstance(item.value, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise _fail(item, "every case needs a 'name' (text)", None)
        _mapping(item, "a case", _CASE_KEYS, name)
        if any(c.name == name for c in cases):
            raise _fail(item, "duplicate case name", name, key="name", hint="give every case its own name")
        cut = base_cut | _cutoffs(item, name)
        tags = _strings(item, "tags", name) if "tags" in item.value else base_tags
        tier = _tier(item, name) if "tier" in item.value else base_tier
        cases.append(Case(name, base_facts | _facts(item, schema, name), tags, cut.get("a"), cut.get("b"),
                          _expect(item, name), item.file, item.line, tier, cut.get("a_exit"), cut.get("b_exit")))
    return cases


def check_cases(ruleset: Ruleset, cases: list[Case]) -> None:
    """Raise :class:`CaseFileError` if a case expects a tag the ruleset does not define."""
    defined = {r.tag: r for r in ruleset.rules}
    for case in cases:
        for tag in sorted(case.expect.named_tags() - defined.keys()):
            close = suggest(tag, defined)
            hint = f"did you mean '{close}'?" if close else "defined tags: " + ", ".join(sorted(defined))
            raise CaseFileError(f"expects tag '{tag}', which the ruleset does not define",
                                file=case.file, line=case.line, rule=case.name, hint=hint)


def _show(tags: Any) -> str:
    return "[" + ", ".join(sorted(tags)) + "]"


def run_case(ruleset: Ruleset, case: Case) -> CaseResult:
    """Evaluate one case with the public rule API and compare with its expectation."""
    facts = {**case.facts, TAGS_FIELD: list(case.tags)}
    errors = RuleErrors()
    got = evaluate_tags(ruleset, facts, case.tags, errors=errors)
    tier = assign_tier(ruleset, facts, case.a_cut, case.b_cut, errors=errors, previous=case.tier,
                       a_exit_cut=case.a_exit_cut, b_exit_cut=case.b_exit_cut)
    exp, problems = case.expect, [f"error: {e}" for e in errors]
    if exp.tags is not None and exp.tags != got.keys():
        extra = [f"{t} ({got[t]})" for t in sorted(got.keys() - exp.tags)]
        detail = [f"missing {_show(exp.tags - got.keys())}"] if exp.tags - got.keys() else []
        detail += [f"unexpected {', '.join(extra)}"] if extra else []
        problems.append(f"tags: expected {_show(exp.tags)}, got {_show(got)} ({'; '.join(detail)})")
    problems += [f"missing tag {t}" for t in sorted(exp.has - got.keys())]
    problems += [f"unexpected tag {t} ({got[t]})" for t in sorted(exp.lacks & got.keys())]
    if exp.tier is not None and exp.tier != tier:
        unset = " (no cutoffs: nobody is in A or B)" if case.a_cut is None and case.b_cut is None else ""
        problems.append(f"tier: expected {exp.tier}, got {tier}{unset if exp.tier in 'AB' else ''}")
    for tag, text in sorted((exp.reasons or {}).items()):
        if got.get(tag) != text:
            actual = "tag not held" if tag not in got else repr(got[tag])
            problems.append(f"reason for {tag}: expected {text!r}, got {actual}")
    return CaseResult(case, got, tier, tuple(problems))


def run_cases(ruleset: Ruleset, cases: list[Case]) -> list[CaseResult]:
    """Check the cases against the ruleset, then run them all."""
    check_cases(ruleset, cases)
    return [run_case(ruleset, c) for c in cases]
