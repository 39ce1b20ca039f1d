"""Hostile input through the real Runtime: every message ends in exactly one place, nothing escapes.

At least 10,000 generated messages (hypothesis drives the generator and adds arbitrary JSON of
its own): wrong types, huge numbers, NaN/Infinity, deep nesting, invalid UTF-8, empty keys,
timestamps in year 1 and 9999, enormous item lists, duplicate ids with different content.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.engine.runtime import Message
from stream.domain.state import CustomerState
from stream.settings import Settings

from ..hostile import dumps, hostile_message
from .fakes import FakeView, make_runtime

EXAMPLES, PER_EXAMPLE = 420, 25  # 10,500 generated messages, plus hypothesis' own JSON
MAX_STATE_BYTES = 64 * 1024


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)


def test_every_hostile_message_ends_in_exactly_one_place() -> None:
    config = Settings(partitions=1)  # type: ignore[call-arg]
    table: dict[str, CustomerState] = {}
    view = FakeView()
    runtime, senders = make_runtime(config, table, view=view)
    topic_of = {kind: topic for topic, kind in config.keyed_topics.items()}
    topic_of["ticket"] = config.tickets_topic
    loop = asyncio.new_event_loop()
    outcomes: Counter[str] = Counter()
    offsets: Counter[str] = Counter()

    async def deliver(topic: str, key: bytes | None, value: bytes | None) -> None:
        dead_before = len(senders["dead_letters"].sent)
        outcome = await runtime.handle(Message(topic, 0, offsets[topic], key, value))
        offsets[topic] += 1
        outcomes[outcome] += 1
        dead = senders["dead_letters"].sent[dead_before:]
        assert len(dead) == (outcome == "dead_letter"), (outcome, dead)
        if dead:
            record = orjson.loads(dead[0][1])
            assert record["error"] and record["topic"] == topic, record
        for rkey, rvalue, _ in senders["rekey"].sent:  # follow re-keyed events to their owner
            senders["rekey"].sent = []
            await deliver(config.rekey_topic, rkey, rvalue)

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.integers(0, 2**32), json_values, st.sampled_from(["order", "login", "ticket", "profile", "manual"]))
    def run(seed: int, junk: Any, kind: str) -> None:
        rng = random.Random(seed)
        batch = [hostile_message(rng, rng.randrange(10**6)) for _ in range(PER_EXAMPLE)]
        batch.append((kind, b"h-1", dumps(junk)))  # arbitrary JSON where an event should be
        if isinstance(junk, dict):
            batch.append((kind, b"h-1", dumps({"customer_id": "h-1", "event_id": "j", **junk})))
        for k, key, value in batch:
            loop.run_until_complete(deliver(topic_of[k], key, value))

    try:
        run()
    finally:
        loop.close()
    total = sum(outcomes.values()) - outcomes["rekeyed"]
    assert total >= EXAMPLES * (PER_EXAMPLE + 1), outcomes
    assert set(outcomes) <= {"ok", "duplicate", "dead_letter", "rekeyed", "batch"}, outcomes
    assert outcomes["ok"] > 1000 and outcomes["dead_letter"] > 1000 and outcomes["duplicate"] > 0, outcomes
    # memory stays bounded: few customers (ids come from a small pool), each state small
    assert len(table) < 200, len(table)
    biggest = max(len(s.to_bytes()) for s in table.values())
    assert biggest < MAX_STATE_BYTES, biggest
    docs = {cid: render() if callable(render) else render for cid, render in view.views.items()}
    assert all(orjson.loads(orjson.dumps(doc))["customer_id"] == cid for cid, doc in docs.items())  # RedisView's JSON
