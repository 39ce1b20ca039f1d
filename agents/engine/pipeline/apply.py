"""Second stage: apply a valid message to its customer's state, exactly once.

Single events, one customer's part of a batch envelope, profiles, manual commands and
erasures. Each is deduplicated against the customer's own offset and id bookkeeping
(:class:`~stream.domain.state.CustomerState`), then the customer goes on to
:mod:`agents.engine.pipeline.coalesce` (evaluate now, or later under backlog); an erasure goes
straight to :mod:`agents.engine.pipeline.emit` for its final tag change. Calls only those two.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from functools import partial
from typing import Any

from agents.engine.evaluate import Evaluator
from agents.engine.pipeline.coalesce import Coalescer
from agents.engine.pipeline.emit import Emitter
from agents.engine.pipeline.types import Partitions
from stream.access.audit import AuditLog, audit_record
from stream.access.privacy import erase_change
from stream.domain.clock import Clock
from stream.domain.due import DueIndex
from stream.domain.events import Event
from stream.domain.manual import apply_command
from stream.domain.priority import priority_of
from stream.domain.state import CustomerState
from stream.settings import Settings
from stream.view.timeline import manual_entry

log = logging.getLogger(__name__)


def customer_of(item: Event | dict[str, Any]) -> str:
    """The customer an event or a parsed profile, command or request is about."""
    return str(item["customer_id"]) if isinstance(item, dict) else item.customer_id


class Applier:
    """Applies messages to the customers table."""

    def __init__(self, settings: Settings, table: MutableMapping[str, CustomerState], evaluator: Evaluator,
                 clock: Clock, due: DueIndex, partitions: Partitions, coalesce: Coalescer, emit: Emitter,
                 audit: AuditLog | None) -> None:
        self.table, self.evaluator, self.clock, self.due = table, evaluator, clock, due
        self.partitions, self.coalesce, self.emit = partitions, coalesce, emit
        self.audit = audit  # erasures are audited
        self._big_multiple, self._big_amount = settings.big_order_multiple, settings.big_order_amount

    async def apply(self, kind: str, item: Event | dict[str, Any], topic: str, source: str, offset: int) -> str:
        """Apply one valid message to its customer exactly once, then have it evaluated; the outcome."""
        if kind == "privacy" and isinstance(item, dict):
            return await self.erase(item, topic)
        cid = customer_of(item)
        if not isinstance(item, dict):
            return "ok" if await self.apply_events(kind, cid, [item], topic, source, offset) else "duplicate"
        state = self.table.get(cid)  # a profile or a manual command from here on
        if state is None:
            state = CustomerState()
        msg_id = item.get("command_id") or f"{source}@{offset}"
        dedupe_id = f"{kind}:{msg_id}"
        if state.is_duplicate(source, offset, dedupe_id):
            return "duplicate"
        manual = apply_command(state.manual, item, self.clock.now()) if kind == "manual" else None
        state.mark(source, offset, dedupe_id)  # after apply_command, which may reject the command
        if kind == "profile":
            state.profile = None if item.get("deleted") else item
            trigger = {"kind": "event", "topic": topic, "event_id": None}
        else:
            state.manual = manual
            trigger = {"kind": "manual", "topic": topic, "event_id": msg_id}
            self.emit.view.note(cid, manual_entry(item, self.clock.now()))  # before the changes it causes
        await self.coalesce.evaluate_now(cid, state, trigger, changed=True)
        return "ok"

    async def apply_events(self, kind: str, cid: str, events: list[Event], topic: str, source: str, offset: int,
                           batch_id: str | None = None) -> int:
        """Apply one customer's events exactly once and evaluate once; return how many were applied.

        A single event is marked by its offset (redelivery) and its id (producer retry). Events
        of an envelope (``batch_id``) are marked by their ids, and the envelope by its offset and
        ``batch:<batch_id>`` (a producer's retry of the whole envelope). State is written once,
        after all of them. A big order or complaint has the customer's Redis view written at once
        (:meth:`Emitter.flush_soon`: those of one envelope go in one call; one call per priority
        customer was ~4% of a drain of envelopes).
        """
        state = self.table.get(cid)
        if state is None:
            state = CustomerState()
        if batch_id is not None and state.is_duplicate(source, offset, f"batch:{batch_id}"):
            return 0
        position = offset if batch_id is None else -1  # -1: ids only; the envelope's offset is marked below
        applied, latest, priority = 0, None, None
        clock = self.clock
        for event in events:
            dedupe_id = f"{kind}:{event.event_id}"
            if state.is_duplicate(source, position, dedupe_id):
                continue
            clock.observe(event.ts)
            if priority is None and kind != "login":
                priority = priority_of(event, partial(state.spend_orders_365d, clock.now()),
                                       self._big_multiple, self._big_amount)
            state.apply(event, source, position, dedupe_id)
            applied += 1
            latest = event if latest is None or event.ts >= latest.ts else latest
        if batch_id is None and not applied:
            return 0
        trigger: dict[str, Any] = {"kind": "event", "topic": topic, "event_id": latest.event_id if latest else None}
        if batch_id is not None:
            state.mark(source, offset, f"batch:{batch_id}")
            trigger.update(batch_id=batch_id, events=applied)
        event_time = latest.ts if latest else None
        if priority is not None:
            trigger["priority"], trigger["reason"] = priority
        elif self.coalesce.defer(cid, state, trigger, event_time, applied):  # the worker is behind
            return applied
        await self.coalesce.evaluate_now(cid, state, trigger, event_time, changed=True)
        if priority is not None:
            self.emit.flush_soon(cid)
        return applied

    async def erase(self, request: dict[str, Any], topic: str) -> str:
        """Erase a customer: table state (changelog tombstone), due entry, Redis keys, then tell and audit.

        Idempotent, so a redelivered request simply erases again; the final
        tag change and the audit record are sent every time.
        """
        cid = request["customer_id"]
        found = cid in self.table
        self.coalesce.cancel(cid)
        if found:
            del self.table[cid]  # Faust writes a tombstone to the changelog
        self.due.set(self.partitions.of(cid), cid, None)
        self.partitions.forget(cid)
        ruleset = self.evaluator.ruleset
        await self.emit.erased(cid, erase_change(request, topic=topic, ruleset_version=ruleset.version,
                                                 ruleset_name=ruleset.name))
        if self.audit is not None:
            await self.audit.write(audit_record(
                action="privacy.erase", outcome="erased", status=200, principal=None, customer_id=cid,
                source=topic, detail={"request_id": request["request_id"], "found": found}), wait=False)
        log.info("privacy request %s: customer erased (%s)", request["request_id"],
                 "state removed" if found else "no state held")
        return "ok"
