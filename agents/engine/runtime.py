"""The tagger agent's runtime: one worker's per-event pipeline, built in one call, behind one façade.

A message travels as one :class:`~agents.engine.pipeline.types.Message` through one-way stages
(:mod:`agents.engine.pipeline`): route → apply → coalesce → emit, with commands beside them
(it uses coalesce and emit). Offset continuity (gaps Faust never delivered, messages handled
ahead) is :class:`stream.faust.offsets.Offsets`'. :class:`Runtime` builds them all from what
its constructor is given, and offers what the agent wiring, the timers, the API, the
dashboard and the observability loop use; nothing is assigned on it afterwards.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from agents.engine.evaluate import Cutoffs, Evaluator
from agents.engine.pipeline.apply import Applier
from agents.engine.pipeline.coalesce import Coalescer
from agents.engine.pipeline.commands import Commands
from agents.engine.pipeline.emit import Emitter
from agents.engine.pipeline.route import Router
from agents.engine.pipeline.types import Message, Partitions, Sender
from rules import Ruleset
from stream.access.audit import AuditLog
from stream.domain.clock import Clock
from stream.domain.due import DueIndex
from stream.domain.state import CustomerState
from stream.faust.offsets import Gaps, Offsets
from stream.metrics import Metrics, create_metrics
from stream.settings import Settings
from stream.view.redis_view import RedisView

__all__ = ["Message", "Runtime", "Sender"]


def _no_context() -> Any:
    return None


class Runtime:
    """State and collaborators of one worker's tagger agent.

    ``senders``: tag_changes, dead_letters, rekey, commands and churn_alerts, already
    wrapped as they should be (:func:`agents.observability.counting_senders`). ``gaps``: reads
    what Faust never delivered (:class:`stream.faust.offsets.GapFiller`; None: no gap is filled).
    ``message_context`` / ``within``: Faust's current event, and a context that makes one current
    (a deferred evaluation writes the table within its customer's latest message). ``audit``:
    where erasures are audited. ``metrics``: shared with the senders (default: new ones).
    ``cutoffs``: the tier cut-offs until the first refresh from Redis.
    """

    def __init__(self, settings: Settings, table: MutableMapping[str, CustomerState], evaluator: Evaluator,
                 view: RedisView, clock: Clock, senders: dict[str, Sender], *, gaps: Gaps | None = None,
                 message_context: Callable[[], Any] = _no_context,
                 within: Callable[[Any], AbstractContextManager[Any]] = nullcontext,
                 audit: AuditLog | None = None, metrics: Metrics | None = None,
                 cutoffs: Cutoffs | None = None) -> None:
        self.settings, self.table, self.evaluator, self.view, self.clock = settings, table, evaluator, view, clock
        self.metrics = metrics or create_metrics()
        self.due = DueIndex()  # when each local customer next needs a sweep (stream.domain.due)
        self.offsets = Offsets(gaps)
        self.reload_errors = 0  # counted by the rules reload timer
        partitions = self._partitions = Partitions(settings.partitions)
        self._emit = Emitter(table, evaluator, view, clock, senders, self.metrics, self.due, partitions, cutoffs,
                             settings.reversal_window)
        self._coalesce = Coalescer(settings, table, self._emit, self.due, partitions, message_context, within)
        self._commands = Commands(settings, table, evaluator, view, clock, senders["commands"], self.metrics,
                                  self.due, partitions, self._coalesce, self._emit)
        applier = Applier(settings, table, evaluator, clock, self.due, partitions, self._coalesce, self._emit, audit)
        router = Router(settings, table, clock, senders, self.metrics, partitions, self.offsets,
                        self._commands, applier, self._coalesce)
        self._audit = audit
        self.outcomes: Counter[str] = router.outcomes  # per outcome, the messages (and envelopes' events)
        # the per-event path, bound once: no indirection per message
        self.handle = router.handle  # (message, more=0, ahead=False) -> outcome; never raises for bad input
        self.urgent = router.urgent  # (topic, value) -> a big order or complaint, for the batch intake
        self.dead_letter = router.dead_letter  # (message, reason): also the agent's, on an internal error
        self.partition_of = partitions.of  # the partition that owns a customer (memoised murmur2)
        # partition-wide commands, sweeps and the partition bookkeeping (agents.engine.pipeline.commands)
        self.command = self._commands.command
        self.sweeping = self._commands.sweeping
        self.refresh_cutoffs = self._commands.refresh_cutoffs
        self.keep_partitions = self._commands.keep_partitions
        self.restore_clock = self._commands.restore_clock
        self.stage_all_views = self._commands.stage_all_views
        # the waiting evaluations (agents.engine.pipeline.coalesce)
        self.evaluate_overdue = self._coalesce.evaluate_overdue
        self.evaluate_deferred = self._coalesce.evaluate_deferred

    def use_ruleset(self, ruleset: Ruleset) -> None:
        """Evaluate with ``ruleset`` from now on (the rules reload; the ``rules`` command re-evaluates)."""
        self.evaluator.ruleset = ruleset

    def forget_offsets(self, key: tuple[str, int] | None = None) -> None:
        """After a rebalance, or a restart of partition ``key``: it reads from its committed offset on."""
        self.offsets.forget(key)

    def customers_in(self, partition: int) -> Iterator[str]:
        """Customers held in the local table that belong to ``partition``."""
        return self._commands.customers_in(partition)

    async def sweep(self, customers: Iterable[str], trigger: dict[str, Any]) -> None:
        """Re-evaluate ``customers`` at the current time."""
        await self._commands.sweep(customers, trigger)

    def stage_views(self, customers: Iterable[str]) -> None:
        """Stage ``customers``' current views and spend_365d without re-evaluating them."""
        self._emit.stage_views(customers)

    async def reevaluate(self, cid: str, state: CustomerState, trigger: dict[str, Any],
                         event_time: int | None = None, changed: bool = False) -> None:
        """Evaluate one customer now, as a sweep does (a deferred evaluation of it is covered)."""
        await self._coalesce.evaluate_now(cid, state, trigger, event_time, changed)

    @property
    def cutoffs(self) -> Cutoffs:
        """The global tier cut-offs and spend quantiles evaluations use (refreshed from Redis)."""
        return self._emit.cutoffs

    @property
    def rule_errors(self) -> int:
        """Rule evaluation errors so far."""
        return self._emit.rule_errors

    @property
    def events_waiting(self) -> int:
        """Events applied whose customer's evaluation is still waiting (counted in :attr:`outcomes` already)."""
        return self._coalesce.waiting

    @property
    def last_offset(self) -> dict[tuple[str, int], int]:
        """The last offset handled in order on each (topic, partition) (/stats, the stall watch)."""
        return self.offsets.last_offset

    @property
    def gaps(self) -> Gaps | None:
        """The gap filler, if any."""
        return self.offsets.gaps

    @property
    def audit(self) -> AuditLog | None:
        """Where erasures are audited."""
        return self._audit
