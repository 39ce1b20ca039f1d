"""The immediate-path phase of ``tagger bench`` alone, repeated, at a fixed rate (for A/B runs of two commits).

Starts the embedded broker and Redis, drains a 300k-event backlog over 20,000 customers with WORKERS
workers (as ``tagger bench`` does), then runs its immediate-path phase REPEATS times: 200 big orders and
complaints among RATE single events/s for 10 s, end to end. Prints the drain rate and each phase's JSON.
The repeats share the group's topics, so each runs on a busier broker than the one before (Tansu's
CPU per fetch grows with the batches in a partition: ``agents/bench/harness.py``, phase 2).

    .venv/bin/python docs/bench/immediate_path.py WORKERS RATE REPEATS

Run from the checkout whose code is measured: the workers are ``python -m agents`` in the current
directory (for the other commit: ``git worktree add /tmp/old <rev>; cd /tmp/old`` and the same command
with this checkout's ``.venv/bin/python``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from agents.bench.harness import ServiceGroup, immediate_path, measure_drain, stop_group

sys.path.insert(0, str(Path(__file__).parent))
from drain_ab import EVENTS, bench_run  # noqa: E402


def main(workers: int, rate: float, repeats: int) -> None:
    with ServiceGroup() as services:
        run = bench_run(services, 0)
        rate_drained, group, _ = measure_drain(run, "tagger", "worker", workers, EVENTS, keep=True)
        print(f"drain {rate_drained:,.0f} events/s", flush=True)
        try:
            for _ in range(repeats):
                print(immediate_path(run, group, rate, 10.0), flush=True)
        finally:
            stop_group(group)


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]))
