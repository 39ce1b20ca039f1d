"""Terminal rendering of tag changes (``tagger tail`` and ``tagger dev``).

A tag change or churn alert the tagger re-published after a crash (same ``change_id``,
stream/domain/sequence.py) is printed once: a :class:`~stream.domain.sequence.RepeatFilter` keeps each
customer's highest ``seq`` per topic partition, for at most 100,000 customers (least
recently seen dropped first; beyond that a repeat may be printed again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from typing import Any

import click
import orjson
from aiokafka import AIOKafkaConsumer

from stream.domain.sequence import MAX_CUSTOMERS, RepeatFilter
from stream.security import aiokafka_options
from stream.settings import Settings

_TIER_COLOURS = {"A": "magenta", "B": "cyan", "C": "green", "D": "white"}


def render_change(change: Mapping[str, Any]) -> str:
    """One coloured line describing a tag change."""
    tier, prev = change.get("tier"), change.get("previous_tier")
    parts = [
        click.style(str(change.get("event_time", ""))[:19], dim=True),
        click.style(f"{change.get('customer_id', '?'):<14}", bold=True),
        click.style(f"tier {prev or '-'}→{tier}", fg=_TIER_COLOURS.get(str(tier), "white"))
        if tier != prev else f"tier {tier}  ",
        f"score {change.get('score', 0):5.1f}",
    ]
    parts += [click.style(f"+{t}", fg="green") for t in change.get("added", [])]
    parts += [click.style(f"-{t}", fg="red") for t in change.get("removed", [])]
    reasons = change.get("reasons", {})
    why = "; ".join(str(reasons[t]) for t in change.get("added", []) if t in reasons)
    if why:
        parts.append(click.style(f"({why})", dim=True))
    return "  ".join(parts)


def wanted(change: Mapping[str, Any], tags: Collection[str], tiers: Collection[str]) -> bool:
    """Filter: a change touching one of ``tags`` or moving into/out of one of ``tiers``."""
    if tags and not set(tags) & (set(change.get("added", [])) | set(change.get("removed", []))):
        return False
    if tiers and change.get("tier") not in tiers and change.get("previous_tier") not in tiers:
        return False
    return True


_LEVEL_COLOURS = {"none": "green", "low": "yellow", "medium": "bright_red", "high": "red"}


def render_alert(alert: Mapping[str, Any]) -> str:
    """One coloured line describing a churn alert."""
    level = str(alert.get("level"))
    return "  ".join([
        click.style(str(alert.get("event_time", ""))[:19], dim=True),
        click.style(f"{alert.get('customer_id', '?'):<14}", bold=True),
        click.style(f"churn {alert.get('previous_level')}→{level} ({alert.get('risk', 0):.2f})",
                    fg=_LEVEL_COLOURS.get(level, "white"), bold=level == "high"),
        click.style("; ".join(alert.get("reasons", [])), dim=True),
    ])


def alert_wanted(alert: Mapping[str, Any], levels: Collection[str]) -> bool:
    """Filter: a churn alert moving into or out of one of ``levels`` (all when empty)."""
    return not levels or alert.get("level") in levels or alert.get("previous_level") in levels


async def tail_tag_changes(settings: Settings, *, tags: Collection[str] = (), tiers: Collection[str] = (),
                           alerts: bool = False, stop: asyncio.Event | None = None,
                           levels: Collection[str] = (), max_customers: int = MAX_CUSTOMERS) -> None:
    """Print every tag change (and churn alert) from the beginning of the topics until stopped, each once."""
    names = [settings.tag_changes_topic] + ([settings.churn_alerts_topic] if alerts else [])
    consumer = AIOKafkaConsumer(*names, bootstrap_servers=settings.kafka_bootstrap_servers,
                                group_id=None, auto_offset_reset="earliest", enable_auto_commit=False,
                                **aiokafka_options(settings))
    repeats = RepeatFilter(max_customers)
    await consumer.start()
    try:
        while stop is None or not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    line = tail_line(settings, record.topic, record.partition, record.value, repeats,
                                     tags=tags, tiers=tiers, levels=levels)
                    if line is not None:
                        click.echo(line)
    finally:
        await consumer.stop()


def tail_line(settings: Settings, topic: str, partition: int, value: bytes | None, repeats: RepeatFilter, *,
              tags: Collection[str] = (), tiers: Collection[str] = (), levels: Collection[str] = ()) -> str | None:
    """The line ``tagger tail`` prints for one record, or None: filtered out, or a repeat of one seen."""
    try:
        message = orjson.loads(value or b"{}")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict) or repeats.seen((topic, partition), message):
        return None
    if topic == settings.churn_alerts_topic:
        return render_alert(message) if alert_wanted(message, levels) else None
    return render_change(message) if wanted(message, tags, tiers) else None
