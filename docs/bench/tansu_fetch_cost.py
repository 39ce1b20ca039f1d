"""Tansu's CPU per fetch against the number of record batches in the partition read.

Starts the embedded broker, then for 0, 1,000, 5,000 and 20,000 one-record batches in a
one-partition topic: for 3 s, seeks a consumer to the last record and fetches it, again and
again. Prints the rounds done and the broker's CPU per round. Each fetch that finds records
lists every batch of the partition, so the cost grows with the batches, not with what is read.

    .venv/bin/python docs/bench/tansu_fetch_cost.py
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from agents.bench.harness import CpuMeter
from stream.devtools.embedded import TansuBroker
from stream.kafka.kafka_admin import client_config


def main() -> None:
    with TansuBroker() as broker:
        assert broker.pid is not None
        conf = client_config(broker.bootstrap)
        admin = AdminClient(conf)
        admin.create_topics([NewTopic("t", 1, 1)])["t"].result()
        producer, batches = Producer({**conf, "linger.ms": 0}), 0
        for target in (0, 1000, 5000, 20000):
            while batches < target:
                producer.produce("t", b"x" * 100, b"k")
                producer.flush()  # one batch a record
                batches += 1
            consumer = Consumer({**conf, "group.id": f"g{target}", "enable.auto.commit": False,
                                 "fetch.wait.max.ms": 10})
            rounds, meter, began = 0, CpuMeter({"broker": broker.pid}), time.monotonic()
            while time.monotonic() - began < 3:
                consumer.assign([TopicPartition("t", 0, max(batches - 1, 0))])
                consumer.consume(1, timeout=1)
                rounds += 1
            used, elapsed = meter.read()
            cpu = used["broker"]
            consumer.close()
            print(f"{batches:6,} batches: {rounds} rounds in {elapsed:.1f} s, broker {100 * cpu / elapsed:.0f}% "
                  f"of a core, {1000 * cpu / rounds:.2f} ms a round", flush=True)


if __name__ == "__main__":
    main()
