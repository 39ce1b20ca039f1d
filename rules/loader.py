"""Load a rules directory into a checked, compiled :class:`~rules.model.Ruleset`.

Every ``*.yaml`` file is read (sorted by name) with the safe YAML loader; every
expression is compiled and checked against the facts schema here, once, so a
bad rule stops the service at startup instead of failing in the stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from rules.check import check_expression
from rules.churn import BGNBDParams, ChurnPolicy, ChurnWeights
from rules.churn_model import parse_churn_model
from rules.exceptions import RulesetError
from rules.expr import compile_expr
from rules.model import TAG_PATTERN, VISIBILITIES, Rule, Ruleset, ScoreWeights, TierPolicy
from rules.schema import FieldType, with_tags
from rules.yamlsrc import Located, read_yaml

_TOP_KEYS = ("name", "rules", "tiers", "score", "churn", "churn_model")
_RULE_KEYS = ("tag", "description", "owner", "visibility", "when", "exit")
_REQUIRED = ("tag", "description", "owner", "when")
_TIER_KEYS = ("a_top_fraction", "b_top_fraction", "a_exit_fraction", "b_exit_fraction", "min_tier_dwell", "b_when",
              "c_when")
_WEIGHT_KEYS = ("spend", "engagement", "growth", "strategic")
_CHURN_KEYS = ("weights", "weights_without_model", "levels", "silence_multiple", "default_gap_days", "min_gap_days",
               "min_login_baseline", "service_half_load", "horizon_days", "bgnbd", "escalation_level", "exit_levels")
_CHURN_WEIGHT_KEYS = ("recency", "trend", "engagement", "service", "model")
_LEVEL_KEYS = ("low", "medium", "high")
_BGNBD_KEYS = ("r", "alpha", "a", "b")


def default_rules_dir() -> Path:
    """The ruleset shipped with the package (``rules/default``)."""
    return Path(__file__).resolve().parent / "default"


def ruleset_version(files: list[Path]) -> str:
    """First 12 hex digits of sha256 over the sorted file names and contents."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _checked(doc: Located, key: str, schema: Mapping[str, FieldType], rule: str | None) -> None:
    """Compile and type-check the expression under ``key``, located at its line."""
    try:
        check_expression(compile_expr(doc.value[key]), schema)
    except RulesetError as exc:
        raise RulesetError(
            f"{key}: {exc.problem}",
            file=doc.file,
            line=doc.key_line(key),
            rule=rule,
            hint=exc.hint,
        ) from exc


def _parse_rule(doc: Located, schema: Mapping[str, FieldType]) -> Rule:
    raw = doc.value
    name = raw.get("tag") if isinstance(raw, dict) and isinstance(raw.get("tag"), str) else None
    doc.mapping("a rule", _RULE_KEYS, rule=name)
    for key in _REQUIRED:
        if key not in raw:
            raise doc.error(f"missing required key '{key}'", rule=name)
    for key in _RULE_KEYS:
        value = raw.get(key)
        if key in raw and (not isinstance(value, str) or not value.strip()):
            raise doc.error(
                f"'{key}' must be a non-empty string, got {value!r}", rule=name, key=key
            )
    if not TAG_PATTERN.match(raw["tag"]):
        raise doc.error(
            f"invalid tag name '{raw['tag']}'",
            rule=name,
            key="tag",
            hint="use lower case letters, digits and _, starting with a letter "
            "(at most 64 characters), e.g. big_spender",
        )
    visibility = raw.get("visibility", "public")
    if visibility not in VISIBILITIES:
        raise doc.error(
            f"invalid visibility '{visibility}'",
            rule=name,
            key="visibility",
            hint="use one of: " + ", ".join(VISIBILITIES),
        )
    for key in ("when", "exit"):
        if key in raw:
            _checked(doc, key, schema, name)
    rule = Rule(
        tag=raw["tag"],
        description=raw["description"],
        owner=raw["owner"],
        visibility=visibility,
        when=raw["when"],
        exit=raw.get("exit"),
        file=doc.file,
        line=doc.line,
    )
    return rule


def _parse_tiers(doc: Located, schema: Mapping[str, FieldType]) -> TierPolicy:
    doc.mapping("tiers", _TIER_KEYS)
    for key in ("b_when", "c_when"):
        if key in doc.value:
            _checked(doc, key, schema, None)
    try:
        policy = TierPolicy(**doc.value)
    except RulesetError as exc:  # located at the key named first in the problem, if the file has it
        named = next((k for k in exc.problem.split() if k in _TIER_KEYS and k in doc.value), None)
        raise doc.error(f"tiers: {exc.problem}", hint=exc.hint, key=named) from exc
    if "c_when" not in doc.value:
        _checked(Located({"c_when": policy.c_when}, None, doc.file), "c_when", schema, None)
    return policy


def _parse_score(doc: Located) -> ScoreWeights:
    doc.mapping("score", ("weights",))
    weights = doc.child("weights")
    weights.mapping("score.weights", _WEIGHT_KEYS)
    try:
        return ScoreWeights(**weights.value)
    except RulesetError as exc:
        raise weights.error(f"score.weights: {exc.problem}", hint=exc.hint) from exc


def _churn_part(doc: Located, key: str, what: str, allowed: tuple[str, ...]) -> dict[str, object]:
    """The mapping under ``key`` (absent or empty: {}), with only ``allowed`` keys."""
    part = doc.child(key)
    if part.value is None:
        return {}
    part.mapping(what, allowed)
    return dict(part.value)


def _parse_churn(doc: Located) -> ChurnPolicy:
    """The ``churn:`` section; every problem names the file and the line of the offending key."""
    if doc.value is None:
        return ChurnPolicy()
    doc.mapping("churn", _CHURN_KEYS)
    weights = {}
    for part in ("weights", "weights_without_model"):
        if part in doc.value:
            try:
                weights[part] = ChurnWeights(**_churn_part(doc, part, f"churn.{part}", _CHURN_WEIGHT_KEYS))  # type: ignore[arg-type]
            except RulesetError as exc:
                raise doc.error(f"churn.{part}: {exc.problem}", hint=exc.hint, key=part) from exc
    bgnbd = None
    if doc.value.get("bgnbd") is not None:
        raw = _churn_part(doc, "bgnbd", "churn.bgnbd", _BGNBD_KEYS)
        missing = [k for k in _BGNBD_KEYS if k not in raw]
        if missing:
            raise doc.error(f"churn.bgnbd: missing {', '.join(missing)}", key="bgnbd",
                            hint="give all of r, alpha, a, b (tagger churn fit prints them)")
        try:
            bgnbd = BGNBDParams(**raw)  # type: ignore[arg-type]
        except RulesetError as exc:
            raise doc.error(f"churn: {exc.problem}", hint=exc.hint, key="bgnbd") from exc
    levels = _churn_part(doc, "levels", "churn.levels", _LEVEL_KEYS)
    exits = {f"{k}_exit": v for k, v in _churn_part(doc, "exit_levels", "churn.exit_levels", _LEVEL_KEYS).items()}
    scalars = {k: v for k, v in doc.value.items()
               if k not in ("weights", "weights_without_model", "levels", "bgnbd", "exit_levels")}
    try:
        return ChurnPolicy(**weights, bgnbd=bgnbd, **levels, **exits, **scalars)  # type: ignore[arg-type]
    except RulesetError as exc:
        bad = next((k for k in (*scalars, *levels) if k in exc.problem), None)
        key = "exit_levels" if "exit_levels" in exc.problem else "levels" if bad in levels else bad
        raise doc.error(f"churn: {exc.problem}", hint=exc.hint, key=key) from exc


def _rule_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise RulesetError(f"rules directory {directory} does not exist")
    stray = sorted(directory.glob("*.yml"))
    if stray:
        raise RulesetError(f"{stray[0]} is ignored", hint="rename it to end in .yaml")
    files = sorted(directory.glob("*.yaml"), key=lambda p: p.name)
    if not files:
        raise RulesetError(f"no *.yaml files in {directory}")
    return files


def load_ruleset(directory: Path, schema: Mapping[str, FieldType]) -> Ruleset:
    """Read, validate and compile every ``*.yaml`` file in ``directory``.

    Raises :class:`RulesetError` naming the file, line and rule on any problem.
    """
    files = _rule_files(Path(directory))
    full_schema = with_tags(schema)
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    sections: dict[str, Located] = {}
    for path in files:
        doc = read_yaml(path)
        doc.mapping("a rules file", _TOP_KEYS)
        for section in ("name", "tiers", "score", "churn", "churn_model"):
            if section in doc.value:
                if section in sections:
                    raise doc.error(
                        f"'{section}' is already defined in {sections[section].file}",
                        key=section,
                        hint=f"keep a single '{section}' section",
                    )
                sections[section] = doc.child(section)
        listed = doc.child("rules")
        if listed.value is None:  # absent or an empty `rules:` section
            continue
        if not isinstance(listed.value, list):
            raise doc.error("'rules' must be a list of rules", key="rules")
        for item in listed.items():
            rule = _parse_rule(item, full_schema)
            if rule.tag in seen:
                raise item.error(
                    f"duplicate tag '{rule.tag}' (first defined at {seen[rule.tag]})",
                    rule=rule.tag,
                    hint="rename one of them or merge the rules",
                    key="tag",
                )
            seen[rule.tag] = f"{item.file}:{item.line}"
            rules.append(rule)
    tiers = sections.get("tiers", Located({}, None, "<default tiers>"))
    score = sections.get("score")
    churn = _parse_churn(sections["churn"]) if "churn" in sections else ChurnPolicy()
    if "churn_model" in sections:  # written by `tagger churn train`, usually a file of its own
        churn = replace(churn, model=parse_churn_model(sections["churn_model"]))
    return Ruleset(
        version=ruleset_version(files),
        rules=tuple(rules),
        tiers=_parse_tiers(tiers, full_schema),
        weights=ScoreWeights() if score is None else _parse_score(score),
        source_files=tuple(str(p) for p in files),
        name=_name(sections.get("name")),
        churn=churn,
    )


def _name(doc: Located | None) -> str | None:
    if doc is None:
        return None
    if not isinstance(doc.value, str) or not 0 < len(doc.value) <= 100:
        raise doc.error("name: must be a text of 1–100 characters")
    return doc.value
