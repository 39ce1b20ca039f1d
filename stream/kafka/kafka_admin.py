"""Small Kafka admin and client helpers on confluent-kafka (works with Tansu and Kafka).

Partitioning contract: every input topic is keyed by ``customer_id`` and all of
them must have the same partition count (co-partitioning), and producers must
use Kafka's murmur2 partitioner, the Java client's default (librdkafka:
``partitioner=murmur2_random``; librdkafka's own default, ``consistent_random``,
is CRC32 and puts keys elsewhere). An event that lands on another partition than
``expected_partition`` says is re-keyed by the tagger, which costs a round trip.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import orjson
from aiokafka.partitioner import murmur2
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ClusterMetadata, ConfigResource, NewTopic

from stream.exceptions import TaggerError

Record = dict[str, Any]
#: bootstrap servers, or a librdkafka configuration with ``bootstrap.servers`` and security keys
#: (stream.security.librdkafka_config); only the servers ever appear in a message
Bootstrap = str | Mapping[str, Any]


class KafkaAdminError(TaggerError, RuntimeError):
    """A Kafka admin operation failed; the message names the topic and the cause.

    Operators: the command exits 1 with the message before consuming anything; fix the broker
    side it names (topic, partitions, credentials, certificate) and start again.
    """


class PartitionMismatchError(KafkaAdminError):
    """An existing topic has another partition count than required.

    Input topics must be co-partitioned. Recreate the topic with the count named
    in the message (this deletes its data), or configure that count everywhere.
    """


class TopicConfigError(KafkaAdminError):
    """A topic the tagger keeps the latest record per key in is not compacted (``cleanup.policy=delete``).

    The broker would delete the customers table's changelog by age: after ``retention.ms`` (7 days by default)
    a recovery would lose every customer not written since, and an erased customer's earlier states would stay
    until then rather than go at the next compaction. Alter the topic as the message says (its data stays).
    """


class KafkaAuthenticationError(KafkaAdminError):
    """The brokers refused the SASL credentials (checked at start-up, before anything else connects).

    Check TAGGER_KAFKA_SASL_USERNAME, TAGGER_KAFKA_SASL_PASSWORD and TAGGER_KAFKA_SASL_MECHANISM: a SCRAM
    user's credentials exist per mechanism (``kafka-configs --alter --entity-type users --entity-name NAME
    --add-config 'SCRAM-SHA-512=[password=...]'``).
    """


class KafkaTLSError(KafkaAdminError):
    """The TLS handshake with a broker failed, most often because its certificate could not be verified.

    Give the CA that signed the brokers' certificates in TAGGER_KAFKA_SSL_CAFILE (PEM); the certificate must
    also name the host in the bootstrap address (or set TAGGER_KAFKA_SSL_CHECK_HOSTNAME=false, not advised).
    """


def client_config(bootstrap: Bootstrap) -> dict[str, Any]:
    """A librdkafka configuration for ``bootstrap`` (servers, or a full configuration)."""
    return {"bootstrap.servers": bootstrap} if isinstance(bootstrap, str) else dict(bootstrap)


def servers(bootstrap: Bootstrap) -> str:
    """The bootstrap servers alone, for messages (never the security keys)."""
    return bootstrap if isinstance(bootstrap, str) else str(bootstrap.get("bootstrap.servers", ""))


def _admin(bootstrap: Bootstrap) -> AdminClient:
    return AdminClient(client_config(bootstrap))


def _counts_now(admin: AdminClient, bootstrap: Bootstrap, timeout: float) -> dict[str, int]:
    try:
        return _counts(admin.list_topics(timeout=max(timeout, 0.1)))
    except KafkaException as exc:
        raise KafkaAdminError(f"no metadata from {servers(bootstrap)!r}: {exc.args[0]}") from exc


def connection_error(bootstrap: Bootstrap, errors: Sequence[KafkaError]) -> KafkaAdminError | None:
    """The start-up error that ``errors`` (librdkafka's error callbacks) amount to, None while none is fatal.

    A SASL authentication failure or a TLS handshake failure is a configuration error that no retry mends;
    transport errors (a broker not up yet) are not. The message names the servers, mechanism and user and
    the settings to check, never a secret (librdkafka's own text names none either).
    """
    config = client_config(bootstrap)
    for error in errors:
        reason = error.str()
        if error.code() == KafkaError._AUTHENTICATION:
            who = f"SASL {config.get('sasl.mechanism', '?')} user {config.get('sasl.username')!r}"
            return KafkaAuthenticationError(
                f"Kafka authentication failed at {servers(bootstrap)}: the broker refused {who} "
                f"(check TAGGER_KAFKA_SASL_USERNAME, TAGGER_KAFKA_SASL_PASSWORD, TAGGER_KAFKA_SASL_MECHANISM): "
                f"{reason}")
        if error.code() == KafkaError._SSL:
            if "certificate" in reason:
                cafile = config.get("ssl.ca.location", "the system's CA certificates")
                return KafkaTLSError(
                    f"Kafka TLS certificate verification failed at {servers(bootstrap)}: the broker's "
                    f"certificate is not signed by a CA in {cafile} or does not name the host "
                    f"(check TAGGER_KAFKA_SSL_CAFILE, TAGGER_KAFKA_SSL_CHECK_HOSTNAME): {reason}")
            return KafkaTLSError(f"Kafka TLS handshake failed at {servers(bootstrap)} (is "
                                 f"TAGGER_KAFKA_SECURITY_PROTOCOL right for this listener?): {reason}")
    return None


def check_connection(bootstrap: Bootstrap, *, timeout: float = 30.0) -> None:
    """Start-up preflight: metadata from the brokers with the client's own security settings.

    Raises KafkaAuthenticationError or KafkaTLSError as soon as librdkafka reports one (about a second),
    and KafkaAdminError when no broker answers within ``timeout`` seconds. Without it a worker with a wrong
    password failed after 30 s with a traceback saying only "Broker transport failure", and aiokafka
    (``tagger tail``) with "Unable to bootstrap"; librdkafka's retry lines stay off stderr here.
    """
    errors: list[KafkaError] = []
    admin = AdminClient({**client_config(bootstrap), "error_cb": errors.append, "log_level": 0})
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=max(min(1.0, deadline - time.monotonic()), 0.1))
            return
        except KafkaException as exc:
            last = exc.args[0]
        admin.poll(0)  # serves the error callbacks
        if (error := connection_error(bootstrap, errors)) is not None:
            raise error
        if time.monotonic() >= deadline:
            raise KafkaAdminError(f"no Kafka broker answered at {servers(bootstrap)} within {timeout:g}s: {last}")


def _counts(metadata: ClusterMetadata) -> dict[str, int]:
    """Partition count per topic that the broker reports without error."""
    return {
        name: len(topic.partitions)
        for name, topic in metadata.topics.items()
        if topic.error is None and topic.partitions
    }


def partition_count(bootstrap: Bootstrap, topic: str, *, timeout: float = 10.0) -> int | None:
    """The topic's partition count, or None if the topic does not exist.

    Raises KafkaAdminError when the broker gives no metadata within ``timeout``.
    """
    return _counts_now(_admin(bootstrap), bootstrap, timeout).get(topic)


def _check_counts(existing: Mapping[str, int], wanted: Mapping[str, int]) -> None:
    wrong = {t: (existing[t], n) for t, n in wanted.items() if existing.get(t, n) != n}
    if wrong:
        detail = "; ".join(f"{t!r} has {have} partitions, {want} required"
                           for t, (have, want) in wrong.items())
        raise PartitionMismatchError(f"partition count mismatch (co-partitioning): {detail}")


def ensure_topics(
    bootstrap: Bootstrap,
    topics: Mapping[str, int],
    *,
    compacted: Collection[str] = (),
    check_compacted: bool = True,
    replication: Mapping[str, int] | None = None,
    timeout: float = 30,
) -> None:
    """Create missing topics with the given partition counts and wait until they are visible.

    Topics in ``compacted`` get ``cleanup.policy=compact`` (a name there need not be in ``topics``);
    ``replication`` gives a topic its replication factor (the others get the broker's default). Raises
    PartitionMismatchError (before creating anything) when an existing topic has another partition count,
    TopicConfigError when an existing one of ``compacted`` is not compacted (unless ``check_compacted`` is
    false: Tansu, which never compacts), and KafkaAdminError when the broker is unreachable, a creation
    fails or the topics do not show up within ``timeout`` seconds.
    """
    if bad := [t for t, n in topics.items() if n < 1]:
        raise ValueError(f"partition counts must be >= 1: {bad}")
    deadline = time.monotonic() + timeout
    admin = _admin(bootstrap)
    existing = _counts_now(admin, bootstrap, timeout)
    _check_counts(existing, topics)
    if check_compacted:
        _check_compacted(admin, [t for t in compacted if t in existing], timeout)
    missing = [
        NewTopic(t, num_partitions=n, replication_factor=(replication or {}).get(t, -1),
                 config={"cleanup.policy": "compact"} if t in compacted else {})
        for t, n in topics.items() if t not in existing
    ]
    if missing:
        _create(admin, missing, max(deadline - time.monotonic(), 0.1))
    _wait_visible(admin, bootstrap, topics, deadline)


def _check_compacted(admin: AdminClient, names: Sequence[str], timeout: float) -> None:
    """Raise TopicConfigError naming every topic of ``names`` whose ``cleanup.policy`` lacks ``compact``."""
    if not names:
        return
    wrong: dict[str, str] = {}
    futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, t) for t in names],
                                     request_timeout=timeout)
    for resource, future in futures.items():
        try:
            policy = future.result(timeout=timeout).get("cleanup.policy")
        except KafkaException as exc:
            raise KafkaAdminError(f"describing topic {resource.name!r} failed: {exc.args[0]}") from exc
        if policy is not None and policy.value is not None and "compact" not in policy.value.split(","):
            wrong[resource.name] = policy.value
    if wrong:
        detail = "; ".join(f"{t!r} has cleanup.policy={p}" for t, p in sorted(wrong.items()))
        fix = " && ".join(f"kafka-configs.sh --bootstrap-server HOST:PORT --alter --entity-type topics "
                          f"--entity-name {t} --add-config cleanup.policy=compact" for t in sorted(wrong))
        raise TopicConfigError(f"topics that keep the latest record per customer must be compacted: {detail}. "
                               f"Fix (keeps the data): {fix}")


def _create(admin: AdminClient, topics: list[NewTopic], timeout: float) -> None:
    futures = admin.create_topics(topics, operation_timeout=timeout, request_timeout=timeout)
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:  # a concurrent creator won
                raise KafkaAdminError(f"creating topic {name!r} failed: {error}") from exc


def _wait_visible(
    admin: AdminClient, bootstrap: Bootstrap, topics: Mapping[str, int], deadline: float
) -> None:
    while True:
        counts = _counts_now(admin, bootstrap, deadline - time.monotonic())
        _check_counts({t: c for t, c in counts.items() if t in topics}, topics)
        absent = sorted(set(topics) - set(counts))
        if not absent:
            return
        if time.monotonic() >= deadline:
            raise KafkaAdminError(f"topics not visible in metadata in time: {absent}")
        time.sleep(0.05)


def expected_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives ``key``."""
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    return (murmur2(key) & 0x7FFFFFFF) % partitions


PRODUCER_DEFAULTS: dict[str, Any] = {
    "partitioner": "murmur2_random",  # Java-compatible; see the module docstring
    "linger.ms": 5,
    "batch.size": 1_000_000,
    "message.max.bytes": 16 << 20,
    "compression.type": "none",
}


def make_producer(bootstrap: Bootstrap, **overrides: Any) -> Producer:
    """A Producer with murmur2 partitioning and batching defaults.

    Overrides are config keys, verbatim: librdkafka names such as
    ``**{"linger.ms": 0}`` or the Python client's ``on_delivery=callback``.
    """
    return Producer({**PRODUCER_DEFAULTS, **client_config(bootstrap), **overrides})


def decode_value(raw: bytes | None) -> Any:
    """JSON if it parses, else the text (invalid UTF-8 replaced); None stays None."""
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", errors="replace")


def _record(msg: Message) -> Record:
    key = msg.key()
    return {
        "key": key.decode("utf-8", errors="replace") if key is not None else None,
        "value": decode_value(msg.value()),
        "partition": msg.partition(),
        "offset": msg.offset(),
    }


def _wait_partitions(bootstrap: Bootstrap, topic: str, deadline: float) -> int | None:
    while (count := partition_count(bootstrap, topic, timeout=5.0)) is None:
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)
    return count


def consume_all(
    bootstrap: Bootstrap,
    topic: str,
    *,
    timeout: float,
    until: Callable[[list[Record]], bool] | None = None,
) -> list[Record]:
    """Read ``topic`` from the beginning; records are ``{key, value, partition, offset}``.

    Partitions are assigned directly (no group join, which Tansu makes slow).
    With ``until``, reads until ``until(records)`` is true or ``timeout`` passes;
    without it, until every partition is at its end (or the time-out). Returns
    what was read either way; a missing topic is waited for up to the time-out.
    """
    deadline = time.monotonic() + timeout
    count = _wait_partitions(bootstrap, topic, deadline)
    if count is None:
        return []
    consumer = Consumer({
        **client_config(bootstrap), "group.id": f"consume-all-{uuid.uuid4().hex}",
        "enable.auto.commit": False, "enable.partition.eof": until is None,
        "fetch.wait.max.ms": 50,  # a short long-poll: this reads to the end, then stops
    })
    records: list[Record] = []
    at_end: set[int] = set()
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(count)])
        while (left := deadline - time.monotonic()) > 0:
            for msg in consumer.consume(1000, timeout=min(0.2, left)):
                error, partition = msg.error(), msg.partition() or 0
                if error is None:
                    records.append(_record(msg))
                    at_end.discard(partition)
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(partition)
                else:
                    raise KafkaAdminError(f"consuming {topic!r} failed: {error}")
            if until(records) if until is not None else len(at_end) == count:
                break
    finally:
        consumer.close()
    return records
