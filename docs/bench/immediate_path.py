"""The immediate-path phase of ``tagger bench`` alone, repeated, at a fixed rate (for A/B runs of two commits).

Starts the embedded broker and Redis, drains a 300k-event backlog over 20,000 customers with WORKERS
workers (as ``tagger bench`` does), then runs its immediate-path phase REPEATS times: 200 big orders and
complaints among RATE single events/s for 10 s, end to end. Prints the drain rate and each phase's JSON.

    .venv/bin/python docs/bench/immediate_path.py WORKERS RATE REPEATS

Run from the checkout whose code is measured: the workers are ``python -m agents`` in the current
directory (for the other commit: ``git worktree add /tmp/old <rev>; cd /tmp/old`` and the same command
with this checkout's ``.venv/bin/python``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from agents.bench import DemoConfig, Run, ServiceGroup, backlog, immediate_path, measure_drain, stop_group

EVENTS, CUSTOMERS, PARTITIONS, STEP_MS = 300_000, 20_000, 8, 60_000


def main(workers: int, rate: float, repeats: int) -> None:
    config = DemoConfig(customers=CUSTOMERS, rate=0, start_ms=int(time.time() * 1000) - EVENTS * STEP_MS,
                        time_step_ms=STEP_MS)
    messages = backlog(config, EVENTS, PARTITIONS, 0)
    with ServiceGroup() as services:
        run = Run(services, Path(tempfile.mkdtemp(prefix="immediate-")), EVENTS, CUSTOMERS, PARTITIONS, 0, messages)
        rate_drained, group, _ = measure_drain(run, "tagger", "worker", workers, EVENTS, keep=True)
        print(f"drain {rate_drained:,.0f} events/s", flush=True)
        try:
            for _ in range(repeats):
                print(immediate_path(run, group, rate, 10.0), flush=True)
        finally:
            stop_group(group)


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]))
