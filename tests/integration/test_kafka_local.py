"""The Maven-started Apache Kafka of stream/devtools/kafka_local.py: a node keeps its log across a SIGKILL and a
restart."""

from __future__ import annotations

import uuid

import pytest

from stream.devtools.kafka_local import KafkaCluster, kafka_unavailable, kafka_version
from stream.kafka.kafka_admin import consume_all, ensure_topics, make_producer

from .conftest import require_kafka

pytestmark = pytest.mark.integration


def test_a_node_keeps_its_data_across_kill_and_restart() -> None:
    require_kafka()
    topic = f"kept-{uuid.uuid4().hex[:8]}"
    with KafkaCluster(1) as cluster:
        node = cluster.node(1)
        ensure_topics(cluster.bootstrap, {topic: 2})
        producer = make_producer(cluster.bootstrap)
        for i in range(10):
            producer.produce(topic, key=b"k%d" % i, value=b"%d" % i)
        assert producer.flush(30) == 0
        node.kill()  # SIGKILL: no controlled shutdown
        assert node.pid is None
        node.start()
        assert len(consume_all(cluster.bootstrap, topic, timeout=30, until=lambda rs: len(rs) >= 10)) == 10
        node.restart()  # controlled shutdown, same ports
        records = consume_all(cluster.bootstrap, topic, timeout=30, until=lambda rs: len(rs) >= 10)
        assert sorted(r["value"] for r in records) == list(range(10))
        workdir = cluster.workdir
    assert not workdir.exists()


def test_missing_java_or_maven_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    why = kafka_unavailable()
    assert why is not None and "java and mvn not found" in why and "apt-get install" in why
    assert kafka_version().startswith("4.")
