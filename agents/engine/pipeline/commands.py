"""Partition-wide work: sweeps, cut-off moves, re-evaluation, and the partition bookkeeping.

A command on the commands topic (``sweep``, ``rules``, and the ``rank`` / ``evaluate`` phases
of ``tagger reevaluate``) works through its partition's customers in chunks, each queued
behind the events that arrived meanwhile. The per-partition state kept here: the due index's
building, sweeps and commands in progress, and the global tier cut-offs read from Redis.
Calls :mod:`agents.engine.pipeline.coalesce` (to evaluate) and :mod:`agents.engine.pipeline.emit` (cut-offs,
Redis staging); nothing calls back here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator, MutableMapping
from functools import partial
from typing import Any

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agents.engine.evaluate import Cutoffs, Evaluator
from agents.engine.pipeline.coalesce import Coalescer
from agents.engine.pipeline.emit import Emitter
from agents.engine.pipeline.types import Partitions, Sender
from rules import tier_ranks
from stream.domain.clock import Clock
from stream.domain.due import DueIndex, due_after_restore
from stream.domain.state import CustomerState
from stream.exceptions import InvalidEvent
from stream.metrics import Metrics
from stream.settings import Settings
from stream.view.redis_view import RedisView

log = logging.getLogger(__name__)

REDIS_RETRY_DELAYS = (0.1, 0.3, 1.0, 2.0)  # seconds between the tries of a command's last step
_TRIGGERS = {"sweep": "timer", "rules": "rules", "evaluate": "manual"}  # a command's trigger kind


async def redis_retrying(call: Callable[[], Any]) -> Any:
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


class Commands:
    """Partition-wide commands of one worker, and what it keeps per partition."""

    def __init__(self, settings: Settings, table: MutableMapping[str, CustomerState], evaluator: Evaluator,
                 view: RedisView, clock: Clock, commands: Sender, metrics: Metrics, due: DueIndex,
                 partitions: Partitions, coalesce: Coalescer, emit: Emitter) -> None:
        self.settings, self.table, self.evaluator, self.view, self.clock = settings, table, evaluator, view, clock
        self.metrics, self.due, self.partitions, self.coalesce, self.emit = metrics, due, partitions, coalesce, emit
        self._commands = commands  # the commands topic: a command's next chunk
        self._running: dict[tuple[str, int], float] = {}  # partition-wide commands in progress
        self._unindexed: dict[int, list[str]] = {}  # partitions whose due index is being built
        self._sweeps: dict[int, tuple[float, int]] = {}  # sweeps in progress: started, customers evaluated

    async def command(self, partition: int, cmd: dict[str, Any]) -> None:
        """Run a partition-wide command in chunks, so intake goes on in between.

        ``sweep`` (time passed), ``rules`` (ruleset reloaded), and the two phases of
        ``tagger reevaluate``: ``rank`` then ``evaluate``. Each message handles at most
        ``TAGGER_SWEEP_CHUNK`` customers (in customer-id order) and queues the rest
        as a continuation behind the events that arrived meanwhile. The last chunk
        flushes Redis and acknowledges ``request_id``.
        """
        name, request_id, pos = cmd["cmd"], cmd.get("request_id"), int(cmd.get("pos", 0))
        if name not in (*_TRIGGERS, "rank"):
            raise InvalidEvent(f"field 'cmd': unknown command {name!r}")
        self._running[(name, partition)] = time.monotonic()
        trigger = {"kind": _TRIGGERS.get(name), "topic": None, "event_id": request_id or cmd.get("version")}
        if name == "sweep":
            more = await self.sweep_due(partition, trigger)
        else:
            more, cmd = await self._chunk(partition, cmd, pos, trigger)
        if more:
            await self._commands.send(key=name.encode(), value=orjson.dumps(cmd), partition=partition)
            return
        self._running.pop((name, partition), None)
        if not request_id:  # a sweep or reload: views left staged are written by the flush timer
            await self.view.flush()
            return
        await redis_retrying(self.view.flush)  # an ack waits on it: not lost to a dead connection
        await redis_retrying(partial(self.view.ack, str(request_id), name, partition))

    async def _chunk(self, partition: int, cmd: dict[str, Any], pos: int,
                     trigger: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """One chunk of ``rank``, ``evaluate`` or ``rules`` from ``pos``: whether more are needed, and the
        continuation."""
        name = cmd["cmd"]
        if name == "evaluate" and pos == 0:
            await self.refresh_cutoffs()
        only = cmd.get("customer_id")  # `tagger reevaluate --customer`: one customer of this partition
        if only is not None and not isinstance(only, str):
            raise InvalidEvent("field 'customer_id': must be a string")
        customers = ([only] if only in self.table else []) if only else sorted(self.customers_in(partition))
        chunk = customers[pos:pos + self.settings.sweep_chunk]
        if name == "rank":
            self.emit.stage_views(chunk)
        else:
            await self.sweep(chunk, trigger)
        return pos + len(chunk) < len(customers), {**cmd, "pos": pos + len(chunk)}

    async def sweep_due(self, partition: int, trigger: dict[str, Any]) -> bool:
        """One chunk of an incremental sweep of ``partition``; True if more chunks are needed.

        The first sweep of a partition (after start-up or an assignment) builds its due
        index from the table, ``TAGGER_SWEEP_CHUNK`` customers per chunk; after that a
        sweep re-evaluates only the customers whose due time has come (stream.domain.due).
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

    async def sweep(self, customers: Iterable[str], trigger: dict[str, Any]) -> None:
        """Re-evaluate ``customers`` at the current time."""
        for cid in customers:
            state = self.table.get(cid)
            if state is not None:
                await self.coalesce.evaluate_now(cid, state, trigger)

    async def refresh_cutoffs(self) -> Cutoffs:
        """Read the global spend ranking from Redis: tier cut-offs (entry and exit) and quantiles."""
        n = (await self.view.spend_ranks([])).n
        pa, pb, pae, pbe = tier_ranks(n, self.evaluator.ruleset.tiers)
        quantile_positions = [1 + round((n - 1) * (1 - k / 100)) for k in range(101)] if n else []
        ranks = await self.view.spend_ranks([pa, pb, pae, pbe, *quantile_positions])
        a_cut, b_cut, a_exit_cut, b_exit_cut, *quantiles = ranks.values
        previous = self.emit.cutoffs
        cutoffs = self.emit.cutoffs = Cutoffs(
            a_cut=a_cut if pa else None,
            b_cut=b_cut if pb else None,
            a_exit_cut=a_exit_cut if pae else None,
            b_exit_cut=b_exit_cut if pbe else None,
            quantiles=tuple(q for q in quantiles if q is not None),
            n=ranks.n,
        )
        await self._mark_retiered(previous, cutoffs)
        return cutoffs

    async def _mark_retiered(self, old: Cutoffs, new: Cutoffs) -> None:
        """Make the local customers whose tier a cut-off move can change due now.

        A customer's tier depends on the cut-offs only through where its spend lies
        against them, so only customers between an old and a new cut can move; a
        cut that appears or disappears can move anyone with spend.
        """
        inf = float("inf")
        for before, after in ((old.a_cut, new.a_cut), (old.b_cut, new.b_cut),
                              (old.a_exit_cut, new.a_exit_cut), (old.b_exit_cut, new.b_exit_cut)):
            if before == after:
                continue
            low, high = (-inf, inf) if before is None or after is None else sorted((before, after))
            for cid in await self.view.customers_between(low, high):
                if cid in self.table:
                    self.due.mark(self.partitions.of(cid), cid)

    def keep_partitions(self, owned: Collection[int]) -> None:
        """After a rebalance: forget the due index and waiting evaluations of partitions not owned."""
        for partition in [p for p in self.due.partitions() if p not in owned]:
            self.due.drop(partition)
            self._unindexed.pop(partition, None)
        self.coalesce.keep_partitions(owned)

    def customers_in(self, partition: int) -> Iterator[str]:
        """Customers held in the local table that belong to ``partition``."""
        of = self.partitions.of
        return (cid for cid in list(self.table.keys()) if of(cid) == partition)

    def restore_clock(self) -> None:
        """Raise the clock to the latest event time held in the (recovered) table."""
        for state in list(self.table.values()):
            if state.last_event_ts is not None:
                self.clock.observe(state.last_event_ts)

    def stage_all_views(self, partitions: Collection[int]) -> int:
        """Stage the view of every local customer of ``partitions`` (Redis rebuild)."""
        # customers of partitions this worker no longer owns may linger in the table: skip them
        of = self.partitions.of
        self.emit.stage_views((cid for cid in list(self.table.keys()) if of(cid) in partitions), rebuilt=True)
        return self.view.pending
