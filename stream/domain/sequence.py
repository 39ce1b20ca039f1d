"""Stable identities of output messages: ``seq`` and ``change_id``, and a bounded filter of repeats (pure).

Faust here delivers at least once, so a crash replays the messages since the
last commit and a tag change or churn alert can be published twice. Each one
therefore carries, per customer and per output topic, a sequence number ``seq``
(1, 2, 3, ...; counted in the customer's state, which the changelog restores, so
a replay gives the same numbers again) and ``change_id``: the customer id, the
output's kind and ``seq`` (``cust-00042:tag:7``, ``cust-00042:churn:2``).
A repeated message carries the same ``change_id``; consumers drop repeats by it.

Why one sequence per topic rather than one across both: each topic is read on
its own (and many consumers read only ``tag-changes``); within one topic a
customer's messages are in one partition, in order, so a consumer of that topic
alone sees 1..n and can tell a gap at once. One shared counter would leave holes
in each topic wherever the other took a number. The kind in ``change_id`` keeps
the ids of both topics apart.

The erase message (stream/access/privacy.py) ends a customer: its state, counters
included, is deleted, so the next generation starts again at 1. It carries
``seq: null`` and ``change_id = "<customer_id>:erase:<request_id>"``; a consumer
drops what it holds for the customer, its repeat filter included.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Any

__all__ = ["MAX_CUSTOMERS", "RepeatFilter", "change_id", "erase_change_id", "is_erase", "stamp"]

MAX_CUSTOMERS = 100_000  # (stream, customer) marks a RepeatFilter keeps by default: ~28 MB when full


def change_id(customer_id: str, kind: str, seq: int) -> str:
    """The identity of a customer's ``seq``-th ``kind`` output (``tag`` or ``churn``)."""
    return f"{customer_id}:{kind}:{seq}"


def erase_change_id(customer_id: str, request_id: str) -> str:
    """The identity of the erase message of a privacy request (the same every time it is sent)."""
    return f"{customer_id}:erase:{request_id}"


def stamp(message: dict[str, Any], customer_id: str, kind: str, seq: int) -> dict[str, Any]:
    """Put ``seq`` and ``change_id`` in an output message (in place; returned for convenience)."""
    message["seq"] = seq
    message["change_id"] = change_id(customer_id, kind, seq)
    return message


def is_erase(message: Mapping[str, Any]) -> bool:
    """Whether a ``tag-changes`` message is a customer's erase message."""
    trigger = message.get("trigger")
    return message.get("erased") is True or (isinstance(trigger, Mapping) and trigger.get("kind") == "erase")


class RepeatFilter:
    """Which output messages were seen already: a high-water mark of ``seq`` per stream and customer.

    A stream is what keeps a customer's messages in order: a topic, or a topic
    partition. Within one, a customer's ``seq`` only grows, and a replay after a
    crash repeats numbers at or below the highest one already seen, so a message
    is a repeat exactly when its ``seq`` is at or below the customer's mark. That
    needs one integer per customer, not a set of ids. At most ``max_customers``
    marks are kept (least recently seen dropped first); a customer whose mark
    was dropped counts as new (a repeat then gets through: the bound is the only
    inexactness). Erase messages, which carry no ``seq``, are remembered by
    ``change_id`` (as many) and clear the customer's marks in every stream.
    Messages without ``seq`` (written before it existed) are never repeats.
    """

    def __init__(self, max_customers: int = MAX_CUSTOMERS) -> None:
        self.max_customers = max_customers
        self._marks: OrderedDict[tuple[Hashable, str], int] = OrderedDict()
        self._erased: OrderedDict[str, None] = OrderedDict()
        self._streams: set[Hashable] = set()
        self.repeats = 0

    def seen(self, stream: Hashable, message: Mapping[str, Any]) -> bool:
        """True if ``message`` repeats one seen before on ``stream``; else remember it and return False."""
        cid, seq = message.get("customer_id"), message.get("seq")
        if not isinstance(cid, str):
            return False
        if is_erase(message):
            return self._seen_erase(cid, message.get("change_id"))
        if not isinstance(seq, int) or isinstance(seq, bool):
            return False
        key = (stream, cid)
        mark = self._marks.get(key)
        if mark is not None and seq <= mark:
            self._marks.move_to_end(key)
            self.repeats += 1
            return True
        self._marks[key] = seq
        self._marks.move_to_end(key)
        self._streams.add(stream)
        if len(self._marks) > self.max_customers:
            self._marks.popitem(last=False)
        return False

    def _seen_erase(self, cid: str, ident: Any) -> bool:
        for stream in self._streams:
            self._marks.pop((stream, cid), None)
        if not isinstance(ident, str):
            return False
        if ident in self._erased:
            self.repeats += 1
            return True
        self._erased[ident] = None
        if len(self._erased) > self.max_customers:
            self._erased.popitem(last=False)
        return False

    def forget(self, stream: Hashable) -> None:
        """Drop the marks of ``stream`` (its partition moved to another consumer)."""
        for key in [key for key in self._marks if key[0] == stream]:
            del self._marks[key]
        self._streams.discard(stream)

    def __len__(self) -> int:
        return len(self._marks)
