"""A 3-broker Kafka cluster (replication factor 3, min.insync.replicas=2) with a cuttable proxy per broker, and
Redis, shared by every fault scenario.

Every node has a second listener, ``PROXIED``, advertised at its proxy's port: a client bootstrapped at the
proxies (:attr:`FaultCluster.proxied_bootstrap`) is told the proxies' addresses in metadata and reaches every
broker through them, so cutting the proxies cuts it off from the whole cluster while clients on the direct
(PLAINTEXT) listener, such as the test's producer and checks, carry on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Self

import pytest
from confluent_kafka.admin import AdminClient

from stream.devtools.embedded import RedisServer, ServiceGroup, free_port
from stream.devtools.kafka_local import KafkaCluster, Listener

# the namespace fixture on the services below, and worker logs in a failure's report
from ..integration.conftest import KAFKA_TEST_CONFIG, namespace, pytest_runtest_makereport, require_kafka  # noqa: F401
from .proxy import CuttableProxy

PROXIED = "PROXIED"


class FaultCluster:
    """Three Kafka nodes and one :class:`CuttableProxy` in front of each node's ``PROXIED`` listener."""

    def __init__(self, size: int = 3) -> None:
        ports = {node_id: free_port() for node_id in range(1, size + 1)}
        listener = Listener(PROXIED, advertise={i: f"127.0.0.1:{port}" for i, port in ports.items()})
        self.kafka = KafkaCluster(size, config=KAFKA_TEST_CONFIG, listeners=[listener])
        self.proxies = [CuttableProxy(node.listener_ports[PROXIED], port=ports[node.node_id])
                        for node in self.kafka.nodes]

    @property
    def bootstrap(self) -> str:
        """Every broker directly (the test's own clients)."""
        return self.kafka.bootstrap

    @property
    def proxied_bootstrap(self) -> str:
        """Every broker through its proxy (workers that a scenario cuts off)."""
        return ",".join(f"127.0.0.1:{p.port}" for p in self.proxies)

    def cut(self, seconds: float) -> None:
        for proxy in self.proxies:
            proxy.cut(seconds)

    def silence(self, seconds: float) -> None:
        for proxy in self.proxies:
            proxy.silence(seconds)

    def topics(self) -> list[str]:
        """Every topic on the cluster (__consumer_offsets included)."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        return sorted(admin.list_topics(timeout=10).topics)

    def heal(self) -> None:
        """Every node running and every partition fully in sync: a scenario starts on a healthy cluster."""
        for node in self.kafka.nodes:
            if node.pid is None:
                node.start()
        self.kafka.wait_in_sync(self.topics(), timeout=180)

    def start(self) -> Self:
        self.kafka.start()
        return self

    def stop(self) -> None:
        for proxy in self.proxies:
            proxy.close()
        self.kafka.stop()


@pytest.fixture(scope="session")
def cluster() -> Iterator[FaultCluster]:
    require_kafka()
    fault_cluster = FaultCluster()
    try:
        yield fault_cluster.start()
    finally:
        fault_cluster.stop()


@pytest.fixture(scope="session")
def services(cluster: FaultCluster) -> Iterator[ServiceGroup]:
    """The cluster and one Redis for the session (each scenario has its own topics, group and key prefix)."""
    with RedisServer() as redis:
        yield ServiceGroup(broker=cluster, redis=redis)


@pytest.fixture(autouse=True)
def healthy_cluster(cluster: FaultCluster) -> None:
    cluster.heal()
