"""Batch envelopes through the real broker: exact counts, with envelopes re-sent by the producer."""

from __future__ import annotations

import random

import orjson
import pytest

from stream.kafka.kafka_admin import expected_partition

from .conftest import Namespace, wait_for
from .test_pipeline import _expected, _history

pytestmark = pytest.mark.integration


def test_batch_envelopes_are_counted_exactly(namespace: Namespace) -> None:
    ns = namespace
    history = _history(seed=21, customers=80, events=3000)
    groups: dict[tuple[str, int], list[bytes]] = {}
    for kind, event in history:
        partition = expected_partition(event["customer_id"].encode(), ns.settings.partitions)
        groups.setdefault((kind, partition), []).append(orjson.dumps(event))
    envelopes = []
    for (kind, partition), values in groups.items():
        for i in range(0, len(values), 50):
            body = b'{"batch_id":"%s-%d-%d","events":[' % (kind.encode(), partition, i) + b",".join(values[i:i + 50])
            envelopes.append((kind, partition, body + b"]}"))
    envelopes += random.Random(2).sample(envelopes, 10)  # producer retries: whole envelopes again
    for kind, partition, value in envelopes:
        # keyed by nothing in particular: a batch is routed by its events' customers
        ns.producer.produce(ns.topic(kind), key=b"batch", value=value, partition=partition)
    ns.flush()
    ns.worker()
    expected = _expected(history)
    fields = ["spend_30d", "spend_90d", "spend_365d", "orders_30d", "orders_90d", "orders_365d", "orders_total",
              "logins_7d", "logins_30d"]

    def mismatches() -> list[str]:
        bad = []
        for cid, exp in expected.items():
            got = (ns.view(cid) or {}).get("aggregates", {})
            bad += [f"{cid}.{f}: got {got.get(f)} want {exp.get(f, 0.0)}" for f in fields
                    if abs(float(got.get(f, -1)) - exp.get(f, 0.0)) > 1e-6]
        return bad

    def settled() -> bool:
        ns.reevaluate()
        return not mismatches()

    try:
        wait_for(settled, 120, "aggregates to equal the batch recomputation", interval=1)
    finally:
        assert mismatches() == [], "\n".join(mismatches()[:20])
