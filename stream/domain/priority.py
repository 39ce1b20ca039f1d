"""Which events jump the batching: big orders and complaints (pure).

Every event is evaluated and its tag change or churn alert published as soon as it
is applied, unless the worker is behind (then evaluations are coalesced, see
agents.engine.runtime). What is batched is the Redis projection (flushed every
``TAGGER_REDIS_FLUSH_INTERVAL``). A *priority* event's customer is written at once
(only that customer's view), so it is readable the moment the change is published, and its
trigger says why (``trigger.priority`` and ``trigger.reason``).

- **Big order**: a paid order of at least ``big_order_multiple`` times the customer's
  average paid order over the last 365 days (net spend / paid orders, before this
  order; needs at least one earlier order), or at least ``big_order_amount``
  (absolute, in the configured currency; 0 turns the absolute test off).
- **Complaint**: a ticket event whose category is ``complaint``, or any ``escalated`` action.
"""

from __future__ import annotations

from collections.abc import Callable

from stream.domain.events import AMOUNT_SCALE, Event, OrderEvent, TicketEvent

__all__ = ["priority_of"]


def priority_of(event: Event, before: Callable[[], tuple[float, int]], multiple: float,
                absolute: float) -> tuple[str, str] | None:
    """``(priority, reason)`` if ``event`` must bypass batching; ``before``: the customer's
    ``(spend_365d, orders_365d)`` before it, asked only for a paid order below ``absolute``."""
    if type(event) is OrderEvent:
        if event.status != "paid":
            return None
        amount = event.amount / AMOUNT_SCALE
        if absolute > 0 and amount >= absolute:
            return "big_order", f"order {amount:.2f} >= big-order amount {absolute:.2f}"
        spend, orders = before()
        if multiple > 0 and orders > 0 and spend > 0 and amount >= multiple * spend / orders:
            return "big_order", f"order {amount:.2f} >= {multiple:g} x average order {spend / orders:.2f}"
        return None
    if type(event) is TicketEvent:
        if event.action == "escalated":
            return "complaint", f"ticket {event.ticket_id} escalated"
        if event.category.lower() == "complaint":
            return "complaint", f"complaint ticket {event.ticket_id} {event.action}"
    return None
