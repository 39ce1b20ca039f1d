"""The timer jobs (agents.timers) and the /stats document (agents.pages) on a real Runtime, without Faust."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest

from agents.engine.runtime import Message, Runtime
from agents.pages import install_pages, stats_document
from agents.timers import CutoffRefresh, PartitionCommands, RulesReload, ViewFlush, rules_fingerprint
from rules import default_rules_dir
from stream.domain.clock import Clock
from stream.domain.state import CustomerState
from stream.faust.intake import BatchIntake
from stream.faust.offsets import GapFiller
from stream.settings import Settings
from stream.view.redis_view import SpendRanks

from .fakes import FakeSender, FakeView, make_runtime

COMMANDS = "customer-tagger-commands"


class TP(NamedTuple):
    topic: str
    partition: int


class RedisFake(FakeView):
    """A FakeView with the rest of what the timers read of Redis: epoch, spend ranking, global clock, errors."""

    def __init__(self) -> None:
        super().__init__()
        self.errors = 0
        self.token: bytes | None = b"1"
        self.global_clock = 0
        self.failure: Exception | None = None  # raised by every call below while set

    def _fail(self) -> None:
        if self.failure is not None:
            raise self.failure

    async def flush(self, batch: int = 200, only: Any = None) -> int:
        self._fail()
        return await super().flush(batch, only)

    async def epoch(self) -> bytes | None:
        self._fail()
        return self.token

    async def spend_ranks(self, positions: list[int]) -> SpendRanks:
        self._fail()
        return SpendRanks(0, tuple(None for _ in positions))

    async def advance_clock(self, local_max: int) -> int:
        self._fail()
        self.global_clock = max(self.global_clock, local_max)
        return self.global_clock


def worker(partitions: int = 4, customers: int = 0, **settings: Any) -> tuple[Runtime, RedisFake,
                                                                               dict[str, FakeSender]]:
    view = RedisFake()
    table = {f"c{i}": CustomerState() for i in range(customers)}
    runtime, senders = make_runtime(Settings(partitions=partitions, **settings), table,  # type: ignore[call-arg]
                                    Clock("stream"), view)
    return runtime, view, senders


def own(runtime: Runtime, commands: FakeSender, *partitions: int) -> PartitionCommands:
    """This worker owns ``partitions`` of the commands topic (and the same of another topic)."""
    assigned = [TP(topic, p) for p in partitions for topic in (COMMANDS, "orders")]
    return PartitionCommands(lambda: assigned, COMMANDS, commands, runtime)


def sent(sender: FakeSender) -> list[tuple[bytes, dict[str, Any], int | None]]:
    return [(key, orjson.loads(value), partition) for key, value, partition in sender.sent]


# --- commands to own partitions ----------------------------------------------------


def test_own_partitions_are_those_of_the_commands_topic() -> None:
    runtime, _, _ = worker()
    assert own(runtime, FakeSender(), 0, 2).owned() == {0, 2}
    assert own(runtime, FakeSender()).owned() == set()


async def test_a_sweep_goes_to_each_own_partition_but_one_still_sweeping() -> None:
    runtime, _, senders = worker(partitions=4, customers=12)
    busy = runtime.partition_of("c0")
    await runtime.command(busy, {"cmd": "sweep"})  # its first chunk indexes the partition: more to come
    assert runtime.sweeping("sweep", busy)
    commands = FakeSender()
    await own(runtime, commands, 0, 1, 2, 3).sweep()
    assert sent(commands) == [(b"sweep", {"cmd": "sweep"}, p) for p in (0, 1, 2, 3) if p != busy]


# --- Redis flush -------------------------------------------------------------------


async def test_the_flush_writes_the_views_and_shares_the_stream_clock() -> None:
    runtime, view, _ = worker()
    runtime.clock.observe(1_000)
    view.global_clock = 5_000  # another worker saw later events
    await ViewFlush(runtime, stream_clock=True).run()
    assert view.flushed == [None] and runtime.clock.now() == 5_000
    view.global_clock = 9_000
    await ViewFlush(runtime, stream_clock=False).run()  # wall clock: nothing to share
    assert view.flushed == [None, None] and runtime.clock.global_max == 5_000


async def test_waiting_evaluations_wait_while_partitions_move_and_views_are_still_written() -> None:
    # a worker cut off and given its partitions back holds their states from before the cut: an evaluation
    # before the recovery has read the changelog would stamp such a state with the new generation
    runtime, view, senders = worker(partitions=1, coalesce_window=60)
    late = Message("orders", 0, 0, b"c1", orjson.dumps({"event_id": "e1", "customer_id": "c1", "ts": 1_000,
                                                           "order_id": "o1", "amount": 20}), time.time() - 60)
    assert await runtime.handle(late, more=5) == "ok" and runtime.events_waiting == 1
    runtime._coalesce.deferred["c1"].due -= 61  # its wait is over
    settled = False
    flush = ViewFlush(runtime, stream_clock=False, settled=lambda: settled)
    await flush.run()
    assert runtime.events_waiting == 1 and not senders["tag_changes"].sent and view.flushed == [None]
    settled = True
    await flush.run()
    assert runtime.events_waiting == 0 and len(senders["tag_changes"].sent) == 1 and view.flushed == [None, None]


async def test_a_failed_flush_is_counted_logged_and_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    runtime, view, _ = worker()
    view.failure, view.pending = ConnectionError("down"), 3
    with caplog.at_level(logging.WARNING, logger="agents.timers"):
        await ViewFlush(runtime, stream_clock=True).run()
    assert view.errors == 1
    assert caplog.messages == ["redis flush failed (3 pending, will retry): ConnectionError('down')"]


# --- cut-offs and Redis rebuild --------------------------------------------------------


async def test_the_view_is_rebuilt_at_start_on_a_new_epoch_and_after_recovery() -> None:
    runtime, view, _ = worker(partitions=4, customers=12)
    refresh = CutoffRefresh(runtime, own(runtime, FakeSender(), 0, 1))
    mine = {f"c{i}" for i in range(12) if runtime.partition_of(f"c{i}") in (0, 1)}

    def rebuilt() -> set[str]:
        staged = set(view.staged)
        view.staged.clear()
        return staged

    await refresh.run()  # the first run rebuilds: nothing is known of Redis yet
    assert rebuilt() == mine and refresh.seen_epoch == b"1" and not refresh.rebuild
    await refresh.run()
    assert rebuilt() == set()  # same epoch: nothing to do
    view.token = b"2"  # Redis lost its data
    await refresh.run()
    assert rebuilt() == mine and refresh.seen_epoch == b"2"
    refresh.rebuild_soon()  # the table recovered
    await refresh.run()
    assert rebuilt() == mine and not refresh.rebuild


async def test_a_failed_read_keeps_the_rebuild_pending(caplog: pytest.LogCaptureFixture) -> None:
    runtime, view, _ = worker(customers=3)
    refresh = CutoffRefresh(runtime, own(runtime, FakeSender(), 0, 1, 2, 3))
    view.failure = TimeoutError("slow")
    with caplog.at_level(logging.WARNING, logger="agents.timers"):
        await refresh.run()
    assert view.errors == 1 and refresh.rebuild and view.staged == []
    assert caplog.messages == ["redis read failed: TimeoutError('slow')"]
    view.failure = None
    await refresh.run()
    assert sorted(view.staged) == ["c0", "c1", "c2"] and not refresh.rebuild


# --- rules hot reload --------------------------------------------------------------


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "rules"
    shutil.copytree(default_rules_dir(), directory)
    return directory


def edit(path: Path, change: Callable[[str], str], mtime_ns: int) -> None:
    path.write_text(change(path.read_text()))
    os.utime(path, ns=(mtime_ns, mtime_ns))  # a distinct mtime, however coarse the file system's clock


def reload_on(runtime: Runtime, rules_dir: Path, partitions: Iterable[int]) -> tuple[RulesReload, FakeSender]:
    commands = FakeSender()
    return RulesReload(rules_dir, runtime, own(runtime, commands, *partitions)), commands


def test_the_fingerprint_tracks_the_yaml_files_only(rules_dir: Path) -> None:
    first = rules_fingerprint(rules_dir)
    assert [name for name, _, _ in first] == ["churn.yaml", "tags.yaml", "tiers.yaml"]
    (rules_dir / "notes.txt").write_text("not rules")
    assert rules_fingerprint(rules_dir) == first
    edit(rules_dir / "tags.yaml", lambda text: text + "\n", 1_000_000_000)
    assert rules_fingerprint(rules_dir) != first
    assert rules_fingerprint(rules_dir / "missing") == ()


async def test_changed_rules_are_used_and_announced_to_own_partitions(
    rules_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime, _, _ = worker()
    before = runtime.evaluator.ruleset.version
    reload, commands = reload_on(runtime, rules_dir, (1, 3))
    await reload.run()
    assert runtime.evaluator.ruleset.version == before and commands.sent == []  # nothing changed
    edit(rules_dir / "tags.yaml", lambda text: text.replace("spend_365d >= 10000", "spend_365d >= 12000"), 10**18)
    with caplog.at_level(logging.INFO, logger="agents.timers"):
        await reload.run()
    after = runtime.evaluator.ruleset.version
    assert after != before and reload.fingerprint == rules_fingerprint(rules_dir)
    assert caplog.messages == [f"rules reloaded: version {before} -> {after}"]
    assert sent(commands) == [(b"rules", {"cmd": "rules", "version": after}, 1),
                              (b"rules", {"cmd": "rules", "version": after}, 3)]
    await reload.run()
    assert len(commands.sent) == 2  # read once per change


async def test_touched_but_unchanged_rules_are_not_announced(rules_dir: Path) -> None:
    runtime, _, _ = worker()
    reload, commands = reload_on(runtime, rules_dir, (0,))
    edit(rules_dir / "tiers.yaml", lambda text: text, 10**18)
    await reload.run()
    assert reload.fingerprint == rules_fingerprint(rules_dir) and commands.sent == []


async def test_invalid_rules_are_counted_and_the_running_version_kept(
    rules_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime, _, _ = worker()
    before = runtime.evaluator.ruleset
    reload, commands = reload_on(runtime, rules_dir, (0,))
    edit(rules_dir / "tags.yaml", lambda text: text.replace("spend_365d >= 10000", "no_such_fact >= 1"), 10**18)
    with caplog.at_level(logging.ERROR, logger="agents.timers"):
        await reload.run()
        await reload.run()  # the same broken files are not read again
    assert runtime.evaluator.ruleset is before and runtime.reload_errors == 1 and commands.sent == []
    assert len(caplog.messages) == 1
    assert caplog.messages[0].startswith(f"rules changed but are invalid; keeping version {before.version}: ")


# --- the worker's pages ----------------------------------------------------------------


class FakeApp:
    """Records the pages registered on it."""

    def __init__(self) -> None:
        self.pages: dict[str, Callable[..., Any]] = {}

    def page(self, path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(view: Callable[..., Any]) -> Callable[..., Any]:
            self.pages[path] = view
            return view
        return register


class FakeWeb:
    """The two answers a page gives, as tuples."""

    def json(self, doc: Any) -> tuple[str, Any]:
        return "json", doc

    def bytes(self, body: bytes, content_type: str) -> tuple[str, bytes, str]:
        return "bytes", body, content_type


class FakeRequest:
    def __init__(self, **query: str) -> None:
        self.query = query


def intake_and_gaps() -> tuple[BatchIntake, GapFiller]:
    async def handle(record: Any, more: int, ahead: bool) -> None: ...
    return BatchIntake(None, ["orders"], handle), GapFiller("localhost:9092")


async def test_stats_reports_the_runtimes_counters() -> None:
    runtime, view, _ = worker(partitions=1)
    await runtime.handle(Message("orders", 0, 0, b"c1", orjson.dumps({
        "event_id": "e1", "customer_id": "c1", "ts": 1_767_225_600_000, "order_id": "o1", "amount": 5.0})))
    await runtime.handle(Message("orders", 0, 1, b"c1", b"not json"))
    intake, gaps = intake_and_gaps()
    intake.left, gaps.filled, view.errors, view.pending, runtime.reload_errors = 4, 2, 1, 7, 3
    assert stats_document(runtime, gaps, intake) == {
        "outcomes": {"ok": 1, "dead_letter": 1}, "events_waiting_evaluation": 0, "redis_pending": 7,
        "redis_errors": 1, "rule_errors": 0, "ruleset_version": runtime.evaluator.ruleset.version,
        "now": 1_767_225_600_000, "rules_reload_errors": 3, "gap_records": 2, "partition_restarts": 0,
        "fetched_records_left": 4}


async def test_the_pages_answer_health_metrics_and_stats() -> None:
    runtime, _, _ = worker()
    intake, gaps = intake_and_gaps()
    app = FakeApp()
    install_pages(app, runtime, gaps, intake)  # type: ignore[arg-type]
    assert list(app.pages) == ["/healthz", "/metrics", "/stats"]
    web = FakeWeb()
    assert await app.pages["/healthz"](web, FakeRequest()) == ("json", {"status": "alive"})
    kind, body, content_type = await app.pages["/metrics"](web, FakeRequest())
    assert content_type == "text/plain; version=0.0.4" and b"# TYPE" in body
    assert await app.pages["/stats"](web, FakeRequest()) == ("json", stats_document(runtime, gaps, intake))
