"""``tagger rules``: validate, unit-test and dry-run rulesets; nothing here changes live state."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from agents.cli.shared import load_settings
from rules import FieldType, Ruleset, RulesetError, default_rules_dir, load_ruleset, tier_ranks
from rules.dryrun import DryRunReport, render_text
from rules.testing import CaseFileError, coerce_fact, load_cases, run_cases
from stream.settings import Settings, environment_value

if TYPE_CHECKING:
    import redis.asyncio as aioredis

_DIR = click.Path(path_type=Path)


def _schema() -> dict[str, FieldType]:
    from agents.engine.evaluate import facts_schema

    return facts_schema()


def _configured_dir() -> Path:
    """TAGGER_RULES_DIR if set, else the shipped rules (the other settings need not be valid)."""
    configured = environment_value("rules_dir")
    return Path(configured) if configured else default_rules_dir()


def _load(directory: Path) -> Ruleset:
    try:
        return load_ruleset(directory, _schema())
    except RulesetError as exc:
        raise click.ClickException(f"invalid ruleset: {exc}") from exc


@click.group("rules")
def rules_group() -> None:
    """Check rulesets before they go live: validate, test with cases, dry-run against Redis."""


@rules_group.command()
@click.argument("directory", required=False, type=_DIR)
def validate(directory: Path | None) -> None:
    """Load the ruleset in DIRECTORY (default: TAGGER_RULES_DIR, else the shipped rules) as a worker would.

    Prints "ok: N rules, version V", or the problem with file, line and rule and exits 1.
    """
    ruleset = _load(directory or _configured_dir())
    model = ruleset.churn.model
    learned = "" if model is None else \
        f"; learned churn model: {len(model.names)} features, horizon {model.horizon_days:g} days"
    click.echo(f"ok: {len(ruleset.rules)} rules, version {ruleset.version}{learned}")


@rules_group.command("test")
@click.argument("paths", nargs=-1, required=True, type=_DIR, metavar="[DIRECTORY] CASES.yaml...")
def test_cases(paths: tuple[Path, ...]) -> None:
    """Run the YAML test cases in CASES.yaml against the ruleset in DIRECTORY (default as for validate).

    One line per case (PASS, or FAIL with the differences), then "N passed, M failed".
    Exits 1 if a case fails or a case file is invalid. Format: rules/README.md.
    """
    directory = _configured_dir()
    if paths[0].is_dir():
        directory, paths = paths[0], paths[1:]
    if not paths:
        raise click.UsageError("give at least one case file after the rules directory")
    ruleset, schema = _load(directory), _schema()
    click.echo(f"ruleset {ruleset.version} ({directory})")
    passed = failed = invalid = 0
    for path in paths:
        try:
            results = run_cases(ruleset, load_cases(path, schema))
        except CaseFileError as exc:
            click.echo(f"ERROR {exc}")
            invalid += 1
            continue
        click.echo(f"{path}:")
        for result in results:
            click.echo(f"  {result.describe()}")
        passed += sum(r.passed for r in results)
        failed += sum(not r.passed for r in results)
    bad = f", {invalid} invalid case file{'s' if invalid > 1 else ''}" if invalid else ""
    click.echo(f"{passed} passed, {failed} failed{bad}")
    if failed or invalid:
        raise click.exceptions.Exit(1)


@rules_group.command("dry-run")
@click.argument("candidate", type=_DIR)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--batch", default=500, show_default=True, help="Keys per SCAN/MGET round trip.")
def dry_run(candidate: Path, as_json: bool, batch: int) -> None:
    """Compare the CANDIDATE ruleset with the live tags and tiers; apply nothing.

    Reads every customer view from Redis (REDIS_URL, TAGGER_REDIS_PREFIX) with SCAN and
    MGET, re-evaluates it with the candidate (current tags drive hysteresis, as live;
    manual tags are kept, as live),
    and computes the tier cut-offs from the live spend ranking with the candidate's
    fractions. Reports, per tag, who would gain or lose it, tier moves and rule errors.

    The facts are the aggregates stored with each view, so days_since_* fields are as of
    the view's last evaluation, not now. That is fine for a dry run (it compares rules on
    the same facts the live rules saw); time-driven tags catch up at the next sweep.
    """
    ruleset = _load(candidate)
    report = asyncio.run(_dry_run(load_settings(), ruleset, batch))
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else render_text(report))


def view_facts(raw: bytes | str, schema: Mapping[str, FieldType]) -> tuple[dict[str, Any], list[str], str | None,
                                                                          list[str]]:
    """A stored customer view -> (facts, current tags, current tier, manual tags); ValueError if unusable.

    Aggregates come from ``aggregates`` (``*_at`` as RFC 3339 text there, epoch ms in
    the facts), profile facts from ``profile`` as the worker derives them, as of the
    view's ``evaluated_at``. A field missing from an older view is null if it may be.
    """
    from stream.domain.events import parse_ts
    from stream.domain.profiles import profile_facts
    from stream.exceptions import InvalidEvent

    try:
        doc = json.loads(raw)
    except ValueError:
        raise ValueError("not JSON") from None
    aggregates = doc.get("aggregates") if isinstance(doc, dict) else None
    tags = doc.get("tags") if isinstance(doc, dict) else None
    if not isinstance(aggregates, dict) or not isinstance(tags, list):
        raise ValueError("not a customer view (no tags or aggregates)")
    try:
        at = doc.get("evaluated_at")
        now_ms = parse_ts(at) if isinstance(at, str) else int(time.time() * 1000)
        profile = doc.get("profile")
        known = {**profile_facts(profile if isinstance(profile, dict) else None, now_ms), **aggregates}
    except (InvalidEvent, TypeError, ValueError):
        raise ValueError("unreadable evaluated_at or profile") from None
    facts: dict[str, Any] = {}
    for name, ftype in schema.items():
        if name not in known and not ftype.nullable:
            raise ValueError(f"view lacks aggregate '{name}'")
        value = known.get(name)
        try:
            if name.endswith("_at") and isinstance(value, str):
                value = parse_ts(value)
            facts[name] = coerce_fact(name, value, ftype)
        except (ValueError, InvalidEvent):
            raise ValueError(f"aggregate '{name}' has the wrong type") from None
    manual = doc.get("manual")
    manual_tags = manual.get("tags") if isinstance(manual, dict) else None
    tier = doc.get("tier")
    return (facts, [str(t) for t in tags], tier if isinstance(tier, str) else None,
            [str(t) for t in manual_tags] if isinstance(manual_tags, dict) else [])


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


async def _views(client: aioredis.Redis, prefix: str, batch: int) -> AsyncIterator[tuple[str, bytes | str | None]]:
    """(customer id, view JSON) for every ``<prefix>:c:*`` key: SCAN + MGET, never KEYS."""
    start, seen = len(prefix) + 3, set[bytes]()
    keys: list[bytes] = []
    async for key in client.scan_iter(match=_glob_escape(prefix) + ":c:*", count=batch):
        if key not in seen:  # SCAN may return a key twice
            seen.add(key)
            keys.append(key)
        if len(keys) >= batch:
            for k, v in zip(keys, await client.mget(keys), strict=True):
                yield k[start:].decode(errors="replace"), v
            keys = []
    if keys:
        for k, v in zip(keys, await client.mget(keys), strict=True):
            yield k[start:].decode(errors="replace"), v


async def _dry_run(settings: Settings, ruleset: Ruleset, batch: int) -> DryRunReport:
    from stream.security import redis_client
    from stream.view.redis_view import RedisView

    client = redis_client(settings)
    try:
        view, tiers = RedisView(client, settings.redis_prefix), ruleset.tiers
        n = (await view.spend_ranks([])).n
        ranks = tier_ranks(n, tiers)
        cuts = (await view.spend_ranks(list(ranks))).values
        a_cut, b_cut, a_exit, b_exit = (cut if rank else None for cut, rank in zip(cuts, ranks, strict=True))
        report = DryRunReport(ruleset, a_cut, b_cut, a_exit, b_exit)
        schema = _schema()
        async for cid, raw in _views(client, settings.redis_prefix, batch):
            if raw is None:
                report.skip(cid, "view deleted during the scan")
                continue
            try:
                facts, tags, tier, manual = view_facts(raw, schema)
            except ValueError as exc:
                report.skip(cid, str(exc))
                continue
            report.add(cid, facts, tags, tier, manual_tags=manual)
        return report
    except aioredis.RedisError as exc:
        raise click.ClickException(f"cannot read the live state from Redis: {exc}") from exc
    finally:
        await client.aclose()
