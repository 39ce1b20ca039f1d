"""Integration tests for the embedded Tansu broker and redis-server, admin helpers and demo, and the
Tansu smoke of the whole pipeline (``./dev run`` keeps Tansu as its zero-Java default; every other
integration test runs on real Kafka where Java is here)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka.admin import AdminClient

from stream.devtools.demo import DemoConfig, run_demo
from stream.devtools.embedded import (
    RedisServer,
    ServiceGroup,
    ServiceStartError,
    TansuBroker,
    pid_alive,
    redis_binary,
    tansu_binary,
)
from stream.kafka.kafka_admin import (
    PartitionMismatchError,
    consume_all,
    ensure_topics,
    expected_partition,
    make_producer,
    partition_count,
)
from stream.kafka.topics import all_topic_names, changelog_topic_name, ensure_all_topics
from stream.settings import Settings

from .conftest import Namespace, deployment_fields, isolated_namespace, wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def services() -> Iterator[ServiceGroup]:
    """Tansu and redis-server, whatever broker the rest of the suite runs on."""
    with ServiceGroup(broker=TansuBroker()) as group:
        yield group


@pytest.fixture
def namespace(services: ServiceGroup, tmp_path: Path) -> Iterator[Namespace]:
    yield from isolated_namespace(services, tmp_path)


def test_pipeline_smoke_on_tansu(namespace: Namespace) -> None:
    """A worker with the Tansu settings (highwater shim, 6 s sessions) tags a customer and restarts exactly."""
    ns = namespace
    assert ns.env["TAGGER_TANSU_COMPAT"] == "true" and ns.env["TAGGER_SESSION_TIMEOUT"] == "6"
    worker = ns.worker()
    day = 86_400_000
    for i, amount in enumerate((6000, 5000)):
        ns.produce("order", {"event_id": f"s{i}", "customer_id": "c-smoke", "ts": 1_767_225_600_000 + i * day,
                             "order_id": f"o{i}", "amount": amount})
    ns.changes("c-smoke", lambda cs: any("big_spender" in c["added"] for c in cs))
    worker.stop()
    ns.worker()  # recovers the table from the changelog through the shim
    ns.produce("order", {"event_id": "s2", "customer_id": "c-smoke", "ts": 1_767_225_600_000 + 2 * day,
                         "order_id": "o2", "amount": 1})
    wait_for(lambda: (v := ns.view("c-smoke")) and v["aggregates"]["orders_total"] == 3, 60, "3 orders")
    assert ns.view("c-smoke")["aggregates"]["spend_365d"] == 11001.0


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def wait_until_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_binaries_come_from_installed_packages() -> None:
    assert tansu_binary().is_file() and tansu_binary().stat().st_mode & 0o100
    assert redis_binary().is_file()


def test_services_answer(services: ServiceGroup) -> None:
    admin = AdminClient({"bootstrap.servers": services.bootstrap})
    assert admin.list_topics(timeout=5) is not None
    assert redis.Redis.from_url(services.redis_url).ping()
    assert services.broker.log_path is not None and services.broker.log_path.is_file()


def test_ensure_topics_creates_and_rejects_mismatch(services: ServiceGroup) -> None:
    plain, compacted = unique("plain"), unique("compacted")
    ensure_topics(services.bootstrap, {plain: 4, compacted: 4}, compacted=[compacted], timeout=15)
    assert partition_count(services.bootstrap, plain) == 4
    assert partition_count(services.bootstrap, compacted) == 4
    assert partition_count(services.bootstrap, unique("absent")) is None
    ensure_topics(services.bootstrap, {plain: 4})  # existing and matching: no-op
    fresh = unique("fresh")
    with pytest.raises(PartitionMismatchError, match=rf"'{plain}' has 4 partitions, 2 required"):
        ensure_topics(services.bootstrap, {plain: 2, fresh: 2})
    assert partition_count(services.bootstrap, fresh) is None  # nothing created on error


def test_a_workers_topics_include_the_changelog_before_faust_starts(services: ServiceGroup) -> None:
    # the changelog is not left to Faust: a record that came before its consumer's metadata listed a changelog
    # it had just declared failed Faust's partition check (PartitionsMismatch, "0 partitions") once in CI
    settings = Settings(**deployment_fields(uuid.uuid4().hex[:8]), kafka_bootstrap_servers=services.bootstrap,
                        partitions=3, tansu_compat=True)  # type: ignore[call-arg]
    assert partition_count(services.bootstrap, changelog_topic_name(settings)) is None
    ensure_all_topics(settings)
    for topic in [*all_topic_names(settings), changelog_topic_name(settings)]:
        assert partition_count(services.bootstrap, topic) == 3, topic


async def test_demo_events_round_trip(services: ServiceGroup) -> None:
    topics = {kind: unique(kind) for kind in ("order", "login", "ticket")}
    ensure_topics(services.bootstrap, dict.fromkeys(topics.values(), 4))
    config = DemoConfig(customers=50, rate=0, topics=topics, start_ms=1_700_000_000_000)
    assert await run_demo(services.bootstrap, config, limit=1000) == 1000
    records = []
    for topic in topics.values():
        records += consume_all(services.bootstrap, topic, timeout=30)
    assert len(records) == 1000
    assert len({r["value"]["event_id"] for r in records}) == 1000
    for record in records:
        assert record["key"] == record["value"]["customer_id"]
        assert record["partition"] == expected_partition(record["key"].encode(), 4)
    is_order = Counter("order_id" in r["value"] for r in records)
    assert is_order[True] > 50


async def test_run_demo_honours_rate_and_stop(services: ServiceGroup) -> None:
    topics = {kind: unique(kind) for kind in ("order", "login", "ticket")}
    ensure_topics(services.bootstrap, dict.fromkeys(topics.values(), 1))
    config = DemoConfig(rate=200, topics=topics)
    started = time.monotonic()
    assert await run_demo(services.bootstrap, config, limit=100) == 100
    assert 0.4 < time.monotonic() - started < 5
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.3, stop.set)
    produced = await run_demo(services.bootstrap, config, stop=stop)
    assert 20 <= produced <= 120


def test_consume_all_until_and_raw_values(services: ServiceGroup) -> None:
    topic = unique("raw")
    ensure_topics(services.bootstrap, {topic: 2})
    producer = make_producer(services.bootstrap)
    producer.produce(topic, b"not json", b"k1")
    producer.produce(topic, b'{"a": 1}', b"k2")
    assert producer.flush(10) == 0
    records = consume_all(services.bootstrap, topic, timeout=20, until=lambda rs: len(rs) >= 2)
    assert sorted(map(str, (r["value"] for r in records))) == ["not json", "{'a': 1}"]
    assert {r["partition"] for r in records} <= {0, 1}


def test_stop_leaves_no_process_and_is_idempotent() -> None:
    with ServiceGroup() as group:
        pids = [group.broker.pid, group.redis.pid]
        workdirs = [group.broker.workdir, group.redis.workdir]
    assert all(pid is not None and not pid_alive(pid) for pid in pids)
    assert all(d is not None and not d.exists() for d in workdirs)
    group.stop()
    assert group.broker.pid is None and group.redis.pid is None


def test_broker_restart_keeps_port_and_empties_memory() -> None:
    with TansuBroker() as broker:
        topic, bootstrap, old_pid = unique("gone"), broker.bootstrap, broker.pid
        ensure_topics(bootstrap, {topic: 1})
        broker.restart()
        assert broker.bootstrap == bootstrap and broker.pid != old_pid
        assert old_pid is not None and not pid_alive(old_pid)
        assert partition_count(bootstrap, topic) is None


def test_failed_start_reports_the_log_tail() -> None:
    class BrokenRedis(RedisServer):
        def command(self) -> list[str]:
            return [*super().command(), "--no-such-directive", "1"]

    with pytest.raises(ServiceStartError, match="no-such-directive"):
        BrokenRedis(port=None).start()


def test_taken_port_is_refused_not_probed(services: ServiceGroup) -> None:
    with pytest.raises(ServiceStartError, match="already in use"):
        RedisServer(port=services.redis.port).start()


def test_child_dies_with_its_parent(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from stream.devtools.embedded import RedisServer
        server = RedisServer(workdir=Path({str(tmp_path)!r})).start()
        print(server.pid, flush=True)
        time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                              env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert pid_alive(pid)
        parent.kill()
        parent.wait(10)
        assert wait_until_dead(pid, timeout=5), f"redis {pid} outlived its parent"
        assert (tmp_path / "redis.log").is_file()
    finally:
        parent.kill()
        parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
