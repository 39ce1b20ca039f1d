"""When each customer next needs a look, and an index of customers by that time (pure).

A customer's evaluation can change without a new event only when time moves a fact:
a day bucket entering or leaving a window, a whole day passing since one of its
timestamps (``days_since_*``, ``customer_since_days``), a manual tag expiring, or the
end of a held demotion's minimum dwell (``min_tier_dwell``: :data:`TIER_DUE` in the view).
:func:`next_due` gives the earliest such moment after the customer's last evaluation,
so a sweep only has to look at customers whose due time has come instead of at
every customer. The other things that move a customer without an event (new tier
cut-offs, a new ruleset) are handled by the caller: it marks the customers concerned
due at once (:meth:`DueIndex.mark`) or drops the index (:meth:`DueIndex.clear`).

The index is not persisted: it is a function of the table and is rebuilt from it
after a restart or a rebalance. Because each entry is computed from the customer's
last *evaluation* time, a customer whose moment passed while no worker owned it is
due at once after the rebuild.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from stream.domain.manual import next_expiry
from stream.domain.state import CustomerState, next_day_step

__all__ = ["TIER_DUE", "DueIndex", "next_due"]

#: key in a customer's view: when a demotion held back by the tier policy's ``min_tier_dwell`` is due (epoch ms)
TIER_DUE = "tier_due"


def next_due(state: CustomerState, evaluated_ms: int) -> int | None:
    """The earliest time after ``evaluated_ms`` at which the customer's facts or manual tags change, or a
    demotion held back for its minimum dwell is due (the view's :data:`TIER_DUE`)."""
    profile = state.profile or {}
    held = (state.view or {}).get(TIER_DUE)
    candidates = (state.next_change_at(evaluated_ms), next_day_step(evaluated_ms, profile.get("customer_since")),
                  next_expiry(state.manual), held if isinstance(held, int) else None)
    return min((t for t in candidates if t is not None), default=None)


def due_after_restore(state: CustomerState) -> int:
    """Due time of a customer read back from the table: from its last evaluation (0: never evaluated,
    or events were applied since: ``stale``, see agents.engine.runtime)."""
    view = state.view or {}
    evaluated = view.get("evaluated_at")
    if evaluated is None or view.get("stale"):
        return 0
    due = next_due(state, int(evaluated))
    return due if due is not None else -1


class DueIndex:
    """Per partition, a min-heap of (due ms, customer id) with lazy deletion.

    A partition is *tracked* from :meth:`track` until :meth:`drop`; entries for
    untracked partitions are ignored (their customers are picked up by the
    rebuild when the partition is tracked again).
    """

    def __init__(self) -> None:
        self._heaps: dict[int, list[tuple[int, str]]] = {}
        self._due: dict[int, dict[str, int]] = {}

    def tracked(self, partition: int) -> bool:
        return partition in self._heaps

    def partitions(self) -> list[int]:
        """The tracked partitions."""
        return list(self._heaps)

    def track(self, partition: int, entries: Iterable[tuple[str, int]] = ()) -> None:
        """Start tracking ``partition``; add ``(customer id, due ms)`` entries (due < 0: never) as :meth:`mark` does."""
        self._heaps.setdefault(partition, [])
        self._due.setdefault(partition, {})
        for cid, due in entries:
            self.mark(partition, cid, due)

    def set(self, partition: int, customer_id: str, due: int | None) -> None:
        """Record when a customer is next due (None or negative: only an event can change it)."""
        heap = self._heaps.get(partition)
        if heap is None:
            return
        dues = self._due[partition]
        if due is None or due < 0:
            dues.pop(customer_id, None)
            return
        if dues.get(customer_id) == due:
            return
        dues[customer_id] = due
        heapq.heappush(heap, (due, customer_id))
        if len(heap) > 2 * len(dues) + 1024:  # too many superseded entries: rebuild the heap
            self._heaps[partition] = heap = [(d, c) for c, d in dues.items()]
            heapq.heapify(heap)

    def mark(self, partition: int, customer_id: str, due: int = 0) -> None:
        """Make a customer due no later than ``due`` (0: now); an earlier due time stays."""
        current = self._due.get(partition, {}).get(customer_id)
        if current is None or 0 <= due < current:
            self.set(partition, customer_id, due)

    def pop_due(self, partition: int, now_ms: int, limit: int) -> list[str]:
        """Up to ``limit`` customers due at or before ``now_ms``, earliest first; they leave the index."""
        heap, dues = self._heaps.get(partition), self._due.get(partition)
        if heap is None or dues is None:
            return []
        out: list[str] = []
        while heap and heap[0][0] <= now_ms and len(out) < limit:
            due, cid = heapq.heappop(heap)
            if dues.get(cid) == due:  # else superseded by a later set()
                del dues[cid]
                out.append(cid)
        return out

    def due_count(self, partition: int, now_ms: int) -> int:
        """How many customers of ``partition`` are due at ``now_ms`` (O(n); for stats and tests)."""
        return sum(1 for due in self._due.get(partition, {}).values() if due <= now_ms)

    def size(self, partition: int) -> int:
        """Customers of ``partition`` with a due time."""
        return len(self._due.get(partition, {}))

    def drop(self, partition: int) -> None:
        """Stop tracking ``partition`` (revoked, or to be rebuilt)."""
        self._heaps.pop(partition, None)
        self._due.pop(partition, None)

    def clear(self) -> None:
        """Stop tracking every partition."""
        self._heaps.clear()
        self._due.clear()
