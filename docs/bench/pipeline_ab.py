"""The per-message pipeline of two checkouts in one process each, no broker or Redis (issue 28's A/B).

Each run builds the checkout's own ``Runtime`` (senders and the Redis view replaced by counters, a
plain dict for the table) and feeds it EVENTS demo events through ``Runtime.handle``, as a worker
that is a minute behind with messages waiting (coalescing on, as in a drain), in three modes: single
events evaluated each on its own (``each``: nothing waits behind any message), single events
coalesced, and envelopes of 200. It measures the process's CPU time from the first message until
the last waiting evaluation ran. ROUNDS rounds in ABBA order (OTHER, this; this, OTHER; …), every
run a fresh process pinned to core 1. Prints the medians and the median of the per-round ratios
(this ÷ OTHER) of the CPU per event and of the rate; writes every run to OUT (JSON Lines).

    .venv/bin/python docs/bench/pipeline_ab.py ROUNDS EVENTS OTHER OUT.jsonl

OTHER may be a checkout of the layout before issue 28 (``agents/runtime.py``), as 16bbdd6.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODES = {"each": (0, True), "coalesced": (0, False), "batch=200": (200, False)}


class _Null:
    """Every sender and the Redis view: counts what is staged, sends nowhere."""

    staged = pending = errors = 0

    async def send(self, *, key: bytes, value: bytes, partition: int | None = None) -> None:
        pass

    def stage(self, cid: str, view: Any, spend: float) -> None:
        self.staged += 1

    async def flush(self, only: Any = None) -> int:
        return 0


def _messages(events: int, batch: int, demo: Any) -> list[tuple[str, bytes | None, bytes]]:
    """``tagger bench``'s demo events on one partition: one per message, or envelopes of ``batch`` per topic."""
    now_ms = int(time.time() * 1000)
    config = demo.DemoConfig(customers=events // 15, rate=0, start_ms=now_ms - events * 60_000, time_step_ms=60_000)
    generated = demo.DemoGenerator(config).take(events)
    if batch <= 0:
        return [(topic, key, value) for topic, key, value in generated]
    out: list[tuple[str, bytes | None, bytes]] = []
    pending: dict[str, list[bytes]] = {}

    def envelope(topic: str, values: list[bytes]) -> None:
        out.append((topic, None, b'{"batch_id":"b%d","events":[' % len(out) + b",".join(values) + b"]}"))

    for topic, _, value in generated:
        pending.setdefault(topic, []).append(value)
        if len(pending[topic]) >= batch:
            envelope(topic, pending.pop(topic))
    for topic, values in pending.items():
        envelope(topic, values)
    return out


def child(events: int, mode: str) -> dict[str, Any]:
    """One run in this process, of the checkout first on ``sys.path``."""
    from rules import default_rules_dir, load_ruleset
    from stream.settings import Settings

    try:  # the layout since issue 28
        from agents.engine.evaluate import Evaluator, facts_schema
        from agents.engine.pipeline.types import Message
        from agents.engine.runtime import Runtime
        from stream.devtools import demo
        from stream.domain.clock import Clock
        layout = "engine"
    except ImportError:  # before: one agents/runtime.py
        from agents.evaluate import Evaluator, facts_schema  # type: ignore[no-redef]
        from agents.runtime import Runtime  # type: ignore[no-redef]
        from stream.clock import Clock  # type: ignore[no-redef]

        from stream import demo  # type: ignore[no-redef]
        layout = "runtime"
    batch, each = MODES[mode]
    messages = _messages(events, batch, demo)
    settings = Settings(partitions=1)  # type: ignore[call-arg]
    null: Any = _Null()
    senders = dict.fromkeys(("tag_changes", "dead_letters", "rekey", "commands", "churn_alerts"), null)
    runtime = Runtime(settings, {}, Evaluator(load_ruleset(default_rules_dir(), facts_schema())), null,
                      Clock(settings.clock), senders)

    async def run() -> dict[str, Any]:
        late = time.time() - 60  # every message a minute late: a worker catching up
        offsets: dict[str, int] = {}
        outcomes: dict[str, int] = {}
        left = len(messages)
        cpu, wall = time.process_time(), time.perf_counter()
        for topic, key, value in messages:
            offset = offsets[topic] = offsets.get(topic, -1) + 1
            left -= 1
            more = 0 if each else left
            if layout == "engine":
                outcome = await runtime.handle(Message(topic, 0, offset, key, value, late), more)
            else:
                outcome = await runtime.handle(topic, 0, offset, key, value, late, more)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        await runtime.evaluate_deferred()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        return {"mode": mode, "layout": layout, "events": events, "messages": len(messages),
                "cpu_us_per_event": 1e6 * cpu / events, "rate": events / wall, "outcomes": outcomes,
                "evaluations_staged": null.staged}

    return asyncio.run(run())


def main(rounds: int, events: int, other: str, out: Path) -> None:
    from kafka_tree_ab import summary  # beside this file

    trees = {"other": str(Path(other).resolve()), "this": str(Path(__file__).resolve().parents[2])}
    runs: list[dict[str, Any]] = []
    with out.open("w") as sink:
        for r in range(rounds):
            for mode in MODES:
                for label in ("other", "this") if r % 2 == 0 else ("this", "other"):
                    env = dict(os.environ, PYTHONPATH=trees[label])
                    line = subprocess.run(["taskset", "-c", "1", sys.executable, __file__, "--child", str(events),
                                           mode], env=env, cwd="/", check=True, capture_output=True).stdout
                    runs.append(dict(json.loads(line), round=r, tree=label))
                    sink.write(json.dumps(runs[-1]) + "\n")
                    sink.flush()
    print("\n".join(summary(runs, ("cpu_us_per_event", "rate"))))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.path.pop(0)  # this file's folder: the checkout comes from PYTHONPATH
        print(json.dumps(child(int(sys.argv[2]), sys.argv[3])))
    elif len(sys.argv) == 5:
        main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
    else:
        sys.exit(__doc__)
