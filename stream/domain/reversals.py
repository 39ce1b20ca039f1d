"""Flapping, measured: a customer's output change that undoes its previous change (pure).

A change of a customer's tier (or churn level) from ``before`` to ``after`` is a *reversal*
when that customer's previous change of the same kind went from ``after`` to ``before``, at
most ``window_ms`` earlier, and no input message of that customer was applied in between
(its input mark, :meth:`stream.domain.state.CustomerState.input_mark`, is the same). A
reversal reversed again counts again: B→C→B→C is two reversals.

The bookkeeping is one entry per kind, ``[before, after, at_ms, mark]`` of the latest change,
kept in the customer's view under :data:`KEY` (carried by the changelog, never published):
a few dozen bytes, whatever the customer's history.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

__all__ = ["KEY", "KINDS", "last_change_at", "note_change", "reverses"]

KEY = "last_changes"  # in CustomerState.view: kind -> [before, after, at_ms, mark]
KINDS = ("tier", "churn")


def reverses(last: Sequence[Any] | None, before: str | None, after: str | None, now_ms: int, mark: int,
             window_ms: int) -> bool:
    """Whether ``before``→``after`` at ``now_ms`` undoes the change ``last`` (``[before, after, at_ms, mark]``)."""
    if last is None or len(last) != 4:
        return False
    last_before, last_after, at_ms, last_mark = last
    return (last_before == after and last_after == before and last_mark == mark
            and 0 <= now_ms - at_ms <= window_ms)


def last_change_at(view: Mapping[str, Any], kind: str) -> int | None:
    """When the customer's latest ``kind`` change was noted (None: none noted)."""
    changes = view.get(KEY)
    last = changes.get(kind) if isinstance(changes, dict) else None
    return int(last[2]) if isinstance(last, list) and len(last) == 4 else None


def note_change(view: MutableMapping[str, Any], kind: str, before: str | None, after: str | None, now_ms: int,
                mark: int, window_ms: int) -> bool:
    """Record the change ``before``→``after`` of ``kind`` in ``view``; whether it is a reversal."""
    if kind not in KINDS:
        raise ValueError(f"no reversal kind {kind!r}")
    changes = view.get(KEY)
    if not isinstance(changes, dict):
        changes = view[KEY] = {}
    reversal = reverses(changes.get(kind), before, after, now_ms, mark, window_ms)
    changes[kind] = [before, after, now_ms, mark]
    return reversal
