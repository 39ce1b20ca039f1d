"""Faust's own code, without our guards, gives the wrong result: bugs on any broker (stream.faust.guards 1-5, 7, 8).

Each test calls the method Faust ships (:func:`stream.faust.guards.faust_original`, the one before
:func:`~stream.faust.guards.install_ack_guard` replaced it) on the consumer or producer state a broker
would leave, and shows the loss or stall; then the guard on the same state. None of them involves a
broker's answer, only Faust's bookkeeping, so the result is the same on Kafka, Tansu or any other.
Guards 3 and 9 are also shown on real Kafka in tests/integration/test_kafka_not_tansu.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from faust.app.base import App
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import Producer
from faust.transport.producer import ProducerBuffer
from intervaltree import IntervalTree

from stream.faust import guards

from .fakes import FakeFaustConsumer

TP = ("orders", 0)


@pytest.fixture(autouse=True)
def installed() -> None:
    guards.install_ack_guard()  # what create_app does: Faust's originals are kept aside


class _Message:
    """A message fetched under generation 1 (hashable, as Faust's are)."""

    def __init__(self, offset: int) -> None:
        self.acked, self.tp, self.offset, self.topic, self.generation_id = False, TP, offset, "orders", 1


def _stale_message(offset: int) -> Any:
    return _Message(offset)


def _acking_consumer(committed: int) -> Any:
    c: Any = FakeFaustConsumer({TP: committed})
    c.app = SimpleNamespace(consumer_generation_id=2, flow_control=SimpleNamespace(is_active=lambda: True),
                            topics=SimpleNamespace(acks_enabled_for=lambda topic: True))
    c._unacked_messages, c._n_acked, c._waiting_for_ack = set(), 0, None
    return c


def test_guard1_faust_acks_a_message_its_stream_skipped_for_an_old_generation() -> None:
    # Faust's Stream skips a message fetched under generation 1 once the app is at 2 and acks it anyway
    # (streams.py: ``value = skipped_value`` ... ``event.ack()``); Consumer.ack never looks at the generation
    faust_ack = guards.faust_original(Consumer, "ack")
    c = _acking_consumer(committed=5)
    assert faust_ack(c, _stale_message(5)) is True and c._acked[TP] == [5]  # committable, never processed
    c = _acking_consumer(committed=5)
    assert Consumer.ack(c, _stale_message(5)) is False and c._acked[TP] == []  # the guard: read again


async def test_guard2_fausts_flush_gives_up_after_0_1_s_with_a_message_unsent() -> None:
    class Running(ProducerBuffer):
        state = "running"  # type: ignore[assignment]

    buffer = Running()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
    buffer.pending.put_nowait(object())  # a send whose broker acknowledgement takes longer than 0.1 s
    started = asyncio.get_running_loop().time()
    await buffer.flush()  # what Faust's pre-commit flush awaits
    assert asyncio.get_running_loop().time() - started < 1 and buffer.size == 1  # returned, message unsent


def test_guard3_fausts_head_check_commits_past_the_first_offset_after_the_committed_one() -> None:
    faust_new_offset = guards.faust_original(Consumer, "_new_offset")
    assert faust_new_offset(FakeFaustConsumer({TP: 31}, {TP: [32, 33, 34]}), TP) == 35  # 31: never processed
    assert faust_new_offset(FakeFaustConsumer({TP: 0}, {TP: [1, 2]}), TP) == 3  # no check at all at 0
    assert guards.new_offset(FakeFaustConsumer({TP: 31}, {TP: [32, 33, 34]}), TP) is None
    assert guards.new_offset(FakeFaustConsumer({TP: 0}, {TP: [1, 2]}), TP) is None


async def test_guard4_faust_commits_the_offsets_it_never_delivered_as_done() -> None:
    def consumer() -> Any:
        c: Any = FakeFaustConsumer({TP: 31}, {TP: [31, 35]})  # 32-34 fetched and dropped (flow stopped)
        c._gap = defaultdict(IntervalTree)
        return c

    faust_add_gap = guards.faust_original(Consumer, "_add_gap")
    faust_new_offset = guards.faust_original(Consumer, "_new_offset")
    c = consumer()
    await faust_add_gap(c, TP, 32, 35)  # what Faust's drain loop does when offset 35 follows 31
    assert faust_new_offset(c, TP) == 36  # commits past 32-34: a SIGKILL now loses them
    c = consumer()
    await faust_add_gap(c, TP, 32, 35)
    assert guards.new_offset(c, TP) == 32  # the guard: up to the hole; the agent fills it (GapFiller)


async def test_guard5_faust_records_a_refused_commit_as_committed() -> None:
    async def refused(offsets: Any) -> bool:
        return False  # CommitFailedError: the group rebalanced meanwhile

    async def flush() -> None:
        return None

    def consumer() -> Any:
        c: Any = FakeFaustConsumer({TP: 31})
        c.log = SimpleNamespace(dev=lambda *a, **k: None, info=lambda *a, **k: None)
        c.assignment = lambda: {TP}
        c.in_transaction = False
        c._commit = refused
        c.app = SimpleNamespace(producer=SimpleNamespace(flush=flush),
                                tables=SimpleNamespace(on_commit=lambda offsets: None),
                                monitor=SimpleNamespace(on_tp_commit=lambda offsets: None))
        return c

    c = consumer()
    assert await guards.faust_original(Consumer, "_commit_offsets")(c, {TP: 40}) is False
    assert c._committed_offset[TP] == 40  # the broker still has 31: acks of 31-39 read again are dropped
    c = consumer()
    c._commit = guards.note_failed_commit(lambda self, offsets: refused(offsets))
    c._commit = c._commit.__get__(c)
    assert await Consumer._commit_offsets(c, {TP: 40}) is False  # type: ignore[dict-item]
    assert c._committed_offset[TP] == 31  # the guard


async def test_guard7_fausts_rebalance_flush_waits_as_long_as_the_flush_hangs() -> None:
    async def hangs() -> None:
        await asyncio.Event().wait()  # a changelog acknowledgement from a broker that went silent

    app = SimpleNamespace(_producer=SimpleNamespace(flush=hangs))
    with pytest.raises(TimeoutError):  # no bound of its own: the rebalance (and the whole group) waits
        await asyncio.wait_for(guards.faust_original(App, "_producer_flush")(app, logging.getLogger()), 0.3)
    await asyncio.wait_for(guards.bounded_flush(guards.faust_original(App, "_producer_flush"), timeout=0.05)(
        app, logging.getLogger()), 1)


async def _silent_peer() -> tuple[asyncio.Server, str]:
    """A TCP server that accepts and never answers (a peer gone without a reset, a NAT that dropped the flow)."""
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client closes
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_guard8_fausts_producer_waits_1200_s_for_a_silent_connection() -> None:
    from stream.faust.app import create_app
    from stream.settings import Settings

    server, address = await _silent_peer()
    try:
        app = create_app(Settings(kafka_bootstrap_servers=address))  # type: ignore[call-arg]
        faust_new_producer = guards.faust_original(Producer, "_new_producer")
        producer = faust_new_producer(app.producer)
        assert producer.client._request_timeout_ms == 1_200_000  # Faust's producer_request_timeout
        with pytest.raises(TimeoutError):  # still waiting for the broker's first answer
            await asyncio.wait_for(producer.start(), 1.5)
        await producer.stop()
        bounded = guards.bounded_producer_requests(faust_new_producer, timeout=0.3)(app.producer)
        with pytest.raises(KafkaConnectionError) as failed:
            await asyncio.wait_for(bounded.start(), 5)
        assert isinstance(failed.value, KafkaConnectionError), repr(failed.value)  # gave up by itself: the guard
        await bounded.stop()
    finally:
        server.close()


async def test_guard3_faust_resumes_an_assignments_partitions_before_it_knows_their_committed_offsets() -> None:
    # a revocation drops every committed offset it knew; the next assignment's recovery resumes the
    # partitions (the flow runs since the changelog read) and only then seeks, learning them again
    from faust.tables.recovery import Recovery

    c: Any = FakeFaustConsumer({TP: 31})
    seen_at_resume: list[Any] = []

    async def perform_seek() -> None:
        c._committed_offset[TP] = 31  # what the broker answers

    async def nothing(*args: Any, **kwargs: Any) -> None: ...

    c.assignment = lambda: {TP}
    c.resume_partitions = lambda tps: seen_at_resume.append(c._committed_offset.get(TP))
    c.perform_seek, c.resume_flow = perform_seek, lambda: None
    tables = SimpleNamespace(values=lambda: [], on_actives_ready=lambda: None, on_standbys_ready=lambda: None)
    app = SimpleNamespace(consumer=c, consumer_generation_id=1, on_rebalance_complete=SimpleNamespace(send=nothing),
                          flow_control=SimpleNamespace(resume=lambda: None),
                          conf=SimpleNamespace(broker_request_timeout=1),
                          _fetcher=SimpleNamespace(maybe_start=nothing), on_rebalance_end=lambda: None,
                          assignor=SimpleNamespace(assigned_standbys=lambda: set()))
    log = SimpleNamespace(info=lambda *a: None, warning=lambda *a: None, dev=lambda *a: None)

    async def wait(coro: Any, timeout: Any = None) -> None:
        await coro

    recovery = SimpleNamespace(app=app, log=log, tables=tables, _set_recovery_ended=lambda: None, _wait=wait,
                               _is_changelog_tp=lambda tp: False, completed=asyncio.Event())
    await Consumer.on_partitions_revoked(SimpleNamespace(  # type: ignore[arg-type]
        _active_partitions=None, _paused_partitions=set(), _gap={}, _acked={}, _acked_index={}, _read_offset={},
        _committed_offset=c._committed_offset, app=SimpleNamespace(_start_span_from_rebalancing=lambda n: _Span()),
        _on_partitions_revoked=nothing, diag=SimpleNamespace(set_flag=lambda f: None, unset_flag=lambda f: None)),
        {TP})
    assert c._committed_offset.get(TP) is None  # forgotten
    await Recovery.on_recovery_completed(recovery, 1)  # type: ignore[arg-type]
    assert seen_at_resume == [None] and c._committed_offset[TP] == 31  # resumed first, learnt after


class _Span:
    def __enter__(self) -> None: ...

    def __exit__(self, *exc: Any) -> None: ...
