"""p99 at 1,000 events/s right after a drain, alternating two checkouts.

REPEATS times, for OTHER (a checkout of another commit) and this checkout in alternating order:
one worker drains the 300k-event backlog of ``tagger bench`` on its own topics, then three phases
of 10 s at 1,000 single events/s (the bench's ``latency_at``). Prints each phase's p50/p95/p99
(the worker's histogram: Kafka timestamp → tag change sent) and the broker's CPU.

    .venv/bin/python docs/bench/latency_1k_ab.py REPEATS OTHER
"""

from __future__ import annotations

import sys
from pathlib import Path

from agents.bench.harness import ServiceGroup, latency_at, measure_drain, stop_group

sys.path.insert(0, str(Path(__file__).parent))
from drain_ab import EVENTS, bench_run, groups_named_other_run  # noqa: E402


def main(repeats: int, other: Path) -> None:
    groups_named_other_run(other)
    with ServiceGroup() as services:
        run = bench_run(services, 0)
        for i in range(repeats):
            for name in ("other", "this") if i % 2 == 0 else ("this", "other"):
                rate, group, _ = measure_drain(run, f"{name}{i}", "worker", 1, EVENTS, keep=True)
                try:
                    phases = [latency_at(run, group, 1000.0, 10.0, 7 + j) for j in range(3)]
                finally:
                    stop_group(group)
                print(f"{name:5s} drain {rate:,.0f}/s; at 1,000/s: " + " | ".join(
                    f"p50 {p['p50_s'] * 1000:.0f} p95 {p['p95_s'] * 1000:.0f} p99 {p['p99_s'] * 1000:.0f} ms, "
                    f"broker {p['broker_cpu_percent']:.0f}%" for p in phases), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
