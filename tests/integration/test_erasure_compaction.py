"""Erasure reaches the changelog: on real Kafka, once the customers table's changelog is compacted, no record of
an erased customer's state is left in it (read whole, every partition from the beginning); only its tombstone,
and once ``delete.retention.ms`` has passed not even that. Tansu never compacts, so this needs Apache Kafka.

Kafka compacts only closed segments, and rolls a partition's active segment only when a record is appended
after ``segment.ms``: the test keeps a customer of the erased one's partition busy so that the tombstone's
segment closes and the cleaner (every second, stream.devtools.kafka_local) gets to it, as any busy partition would.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from stream.devtools.kafka_local import KafkaCluster
from stream.kafka.kafka_admin import TopicConfigError, consume_all, expected_partition, partition_count
from stream.kafka.topics import changelog_topic_name, ensure_all_topics

from .conftest import PARTITIONS, Namespace, Worker, require_kafka, wait_for

pytestmark = pytest.mark.integration

GONE, KEEP = "c-erased", "c-kept"
#: the compaction settings of the test (on the live topic, through the admin client): a segment closes at the
#: first write 200 ms after it opened, any dirty share is worth a pass, a record may go at once, and a
#: tombstone stays 15 s. (That must be set before the tombstone is first compacted: the pass that first
#: keeps a tombstone writes "delete after now + delete.retention.ms" into its batch, and a later change of
#: the setting does not move that; lowered from an hour to 0 later, the tombstone stayed for the hour.)
TOMBSTONE_MS = 15_000
COMPACTION = {"segment.ms": "200", "min.cleanable.dirty.ratio": "0.01", "min.compaction.lag.ms": "0",
              "delete.retention.ms": str(TOMBSTONE_MS)}


def neighbour(cid: str) -> str:
    """Another customer id on ``cid``'s partition (changelog partition = input partition = murmur2 of the id)."""
    want = expected_partition(cid.encode(), PARTITIONS)
    return next(c for i in itertools.count() if expected_partition((c := f"c-busy-{i}").encode(), PARTITIONS)
                == want)


def records(ns: Namespace) -> list[dict[str, Any]]:
    """Every record of the changelog topic, every partition read from the beginning to its end (raw consumer)."""
    return consume_all(ns.services.bootstrap, changelog_topic_name(ns.settings), timeout=30)


def of(rows: list[dict[str, Any]], cid: str) -> list[Any]:
    """``cid``'s values in ``rows``, oldest first (None: a tombstone)."""
    return [r["value"] for r in sorted(rows, key=lambda r: (r["partition"], r["offset"])) if r["key"] == cid]


def topic_configs(admin: AdminClient, topic: str) -> dict[str, str]:
    [future] = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)]).values()
    return {name: entry.value for name, entry in future.result(timeout=30).items()}


def set_configs(admin: AdminClient, topic: str, configs: dict[str, str]) -> None:
    entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in configs.items()]
    [future] = admin.incremental_alter_configs([ConfigResource(ConfigResource.Type.TOPIC, topic,
                                                               incremental_configs=entries)]).values()
    future.result(timeout=30)


def order(cid: str, n: int) -> dict[str, Any]:
    return {"event_id": f"{cid}-o{n}", "customer_id": cid, "ts": f"2026-03-{1 + n % 28:02d}T10:00:00Z",
            "order_id": f"{cid}-o{n}", "amount": "120.50"}


def busy(ns: Namespace, cid: str) -> Iterator[None]:
    """Each step: one more order of ``cid`` (a changelog write on its partition at the next commit)."""
    for n in itertools.count(1000):
        ns.produce("order", order(cid, n))
        yield


def until_compacted(ns: Namespace, steps: Iterator[None], done: Any, timeout: float, what: str) -> list[Any]:
    """Drive writes to the partition and read the whole changelog until ``done(rows)``; return the rows."""
    def check() -> list[Any] | None:
        next(steps)
        rows = records(ns)
        return rows if done(rows) else None
    result: list[Any] = wait_for(check, timeout, what, interval=0.5)
    return result


@pytest.fixture
def kafka_namespace(namespace: Namespace) -> Namespace:
    require_kafka()
    if not isinstance(namespace.services.broker, KafkaCluster):
        pytest.skip("needs real Apache Kafka (TAGGER_TEST_BROKER=tansu: Tansu never compacts)")
    return namespace


def test_erased_customer_leaves_the_compacted_changelog(kafka_namespace: Namespace) -> None:
    ns = kafka_namespace
    topic = changelog_topic_name(ns.settings)
    admin = AdminClient({"bootstrap.servers": ns.services.bootstrap})
    worker: Worker = ns.worker(commit_interval=0.5)
    wait_for(lambda: partition_count(ns.services.bootstrap, topic) == PARTITIONS, 60, "the worker's changelog")
    # Faust created the changelog (stream/kafka/topics.py does not) and made it compacted
    assert topic_configs(admin, topic)["cleanup.policy"] == "compact"

    # several state records of the customer, in several commits (nothing compacted yet: one 7-day segment)
    for n in range(3):
        for cid in (GONE, KEEP):
            ns.produce("order", order(cid, n))
        wait_for(lambda: len([v for v in of(records(ns), GONE) if v is not None]) > n, 30,  # noqa: B023 - now
                 f"state record {n + 1} of {GONE}")
    assert worker.get(f"/customers/{GONE}")[0] == 200
    set_configs(admin, topic, COMPACTION)
    wait_for(lambda: {k: topic_configs(admin, topic)[k] for k in COMPACTION} == COMPACTION, 30,
             "the compaction settings to apply")
    start = time.monotonic()

    ns.produce("privacy", {"request_id": "dsr-c1", "customer_id": GONE, "ts": "2026-03-20T00:00:00Z",
                           "type": "erase"})
    wait_for(lambda: of(records(ns), GONE)[-1:] == [None], 30, "the erasure's tombstone")
    assert worker.get(f"/customers/{GONE}")[0] == 404

    # phase 1: compaction removes every earlier record; at most the tombstone stays (for delete.retention.ms)
    steps = busy(ns, neighbour(GONE))
    rows = until_compacted(ns, steps, lambda rs: of(rs, GONE) in ([None], []), 120,
                           f"compaction to leave nothing of {GONE} but its tombstone")
    compacted_after, left = time.monotonic() - start, of(rows, GONE)
    assert len({r["partition"] for r in rows}) >= 2  # the whole topic was read, not one partition
    kept = of(rows, KEEP)
    assert len(kept) >= 1 and kept[-1] is not None and kept[-1] == of(records(ns), KEEP)[-1]
    assert worker.get(f"/customers/{KEEP}")[0] == 200

    # phase 2: once delete.retention.ms has passed, a later pass removes the tombstone too
    until_compacted(ns, steps, lambda rs: not of(rs, GONE), 60 + TOMBSTONE_MS / 1000,
                    f"compaction to remove {GONE}'s tombstone")
    print(f"\n{left} left of {GONE} {compacted_after:.1f} s after the request; "  # noqa: T201 - shown with -s
          f"nothing {time.monotonic() - start:.1f} s after")

    # a worker that recovers the table from the compacted changelog (memory store: from the beginning)
    worker.stop()
    ns.redis.delete(f"{ns.settings.redis_prefix}:c:{KEEP}")  # rewritten once the new worker has recovered
    worker = ns.worker(commit_interval=0.5)
    wait_for(lambda: ns.view(KEEP), 60, "the new worker to recover the table and rebuild Redis")
    assert worker.get(f"/customers/{GONE}")[0] == 404


def test_a_worker_refuses_to_start_on_a_compacted_topic_that_is_not(kafka_namespace: Namespace) -> None:
    """A profiles topic (or changelog) created by hand with ``cleanup.policy=delete`` would be deleted by age:
    the worker names the topic and the command that fixes it, and exits 1 rather than start on it."""
    ns = kafka_namespace
    ensure_all_topics(ns.settings)
    admin = AdminClient({"bootstrap.servers": ns.services.bootstrap})
    topic = ns.settings.profiles_topic
    set_configs(admin, topic, {"cleanup.policy": "delete"})
    wait_for(lambda: topic_configs(admin, topic)["cleanup.policy"] == "delete", 30, "the change to be described")
    with pytest.raises(TopicConfigError, match=f"'{topic}' has cleanup.policy=delete"):
        ensure_all_topics(ns.settings)
    out = subprocess.run([sys.executable, "-m", "agents", "worker"], env=ns.env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 1, out.stderr[-2000:]
    assert f"--entity-name {topic} --add-config cleanup.policy=compact" in out.stderr, out.stderr[-2000:]
    set_configs(admin, topic, {"cleanup.policy": "compact"})
    wait_for(lambda: topic_configs(admin, topic)["cleanup.policy"] == "compact", 30, "the change to be described")
    ensure_all_topics(ns.settings)  # compacted again: accepted
