"""Output identity: per-customer sequences in the state, seq/change_id on every output, repeats dropped by
the webhook sink and ``tagger tail`` (stream/domain/sequence.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from agents.cli.console import tail_line
from agents.engine.runtime import Message
from agents.webhooks import fresh_records
from stream.access.privacy import erase_change
from stream.domain.sequence import RepeatFilter, change_id, stamp
from stream.domain.state import CustomerState
from stream.metrics import create_webhook_metrics
from stream.settings import Settings
from stream.webhook_delivery import WebhookConfig, idempotency_key

from .fakes import make_runtime

# -- state --------------------------------------------------------------------------------------------


def test_sequences_survive_the_changelog_round_trip_and_cost_a_few_bytes() -> None:
    state = CustomerState()
    empty = len(state.to_bytes())
    assert [state.next_seq("tag") for _ in range(3)] == [1, 2, 3]
    assert state.next_seq("churn") == 1
    copy = CustomerState.from_bytes(state.to_bytes())
    assert (copy.tag_seq, copy.churn_seq) == (3, 1) and copy == state
    assert copy.next_seq("tag") == 4
    assert len(state.to_bytes()) - empty == len(',"q":[3,1]')  # 10 bytes here; 0 while both are 0
    with pytest.raises(ValueError, match="no output sequence"):
        state.next_seq("dead")


def test_a_record_written_before_sequences_loads_as_zero() -> None:
    doc = orjson.loads(CustomerState().to_bytes())
    assert "q" not in doc
    old = CustomerState.from_bytes(orjson.dumps(doc))
    assert (old.tag_seq, old.churn_seq) == (0, 0) and old.next_seq("tag") == 1


# -- runtime ------------------------------------------------------------------------------------------

CID = "cust-7"


def command(n: int, action: str) -> bytes:
    return orjson.dumps({"command_id": f"cmd-{n}", "customer_id": CID, "action": action, "tag": "vip_watch",
                         "author": "sam"})


def sent(senders: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [orjson.loads(value) for _, value, _ in senders[name].sent]


async def test_tag_changes_carry_seq_1_to_n_and_a_replay_gives_the_same_ids() -> None:
    settings = Settings(partitions=1)  # type: ignore[call-arg]
    runtime, senders = make_runtime(settings)
    order = orjson.dumps({"event_id": "e1", "customer_id": CID, "ts": "2026-01-05T00:00:00Z", "order_id": "o1",
                          "amount": "12840"})
    await runtime.handle(Message("orders", 0, 0, CID.encode(), order))
    before = runtime.table[CID].to_bytes()  # the changelog as of the crash's last durable write
    steps = [(1, "add_tag"), (2, "remove_tag"), (3, "add_tag")]
    for offset, action in steps:
        assert await runtime.handle(Message("tag-commands", 0, offset, CID.encode(), command(offset, action))) == "ok"
    changes = sent(senders, "tag_changes")
    assert [c["seq"] for c in changes] == list(range(1, len(changes) + 1)) and len(changes) >= 3
    assert all(c["change_id"] == change_id(CID, "tag", c["seq"]) for c in changes)
    assert runtime.table[CID].tag_seq == len(changes)

    replayed, again = make_runtime(settings, table={CID: CustomerState.from_bytes(before)})
    replayed.restore_clock()  # as a worker does after recovery
    for offset, action in steps:  # the commands since the last commit come again
        await replayed.handle(Message("tag-commands", 0, offset, CID.encode(), command(offset, action)))
    repeats = sent(again, "tag_changes")
    drop = {"emitted_at"}
    assert [{k: v for k, v in c.items() if k not in drop} for c in repeats] == \
        [{k: v for k, v in c.items() if k not in drop} for c in changes[-len(steps):]]


async def test_churn_alerts_have_their_own_sequence() -> None:
    runtime, senders = make_runtime()
    state = CustomerState()
    state.tag_seq = 5
    runtime.table[CID] = state
    levels = iter(("high", "none"))

    def churn_alert(cid: str, *args: Any) -> dict[str, Any]:
        return {"customer_id": cid, "level": next(levels)}

    runtime.evaluator.churn_alert = churn_alert  # type: ignore[method-assign,assignment]
    trigger = {"kind": "timer", "topic": None, "event_id": None}
    for _ in range(2):
        await runtime.reevaluate(CID, state, trigger)
    alerts = sent(senders, "churn_alerts")
    assert [(a["seq"], a["change_id"]) for a in alerts] == [(1, f"{CID}:churn:1"), (2, f"{CID}:churn:2")]
    assert runtime.table[CID].churn_seq == 2
    assert [c["seq"] for c in sent(senders, "tag_changes")] in ([], [6])  # tags: their own numbers


def test_the_erase_message_ends_the_sequences_with_a_stable_id() -> None:
    request = {"request_id": "dsr-9", "customer_id": CID, "ts": 0}
    message = erase_change(request, topic="privacy-requests", ruleset_version="v", ruleset_name=None)
    assert message["seq"] is None and message["change_id"] == f"{CID}:erase:dsr-9"


# -- repeat filter, webhook sink, tail ------------------------------------------------------------------


def numbered(seq: int, cid: str = CID, **extra: Any) -> dict[str, Any]:
    return stamp({"customer_id": cid, "added": ["vip"], "removed": [], "tier": "A", "previous_tier": "A",
                  **extra}, cid, "tag", seq)


def test_repeat_filter_drops_seqs_at_or_below_the_mark_per_stream() -> None:
    repeats = RepeatFilter(max_customers=2)
    assert [repeats.seen("t", numbered(n)) for n in (1, 2, 3, 2, 3, 4)] == [False] * 3 + [True] * 2 + [False]
    assert not repeats.seen("other", numbered(1))  # another stream has its own marks
    assert not repeats.seen("t", {"customer_id": CID, "tags": []})  # no seq: written before seqs
    assert repeats.repeats == 2
    repeats.seen("t", numbered(1, "c2"))
    repeats.seen("t", numbered(1, "c3"))  # the bound: the least recently seen mark goes
    assert len(repeats) == 2 and not repeats.seen("t", numbered(4))
    repeats.forget("t")
    assert len(repeats) == 0 and not repeats.seen("t", numbered(1, "c2"))


def test_repeat_filter_starts_a_customer_again_after_its_erasure() -> None:
    repeats = RepeatFilter()
    gone = erase_change({"request_id": "dsr-1", "customer_id": CID, "ts": 0}, topic="p", ruleset_version="v",
                        ruleset_name=None)
    assert not repeats.seen("t", numbered(1)) and not repeats.seen("c", numbered(1))
    assert not repeats.seen("t", gone)
    assert not repeats.seen("t", numbered(1)) and not repeats.seen("c", numbered(1))  # a new generation
    assert repeats.seen("t", gone)  # the same erase message again


def test_webhook_idempotency_key_is_the_change_id() -> None:
    assert idempotency_key("tag-changes", 3, 1187, "s", numbered(7)) == f"s:{CID}:tag:7"
    assert idempotency_key("tag-changes", 3, 1187, "s", {"customer_id": CID}) == "s:tag-changes:3:1187"
    assert idempotency_key("tag-changes", 3, 1187, "s") == "s:tag-changes:3:1187"


def test_webhook_sink_drops_repeats_and_counts_them_per_subscription() -> None:
    config = WebhookConfig.model_validate({"webhooks": [{"name": "all", "url": "http://127.0.0.1:1/h"},
                                                        {"name": "vip", "url": "http://127.0.0.1:1/v",
                                                         "tags": ["other"]}]})
    metrics = create_webhook_metrics(CollectorRegistry(), ["all", "vip"])
    deliverer: Any = SimpleNamespace(config=config, metrics=metrics)

    def record(offset: int, message: Any, partition: int = 0) -> Any:
        return SimpleNamespace(topic="tag-changes", partition=partition, offset=offset, value=orjson.dumps(message))

    records = [record(0, numbered(1)), record(1, numbered(2)), record(2, numbered(1)), record(3, "not a dict"),
               record(4, numbered(2)), record(5, numbered(3)), record(6, numbered(1), partition=1)]
    repeats = RepeatFilter()
    fresh = fresh_records(deliverer, {"tag-changes": "tag_change"}, records, repeats)
    assert [r.offset for r, _ in fresh] == [0, 1, 5, 6]
    assert fresh[0][1]["change_id"] == f"{CID}:tag:1"
    assert metrics.deliveries.labels("all", "duplicate")._value.get() == 2  # noqa: SLF001
    assert metrics.deliveries.labels("vip", "duplicate")._value.get() == 0  # noqa: SLF001 - not its messages
    # the next batch of the same run remembers the marks
    assert fresh_records(deliverer, {"tag-changes": "tag_change"}, [record(7, numbered(3))], repeats) == []


def test_tail_prints_a_repeated_change_once() -> None:
    settings = Settings(partitions=1)  # type: ignore[call-arg]
    repeats = RepeatFilter()

    def line(message: Any, topic: str = settings.tag_changes_topic) -> str | None:
        value = message if isinstance(message, bytes) else orjson.dumps(message)
        return tail_line(settings, topic, 0, value, repeats)

    assert line(numbered(1)) is not None and line(numbered(2)) is not None
    assert line(numbered(2)) is None and line(numbered(1)) is None
    assert line(b"not json") is None
    alert = stamp({"customer_id": CID, "level": "high", "previous_level": "low", "risk": 0.9, "reasons": []},
                  CID, "churn", 1)
    assert "churn low→high" in (line(alert, settings.churn_alerts_topic) or "")
    assert line(alert, settings.churn_alerts_topic) is None
