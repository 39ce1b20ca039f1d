"""Stand-ins for the broker and Redis, to drive the real Runtime in unit tests."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection
from typing import Any

from agents.engine.evaluate import Evaluator, facts_schema
from agents.engine.runtime import Runtime
from rules import default_rules_dir, load_ruleset
from stream.domain.clock import Clock
from stream.domain.state import CustomerState
from stream.settings import Settings
from stream.view.redis_view import SpendRanks, ViewDocument

SENDERS = ("tag_changes", "dead_letters", "rekey", "commands", "churn_alerts")


class FakeSender:
    """Records what would have been produced."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes, int | None]] = []

    async def send(self, *, key: bytes, value: bytes, partition: int | None = None) -> Any:
        self.sent.append((key, value, partition))


class FakeView:
    """Records staged views (documents or functions building them, as RedisView takes), spends and acks."""

    def __init__(self) -> None:
        self.staged: list[str] = []
        self.views: dict[str, ViewDocument | Callable[[], ViewDocument]] = {}
        self.spend: dict[str, float] = {}
        self.acks: list[tuple[str, str, int]] = []
        self.flushed: list[list[str] | None] = []  # per flush: the customers it was asked for, None: all
        self.history: dict[str, list[dict[str, Any]]] = {}  # noted entries, oldest first
        self.rebuilt: set[str] = set()
        self.pending = 0

    def stage(self, cid: str, view: ViewDocument | Callable[[], ViewDocument], spend: float,
              last_activity: int | None = None, rebuilt: bool = False) -> None:
        self.staged.append(cid)
        self.views[cid] = view
        self.spend[cid] = spend
        if rebuilt:
            self.rebuilt.add(cid)

    def note(self, cid: str, entry: dict[str, Any]) -> None:
        self.history.setdefault(cid, []).append(entry)

    def stage_erase(self, cid: str) -> None:
        self.views.pop(cid, None)
        self.spend.pop(cid, None)
        self.history.pop(cid, None)

    async def flush(self, batch: int = 200, only: Collection[str] | None = None) -> int:
        self.flushed.append(None if only is None else list(only))
        return len(self.staged)

    async def ack(self, request_id: str, phase: str, partition: int) -> None:
        self.acks.append((request_id, phase, partition))

    async def customers_between(self, low: float, high: float) -> list[str]:
        return [c for c, s in self.spend.items() if low <= s <= high and s > 0]

    async def spend_ranks(self, positions: list[int]) -> SpendRanks:
        """As RedisView's: the spend at 1-based descending ranks among the customers with spend."""
        ranked = sorted((s for s in self.spend.values() if s > 0), reverse=True)
        return SpendRanks(len(ranked), tuple(ranked[p - 1] if 1 <= p <= len(ranked) else None for p in positions))


def make_runtime(settings: Settings | None = None, table: dict[str, CustomerState] | None = None,
                 clock: Clock | None = None, view: FakeView | None = None, senders: dict[str, Any] | None = None,
                 **wiring: Any) -> tuple[Runtime, dict[str, FakeSender]]:
    """A Runtime on the default ruleset with fake senders (returned by name; ``senders`` replaces some)
    and view; ``wiring``: the rest of Runtime's keyword arguments (gaps, message_context, within, ...)."""
    made = {name: FakeSender() for name in SENDERS} | (senders or {})
    runtime = Runtime(settings or Settings(partitions=1),  # type: ignore[call-arg]
                      {} if table is None else table, Evaluator(load_ruleset(default_rules_dir(), facts_schema())),
                      view or FakeView(), clock or Clock("stream"), made, **wiring)  # type: ignore[arg-type]
    return runtime, made


class FakeFaustConsumer:
    """The part of Faust's consumer the commit guards read and write, for one or more partitions."""

    def __init__(self, committed: dict[Any, int | None], acked: dict[Any, list[int]] | None = None) -> None:
        acked = acked or {}
        self._acked = defaultdict(list, {tp: list(offsets) for tp, offsets in acked.items()})
        self._acked_index = defaultdict(set, {tp: set(offsets) for tp, offsets in acked.items()})
        self._gap: dict[Any, Any] = defaultdict(lambda: None)
        self._committed_offset: dict[Any, int | None] = defaultdict(lambda: None, committed)
        self._read_offset: dict[Any, int] = {}
        self._active_partitions: set[Any] = set()
        self._paused_partitions: set[Any] = set()
        self._buffered_partitions: set[Any] = set()
        self.seeks: list[tuple[Any, int]] = []

    def _get_active_partitions(self) -> set[Any]:
        return self._active_partitions

    async def seek_wait(self, partitions: dict[Any, int]) -> None:
        self.seeks += partitions.items()
        self._read_offset.update(partitions)
