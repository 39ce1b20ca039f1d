"""First stage: one message in, one outcome out: keep offsets in order, parse, route, dead-letter, re-key.

Every message ends in exactly one outcome, counted in :attr:`Router.outcomes`: ``ok``,
``duplicate``, ``dead_letter``, ``rekeyed`` or ``command``; a batch envelope counts as
``batch`` and each of its events in one of the first four. A message whose key is not its
customer's, or which landed on another partition than its customer's, goes on through the
re-key topic; so does each customer's part of an envelope that belongs elsewhere.

Calls the stages after it: :mod:`agents.engine.pipeline.commands`, :mod:`agents.engine.pipeline.apply`,
and :mod:`agents.engine.pipeline.coalesce` (the pace, and the waiting evaluations after each message);
nothing calls back here. Offset continuity is :class:`stream.faust.offsets.Offsets`'.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import MutableMapping
from functools import partial
from typing import Any

import orjson

from agents.engine.pipeline.apply import Applier, customer_of
from agents.engine.pipeline.coalesce import Coalescer
from agents.engine.pipeline.commands import Commands
from agents.engine.pipeline.types import Message, Partitions, Sender, child
from stream.access.privacy import parse_privacy_request
from stream.domain.clock import Clock
from stream.domain.events import Batch, Event, parse_event, parse_message
from stream.domain.manual import parse_command
from stream.domain.priority import priority_of
from stream.domain.profiles import parse_profile
from stream.domain.state import CustomerState
from stream.exceptions import InvalidEvent
from stream.faust.offsets import Offsets
from stream.kafka.deadletter import dead_letter
from stream.metrics import Metrics
from stream.settings import Settings
from stream.tuning import DEFERRED_SLICE

_PRIORITY_KINDS = frozenset({"order", "ticket"})  # the kinds priority_of can pick
_MALFORMED = (orjson.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError)  # internal topics


def _nothing_before() -> tuple[float, int]:  # a new customer's spend_orders_365d
    return 0.0, 0


class Router:
    """Takes each message of the worker's topics to its outcome."""

    def __init__(self, settings: Settings, table: MutableMapping[str, CustomerState], clock: Clock,
                 senders: dict[str, Sender], metrics: Metrics, partitions: Partitions, offsets: Offsets,
                 commands: Commands, apply: Applier, coalesce: Coalescer) -> None:
        self.settings, self.table, self.clock, self.metrics = settings, table, clock, metrics
        self.offsets, self.commands, self.applier, self.coalesce = offsets, commands, apply, coalesce
        self.outcomes: Counter[str] = Counter()
        self._partition_of = partitions.of
        self._kinds = settings.keyed_topics
        self._rekey, self._dead_letters = senders["rekey"], senders["dead_letters"]

    async def handle(self, message: Message, more: int = 0, ahead: bool = False) -> str:
        """Handle one message; never raises for bad input.

        ``more``: how many messages are known to be waiting behind this one (under backlog the
        customer's evaluation may wait: :mod:`agents.engine.pipeline.coalesce`); at most
        :data:`~stream.tuning.DEFERRED_SLICE` waiting evaluations run after it.
        ``ahead``: earlier offsets of the partition are still to come (:meth:`urgent`).
        """
        now = time.time()
        pace = self.coalesce
        pace.arrive(now, message.timestamp, more)
        try:
            outcome = await self._receive(message, ahead)
            if pace.deferred:
                await pace.evaluate_deferred(due_only=pace.more, limit=DEFERRED_SLICE)
        except BaseException:
            pace.left(None)
            raise
        elapsed = time.time() - now
        pace.left(elapsed)
        self.metrics.processing.observe(elapsed)
        return outcome

    async def _receive(self, message: Message, ahead: bool) -> str:
        """Route one message, and first any offsets before it that were never delivered.

        A message handled ``ahead`` of earlier ones of its partition is not a gap's end: its offset is
        kept, and passed over when the partition's messages reach it."""
        if ahead:
            await self.offsets.handled_ahead(message.topic, message.partition, message.offset)
            return await self._count_route(message)
        offsets = self.offsets
        if not offsets.in_order(message.topic, message.partition, message.offset):
            gap = await offsets.missed(message.topic, message.partition, message.offset)
            if gap is not None:
                for record in gap.records():  # routed only: no timestamp needed (the pace is the current message's)
                    earlier = Message(message.topic, message.partition, record.offset, record.key, record.value)
                    self.outcomes[await self._route(earlier)] += 1
                offsets.gap_done(gap)
        return await self._count_route(message)

    async def _count_route(self, message: Message) -> str:
        outcome = await self._route(message)
        self.outcomes[outcome] += 1
        if outcome != "batch":  # a batch envelope's events were counted one by one
            child(self.metrics.events, message.topic, outcome).inc()
        return outcome

    async def _route(self, message: Message) -> str:
        topic, key = message.topic, message.key
        kind = self._kinds.get(topic)
        try:
            if kind is not None:
                item = self._parse(kind, key, message.value)
                source = f"{topic}:{message.partition}"
                if isinstance(item, Batch):
                    return await self._route_batch(message, kind, item, topic, message.offset, source)
                cid = customer_of(item)
                if key != cid.encode() or message.partition != self._partition_of(cid):
                    await self._send_rekey(cid, kind, topic, source, message.offset, message.value)
                    return "rekeyed"
                return await self.applier.apply(kind, item, topic, source, message.offset)
            if topic == self.settings.rekey_topic:
                return await self._route_rekeyed(message)
            if topic == self.settings.commands_topic:
                await self.commands.command(message.partition, orjson.loads(message.value or b""))
                return "command"
            raise InvalidEvent(f"unexpected topic {topic!r}")
        except InvalidEvent as exc:
            await self.dead_letter(message, exc.reason)
            return "dead_letter"
        except _MALFORMED as exc:
            await self.dead_letter(message, f"malformed internal message: {exc!r}")
            return "dead_letter"

    async def _route_rekeyed(self, message: Message) -> str:
        """A message re-keyed to its customer's partition: apply it as from its original topic and offset."""
        env = orjson.loads(message.value or b"")
        raw = None if env["raw"] is None else env["raw"].encode()
        item = self._parse(env["kind"], message.key, raw)
        source = f"rekey:{env['source']}"
        if isinstance(item, Batch):  # one customer's part of a batch envelope
            return await self._route_batch(message, env["kind"], item, env["topic"], int(env["offset"]), source)
        return await self.applier.apply(env["kind"], item, env["topic"], source, int(env["offset"]))

    async def _send_rekey(self, cid: str, kind: str, topic: str, source: str, offset: int, raw: bytes | str | None,
                          ) -> None:
        """Send a message (or one customer's part of an envelope) on to ``cid``'s partition."""
        text = raw.decode() if isinstance(raw, bytes) else raw
        envelope = {"kind": kind, "topic": topic, "source": source, "offset": offset, "raw": text}
        await self._rekey.send(key=cid.encode(), value=orjson.dumps(envelope))

    async def _route_batch(self, message: Message, kind: str, batch: Batch, topic: str, offset: int,
                           source: str) -> str:
        """A batch envelope: each customer's events applied together and evaluated once.

        Bad elements are dead-lettered one by one; customers of other partitions are sent
        on through the re-key topic as one envelope each. Outcomes are counted per event.
        """
        for _, reason, element in batch.rejects:
            await self.dead_letter(message, reason, element)
            self._count(topic, "dead_letter")
        groups: dict[str, list[tuple[Event, Any]]] = {}
        for _, event, element in batch.events:
            groups.setdefault(event.customer_id, []).append((event, element))
        rekeyed = applied = done = 0  # counted once per envelope, also when a customer's part fails
        try:
            for cid, items in groups.items():
                if self._partition_of(cid) != message.partition:
                    raw = orjson.dumps({"batch_id": batch.batch_id, "events": [element for _, element in items]})
                    await self._send_rekey(cid, kind, topic, source, offset, raw)
                    rekeyed += len(items)
                else:
                    applied += await self.applier.apply_events(kind, cid, [event for event, _ in items], topic,
                                                               source, offset, batch.batch_id)
                done += len(items)
        finally:
            self._count(topic, "rekeyed", rekeyed)
            self._count(topic, "ok", applied)
            self._count(topic, "duplicate", done - rekeyed - applied)
        return "batch"

    def _count(self, topic: str, outcome: str, n: int = 1) -> None:
        """Count ``n`` events of a batch envelope under ``outcome``."""
        if n:
            self.outcomes[outcome] += n
            child(self.metrics.events, topic, outcome).inc(n)

    def _parse(self, kind: str, key: bytes | None, value: bytes | None) -> Event | Batch | dict[str, Any]:
        max_bytes = self.settings.max_event_bytes
        if kind == "profile":
            if value is None and key:  # a tombstone on the compacted topic deletes the profile
                return {"customer_id": key.decode(errors="replace"), "deleted": True}
            return parse_profile(value or b"", max_bytes=max_bytes)
        if kind == "manual":
            return parse_command(value or b"", max_bytes=max_bytes, now_ms=self.clock.now())
        if kind == "privacy":
            return parse_privacy_request(value or b"", max_bytes=max_bytes)
        return parse_message(kind, value or b"", currency=self.settings.currency, max_bytes=max_bytes)

    def urgent(self, topic: str, value: bytes | None) -> bool:
        """Whether a message is a big order or a complaint (:func:`stream.domain.priority.priority_of`, against its
        customer's state as it stands), for the intake to handle it before the messages fetched with it.
        Only single events of the order and ticket topics: an envelope or a message that does not parse
        waits its turn (and is judged then)."""
        kind = self._kinds.get(topic)
        if kind not in _PRIORITY_KINDS or not value:
            return False
        try:
            event = parse_event(kind, value, currency=self.settings.currency, max_bytes=self.settings.max_event_bytes)
        except InvalidEvent:
            return False
        state = self.table.get(customer_of(event))
        before = _nothing_before if state is None else partial(state.spend_orders_365d, self.clock.now())
        return priority_of(event, before, self.settings.big_order_multiple, self.settings.big_order_amount) is not None

    async def dead_letter(self, message: Message, reason: str, value: bytes | None = None) -> None:
        """Publish a message that cannot be processed (or ``value``, one element of it), with the reason."""
        record = dead_letter(topic=message.topic, partition=message.partition, offset=message.offset,
                             key=message.key, value=message.value if value is None else value, error=reason,
                             max_value_bytes=self.settings.dead_letter_value_bytes)
        await self._dead_letters.send(key=message.key or b"", value=record)
        self.metrics.dead_lettered(reason)
