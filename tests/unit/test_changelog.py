"""The write-behind changelog of the customer table (stream.app.CustomerTable): coalesced, never lost."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from stream.app import CustomerTable


class Value:
    def __init__(self, text: str) -> None:
        self.text = text

    def to_bytes(self) -> bytes:
        return self.text.encode()


class Producer:
    """Records sends; refuses the ``refuse_at``-th one (1-based) like aiokafka on a timeout."""

    def __init__(self, refuse_at: int | None = None, on_refuse: Any = None) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, int | None]] = []
        self.refuse_at, self.on_refuse = refuse_at, on_refuse

    async def send(self, topic: str, key: bytes, value: bytes | None, partition: int | None, *_: Any) -> Any:
        if self.refuse_at is not None and len(self.sent) + 1 == self.refuse_at:
            if self.on_refuse:
                self.on_refuse()
            raise TimeoutError("producer refused")
        self.sent.append((topic, key, value, partition))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def table(producer: Producer, dirty: dict[str, tuple[int | None, Any]]) -> Any:
    return SimpleNamespace(dirty=dict(dirty), app=SimpleNamespace(producer=producer), _track=lambda fut: None,
                           changelog_topic=SimpleNamespace(get_topic_name=lambda: "customers-changelog"))


async def test_one_record_per_dirty_customer_with_its_latest_state_and_tombstones() -> None:
    producer = Producer()
    t = table(producer, {"c1": (0, Value("v2")), "c2": (3, None)})
    assert await CustomerTable.write_dirty(t) == 2
    assert producer.sent == [("customers-changelog", b"c1", b"v2", 0), ("customers-changelog", b"c2", None, 3)]
    assert t.dirty == {}


async def test_a_refused_write_keeps_it_and_the_rest_dirty_and_newer_marks_win() -> None:
    newer = Value("c3-newer")
    t: Any = None
    producer = Producer(refuse_at=2, on_refuse=lambda: t.dirty.update({"c3": (1, newer)}))
    t = table(producer, {"c1": (0, Value("a")), "c2": (1, Value("b")), "c3": (1, Value("c"))})
    with pytest.raises(TimeoutError):
        await CustomerTable.write_dirty(t)
    assert [s[1] for s in producer.sent] == [b"c1"]
    assert set(t.dirty) == {"c2", "c3"} and t.dirty["c3"][1] is newer  # nothing lost, nothing older
    producer.refuse_at = None
    assert await CustomerTable.write_dirty(t) == 2
    assert [s[1:3] for s in producer.sent[1:]] == [(b"c2", b"b"), (b"c3", b"c3-newer")]
