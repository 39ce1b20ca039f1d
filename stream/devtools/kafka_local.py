"""Apache Kafka brokers from Maven Central, in KRaft mode, on free loopback ports.

The real broker for integration tests, the fault suite and benchmarks (Tansu, in
:mod:`stream.devtools.embedded`, stays the zero-Java default of ``tagger dev``). The jars
come from ``deploy/kafka-local/pom.xml`` through ``mvn dependency:build-classpath``
(Maven's own cache, nothing downloaded any other way); the machine's Java (17+)
runs ``kafka.tools.StorageTool format`` once per node and then ``kafka.Kafka``.

- :class:`KafkaCluster` of one node (tests) or three (the fault suite: replication
  factor 3, ``min.insync.replicas=2``). Every node is broker and controller.
- Each node can be stopped, SIGKILLed and started again one at a time
  (:meth:`KafkaNode.kill`, :meth:`KafkaNode.restart`); its log directory is kept
  until the cluster stops.
- Extra listeners (:class:`Listener`): a SASL_SSL one for the security tests, or
  one advertised at another address (a test's proxy) so that some clients can be
  cut off from every broker while others are not. SCRAM users are added when the
  storage is formatted.

:func:`kafka_unavailable` says what is missing (Java or Maven) so tests can skip.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from confluent_kafka.admin import AdminClient

from stream.devtools.embedded import EmbeddedServiceError, ServiceStartError, _Managed, _Service, free_port
from stream.settings import child_environment

POM_DIR = Path(__file__).resolve().parents[2] / "deploy" / "kafka-local"
INSTALL_HINT = "install OpenJDK 17+ and Maven (Debian: apt-get install openjdk-17-jre-headless maven)"
_JVM_OPTS = ["-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true"]


class KafkaUnavailableError(EmbeddedServiceError):
    """Java or Maven is missing, or Maven could not resolve the broker: the message says what to install."""


def kafka_version() -> str:
    """The Kafka version pinned in ``deploy/kafka-local/pom.xml``."""
    text = (POM_DIR / "pom.xml").read_text()
    return text.split("<kafka.version>", 1)[1].split("</kafka.version>", 1)[0].strip()


def kafka_unavailable() -> str | None:
    """Why real Kafka cannot start here (``None`` when Java 17+ and Maven are both on PATH)."""
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found: {INSTALL_HINT}"
    return None


def default_broker() -> str:
    """``kafka`` where Java and Maven are here, else ``tansu``: the local broker of tests and ``tagger bench``."""
    return "tansu" if kafka_unavailable() else "kafka"


def kafka_classpath() -> str:
    """The broker's classpath, resolved by Maven once per pom (cached under ``deploy/kafka-local/target``)."""
    why = kafka_unavailable()
    if why:
        raise KafkaUnavailableError(why)
    pom = POM_DIR / "pom.xml"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:16]
    cached = POM_DIR / "target" / f"classpath-{digest}.txt"
    if cached.is_file() and all(Path(jar).is_file() for jar in cached.read_text().split(os.pathsep)):
        return cached.read_text()
    cached.parent.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        ["mvn", "-q", "-B", "-Dstyle.color=never", "-f", str(pom), "dependency:build-classpath",
         f"-Dmdep.outputFile={cached}"],
        capture_output=True, text=True, timeout=900, check=False,
    )
    if out.returncode != 0 or not cached.is_file():
        raise KafkaUnavailableError(f"mvn could not resolve the Kafka broker ({pom}):\n{out.stdout[-3000:]}"
                                    f"{out.stderr[-2000:]}")
    return cached.read_text()


@dataclass(frozen=True)
class Listener:
    """An extra listener on every node: ``name`` (e.g. ``SECURE``), its security protocol, and how it is advertised.

    ``advertise``: node id -> the ``host:port`` clients are told (default: where the node binds it).
    ``config``: listener-prefixed broker settings without the prefix (``ssl.keystore.location`` ...).
    """

    name: str
    protocol: str = "PLAINTEXT"
    config: Mapping[str, str] = field(default_factory=dict)
    advertise: Mapping[int, str] = field(default_factory=dict)


class KafkaNode(_Service):
    """One KRaft node (broker and controller) of a :class:`KafkaCluster`; its data survives a restart."""

    name = "kafka"

    def __init__(self, cluster: KafkaCluster, node_id: int, workdir: Path) -> None:
        super().__init__(workdir=workdir, start_timeout=90.0, stop_grace=30.0)
        self.cluster, self.node_id = cluster, node_id
        self.controller_port = free_port()
        self.listener_ports = {listener.name: free_port() for listener in cluster.listeners}
        self.formatted = False

    @property
    def bootstrap(self) -> str:
        """This node's PLAINTEXT ``host:port``."""
        return f"127.0.0.1:{self.port}"

    def listener_address(self, name: str) -> str:
        """Where this node binds listener ``name``."""
        return f"127.0.0.1:{self.listener_ports[name]}"

    @property
    def properties_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "server.properties"

    def properties(self) -> dict[str, str]:
        assert self.workdir is not None
        cluster = self.cluster
        listeners = [f"PLAINTEXT://{self.bootstrap}", f"CONTROLLER://127.0.0.1:{self.controller_port}"]
        advertised = [f"PLAINTEXT://{self.bootstrap}"]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        props: dict[str, str] = {}
        for listener in cluster.listeners:
            listeners.append(f"{listener.name}://{self.listener_address(listener.name)}")
            advertised.append(f"{listener.name}://"
                              f"{listener.advertise.get(self.node_id, self.listener_address(listener.name))}")
            protocols.append(f"{listener.name}:{listener.protocol}")
            props.update({f"listener.name.{listener.name.lower()}.{k}": v for k, v in listener.config.items()})
        replicas = str(len(cluster.nodes))
        props.update({
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": cluster.voters,
            "controller.listener.names": "CONTROLLER",
            "listeners": ",".join(listeners),
            "advertised.listeners": ",".join(advertised),
            "listener.security.protocol.map": ",".join(protocols),
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.workdir / "data"),
            "num.partitions": "1",
            "default.replication.factor": replicas,
            "min.insync.replicas": str(cluster.min_insync),
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": str(cluster.min_insync),
            "transaction.state.log.num.partitions": "10",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "log.cleaner.backoff.ms": "1000",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "log.flush.interval.messages": str(2**62),  # the page cache and replication, as in production
        })
        props.update(cluster.config)
        return props

    def command(self) -> list[str]:
        log4j = POM_DIR / "log4j2.properties"
        return ["java", *_JVM_OPTS, f"-Dlog4j2.configurationFile={log4j}", "-cp", self.cluster.classpath,
                "kafka.Kafka", str(self.properties_path)]

    def environment(self) -> dict[str, str]:
        return child_environment(drop_prefixes=("KAFKA_", "JAVA_TOOL"))

    def format(self) -> None:
        """Write server.properties and format the node's storage (first start only)."""
        self.properties_path.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))
        if self.formatted:
            return
        scram = [arg for user in self.cluster.scram_users for arg in ("--add-scram", user)]
        out = subprocess.run(
            ["java", "-cp", self.cluster.classpath, "kafka.tools.StorageTool", "format", "-t",
             self.cluster.cluster_id, "-c", str(self.properties_path), *scram],
            capture_output=True, text=True, timeout=120, check=False, env=self.environment(),
        )
        if out.returncode != 0:
            raise ServiceStartError(f"kafka node {self.node_id}: StorageTool format failed:\n{out.stdout}{out.stderr}")
        self.formatted = True

    def spawn_and_format(self) -> None:
        """Format, then spawn the JVM without waiting for it to be ready (a quorum needs its peers)."""
        if self.workdir is None:
            raise AssertionError("node without a workdir")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.format()
        self._spawn()

    def probe(self, timeout: float) -> bool:
        """True once this node answers metadata and lists itself as a live broker."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        try:
            metadata = admin.list_topics(timeout=timeout)
        except Exception:  # noqa: BLE001 - any Kafka error just means "not ready yet"
            return False
        return self.node_id in metadata.brokers

    def wait_ready(self) -> Self:
        self._wait_ready()
        return self

    def start(self) -> Self:
        """(Re)start this node on its ports with its kept data and wait until it is a live broker."""
        if self._proc is None:
            self.spawn_and_format()
        return self.wait_ready()

    def kill(self) -> None:
        """SIGKILL the node (no controlled shutdown); :meth:`start` brings it back with its data."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._terminate()  # reaped already: only forgets the process

    def stop(self) -> None:
        """Controlled shutdown (SIGTERM, SIGKILL after the grace); the data stays for :meth:`start`."""
        self._terminate()

    def restart(self) -> Self:
        """A clean stop and start, as in a rolling restart."""
        self.stop()
        return self.start()


class KafkaCluster(_Managed):
    """``size`` KRaft nodes on loopback, in one temporary directory removed by :meth:`stop`.

    ``config`` adds broker settings to every node; ``listeners`` adds listeners; ``scram_users`` are
    ``StorageTool --add-scram`` arguments (``SCRAM-SHA-512=[name=alice,password=secret]``).
    """

    def __init__(self, size: int = 1, *, config: Mapping[str, str] | None = None,
                 listeners: Sequence[Listener] = (), scram_users: Sequence[str] = (),
                 workdir: Path | None = None) -> None:
        self.config = dict(config or {})
        self.listeners = list(listeners)
        self.scram_users = list(scram_users)
        self.min_insync = 2 if size >= 3 else 1
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="tagger-kafka-"))
        self.classpath = ""
        self.cluster_id = ""
        self.nodes: list[KafkaNode] = []
        self.nodes = [KafkaNode(self, i + 1, self.workdir / f"node-{i + 1}") for i in range(size)]

    @property
    def voters(self) -> str:
        return ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)

    @property
    def bootstrap(self) -> str:
        """Every node's PLAINTEXT address, comma-separated."""
        return ",".join(n.bootstrap for n in self.nodes)

    def listener_bootstrap(self, name: str) -> str:
        """Every node's address of listener ``name`` (as bound, not as advertised)."""
        return ",".join(n.listener_address(name) for n in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id - 1]

    def start(self) -> Self:
        """Resolve the jars, format every node, start them all and wait until each is a live broker."""
        self.classpath = kafka_classpath()
        if not self.cluster_id:
            self.cluster_id = _random_cluster_id()
        try:
            for node in self.nodes:
                node.spawn_and_format()
            for node in self.nodes:
                node.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGKILL every node (its data is thrown away: no controlled shutdown to wait for, and the last
        node's would wait for a quorum that is gone) and remove the cluster's directory. Idempotent."""
        for node in self.nodes:
            node.kill()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def leaders(self, topics: Sequence[str]) -> dict[int, int]:
        """How many partitions of ``topics`` each node leads now."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        metadata = admin.list_topics(timeout=10)
        counts = {n.node_id: 0 for n in self.nodes}
        for topic in topics:
            for part in metadata.topics[topic].partitions.values():
                if part.leader in counts:
                    counts[part.leader] += 1
        return counts

    def wait_in_sync(self, topics: Sequence[str], timeout: float = 120.0) -> None:
        """Wait until every partition of ``topics`` has all its replicas in sync (after a node came back)."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = time.monotonic() + timeout
        while True:
            metadata = admin.list_topics(timeout=10)
            lagging = [f"{t}[{p}]" for t in topics for p, part in metadata.topics[t].partitions.items()
                       if len(part.isrs) < len(part.replicas)]
            if not lagging:
                return
            if time.monotonic() > deadline:
                raise ServiceStartError(f"replicas not in sync after {timeout}s: {lagging[:10]}")
            time.sleep(0.5)


def _random_cluster_id() -> str:
    """A KRaft cluster id: base64url of 16 random bytes, as ``StorageTool random-uuid`` prints.

    Like Kafka's own ``Uuid.randomUuid`` it draws again when the id starts with "-": StorageTool's argument
    parser takes ``--cluster-id -Xy…`` for an option and fails (about 1 cluster start in 64).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
