"""The facts the worker would have had at given cut dates, from a history of events (pure).

``tagger churn train`` learns from these: each event is deduplicated and folded into its
customer's :class:`~stream.domain.state.CustomerState` exactly as the apply stage does, and
at each cut every customer seen so far is read with :meth:`Evaluator.facts`, the call the
worker makes before it scores churn. So a customer with the same history has the same
facts, and the same features, in training and in the worker.

The label of a customer at a cut is whether **no** paid order follows within
``horizon_days`` of it (:class:`rules.churn_fit.Example`). Events after the last cut plus
the horizon are never read, so nothing later than the labels need leaks in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agents.engine.evaluate import Evaluator
from rules.churn_fit import Example
from stream.domain.events import Event, LoginEvent, OrderEvent
from stream.domain.state import DAY_MS, CustomerState

__all__ = ["SOURCE", "Snapshots", "fold", "labelled", "snapshots"]

SOURCE = "history:0"  # the source every history event is marked under (offsets unknown: ids only)
_KIND = {OrderEvent: "order", LoginEvent: "login"}


def fold(state: CustomerState, event: Event) -> bool:
    """Apply one event as the apply stage does (dedupe on its id); False for a duplicate."""
    dedupe_id = f"{_KIND.get(type(event), 'ticket')}:{event.event_id}"
    if state.is_duplicate(SOURCE, -1, dedupe_id):
        return False
    state.apply(event, SOURCE, -1, dedupe_id)
    return True


@dataclass(frozen=True)
class Snapshots:
    """Facts per cut (customer id -> facts, every customer seen by then) and paid orders per customer."""

    facts: dict[int, dict[str, dict[str, object]]]
    paid_orders: dict[str, list[int]]  # epoch ms of each paid order up to the end, ascending
    end_ms: int  # no event later than this was read


def snapshots(events: Iterable[Event], cuts: Sequence[int], evaluator: Evaluator, *,
              end_ms: int | None = None) -> Snapshots:
    """Fold ``events`` (any order; sorted by time here) and read every customer's facts at each cut.

    Events after ``end_ms`` (default: the last cut) are dropped; paid orders up to it are kept for labels.
    """
    cut_list = sorted(set(cuts))
    if not cut_list:
        raise ValueError("no cut dates")
    end = cut_list[-1] if end_ms is None else end_ms
    if end < cut_list[-1]:
        raise ValueError("the end of the history read is before the last cut")
    states: dict[str, CustomerState] = {}
    taken: dict[int, dict[str, dict[str, object]]] = {}
    paid: dict[str, list[int]] = {}
    pending = list(cut_list)
    for event in sorted((e for e in events if e.ts <= end), key=lambda e: e.ts):
        while pending and event.ts > pending[0]:
            taken[pending[0]] = {cid: evaluator.facts(s, pending[0]) for cid, s in states.items()}
            pending.pop(0)
        if pending:
            state = states.setdefault(event.customer_id, CustomerState())
            if not fold(state, event):
                continue
        if type(event) is OrderEvent and event.status == "paid":
            paid.setdefault(event.customer_id, []).append(event.ts)
    for cut in pending:
        taken[cut] = {cid: evaluator.facts(s, cut) for cid, s in states.items()}
    return Snapshots(taken, paid, end)


def labelled(snaps: Snapshots, horizon_days: float) -> list[Example]:
    """One example per customer and cut: no paid order in (cut, cut + horizon]? Needs the history to reach there."""
    horizon = int(horizon_days * DAY_MS)
    examples = []
    for cut, customers in sorted(snaps.facts.items()):
        if cut + horizon > snaps.end_ms:
            raise ValueError(f"cut {cut} plus the horizon of {horizon_days:g} days is past the history read")
        for cid, facts in sorted(customers.items()):
            later = any(cut < t <= cut + horizon for t in snaps.paid_orders.get(cid, ()))
            examples.append(Example(cid, cut, facts, not later))
    return examples
