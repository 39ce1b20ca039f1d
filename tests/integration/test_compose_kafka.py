"""docker-compose.yml's Kafka exercised as far as this machine allows (no Docker engine here).

A broker of the compose image's version (Maven Central, stream.devtools.kafka_local) starts with the compose kafka
service's broker settings (its ``KAFKA_*`` environment, mapped to properties as the apache/kafka image does);
compose's ``kafka-init`` script, taken from the YAML, runs against it with ``/opt/kafka/bin/kafka-topics.sh``
replaced by the same tool class (``org.apache.kafka.tools.TopicCommand``) on the Maven classpath; the topics
it made must be those stream/kafka/topics.py expects, and a worker configured as compose's must start on them.
"""

from __future__ import annotations

import os
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka.admin import AdminClient, ConfigResource

from stream.devtools.embedded import ServiceGroup, free_port
from stream.devtools.kafka_local import POM_DIR, KafkaCluster, kafka_classpath, kafka_version
from stream.kafka.topics import all_topic_names, changelog_topic_name, compacted_topic_names
from stream.settings import Settings

from .conftest import KAFKA_TEST_CONFIG, Worker, require_kafka, wait_for

pytestmark = pytest.mark.integration

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
#: the image's environment variables that are not broker settings (kafka-propertiesSpec.json "excludes")
NOT_SETTINGS = {"KAFKA_VERSION", "KAFKA_HEAP_OPTS", "KAFKA_LOG4J_OPTS", "KAFKA_OPTS", "KAFKA_JMX_OPTS",
                "KAFKA_JVM_PERFORMANCE_OPTS", "KAFKA_GC_LOG_OPTS", "KAFKA_LOG4J_ROOT_LOGLEVEL",
                "KAFKA_LOG4J_LOGGERS", "KAFKA_TOOLS_LOG4J_LOGLEVEL"}
#: where a node is and who it is: stream.devtools.kafka_local sets these itself (free loopback ports, a temporary dir)
PLACEMENT = {"node.id", "process.roles", "listeners", "advertised.listeners", "controller.listener.names",
             "listener.security.protocol.map", "inter.broker.listener.name", "controller.quorum.voters",
             "log.dirs"}


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def property_name(env: str) -> str:
    """The apache/kafka image's mapping (docker/resources/utility ConvertKey): after ``KAFKA_``, ``_`` is ``.``,
    ``__`` is ``_``, ``___`` is ``-``, lower-cased."""
    dotted = re.sub(r"[^_]_[^_]", lambda m: m.group(0).replace("_", "."), env.removeprefix("KAFKA_"))
    return dotted.replace("___", "-").replace("__", "_").lower()


def broker_properties(service: dict[str, Any]) -> dict[str, str]:
    """The broker settings the compose kafka service's environment gives the image."""
    return {property_name(k): str(v) for k, v in service["environment"].items()
            if k.startswith("KAFKA_") and k not in NOT_SETTINGS}


def behaviour(props: dict[str, str]) -> dict[str, str]:
    """The settings that change what the broker does, not where it runs."""
    return {k: v for k, v in props.items() if k not in PLACEMENT}


@pytest.fixture(scope="module")
def compose_kafka() -> Iterator[ServiceGroup]:
    """Kafka with the compose broker's settings (one node, as compose), and a Redis for the worker."""
    require_kafka()
    config = behaviour(broker_properties(compose()["services"]["kafka"]))
    with ServiceGroup(broker=KafkaCluster(1, config=config)) as group:
        yield group


def test_compose_runs_the_pinned_kafka_with_the_tests_broker_settings() -> None:
    services = compose()["services"]
    assert services["kafka"]["image"] == services["kafka-init"]["image"] == f"apache/kafka:{kafka_version()}"
    props = broker_properties(services["kafka"])
    assert property_name("KAFKA_MESSAGE_MAX_BYTES") == "message.max.bytes"  # the mapping, on a known pair
    assert {k: props.get(k) for k in KAFKA_TEST_CONFIG} == KAFKA_TEST_CONFIG  # compose and the tests agree
    assert props["auto.create.topics.enable"] == "false"  # as stream.devtools.kafka_local: topics come from kafka-init


def test_the_broker_takes_every_compose_setting(compose_kafka: ServiceGroup) -> None:
    """Each setting's name is one Kafka knows (a misspelt or removed one is ignored by the broker, so only
    the broker's own report shows it) and has compose's value."""
    admin = AdminClient({"bootstrap.servers": compose_kafka.bootstrap})
    [future] = admin.describe_configs([ConfigResource(ConfigResource.Type.BROKER, "1")]).values()
    reported = {name: entry.value for name, entry in future.result(timeout=30).items()}
    props = broker_properties(compose()["services"]["kafka"])
    assert sorted(set(props) - set(reported)) == []
    wanted = behaviour(props)
    assert {k: reported[k] for k in wanted} == wanted


def run_kafka_init(bootstrap: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """kafka-init's own script, with kafka-topics.sh replaced by TopicCommand on the Maven classpath."""
    init = compose()["services"]["kafka-init"]
    [script] = init["command"]
    script = script.replace("$$", "$")  # compose's escape for a literal $
    assert "/opt/kafka/bin/kafka-topics.sh" in script
    wrapper = tmp_path / "kafka-topics.sh"
    wrapper.write_text('#!/bin/sh\nexec java -Xmx256m -Dlog4j2.configurationFile="$LOG4J" -cp "$CLASSPATH" '
                       'org.apache.kafka.tools.TopicCommand "$@"\n')
    wrapper.chmod(0o755)
    env = {**{k: str(v) for k, v in init["environment"].items()}, "BOOTSTRAP": bootstrap,
           "PATH": os.environ["PATH"], "CLASSPATH": kafka_classpath(), "LOG4J": str(POM_DIR / "log4j2.properties")}
    return subprocess.run(["bash", "-c", script.replace("/opt/kafka/bin/kafka-topics.sh", str(wrapper))],
                          env=env, capture_output=True, text=True, timeout=300, check=False)


def worker_settings() -> tuple[dict[str, str], Settings]:
    """The compose workers' environment (they all agree: tests/unit/test_deploy_files.py) and its settings."""
    env = {k: str(v) for k, v in compose()["services"]["tagger-1"]["environment"].items()}
    return env, Settings(app_id=env["TAGGER_APP_ID"], partitions=int(env["TAGGER_PARTITIONS"]))  # type: ignore[call-arg]


def describe(bootstrap: str, topics: list[str]) -> dict[str, tuple[int, str]]:
    """Partition count and cleanup.policy of each topic that exists."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = admin.list_topics(timeout=30).topics
    present = [t for t in topics if t in metadata and metadata[t].error is None]
    futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, t) for t in present])
    return {res.name: (len(metadata[res.name].partitions), fut.result(timeout=30)["cleanup.policy"].value)
            for res, fut in futures.items()}


def test_kafka_init_makes_the_topics_a_worker_accepts(compose_kafka: ServiceGroup, tmp_path: Path) -> None:
    env, settings = worker_settings()
    init_env = compose()["services"]["kafka-init"]["environment"]
    assert (str(init_env["APP_ID"]), str(init_env["PARTITIONS"])) == (settings.app_id, str(settings.partitions))
    for attempt in (1, 2):  # idempotent: a second run (compose restarts it) changes nothing and succeeds
        out = run_kafka_init(compose_kafka.bootstrap, tmp_path)
        assert out.returncode == 0 and "kafka-init: topics ready" in out.stdout, (attempt, out.stdout, out.stderr)

    wanted = [*all_topic_names(settings), changelog_topic_name(settings)]
    expected = {t: (settings.partitions, "compact" if t in compacted_topic_names(settings) else "delete")
                for t in wanted}
    assert describe(compose_kafka.bootstrap, wanted) == expected

    # a worker configured as compose's (its own web port, data directory and the test's Redis) starts on them
    port = free_port()
    worker_env = {**os.environ, **env, "KAFKA_BOOTSTRAP_SERVERS": compose_kafka.bootstrap,
                  "REDIS_URL": compose_kafka.redis_url, "TAGGER_WEB_HOST": "127.0.0.1", "TAGGER_WEB_BIND": "127.0.0.1",
                  "TAGGER_WEB_PORT": str(port), "TAGGER_DATADIR": str(tmp_path / "data"), "TAGGER_API_TOKENS": ""}
    worker = Worker(worker_env, tmp_path / "worker.log", port).start()
    try:
        wait_for(lambda: ready(port), 120, "the worker's /readyz on compose's topics")
    finally:
        worker.stop()
    assert describe(compose_kafka.bootstrap, wanted) == expected  # the worker changed none of them


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
