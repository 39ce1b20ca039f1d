"""Per-message handling for the tagger agent: decode, route, dedupe, apply, evaluate, emit.

Every message ends in exactly one outcome, counted in :attr:`Runtime.outcomes`:
``ok``, ``duplicate``, ``dead_letter``, ``rekeyed`` or ``command``; a batch envelope
counts as ``batch`` and each of its events in one of the first four.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, Protocol

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from rules import tier_cutoffs
from stream.audit import AuditLog, audit_record
from stream.clock import Clock
from stream.deadletter import dead_letter
from stream.due import DueIndex, due_after_restore, next_due
from stream.events import Batch, Event, parse_event, parse_message
from stream.exceptions import InvalidEvent
from stream.faust.guards import GapFiller
from stream.kafka_admin import expected_partition
from stream.manual import apply_command, parse_command
from stream.metrics import create_metrics
from stream.priority import priority_of
from stream.privacy import erase_change, parse_privacy_request
from stream.profiles import parse_profile
from stream.redis_view import RedisView
from stream.sequence import stamp
from stream.settings import Settings
from stream.state import CustomerState

from .evaluate import Cutoffs, Evaluator

log = logging.getLogger(__name__)


class Sender(Protocol):
    """What the runtime needs of a topic: an async ``send``."""

    async def send(self, *, key: bytes, value: bytes, partition: int | None = None) -> Any: ...


@lru_cache(maxsize=4096)  # label values are few (topics, outcomes, tags, levels); labels() takes a lock
def _child(metric: Any, *values: str) -> Any:
    return metric.labels(*values)


def _customer_of(item: Event | dict[str, Any]) -> str:
    return str(item["customer_id"]) if isinstance(item, dict) else item.customer_id


Arrival = tuple[float, float | None]
"""When a message reached the worker (``time.time()``) and its Kafka timestamp in seconds, if any."""


@dataclass(slots=True)
class _Deferred:
    """A customer whose evaluation waits for the messages queued behind (see :meth:`Runtime.handle`)."""

    trigger: dict[str, Any]  # of the latest message applied
    event_time: int | None  # latest event time applied
    arrival: Arrival  # of the first message applied: the emit latency is measured from it
    events: int  # events applied since the customer's last evaluation
    context: Any  # Runtime.message_context() of the latest message applied (Faust's current event)
    due: float  # time.monotonic() by which the evaluation runs, though the backlog goes on


REDIS_RETRY_DELAYS = (0.1, 0.3, 1.0, 2.0)  # seconds between the tries of a command's last step
DEFERRED_SLICE = 64  # waiting evaluations run per message (~5-10 ms), so no message waits behind thousands
_PRIORITY_KINDS = frozenset({"order", "ticket"})  # the kinds priority_of can pick


def _nothing_before() -> tuple[float, int]:  # a new customer's spend_orders_365d
    return 0.0, 0


async def _redis_retrying(call: Callable[[], Any]) -> Any:
    """A command's acknowledged last step against Redis (flush, ack), tried again on a connection error or timeout:
    a Redis just restarted left a dead pooled connection, the flush failed and the command's ack
    was lost (``tagger reevaluate`` then waited for that partition until it timed out)."""
    for delay in REDIS_RETRY_DELAYS:
        try:
            return await call()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("Redis failed (%r); trying again in %.1f s", exc, delay)
            await asyncio.sleep(delay)
    return await call()


class Runtime:
    """State and collaborators of one worker's tagger agent."""

    def __init__(
        self,
        settings: Settings,
        table: MutableMapping[str, CustomerState],
        evaluator: Evaluator,
        view: RedisView,
        clock: Clock,
        senders: dict[str, Sender],
    ) -> None:
        self.settings = settings
        self.table = table
        self.evaluator = evaluator
        self.view = view
        self.clock = clock
        self.senders = senders  # tag_changes, dead_letters, rekey, commands
        self.cutoffs = Cutoffs()
        self.outcomes: Counter[str] = Counter()
        self.rule_errors = 0
        self.reload_errors = 0
        self._kinds = settings.keyed_topics
        self._partition_of: dict[str, int] = {}
        self.last_offset: dict[tuple[str, int], int] = {}
        self._ahead: dict[tuple[str, int], set[int]] = {}  # offsets handled before earlier ones came (handle)
        self.gaps: GapFiller | None = None
        self.audit: AuditLog | None = None  # erasures are audited (agents.api sets it)
        self.metrics = create_metrics()
        self._running: dict[tuple[str, int], float] = {}  # partition-wide commands in progress
        self.due = DueIndex()  # when each local customer next needs a sweep (stream.due)
        self._unindexed: dict[int, list[str]] = {}  # partitions whose due index is being built
        self._sweeps: dict[int, tuple[float, int]] = {}  # sweeps in progress: started, customers evaluated
        self._arrival: Arrival = (time.time(), None)
        self._more = False  # messages are waiting behind the one being handled
        self._release = False  # the last message came on time or with nothing behind: every evaluation is due
        self._backlog_s = 0.0  # about how long the messages behind it will take (see _wait_for)
        self._per_message = 0.0  # moving average of the seconds handle() takes
        self._handling = False
        self._deferred: dict[str, _Deferred] = {}  # customers applied, not yet evaluated, in order
        self._waiting = 0  # events applied whose evaluation is in self._deferred
        self._urgent_views: dict[str, None] = {}  # customers whose Redis view to write next (flush_soon), in order
        self._urgent_flush: asyncio.Future[None] | None = None
        # The message a table write belongs to: Faust's tables take the changelog partition (and
        # RocksDB the partition's database) from the current event, so a deferred evaluation runs
        # within the context of the customer's own latest message (agents.tagger sets these two)
        self.message_context: Callable[[], Any] = lambda: None
        self.within: Callable[[Any], AbstractContextManager[Any]] = nullcontext

    async def handle(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                     timestamp: float | None = None, more: int = 0, ahead: bool = False) -> str:
        """Handle one message; never raises for bad input. ``timestamp``: Kafka's, in seconds.

        ``more``: how many messages are known to be waiting behind this one. If there are
        some and this one is also late (``coalesce_after`` seconds or more since its
        timestamp: the worker is behind), its events are applied and the customer's
        evaluation waits, so that a customer with several events in the backlog is
        evaluated once. Every waiting evaluation runs when a message comes with nothing
        behind it or on time; while the backlog goes on, each runs once it has waited its
        time (:meth:`_wait_for`), oldest first, and the oldest run whenever more than
        ``coalesce_customers`` customers wait. Big orders and complaints are evaluated at once.
        At most :data:`DEFERRED_SLICE` waiting evaluations run per message; the rest after the
        next messages, or from the flush timer (:meth:`evaluate_overdue`) if none comes.
        ``ahead``: earlier offsets of the partition are still to come (:meth:`urgent`).
        """
        now = time.time()
        self._arrival = (now, timestamp)
        self._more = more > 0 and timestamp is not None and now - timestamp >= self.settings.coalesce_after
        self._backlog_s = more * self._per_message
        self._release = not self._more
        self._handling = True
        try:
            outcome = await self._receive(topic, partition, offset, key, value, ahead)
            if self._deferred:
                await self.evaluate_deferred(due_only=self._more, limit=DEFERRED_SLICE)
        finally:
            self._more = self._handling = False
        elapsed = time.time() - now
        self._per_message += (0.01 if self._per_message else 1.0) * (elapsed - self._per_message)
        self.metrics.processing.observe(elapsed)
        return outcome

    async def _receive(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                       ahead: bool = False) -> str:
        """Route one message, and first any offsets before it that were never delivered; count the outcome.

        A message handled ``ahead`` of earlier ones of its partition is not a gap's end: its offset is
        kept, and passed over when the partition's messages reach it."""
        if ahead:
            self._ahead.setdefault((topic, partition), set()).add(offset)
            return await self._count_route(topic, partition, offset, key, value)
        last = self.last_offset.get((topic, partition))
        if last is None and self.gaps is not None:  # first message since an assignment: from the committed offset
            start = self.gaps.start_of(topic, partition)
            last = None if start is None else start - 1
            log.info("%s[%s]: first message since the assignment at offset %s (committed: %s)",
                     topic, partition, offset, start)
        done_ahead = self._ahead.get((topic, partition), set())
        while last is not None and last + 1 in done_ahead:
            done_ahead.discard(last + 1)
            last += 1
        if last is not None and offset > last + 1 and self.gaps is not None:
            missed = await self.gaps.fetch(topic, partition, last + 1, offset)
            log.warning("%s[%s]: offsets %s..%s were never delivered; processing %d records read directly",
                        topic, partition, last + 1, offset - 1, len(missed))
            for record in missed:
                if record.offset in done_ahead:
                    done_ahead.discard(record.offset)
                    continue
                self.outcomes[await self._route(topic, partition, record.offset, record.key, record.value)] += 1
            self.gaps.mark_done(topic, partition, last + 1, offset)
        self.last_offset[(topic, partition)] = offset
        return await self._count_route(topic, partition, offset, key, value)

    async def _count_route(self, topic: str, partition: int, offset: int, key: bytes | None,
                           value: bytes | None) -> str:
        outcome = await self._route(topic, partition, offset, key, value)
        self.outcomes[outcome] += 1
        if outcome != "batch":  # a batch envelope's events were counted one by one
            _child(self.metrics.events, topic, outcome).inc()
        return outcome

    @property
    def events_waiting(self) -> int:
        """Events applied whose customer's evaluation is still waiting (counted in :attr:`outcomes` already)."""
        return self._waiting

    async def evaluate_overdue(self) -> int:
        """From a timer, between messages: run the waiting evaluations whose time has come (the messages
        behind them are slow to come, or a rebalance cleared them), or all of them if the last message
        came on time or with nothing behind; :data:`DEFERRED_SLICE` at a time, a message first."""
        evaluated = 0
        while self._deferred and not self._handling:
            done = await self.evaluate_deferred(due_only=not self._release, limit=DEFERRED_SLICE)
            evaluated += done
            if done < DEFERRED_SLICE:
                break
            await asyncio.sleep(0)
        return evaluated

    def forget_offsets(self) -> None:
        """After a rebalance partitions restart from their committed offsets: no gap to see."""
        self.last_offset.clear()
        self._ahead.clear()

    async def _route(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> str:
        kind = self._kinds.get(topic)
        try:
            if kind is not None:
                item = self._parse(kind, key, value)
                if isinstance(item, Batch):
                    return await self.apply_batch(kind, item, topic, partition, offset, f"{topic}:{partition}", key)
                cid = _customer_of(item)
                if key != cid.encode() or partition != self.partition_of(cid):
                    envelope = {"kind": kind, "topic": topic, "source": f"{topic}:{partition}",
                                "offset": offset, "raw": None if value is None else value.decode()}
                    await self.senders["rekey"].send(key=cid.encode(), value=orjson.dumps(envelope))
                    return "rekeyed"
                return await self.apply(kind, item, topic, f"{topic}:{partition}", offset)
            if topic == self.settings.rekey_topic:
                env = orjson.loads(value or b"")
                raw = None if env["raw"] is None else env["raw"].encode()
                item = self._parse(env["kind"], key, raw)
                source = f"rekey:{env['source']}"
                if isinstance(item, Batch):  # one customer's part of a batch envelope
                    return await self.apply_batch(env["kind"], item, env["topic"], partition, int(env["offset"]),
                                                  source, key)
                return await self.apply(env["kind"], item, env["topic"], source, int(env["offset"]))
            if topic == self.settings.commands_topic:
                await self.command(partition, orjson.loads(value or b""))
                return "command"
            raise InvalidEvent(f"unexpected topic {topic!r}")
        except InvalidEvent as exc:
            await self.dead_letter(topic, partition, offset, key, value, exc.reason)
            return "dead_letter"
        except (orjson.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
            await self.dead_letter(topic, partition, offset, key, value, f"malformed internal message: {exc!r}")
            return "dead_letter"

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
        """Whether a message is a big order or a complaint (:func:`stream.priority.priority_of`, against its
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
        state = self.table.get(_customer_of(event))
        before = _nothing_before if state is None else partial(state.spend_orders_365d, self.clock.now())
        return priority_of(event, before, self.settings.big_order_multiple, self.settings.big_order_amount) is not None

    async def apply(self, kind: str, item: Event | dict[str, Any], topic: str, source: str, offset: int) -> str:
        """Apply one valid message to its customer exactly once, then re-evaluate."""
        if kind == "privacy" and isinstance(item, dict):
            return await self.erase(item, topic)
        cid = _customer_of(item)
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
        await self.reevaluate(cid, state, trigger, changed=True)
        return "ok"

    async def apply_batch(self, kind: str, batch: Batch, topic: str, partition: int, offset: int, source: str,
                          key: bytes | None) -> str:
        """A batch envelope: each customer's events applied together and evaluated once.

        Bad elements are dead-lettered one by one; customers of other partitions are sent
        on through the re-key topic as one envelope each. Outcomes are counted per event.
        """
        for _, reason, element in batch.rejects:
            await self.dead_letter(topic, partition, offset, key, element, reason)
            self._count(topic, "dead_letter")
        groups: dict[str, list[tuple[Event, Any]]] = {}
        for _, event, element in batch.events:
            groups.setdefault(event.customer_id, []).append((event, element))
        rekeyed = applied = done = 0  # counted once per envelope, also when a customer's part fails
        try:
            for cid, items in groups.items():
                if self.partition_of(cid) != partition:
                    raw = orjson.dumps({"batch_id": batch.batch_id, "events": [element for _, element in items]})
                    envelope = {"kind": kind, "topic": topic, "source": source, "offset": offset, "raw": raw.decode()}
                    await self.senders["rekey"].send(key=cid.encode(), value=orjson.dumps(envelope))
                    rekeyed += len(items)
                else:
                    applied += await self.apply_events(kind, cid, [event for event, _ in items], topic, source,
                                                       offset, batch.batch_id)
                done += len(items)
        finally:
            self._count(topic, "rekeyed", rekeyed)
            self._count(topic, "ok", applied)
            self._count(topic, "duplicate", done - rekeyed - applied)
        return "batch"

    async def apply_events(self, kind: str, cid: str, events: list[Event], topic: str, source: str, offset: int,
                           batch_id: str | None = None) -> int:
        """Apply one customer's events exactly once and evaluate once; return how many were applied.

        A single event is marked by its offset (redelivery) and its id (producer retry). Events
        of an envelope (``batch_id``) are marked by their ids, and the envelope by its offset and
        ``batch:<batch_id>`` (a producer's retry of the whole envelope). State is written once,
        after all of them. A big order or complaint has the customer's Redis view written at once
        (:meth:`flush_soon`: those of one envelope go in one call; one call per priority customer was
        ~4% of a drain of envelopes).
        """
        state = self.table.get(cid)
        if state is None:
            state = CustomerState()
        if batch_id is not None and state.is_duplicate(source, offset, f"batch:{batch_id}"):
            return 0
        position = offset if batch_id is None else -1  # -1: ids only; the envelope's offset is marked below
        applied, latest, priority = 0, None, None
        for event in events:
            dedupe_id = f"{kind}:{event.event_id}"
            if state.is_duplicate(source, position, dedupe_id):
                continue
            self.clock.observe(event.ts)
            if priority is None and kind != "login":
                priority = priority_of(event, partial(state.spend_orders_365d, self.clock.now()),
                                       self.settings.big_order_multiple, self.settings.big_order_amount)
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
        elif self._more and self.settings.coalesce_customers:
            self._defer(cid, state, trigger, event_time, applied)
            return applied
        await self.reevaluate(cid, state, trigger, event_time, changed=True)
        if priority is not None:
            self.flush_soon(cid)
        return applied

    def _defer(self, cid: str, state: CustomerState, trigger: dict[str, Any], event_time: int | None,
               applied: int) -> None:
        """Leave ``cid``'s evaluation to :meth:`evaluate_deferred`; its applied events go to the changelog now.

        The state is marked ``stale`` until evaluated, so that a restart (or the next owner
        after a rebalance) evaluates it at its first sweep (stream.due.due_after_restore).
        """
        self.table[cid] = state
        if state.view is not None:
            state.view["stale"] = True
        self._waiting += applied
        entry = self._deferred.get(cid)
        if entry is None:
            self._deferred[cid] = _Deferred(trigger, event_time, self._arrival, applied, self.message_context(),
                                            time.monotonic() + self._wait_for(self._arrival, self._backlog_s))
            return
        entry.trigger, entry.context = trigger, self.message_context()
        entry.events += applied
        if event_time is not None and (entry.event_time is None or event_time > entry.event_time):
            entry.event_time = event_time

    def _wait_for(self, arrival: Arrival, backlog_s: float) -> float:
        """Seconds a deferred evaluation may wait: ``coalesce_window``, or half as long as its message
        was already late when it arrived or as the messages behind it will take (``backlog_s``: how
        many there are, times the average time a message takes), at most ``coalesce_window_max``.

        The further behind a worker is, the more events of one customer a wait gathers, and the
        sooner the worker catches up; a tag change comes at most half again as late as its event
        was anyway or as the worker's catching up takes, or ``coalesce_window`` later. (A backlog
        that appears at once, a bulk load or a producer's burst, is not late at first.)
        """
        arrived, kafka_ts = arrival
        late = 0.0 if kafka_ts is None else arrived - kafka_ts
        window = self.settings.coalesce_window
        return max(window, min(max(late, backlog_s) / 2, self.settings.coalesce_window_max))

    def _undefer(self, cid: str) -> None:
        entry = self._deferred.pop(cid, None)
        if entry is not None:
            self._waiting -= entry.events

    async def evaluate_deferred(self, due_only: bool = False, limit: int | None = None) -> int:
        """Evaluate the customers left by :meth:`_defer`, once each, oldest first; returns how many.

        ``due_only``: only those whose wait is over, and the oldest while more than
        ``coalesce_customers`` wait; else every one; at most ``limit``. The trigger is the latest message's,
        with ``events``: how many events were applied since the customer's last evaluation
        (when more than one). Each runs within the context of its customer's latest message
        (:attr:`message_context`).
        """
        evaluated, now, most = 0, time.monotonic(), self.settings.coalesce_customers
        while self._deferred and (limit is None or evaluated < limit):  # one at a time: /stats counts the rest
            cid, entry = next(iter(self._deferred.items()))
            if due_only and entry.due > now and len(self._deferred) <= most:
                break
            trigger = entry.trigger if entry.events <= 1 else {**entry.trigger, "events": entry.events}
            with self.within(entry.context):
                state = self.table.get(cid)
                if state is None:
                    self._undefer(cid)
                    continue
                evaluated += 1
                try:
                    await self.reevaluate(cid, state, trigger, entry.event_time, changed=True,
                                          arrival=entry.arrival)
                except Exception:  # noqa: BLE001 - no message to dead-letter: the next sweep evaluates it again
                    log.exception("deferred evaluation of %s failed; due at the next sweep", cid)
                    self.due.mark(self.partition_of(cid), cid)
        return evaluated

    def _count(self, topic: str, outcome: str, n: int = 1) -> None:
        """Count ``n`` events of a batch envelope under ``outcome``."""
        if n:
            self.outcomes[outcome] += n
            _child(self.metrics.events, topic, outcome).inc(n)

    async def erase(self, request: dict[str, Any], topic: str) -> str:
        """Erase a customer: table state (changelog tombstone), due entry, Redis keys, then tell and audit.

        Idempotent, so a redelivered request simply erases again; the final
        tag change and the audit record are sent every time.
        """
        cid = request["customer_id"]
        found = cid in self.table
        self._undefer(cid)
        if found:
            del self.table[cid]  # Faust writes a tombstone to the changelog
        self.due.set(self.partition_of(cid), cid, None)
        self._partition_of.pop(cid, None)
        self.view.stage_erase(cid)
        await self.flush_priority(cid)  # on failure the flush timer retries the staged erase
        ruleset = self.evaluator.ruleset
        change = erase_change(request, topic=topic, ruleset_version=ruleset.version, ruleset_name=ruleset.name)
        await self.senders["tag_changes"].send(key=cid.encode(), value=orjson.dumps(change))
        if self.audit is not None:
            await self.audit.write(audit_record(
                action="privacy.erase", outcome="erased", status=200, principal=None, customer_id=cid,
                source=topic, detail={"request_id": request["request_id"], "found": found}), wait=False)
        log.info("privacy request %s: customer erased (%s)", request["request_id"],
                 "state removed" if found else "no state held")
        return "ok"

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

    async def reevaluate(self, cid: str, state: CustomerState, trigger: dict[str, Any],
                         event_time: int | None = None, changed: bool = False, arrival: Arrival | None = None) -> None:
        """Prune, evaluate, store, stage the Redis view and publish any tag change.

        The table (and so the changelog) is written when a message was applied
        (``changed``) or the tags or tier changed; a sweep that changes nothing a
        subscriber sees costs no changelog write. A deferred evaluation of the
        customer is covered by this one. ``arrival``: of the message the emit
        latency is measured from (default: the current one).
        """
        self._undefer(cid)
        now = self.clock.now()
        state.prune(now)
        errors: list[str] = []
        facts, change = self.evaluator.evaluate(cid, state, now, self.cutoffs, trigger, event_time, errors)
        alert = self.evaluator.churn_alert(cid, state, facts, now, trigger, event_time)
        if errors:
            self.rule_errors += len(errors)
            log.warning("rule errors for %s: %s", cid, errors)
        # numbered before the table write, which a RocksDB store serialises at once; the record reaches
        # the changelog at the next commit (stream/faust/app.py write_dirty), after the sends below: a crash
        # before it makes the replay number the same outputs again from the counters the changelog kept
        if change is not None:
            stamp(change, cid, "tag", state.next_seq("tag"))
        if alert is not None:
            stamp(alert, cid, "churn", state.next_seq("churn"))
        if changed or change is not None or alert is not None:
            self.table[cid] = state
        self.due.set(self.partition_of(cid), cid, next_due(state, now))
        self.view.stage(cid, partial(self.evaluator.view_document, cid, state, facts), facts["spend_365d"])
        await self._emit(change, alert, cid, trigger, arrival)

    async def _emit(self, change: dict[str, Any] | None, alert: dict[str, Any] | None, cid: str,
                    trigger: dict[str, Any], arrival: Arrival | None) -> None:
        """Publish a tag change and a churn alert (numbered already: stream/sequence.py)."""
        if change is not None:
            await self.senders["tag_changes"].send(key=cid.encode(), value=orjson.dumps(change))
            self._observe_emit("tag_change", trigger, arrival)
            for direction in ("added", "removed"):
                for tag in change[direction]:
                    _child(self.metrics.tag_changes, tag, direction).inc()
        if alert is not None:
            await self.senders["churn_alerts"].send(key=cid.encode(), value=orjson.dumps(alert))
            self._observe_emit("churn_alert", trigger, arrival)
            _child(self.metrics.churn_alerts, alert["level"]).inc()

    def _observe_emit(self, output: str, trigger: dict[str, Any], arrival: Arrival | None) -> None:
        if trigger.get("kind") not in ("event", "manual") or trigger.get("topic") is None:
            return  # timers and reloads have no arrival to measure from
        now = time.time()
        arrived, kafka_ts = arrival or self._arrival
        _child(self.metrics.emit_latency, output, "arrival").observe(now - arrived)
        if kafka_ts is not None:
            _child(self.metrics.emit_latency, output, "kafka_timestamp").observe(max(0.0, now - kafka_ts))

    async def dead_letter(self, topic: str, partition: int, offset: int, key: bytes | None,
                          value: bytes | None, reason: str) -> None:
        """Publish a message that cannot be processed, with the reason."""
        record = dead_letter(topic=topic, partition=partition, offset=offset, key=key, value=value,
                             error=reason, max_value_bytes=self.settings.dead_letter_value_bytes)
        await self.senders["dead_letters"].send(key=key or b"", value=record)
        self.metrics.dead_lettered(reason)

    async def command(self, partition: int, cmd: dict[str, Any]) -> None:
        """Run a partition-wide command in chunks, so intake goes on in between.

        ``sweep`` (time passed), ``rules`` (ruleset reloaded), and the two phases of
        ``tagger reevaluate``: ``rank`` then ``evaluate``. Each message handles at most
        ``TAGGER_SWEEP_CHUNK`` customers (in customer-id order) and queues the rest
        as a continuation behind the events that arrived meanwhile. The last chunk
        flushes Redis and acknowledges ``request_id``.
        """
        name, request_id, pos = cmd["cmd"], cmd.get("request_id"), int(cmd.get("pos", 0))
        triggers = {"sweep": "timer", "rules": "rules", "evaluate": "manual"}
        if name not in (*triggers, "rank"):
            raise InvalidEvent(f"field 'cmd': unknown command {name!r}")
        self._running[(name, partition)] = time.monotonic()
        trigger = {"kind": triggers.get(name), "topic": None, "event_id": request_id or cmd.get("version")}
        if name == "sweep":
            more = await self.sweep_due(partition, trigger)
        else:
            if name == "evaluate" and pos == 0:
                await self.refresh_cutoffs()
            only = cmd.get("customer_id")  # `tagger reevaluate --customer`: one customer of this partition
            if only is not None and not isinstance(only, str):
                raise InvalidEvent("field 'customer_id': must be a string")
            customers = ([only] if only in self.table else []) if only else sorted(self.customers_in(partition))
            chunk = customers[pos:pos + self.settings.sweep_chunk]
            if name == "rank":
                self.stage_views(chunk)
            else:
                await self.sweep(chunk, trigger)
            more = pos + len(chunk) < len(customers)
            cmd = {**cmd, "pos": pos + len(chunk)}
        if more:
            await self.senders["commands"].send(key=name.encode(), value=orjson.dumps(cmd), partition=partition)
            return
        self._running.pop((name, partition), None)
        if not request_id:  # a sweep or reload: views left staged are written by the flush timer
            await self.view.flush()
            return
        await _redis_retrying(self.view.flush)  # an ack waits on it: not lost to a dead connection
        await _redis_retrying(partial(self.view.ack, str(request_id), name, partition))

    async def sweep_due(self, partition: int, trigger: dict[str, Any]) -> bool:
        """One chunk of an incremental sweep of ``partition``; True if more chunks are needed.

        The first sweep of a partition (after start-up or an assignment) builds its due
        index from the table, ``TAGGER_SWEEP_CHUNK`` customers per chunk; after that a
        sweep re-evaluates only the customers whose due time has come (stream.due).
        """
        limit = self.settings.sweep_chunk
        started, evaluated = self._sweeps.setdefault(partition, (time.monotonic(), 0))
        if not self.due.tracked(partition):
            self.due.track(partition)
            self._unindexed[partition] = list(self.customers_in(partition))
        pending = self._unindexed.get(partition)
        if pending:
            chunk = pending[-limit:]
            del pending[-limit:]
            self.due.track(partition, ((cid, due_after_restore(state)) for cid in chunk
                                       if (state := self.table.get(cid)) is not None))
            return True
        self._unindexed.pop(partition, None)
        customers = self.due.pop_due(partition, self.clock.now(), limit)
        await self.sweep(customers, trigger)
        if len(customers) == limit:
            self._sweeps[partition] = (started, evaluated + len(customers))
            return True
        del self._sweeps[partition]
        self.metrics.sweep_seconds.observe(time.monotonic() - started)
        self.metrics.sweep_customers.observe(evaluated + len(customers))
        return False

    def sweeping(self, name: str, partition: int) -> bool:
        """A ``name`` command is still working through ``partition`` (started recently)."""
        started = self._running.get((name, partition))
        return started is not None and time.monotonic() - started < 3 * self.settings.sweep_interval

    def use_ruleset(self, ruleset: Any) -> None:
        """Evaluate with ``ruleset`` from now on (the rules hot reload)."""
        self.evaluator.ruleset = ruleset

    async def refresh_cutoffs(self) -> Cutoffs:
        """Read the global spend ranking from Redis: tier cut-offs and quantiles."""
        tiers = self.evaluator.ruleset.tiers
        n = (await self.view.spend_ranks([])).n
        pa, pb = tier_cutoffs(n, tiers.a_top_fraction, tiers.b_top_fraction)
        quantile_positions = [1 + round((n - 1) * (1 - k / 100)) for k in range(101)] if n else []
        ranks = await self.view.spend_ranks([pa, pb, *quantile_positions])
        a_cut, b_cut, *quantiles = ranks.values
        previous = self.cutoffs
        self.cutoffs = Cutoffs(
            a_cut=a_cut if pa else None,
            b_cut=b_cut if pb else None,
            quantiles=tuple(q for q in quantiles if q is not None),
            n=ranks.n,
        )
        await self._mark_retiered(previous, self.cutoffs)
        return self.cutoffs

    async def _mark_retiered(self, old: Cutoffs, new: Cutoffs) -> None:
        """Make the local customers whose tier a cut-off move can change due now.

        A customer's tier depends on the cut-offs only through where its spend lies
        against them, so only customers between an old and a new cut can move; a
        cut that appears or disappears can move anyone with spend.
        """
        inf = float("inf")
        for before, after in ((old.a_cut, new.a_cut), (old.b_cut, new.b_cut)):
            if before == after:
                continue
            low, high = (-inf, inf) if before is None or after is None else sorted((before, after))
            for cid in await self.view.customers_between(low, high):
                if cid in self.table:
                    self.due.mark(self.partition_of(cid), cid)

    def partition_of(self, customer_id: str) -> int:
        """The partition that owns a customer (memoised murmur2)."""
        p = self._partition_of.get(customer_id)
        if p is None:
            p = self._partition_of[customer_id] = expected_partition(customer_id.encode(), self.settings.partitions)
        return p

    def keep_partitions(self, owned: Collection[int]) -> None:
        """After a rebalance: forget the due index of partitions this worker no longer owns."""
        for partition in [p for p in self.due.partitions() if p not in owned]:
            self.due.drop(partition)
            self._unindexed.pop(partition, None)
        for cid in [cid for cid in self._deferred if self.partition_of(cid) not in owned]:
            self._undefer(cid)  # stale in the changelog: the new owner evaluates it

    def customers_in(self, partition: int) -> Iterator[str]:
        """Customers held in the local table that belong to ``partition``."""
        return (cid for cid in list(self.table.keys()) if self.partition_of(cid) == partition)

    async def sweep(self, customers: Iterable[str], trigger: dict[str, Any]) -> None:
        """Re-evaluate ``customers`` at the current time."""
        for cid in customers:
            state = self.table.get(cid)
            if state is not None:
                await self.reevaluate(cid, state, trigger)

    def stage_views(self, customers: Iterable[str]) -> None:
        """Stage ``customers``' current views and spend_365d without re-evaluating them."""
        now = self.clock.now()
        for cid in customers:
            state = self.table.get(cid)
            if state is not None:
                facts = self.evaluator.facts(state, now)
                self.view.stage(cid, partial(self.evaluator.view_document, cid, state, facts), facts["spend_365d"])

    def restore_clock(self) -> None:
        """Raise the clock to the latest event time held in the (recovered) table."""
        for state in list(self.table.values()):
            if state.last_event_ts is not None:
                self.clock.observe(state.last_event_ts)

    def stage_all_views(self, partitions: Collection[int]) -> int:
        """Stage the view of every local customer of ``partitions`` (Redis rebuild)."""
        # customers of partitions this worker no longer owns may linger in the table: skip them
        self.stage_views(cid for cid in list(self.table.keys()) if self.partition_of(cid) in partitions)
        return self.view.pending
