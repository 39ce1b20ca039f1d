"""The client side of a re-evaluation: ``tagger reevaluate`` and the benchmark's phase 4.

It sends a command to every partition of the commands topic (or to one customer's
partition) and waits until every partition acknowledged it in Redis; the workers'
side is in :mod:`agents.engine.runtime`.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import click
import orjson

from stream.settings import Settings


async def request_reevaluation(settings: Settings, timeout: float, customer: str | None = None) -> dict[str, float]:
    """Re-evaluate every customer (phase ``rank``, then ``evaluate``), or only ``customer`` (``evaluate``).

    Returns the seconds each phase took; a phase not acknowledged by every partition within
    ``timeout`` seconds exits 1 (a :class:`click.ClickException` naming the partitions done).
    """
    from stream.kafka.kafka_admin import expected_partition, make_producer
    from stream.security import librdkafka_config, redis_client
    from stream.view.redis_view import RedisView

    client = redis_client(settings)
    view = RedisView(client, settings.redis_prefix)
    producer = make_producer(librdkafka_config(settings))
    request_id = uuid.uuid4().hex
    timings: dict[str, float] = {}
    try:
        # one customer: only its partition, only phase 2 (its own rank entry is rewritten with its view)
        phases: tuple[str, ...] = ("rank", "evaluate")
        partitions = list(range(settings.partitions))
        if customer is not None:
            phases, partitions = ("evaluate",), [expected_partition(customer.encode(), settings.partitions)]
        for phase in phases:
            started = time.monotonic()
            body: dict[str, str] = {"cmd": phase, "request_id": request_id}
            if customer is not None:
                body["customer_id"] = customer
            value = orjson.dumps(body)
            for p in partitions:
                producer.produce(settings.commands_topic, key=b"reevaluate", value=value, partition=p)
            producer.flush(10)
            deadline = started + timeout
            while len(await view.acked(request_id, phase)) < len(partitions):
                if time.monotonic() > deadline:
                    done = sorted(await view.acked(request_id, phase))
                    raise click.ClickException(
                        f"phase {phase!r} timed out after {timeout}s; partitions done: {done} "
                        f"of {partitions}. Are workers running and Redis reachable?")
                await asyncio.sleep(0.1)
            timings[phase] = time.monotonic() - started
    finally:
        await client.aclose()
    return timings
