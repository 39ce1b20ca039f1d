"""``tagger flapping``: how often tiers and churn levels flap on the demo stream, with the bands on and off.

The demo generator (:mod:`stream.devtools.demo`) makes a fixed number of events; each goes, as a
:class:`~agents.engine.pipeline.types.Message`, through one in-process
:class:`~agents.engine.runtime.Runtime`, the worker's own path (route → apply → coalesce → emit →
evaluate), on a real Redis view: the tier cut-offs come from the Redis spend ranking exactly as a
worker reads them (:meth:`Runtime.refresh_cutoffs`). Only Faust and the broker are left out: the
worker's timers run on event time instead of wall time (every ``cutoff_refresh_interval`` of event
time the views are flushed and the cut-offs read; every ``sweep_interval`` each partition sweeps its
due customers, as the sweep command does). The reversals are read from ``tagger_reversals_total``
of that runtime; the tier changes and churn alerts from the messages it published.

"Bands off" is the same ruleset with every exit cut-off equal to its entry cut-off (the plain
rank and level definitions).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson

from agents.engine.evaluate import Evaluator
from agents.engine.pipeline.types import Message
from agents.engine.runtime import Runtime
from rules import Ruleset
from stream.devtools.demo import DemoConfig, DemoGenerator
from stream.domain.clock import Clock
from stream.domain.state import CustomerState
from stream.settings import Settings
from stream.view.redis_view import RedisView

#: the demo's first event time (fixed, so that a run reproduces every event): 2026-09-21T14:13:20Z
START_MS = 1_790_000_000_000


@dataclass(frozen=True)
class FlapCounts:
    """What one run published. ``tier_changes``: from one tier to another (a customer's first tier is in
    ``first_tiers``); ``churn_alerts``: every churn level change; ``*_reversals``: tagger_reversals_total;
    ``*_undone``: changes that undo the customer's previous one whether or not an input of the customer
    came in between (a customer's own login re-evaluates it at the moved cut-offs: not a reversal)."""

    bands: str
    events: int
    first_tiers: int
    tier_changes: int
    tier_reversals: int
    churn_alerts: int
    churn_reversals: int
    tier_undone: int = 0
    churn_undone: int = 0

    @property
    def tier_share(self) -> float:
        """Tier reversals as a share of tier changes."""
        return self.tier_reversals / self.tier_changes if self.tier_changes else 0.0

    @property
    def churn_share(self) -> float:
        """Churn reversals as a share of churn alerts."""
        return self.churn_reversals / self.churn_alerts if self.churn_alerts else 0.0

    def row(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "tier_reversal_share": round(self.tier_share, 4),
                "churn_reversal_share": round(self.churn_share, 4)}


def bands_off(ruleset: Ruleset) -> Ruleset:
    """``ruleset`` with every exit cut-off equal to its entry cut-off: the plain tiers and levels."""
    tiers, churn = ruleset.tiers, ruleset.churn
    return dataclasses.replace(
        ruleset,
        tiers=dataclasses.replace(tiers, a_exit_fraction=tiers.a_top_fraction, b_exit_fraction=tiers.b_top_fraction),
        churn=dataclasses.replace(churn, low_exit=churn.low, medium_exit=churn.medium, high_exit=churn.high),
    )


class _Collect:
    """A sender that keeps what it was given."""

    def __init__(self) -> None:
        self.sent: deque[tuple[bytes, bytes, int | None]] = deque()

    async def send(self, *, key: bytes, value: bytes, partition: int | None = None) -> None:
        self.sent.append((key, value, partition))


async def simulate(ruleset: Ruleset, view: RedisView, events: list[tuple[str, bytes, bytes]], settings: Settings,
                   bands: str = "on") -> FlapCounts:
    """Run ``events`` (``(topic, key, value)``, as the demo makes them) through a fresh runtime on ``view``."""
    senders = {name: _Collect() for name in ("tag_changes", "dead_letters", "rekey", "commands", "churn_alerts")}
    table: dict[str, CustomerState] = {}
    runtime = Runtime(settings, table, Evaluator(ruleset), view, Clock("stream"), senders)  # type: ignore[arg-type]
    refresh_ms, sweep_ms = int(settings.cutoff_refresh_interval * 1000), int(settings.sweep_interval * 1000)
    next_refresh = next_sweep = None
    offsets: dict[tuple[str, int], int] = {}
    for topic, key, value in events:
        partition = runtime.partition_of(key.decode())
        offset = offsets[(topic, partition)] = offsets.get((topic, partition), -1) + 1
        await runtime.handle(Message(topic, partition, offset, key, value))
        now = runtime.clock.now()
        next_refresh = now + refresh_ms if next_refresh is None else next_refresh
        next_sweep = now + sweep_ms if next_sweep is None else next_sweep
        if now >= next_refresh:  # the flush and cut-off timers
            next_refresh = now + refresh_ms
            await view.flush()
            await runtime.refresh_cutoffs()
        if now >= next_sweep:  # the sweep timer
            next_sweep = now + sweep_ms
            await _sweep(runtime, senders["commands"], settings.partitions)
    await view.flush()
    return _counts(runtime, senders, bands, len(events))


async def _sweep(runtime: Runtime, commands: _Collect, partitions: int) -> None:
    """A sweep command on every partition, each continuation run at once (a worker queues it)."""
    for partition in range(partitions):
        await runtime.command(partition, {"cmd": "sweep"})
        while commands.sent:
            _, value, to = commands.sent.popleft()
            await runtime.command(to if to is not None else partition, orjson.loads(value))


def undone(moves: list[tuple[str, str | None, str | None]]) -> int:
    """How many of ``(customer, before, after)`` (in order) undo that customer's previous move."""
    last: dict[str, tuple[str | None, str | None]] = {}
    count = 0
    for cid, before, after in moves:
        count += last.get(cid) == (after, before)
        last[cid] = (before, after)
    return count


def _counts(runtime: Runtime, senders: dict[str, _Collect], bands: str, events: int) -> FlapCounts:
    changes = [orjson.loads(value) for _, value, _ in senders["tag_changes"].sent]
    moved = [c for c in changes if c.get("tier") != c.get("previous_tier")]
    alerts = [orjson.loads(value) for _, value, _ in senders["churn_alerts"].sent]
    registry = runtime.metrics.registry

    def reversals(kind: str) -> int:
        return int(registry.get_sample_value("tagger_reversals_total", {"kind": kind}) or 0)

    return FlapCounts(
        bands=bands, events=events,
        first_tiers=sum(1 for c in moved if c.get("previous_tier") is None),
        tier_changes=sum(1 for c in moved if c.get("previous_tier") is not None),
        tier_reversals=reversals("tier"),
        churn_alerts=len(alerts),
        churn_reversals=reversals("churn"),
        tier_undone=undone([(c["customer_id"], c["previous_tier"], c["tier"]) for c in moved
                            if c.get("previous_tier") is not None]),
        churn_undone=undone([(a["customer_id"], a["previous_level"], a["level"]) for a in alerts]),
    )


async def measure(settings: Settings, ruleset: Ruleset, redis_url: str, events: int, customers: int, seed: int,
                  time_step_ms: float | None = None) -> list[FlapCounts]:
    """The same demo events through ``ruleset`` with the bands off, then on; each run on its own Redis prefix
    (deleted afterwards)."""
    import redis.asyncio as aioredis

    topics = {"order": settings.orders_topic, "login": settings.logins_topic, "ticket": settings.tickets_topic}
    config = DemoConfig(customers=customers, seed=seed, start_ms=START_MS, time_step_ms=time_step_ms, topics=topics)
    stream = DemoGenerator(config).take(events)
    rows = []
    for bands, rules in (("off", bands_off(ruleset)), ("on", ruleset)):
        client = aioredis.Redis.from_url(redis_url)
        prefix = f"flapping-{uuid.uuid4().hex[:12]}"
        try:
            rows.append(await simulate(rules, RedisView(client, prefix), stream, settings, bands))
        finally:
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()
    return rows


def render(rows: list[FlapCounts]) -> str:
    """A small table of the runs."""
    lines = [f"{'bands':<6}{'events':>8}{'first tiers':>13}{'tier changes':>14}{'reversals':>11}{'share':>8}"
             f"{'undone':>8}{'churn alerts':>14}{'reversals':>11}{'share':>8}{'undone':>8}"]
    for r in rows:
        lines.append(f"{r.bands:<6}{r.events:>8}{r.first_tiers:>13}{r.tier_changes:>14}{r.tier_reversals:>11}"
                     f"{r.tier_share:>8.2%}{r.tier_undone:>8}{r.churn_alerts:>14}{r.churn_reversals:>11}"
                     f"{r.churn_share:>8.2%}{r.churn_undone:>8}")
    lines.append("reversals: tagger_reversals_total (no input of the customer in between); "
                 "undone: any change undoing the customer's previous one")
    return "\n".join(lines)
