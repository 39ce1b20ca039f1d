"""A worker SIGKILLed mid-stream re-publishes what it sent since its last commit; every repeat carries the
change_id (and seq) of the first copy, and after dropping repeats each customer's seqs are 1..n."""

from __future__ import annotations

import signal
from collections import defaultdict
from typing import Any

import orjson
import pytest

from stream.kafka.kafka_admin import consume_all
from tests.fault.sequences import check_sequences

from .conftest import Namespace, wait_for

pytestmark = pytest.mark.integration

CUSTOMERS, COMMANDS = 40, 60  # each command toggles a manual tag: one tag change each, 2,400 in all


def command(cid: str, n: int) -> dict[str, Any]:
    return {"command_id": f"{cid}-cmd-{n}", "customer_id": cid, "action": "remove_tag" if n % 2 else "add_tag",
            "tag": "vip_watch", "author": "sam"}


def test_repeats_after_sigkill_carry_the_same_change_id_and_seqs_are_gapless(namespace: Namespace) -> None:
    ns = namespace
    commands = [command(f"eo-{c:03d}", n) for n in range(COMMANDS) for c in range(CUSTOMERS)]
    half = len(commands) // 2
    for value in commands[:half]:
        ns.producer.produce(ns.topic("manual"), key=value["customer_id"], value=orjson.dumps(value))
    ns.flush()
    # a short session: the killed member's partitions move to the next worker after 10 s, not 60; no commit
    # before the kill (every 120 s), so all it sent comes again
    worker = ns.worker(session_timeout=10, heartbeat_interval=1, commit_interval=120)
    def handled() -> int:
        stats = worker.get("/stats")[1] or {}
        return int(stats.get("outcomes", {}).get("ok", 0))

    wait_for(lambda: handled() > 200, 90, "processing to start")
    worker.signal(signal.SIGKILL)  # mid-stream: what was sent since the last commit comes again
    for value in commands[half:]:
        ns.producer.produce(ns.topic("manual"), key=value["customer_id"], value=orjson.dumps(value))
    ns.flush()
    ns.worker(session_timeout=10, heartbeat_interval=1)

    last = {value["customer_id"]: value["command_id"] for value in commands}
    topic = ns.settings.tag_changes_topic

    def done(records: list[dict[str, Any]]) -> bool:
        triggered = {r["value"]["trigger"]["event_id"] for r in records}
        return all(cmd in triggered for cmd in last.values())

    records = ns.read(topic, done, timeout=180)
    records += [{**r, "topic": ns.settings.churn_alerts_topic}
                for r in consume_all(ns.services.bootstrap, ns.settings.churn_alerts_topic, timeout=2)]
    report = check_sequences([{**r, "topic": r.get("topic", topic)} for r in records])

    # every copy of one command's tag change carries the same change_id and seq
    copies: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for r in records:
        value = r["value"]
        if r.get("topic", topic) == topic and value["trigger"]["kind"] == "manual":
            copies[value["trigger"]["event_id"]].add((value["change_id"], value["seq"]))
    assert all(len(ids) == 1 for ids in copies.values()), [c for c in copies.items() if len(c[1]) > 1][:3]
    assert set(copies) == {value["command_id"] for value in commands}  # one tag change per command, none lost
    assert report.ok, report.summary()  # after dedupe by change_id: 1..n per customer and topic
    assert report.conflicts == 0, report.summary()  # a repeat is the same message (emitted_at aside)
    tag_sequences = [s for s in report.sequences.values() if s.topic == topic]
    assert len(tag_sequences) == CUSTOMERS and all(len(s.seqs) >= COMMANDS for s in tag_sequences)
    print(report.summary())  # noqa: T201 - shown with -s: how many repeats the kill made
    assert report.repeats > 0, "the SIGKILL left nothing uncommitted to replay: the test showed nothing"
