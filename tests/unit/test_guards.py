"""The corrected commit bookkeeping: never commit past an offset nobody processed."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from stream.guards import GapFiller, new_offset

TP = ("orders", 0)


def consumer(committed: int | None, acked: list[int]) -> Any:
    return SimpleNamespace(_acked=defaultdict(list, {TP: list(acked)}), _acked_index=defaultdict(set, {TP: set(acked)}),
                           _gap=defaultdict(lambda: None), _committed_offset=defaultdict(lambda: None, {TP: committed}))


def test_a_hole_at_the_committed_offset_blocks_the_commit() -> None:
    # Faust's own check (min(acked) - committed > 1) lets this one through and loses offset 31
    assert new_offset(consumer(31, [32, 33, 34]), TP) is None
    assert new_offset(consumer(0, [1, 2]), TP) is None  # and skips the check altogether at 0
    assert new_offset(consumer(31, [31, 32, 34]), TP) == 33  # consecutive from the head, up to the next hole
    assert new_offset(consumer(None, [5, 6]), TP) == 7  # nothing committed yet: Faust starts where it starts


def test_offsets_filled_by_the_agent_let_the_commit_through() -> None:
    c = consumer(31, [33, 34])
    gaps = GapFiller("unused:9092")
    gaps.faust_consumer = c
    gaps.mark_done("orders", 0, 31, 33)
    assert new_offset(c, TP) == 35 and c._acked[TP] == []
