"""The Tansu shims patch Faust's consumer thread: highwaters (tested live) and the fetch wait."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from stream.faust import tansu


def test_faust_consumer_waits_at_most_50_ms_per_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        return SimpleNamespace(_fetch_max_wait_ms=kwargs.get("wait", 1500))  # Faust asks for 1,500 ms

    monkeypatch.setattr(AIOKafkaConsumerThread, "_create_worker_consumer", create)
    monkeypatch.setattr(AIOKafkaConsumerThread, "_highwaters", AIOKafkaConsumerThread._highwaters)
    monkeypatch.setattr(tansu, "_installed", False)
    tansu.install("127.0.0.1:9092")
    thread: Any = object.__new__(AIOKafkaConsumerThread)
    assert thread._create_worker_consumer()._fetch_max_wait_ms == tansu.FETCH_MAX_WAIT_MS == 50
    assert thread._create_worker_consumer(wait=20)._fetch_max_wait_ms == 20  # a shorter wait is kept
