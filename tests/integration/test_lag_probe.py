"""The side reader of the workers' group (stream.kafka.lag.PartitionProbe) against the real broker."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from stream.devtools.embedded import ServiceGroup
from stream.kafka.kafka_admin import ensure_topics, make_producer
from stream.kafka.lag import PartitionProbe


async def test_where_the_group_resumes_is_its_committed_offset_else_the_partitions_start(
        services: ServiceGroup) -> None:
    """A partition the group never committed resumes at its first offset (the workers read from the
    earliest): its lag is known and a stall there is seen (guard 6)."""
    topic, group = f"probe-{uuid.uuid4().hex[:8]}", f"group-{uuid.uuid4().hex[:8]}"
    ensure_topics(services.bootstrap, {topic: 3})
    producer = make_producer(services.bootstrap)
    for partition in (0, 1):
        for n in range(3):
            producer.produce(topic, key=b"k", value=b"%d" % n, partition=partition)
    assert producer.flush(30) == 0
    committer = AIOKafkaConsumer(bootstrap_servers=services.bootstrap, group_id=group, enable_auto_commit=False)
    await committer.start()
    try:
        committer.assign([TopicPartition(topic, 0)])
        await committer.commit({TopicPartition(topic, 0): OffsetAndMetadata(2, "")})
    finally:
        await committer.stop()
    probe = PartitionProbe(services.bootstrap, group_id=group)
    try:
        found = await probe.committed([(topic, 0), (topic, 1), (topic, 2)])
    finally:
        await probe.stop()
    assert found == {(topic, 0): 2, (topic, 1): 0, (topic, 2): 0}
