"""Event-time clocks: wall time, or the largest event time seen anywhere (stream time)."""

from __future__ import annotations

import time


class Clock:
    """What "now" means for window edges and recency rules.

    In ``wall`` mode now is the system clock. In ``stream`` mode now is the
    largest event time seen on any input by any worker: this worker's own
    maximum combined with the global maximum that :meth:`merge_global` brings
    in from Redis, so replaying old history evaluates as of its last event.
    """

    __slots__ = ("mode", "local_max", "global_max")

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.local_max = 0
        self.global_max = 0

    def observe(self, ts_ms: int) -> None:
        """Record an event time seen by this worker."""
        if ts_ms > self.local_max:
            self.local_max = ts_ms

    def merge_global(self, global_max: int) -> None:
        """Take in the global maximum event time (from Redis)."""
        if global_max > self.global_max:
            self.global_max = global_max

    def now(self) -> int:
        """Current time in epoch milliseconds."""
        if self.mode == "stream":
            return max(self.local_max, self.global_max)
        return int(time.time() * 1000)
