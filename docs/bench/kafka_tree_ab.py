"""Alternating one-worker drains of two checkouts' tagger on one local Apache Kafka node (issue 28's A/B).

Makes ``tagger bench``'s backlog (EVENTS demo events over EVENTS/15 customers, 8 partitions), single
events and then envelopes of 200, and drains it ROUNDS times per checkout with one worker, in ABBA
order (OTHER, this; this, OTHER; …), each drain on its own topics as ``tagger bench`` does. The worker
of a checkout imports that checkout (``PYTHONPATH``); this process, the broker and Redis stay on the
CPU this process was started on, and every worker is pinned to core 1 (``taskset``), so that the
worker under test has a core of its own. Prints the medians, the ratio of the medians, and the median
of the per-round ratios (this ÷ OTHER), of the drain rate and of the worker's CPU per event; writes
every drain to OUT.

    taskset -c 0 .venv/bin/python docs/bench/kafka_tree_ab.py ROUNDS EVENTS OTHER OUT.json

``git worktree add --detach /tmp/old <rev>`` makes OTHER (and ``ln -s $PWD/.venv /tmp/old/.venv``).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agents.bench import workers as bench_workers
from agents.bench.harness import Run, _services, backlog, measure_drain
from stream.devtools.demo import DemoConfig

PARTITIONS, STEP_MS, BATCHES = 8, 60_000, (0, 200)


def pin_workers(core: str) -> None:
    """Every worker spawned from here runs under ``taskset -c core``."""
    spawn = bench_workers.spawn
    bench_workers.spawn = lambda argv, **kw: spawn(["taskset", "-c", core, *argv], **kw)  # type: ignore[assignment]


def summary(drains: list[dict[str, Any]], keys: tuple[str, ...] = ("rate", "cpu_us_per_event")) -> list[str]:
    """Per mode and key: the medians of each checkout, their ratio, and the median of the per-round ratios
    (this ÷ other), which cancels the machine's drift between rounds."""
    lines = []
    for mode in dict.fromkeys(d["mode"] for d in drains):
        rows = [d for d in drains if d["mode"] == mode]
        for key in keys:
            old = {d["round"]: d[key] for d in rows if d["tree"] == "other"}
            new = {d["round"]: d[key] for d in rows if d["tree"] == "this"}
            pairs = [new[r] / old[r] for r in old if r in new]
            if pairs:
                mo, mn = statistics.median(old.values()), statistics.median(new.values())
                lines.append(f"{mode:<10} {key:<17} other {mo:>9,.1f}  this {mn:>9,.1f}  ratio of medians "
                             f"{mn / mo:.3f}  median of {len(pairs)} round ratios {statistics.median(pairs):.3f} "
                             f"(min {min(pairs):.3f}, max {max(pairs):.3f})")
    return lines


def main(rounds: int, events: int, other: str, out: Path) -> None:
    this = str(Path(__file__).resolve().parents[2])
    trees = {"other": str(Path(other).resolve()), "this": this}
    pin_workers("1")
    result: dict[str, Any] = {"rounds": rounds, "events": events, "trees": trees, "drains": []}
    os.chdir(tempfile.mkdtemp())  # the workers' cwd: neither checkout, so PYTHONPATH decides
    now = int(time.time() * 1000)
    with _services("kafka") as services:
        for batch in BATCHES:
            config = DemoConfig(customers=events // 15, rate=0, start_ms=now - events * STEP_MS, time_step_ms=STEP_MS)
            messages = backlog(config, events, PARTITIONS, batch)
            run = Run(services, False, Path(tempfile.mkdtemp()), events, events // 15, PARTITIONS, batch, messages)
            for r in range(rounds):
                for label in ("other", "this") if r % 2 == 0 else ("this", "other"):
                    drain = measure_drain(run, f"{label}-b{batch}-r{r}", "worker", 1, events,
                                          settings={"PYTHONPATH": trees[label]})
                    result["drains"].append({"mode": f"batch={batch}", "round": r, "tree": label, "rate": drain.rate,
                                             "cpu_us_per_event": drain.cpu_us_per_event})
                    out.write_text(json.dumps(result, indent=1))
    result["summary"] = summary(result["drains"])
    out.write_text(json.dumps(result, indent=1))
    print("\n".join(result["summary"]))


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
