"""Last stage: evaluate a customer, store it, stage its Redis view and publish its outputs.

Everything before hands a customer here once its state is final for now; this stage calls
no other stage. Outputs are the ``tag-changes`` message (also an erasure's final one) and the
``churn-alerts`` message, each numbered (:mod:`stream.domain.sequence`) before the table write.
Redis is a projection: views are staged and written by the flush timer, or at once
(:meth:`Emitter.flush_soon`) for a big order, a complaint or an erasure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, MutableMapping
from functools import partial
from typing import Any

import orjson

from agents.engine.evaluate import Cutoffs, Evaluator
from agents.engine.pipeline.types import Arrival, Partitions, Sender, child
from rules import RuleErrors
from stream.domain.clock import Clock
from stream.domain.due import TIER_DUE, DueIndex, next_due
from stream.domain.reversals import note_change
from stream.domain.sequence import stamp
from stream.domain.state import CustomerState
from stream.metrics import Metrics
from stream.view.redis_view import RedisView
from stream.view.timeline import churn_entry, tag_change_entry

log = logging.getLogger(__name__)


class Emitter:
    """Evaluation, outputs and Redis staging of one worker's customers."""

    def __init__(self, table: MutableMapping[str, CustomerState], evaluator: Evaluator, view: RedisView,
                 clock: Clock, senders: dict[str, Sender], metrics: Metrics, due: DueIndex,
                 partitions: Partitions, cutoffs: Cutoffs | None = None, reversal_window: float = 3600.0) -> None:
        self.table, self.evaluator, self.view, self.clock = table, evaluator, view, clock
        self._reversal_window_ms = int(reversal_window * 1000)  # TAGGER_REVERSAL_WINDOW
        self.metrics, self.due = metrics, due
        self._partition_of = partitions.of
        self._tag_changes, self._churn_alerts = senders["tag_changes"], senders["churn_alerts"]
        self.cutoffs = cutoffs or Cutoffs(known=False)  # the latest global tier cut-offs (commands refresh them)
        self.rule_errors = 0
        self._urgent_views: dict[str, None] = {}  # customers whose Redis view to write next (flush_soon), in order
        self._urgent_flush: asyncio.Future[None] | None = None

    async def reevaluate(self, cid: str, state: CustomerState, trigger: dict[str, Any], event_time: int | None,
                         changed: bool, arrival: Arrival) -> None:
        """Prune, evaluate, store, stage the Redis view and publish any tag change or churn alert.

        The table (and so the changelog) is written when a message was applied
        (``changed``) or the tags or tier changed; a sweep that changes nothing a
        subscriber sees costs no changelog write. ``arrival``: of the message the emit
        latency is measured from.
        """
        now = self.clock.now()
        state.prune(now)
        errors = RuleErrors()
        held = (state.view or {}).get(TIER_DUE)  # a demotion held for its dwell: written to the table when it moves
        facts, change = self.evaluator.evaluate(cid, state, now, self.cutoffs, trigger, event_time, errors)
        alert = self.evaluator.churn_alert(cid, state, facts, now, trigger, event_time)
        if errors:
            self.rule_errors += len(errors)
            log.warning("rule errors for %s: %s", cid, "; ".join(map(str, errors)))
        # numbered before the table write, which a RocksDB store serialises at once; the record reaches
        # the changelog at the next commit (stream/faust/app.py write_dirty), after the sends below: a crash
        # before it makes the replay number the same outputs again from the counters the changelog kept
        self._count_reversals(state, change, alert, now)
        if change is not None:
            stamp(change, cid, "tag", state.next_seq("tag"))
        if alert is not None:
            stamp(alert, cid, "churn", state.next_seq("churn"))
        if changed or change is not None or alert is not None or held != (state.view or {}).get(TIER_DUE):
            self.table[cid] = state
        self.due.set(self._partition_of(cid), cid, next_due(state, now))
        self._stage(cid, state, facts)
        if change is not None:
            self.view.note(cid, tag_change_entry(change))
            await self._tag_change(cid, change, trigger, arrival)
        if alert is not None:
            self.view.note(cid, churn_entry(alert))
            await self._churn_alert(cid, alert, trigger, arrival)

    def _stage(self, cid: str, state: CustomerState, facts: dict[str, Any], rebuilt: bool = False) -> None:
        self.view.stage(cid, partial(self.evaluator.view_document, cid, state, facts), facts["spend_365d"],
                        facts.get("last_activity_at"), rebuilt)

    def _count_reversals(self, state: CustomerState, change: dict[str, Any] | None, alert: dict[str, Any] | None,
                         now: int) -> None:
        """Note this evaluation's tier and churn level changes; count those undoing the previous one
        (``tagger_reversals_total``, :mod:`stream.domain.reversals`)."""
        moves = []
        if change is not None and change.get("tier") != change.get("previous_tier"):
            moves.append(("tier", change.get("previous_tier"), change.get("tier")))
        if alert is not None:
            moves.append(("churn", alert.get("previous_level"), alert.get("level")))
        if not moves or state.view is None:
            return
        mark = state.input_mark()
        for kind, before, after in moves:
            if note_change(state.view, kind, before, after, now, mark, self._reversal_window_ms):
                child(self.metrics.reversals, kind).inc()

    async def _tag_change(self, cid: str, change: dict[str, Any], trigger: dict[str, Any], arrival: Arrival) -> None:
        await self._tag_changes.send(key=cid.encode(), value=orjson.dumps(change))
        self._observe_emit("tag_change", trigger, arrival)
        for direction in ("added", "removed"):
            for tag in change[direction]:
                child(self.metrics.tag_changes, tag, direction).inc()

    async def _churn_alert(self, cid: str, alert: dict[str, Any], trigger: dict[str, Any], arrival: Arrival) -> None:
        await self._churn_alerts.send(key=cid.encode(), value=orjson.dumps(alert))
        self._observe_emit("churn_alert", trigger, arrival)
        child(self.metrics.churn_alerts, alert["level"]).inc()

    def _observe_emit(self, output: str, trigger: dict[str, Any], arrival: Arrival) -> None:
        if trigger.get("kind") not in ("event", "manual") or trigger.get("topic") is None:
            return  # timers and reloads have no arrival to measure from
        now = time.time()
        arrived, kafka_ts = arrival
        child(self.metrics.emit_latency, output, "arrival").observe(now - arrived)
        if kafka_ts is not None:
            child(self.metrics.emit_latency, output, "kafka_timestamp").observe(max(0.0, now - kafka_ts))

    async def erased(self, cid: str, change: dict[str, Any]) -> None:
        """An erased customer: its staged erase written now, its final tag change published."""
        self.view.stage_erase(cid)
        await self.flush_priority(cid)  # on failure the flush timer retries the staged erase
        await self._tag_changes.send(key=cid.encode(), value=orjson.dumps(change))

    def flush_soon(self, *cids: str) -> None:
        """Have these customers' staged Redis views written (:meth:`flush_priority`) as soon as the current
        message lets the loop run, without waiting for Redis meanwhile: every big order or complaint
        of a backlog kept the intake waiting a round trip to Redis, and the flush timer's whole write
        when one was running (RedisView flushes take turns). Customers added while a write is
        under way go in the next one; one write at a time, so a customer's views land in order."""
        self._urgent_views.update(dict.fromkeys(cids))
        if self._urgent_flush is None or self._urgent_flush.done():
            self._urgent_flush = asyncio.ensure_future(self._flush_urgent())

    async def _flush_urgent(self) -> None:
        while self._urgent_views:
            cids, self._urgent_views = list(self._urgent_views), {}
            await self.flush_priority(*cids)

    async def flush_priority(self, *cids: str) -> None:
        """Write these customers' staged Redis views now (priority events, an erasure); the others
        wait for the flush timer (writing them too kept the worker waiting on Redis ~8% of a drain).
        On failure the flush timer retries."""
        try:
            await self.view.flush(only=cids)
        except Exception as exc:  # noqa: BLE001 - Redis is a projection: the views stay staged
            self.view.errors += 1
            log.warning("priority Redis flush failed (%d pending, will retry): %r", self.view.pending, exc)

    def stage_views(self, customers: Iterable[str], rebuilt: bool = False) -> None:
        """Stage ``customers``' current views without re-evaluating them; ``rebuilt``: a rebuild of the
        projection (a history Redis lost starts again with a ``rebuilt`` entry)."""
        now = self.clock.now()
        for cid in customers:
            state = self.table.get(cid)
            if state is not None:
                self._stage(cid, state, self.evaluator.facts(state, now), rebuilt)
