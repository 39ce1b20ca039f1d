"""Third stage: evaluate a customer now, or defer its evaluation while the worker is behind.

A worker that is behind (messages waiting, and the current one ``coalesce_after`` seconds
late) applies a customer's events and lets its evaluation wait, so that a customer with
several events in the backlog is evaluated once. Every waiting evaluation runs when a message
comes with nothing behind it or on time; while the backlog goes on, each runs once it has
waited its time (:meth:`Coalescer.wait_for`), oldest first, and the oldest run whenever more
than ``coalesce_customers`` customers wait. Big orders and complaints are evaluated at once.

This stage owns the per-message pace (:meth:`Coalescer.arrive`, :meth:`Coalescer.left`).
After each message the router runs a slice (:data:`DEFERRED_SLICE`) of the evaluations due.
It calls only :mod:`agents.engine.pipeline.emit`, and cancels its own deferred entry of a customer
before handing it on, so emit never calls back here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, MutableMapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from agents.engine.pipeline.emit import Emitter
from agents.engine.pipeline.types import Arrival, Partitions
from stream.domain.due import DueIndex
from stream.domain.state import CustomerState
from stream.settings import Settings
from stream.tuning import DEFERRED_SLICE

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Deferred:
    """A customer whose evaluation waits for the messages queued behind (see :mod:`agents.engine.pipeline.coalesce`)."""

    trigger: dict[str, Any]  # of the latest message applied
    event_time: int | None  # latest event time applied
    arrival: Arrival  # of the first message applied: the emit latency is measured from it
    events: int  # events applied since the customer's last evaluation
    context: Any  # message_context() of the latest message applied (Faust's current event)
    due: float  # time.monotonic() by which the evaluation runs, though the backlog goes on


class Coalescer:
    """The customers applied but not evaluated yet, in order, and the pace of the messages."""

    def __init__(self, settings: Settings, table: MutableMapping[str, CustomerState], emit: Emitter,
                 due: DueIndex, partitions: Partitions, message_context: Callable[[], Any],
                 within: Callable[[Any], AbstractContextManager[Any]]) -> None:
        self.settings, self.table, self.emit, self.due = settings, table, emit, due
        self._partition_of = partitions.of
        # The message a table write belongs to: Faust's tables take the changelog partition (and
        # RocksDB the partition's database) from the current event, so a deferred evaluation runs
        # within the context of the customer's own latest message
        self.message_context, self.within = message_context, within
        self.arrival: Arrival = (time.time(), None)  # of the message being handled (or the last one)
        self.more = False  # messages are waiting behind the one being handled, and it came late
        self.release = False  # the last message came on time or with nothing behind: every evaluation is due
        self.handling = False
        self.backlog_s = 0.0  # about how long the messages behind it will take (see wait_for)
        self.per_message = 0.0  # moving average of the seconds a message takes
        self.deferred: dict[str, Deferred] = {}  # customers applied, not yet evaluated, in order
        self.waiting = 0  # events applied whose evaluation is in self.deferred

    def arrive(self, now: float, timestamp: float | None, more: int) -> None:
        """A message arrived at ``now`` with ``more`` known to be waiting behind it."""
        self.arrival = (now, timestamp)
        self.more = more > 0 and timestamp is not None and now - timestamp >= self.settings.coalesce_after
        self.backlog_s = more * self.per_message
        self.release = not self.more
        self.handling = True

    def left(self, elapsed: float | None) -> None:
        """The message is done, after ``elapsed`` seconds (None: it failed): until the next one, the timer
        may run waiting evaluations; the moving average behind :meth:`wait_for` learns the time."""
        self.more = self.handling = False
        if elapsed is not None:
            self.per_message += (0.01 if self.per_message else 1.0) * (elapsed - self.per_message)

    def defer(self, cid: str, state: CustomerState, trigger: dict[str, Any], event_time: int | None,
              applied: int) -> bool:
        """Defer ``cid``'s evaluation if the worker is behind; False: it is not, evaluate it now."""
        if not (self.more and self.settings.coalesce_customers):
            return False
        self._defer(cid, state, trigger, event_time, applied)
        return True

    async def evaluate_now(self, cid: str, state: CustomerState, trigger: dict[str, Any],
                           event_time: int | None = None, changed: bool = False) -> None:
        """Evaluate ``cid`` at once (:meth:`Emitter.reevaluate`); a deferred evaluation of it is covered."""
        self.cancel(cid)
        await self.emit.reevaluate(cid, state, trigger, event_time, changed, self.arrival)

    def _defer(self, cid: str, state: CustomerState, trigger: dict[str, Any], event_time: int | None,
               applied: int) -> None:
        """Leave ``cid``'s evaluation to :meth:`evaluate_deferred`; its applied events go to the changelog now.

        Synchronous, as the per-event path under backlog: no coroutine per deferred event.

        The state is marked ``stale`` until evaluated, so that a restart (or the next owner
        after a rebalance) evaluates it at its first sweep (stream.domain.due.due_after_restore).
        """
        self.table[cid] = state
        if state.view is not None:
            state.view["stale"] = True
        self.waiting += applied
        entry = self.deferred.get(cid)
        if entry is None:
            self.deferred[cid] = Deferred(trigger, event_time, self.arrival, applied, self.message_context(),
                                          time.monotonic() + self.wait_for(self.arrival, self.backlog_s))
            return
        entry.trigger, entry.context = trigger, self.message_context()
        entry.events += applied
        if event_time is not None and (entry.event_time is None or event_time > entry.event_time):
            entry.event_time = event_time

    def wait_for(self, arrival: Arrival, backlog_s: float) -> float:
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

    def cancel(self, cid: str) -> None:
        """Forget ``cid``'s deferred evaluation (erased, or its partition went to another worker)."""
        entry = self.deferred.pop(cid, None)
        if entry is not None:
            self.waiting -= entry.events

    def keep_partitions(self, owned: Collection[int]) -> None:
        """After a rebalance: forget the deferred evaluations of customers of partitions not owned."""
        for cid in [cid for cid in self.deferred if self._partition_of(cid) not in owned]:
            self.cancel(cid)  # stale in the changelog: the new owner evaluates it

    async def evaluate_deferred(self, due_only: bool = False, limit: int | None = None) -> int:
        """Evaluate the customers left by :meth:`_defer`, once each, oldest first; returns how many.

        ``due_only``: only those whose wait is over, and the oldest while more than
        ``coalesce_customers`` wait; else every one; at most ``limit``. The trigger is the latest message's,
        with ``events``: how many events were applied since the customer's last evaluation
        (when more than one). Each runs within the context of its customer's latest message
        (``message_context``).
        """
        evaluated, now, most = 0, time.monotonic(), self.settings.coalesce_customers
        while self.deferred and (limit is None or evaluated < limit):  # one at a time: /stats counts the rest
            cid, entry = next(iter(self.deferred.items()))
            if due_only and entry.due > now and len(self.deferred) <= most:
                break
            self.cancel(cid)  # before handing it on: emit never calls back here
            trigger = entry.trigger if entry.events <= 1 else {**entry.trigger, "events": entry.events}
            with self.within(entry.context):
                state = self.table.get(cid)
                if state is None:
                    continue
                evaluated += 1
                try:
                    await self.emit.reevaluate(cid, state, trigger, entry.event_time, True, entry.arrival)
                except Exception:  # noqa: BLE001 - no message to dead-letter: the next sweep evaluates it again
                    log.exception("deferred evaluation of %s failed; due at the next sweep", cid)
                    self.due.mark(self._partition_of(cid), cid)
        return evaluated

    async def evaluate_overdue(self) -> int:
        """From a timer, between messages: run the waiting evaluations whose time has come (the messages
        behind them are slow to come, or a rebalance cleared them), or all of them if the last message
        came on time or with nothing behind; :data:`DEFERRED_SLICE` at a time, a message first."""
        evaluated = 0
        while self.deferred and not self.handling:
            done = await self.evaluate_deferred(due_only=not self.release, limit=DEFERRED_SLICE)
            evaluated += done
            if done < DEFERRED_SLICE:
                break
            await asyncio.sleep(0)
        return evaluated
