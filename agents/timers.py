"""The worker's timer jobs, each an object holding its own state; :func:`agents.tagger.build` runs them.

Each job's ``run`` is what one tick of its Faust timer does. None of them touches Faust: the assigned
partitions come from a function and commands go to a :class:`~agents.engine.runtime.Sender`, so the unit
tests drive them with a real :class:`~agents.engine.runtime.Runtime` on fakes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from agents.engine.evaluate import facts_schema
from agents.engine.runtime import Runtime, Sender
from rules import RulesetError, load_ruleset

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int], ...]


class TopicPartition(Protocol):
    """What the jobs read of an assigned partition (Faust's ``TP``)."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...


def rules_fingerprint(directory: Path) -> Fingerprint:
    """Cheap change detector for a rules directory: names, sizes and mtimes of its YAML files."""
    try:
        files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml"))
        return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    except OSError:
        return ()


@dataclass
class PartitionCommands:
    """This worker's partitions of the commands topic, and commands sent to each of them."""

    assigned: Callable[[], Iterable[TopicPartition]]  # the active partitions assigned to this worker
    topic: str  # the commands topic
    commands: Sender
    runtime: Runtime

    def owned(self) -> set[int]:
        return {tp.partition for tp in self.assigned() if tp.topic == self.topic}

    async def send(self, cmd: dict[str, Any]) -> None:
        """Send ``cmd`` to each own partition, but not where the last such command is still running."""
        value = orjson.dumps(cmd)
        for tp in self.assigned():
            if tp.topic == self.topic and not self.runtime.sweeping(cmd["cmd"], tp.partition):
                await self.commands.send(key=cmd["cmd"].encode(), value=value, partition=tp.partition)

    async def sweep(self) -> None:
        """The sweep timer: each own partition re-evaluates its customers now due (Runtime.sweep_due)."""
        await self.send({"cmd": "sweep"})


@dataclass
class ViewFlush:
    """Writes the staged views to Redis and shares the stream clock; a failure is retried next time."""

    runtime: Runtime
    stream_clock: bool  # settings.clock == "stream": merge the workers' clocks through Redis
    # False while partitions move (a rebalance, then the table's recovery): waiting evaluations wait
    settled: Callable[[], bool] = lambda: True

    async def run(self) -> None:
        """Run the overdue waiting evaluations, unless partitions are moving, then write the staged views.

        An evaluation while partitions move would write a customer's state before its partition's
        recovery has read the changelog: a worker that was cut off and given its partitions back still
        holds their states from before, and such a write stamps the old state with the new consumer
        generation, so the recovery passes over the newer records the other owner wrote meanwhile
        (CustomerState.superseded_by) and their events are lost (the fault suite's cut-off scenario).
        """
        runtime = self.runtime
        try:
            if self.settled():
                await runtime.evaluate_overdue()
            await runtime.view.flush()
            if self.stream_clock:
                runtime.clock.merge_global(await runtime.view.advance_clock(runtime.clock.local_max))
        except Exception as exc:  # noqa: BLE001 - Redis is a projection; keep staging, retry
            runtime.view.errors += 1
            log.warning("redis flush failed (%d pending, will retry): %r", runtime.view.pending, exc)


@dataclass
class CutoffRefresh:
    """Reads the tier cut-offs, and rebuilds the Redis view when its epoch changes or the table recovered."""

    runtime: Runtime
    partitions: PartitionCommands
    seen_epoch: bytes | None = None  # the Redis view's epoch token at the last rebuild
    rebuild: bool = True  # rebuild at the next run whatever the epoch (at start and after each recovery)

    def rebuild_soon(self) -> None:
        """The table recovered: stage every own customer's view again at the next run."""
        self.rebuild = True

    async def run(self) -> None:
        runtime = self.runtime
        try:
            await runtime.refresh_cutoffs()
            token = await runtime.view.epoch()
            if token != self.seen_epoch or self.rebuild:
                self.seen_epoch, self.rebuild = token, False
                log.info("rebuilding the Redis view: %d customers staged",
                         runtime.stage_all_views(self.partitions.owned()))
        except Exception as exc:  # noqa: BLE001 - keep the last good cut-offs
            runtime.view.errors += 1
            log.warning("redis read failed: %r", exc)


@dataclass
class RulesReload:
    """Loads the rules again when their files change, and tells the own partitions of a new version."""

    rules_dir: Path
    runtime: Runtime
    partitions: PartitionCommands
    fingerprint: Fingerprint = field(init=False)  # of the rules files as last read

    def __post_init__(self) -> None:
        self.fingerprint = rules_fingerprint(self.rules_dir)

    async def run(self) -> None:
        fingerprint = rules_fingerprint(self.rules_dir)
        if fingerprint == self.fingerprint:
            return
        self.fingerprint = fingerprint
        runtime = self.runtime
        try:
            candidate = load_ruleset(self.rules_dir, facts_schema())
        except RulesetError as exc:
            runtime.reload_errors += 1
            log.error("rules changed but are invalid; keeping version %s: %s", runtime.evaluator.ruleset.version, exc)
            return
        if candidate.version != runtime.evaluator.ruleset.version:
            log.info("rules reloaded: version %s -> %s", runtime.evaluator.ruleset.version, candidate.version)
            runtime.use_ruleset(candidate)
            await self.partitions.send({"cmd": "rules", "version": candidate.version})
