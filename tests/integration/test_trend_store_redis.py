"""The trend store against a real redis-server: one point per boundary among racing writers, the span, from/to."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from stream.devtools.embedded import RedisServer
from stream.view.trend_store import MAX_TAGS, TrendStore

pytestmark = pytest.mark.integration
HOUR = 3_600_000
T0 = 1_764_547_200_000  # 2025-12-01T00:00:00Z, a multiple of the hour


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(workdir=tmp_path) as running:
        yield running


@pytest.fixture
def sync(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()


async def close(*stores: TrendStore) -> None:
    for store in stores:
        await store.client.aclose()


def counts(sync: redis.Redis, tiers: dict[str, int], churn: dict[str, int], tags: dict[str, int]) -> None:
    """What the view write script keeps: the counts hash and the tag indexes."""
    sync.delete("t:n", *(f"t:tag:{t}" for t in tags))
    sync.hset("t:n", mapping={**{f"tier:{k}": v for k, v in tiers.items()},
                              **{f"churn:{k}": v for k, v in churn.items()}})
    for tag, n in tags.items():
        if n:
            sync.zadd(f"t:tag:{tag}", {f"c{i}": 0 for i in range(n)})


def test_racing_writers_record_each_boundary_once_with_the_counts_of_the_moment(server: RedisServer,
                                                                               sync: redis.Redis) -> None:
    counts(sync, {"A": 2, "B": 5, "D": 40}, {"none": 30, "high": 3}, {"big_spender": 2, "vip": 0})

    async def run() -> None:
        stores = [TrendStore(aioredis.Redis.from_url(server.url), "t", 90 * 24 * HOUR) for _ in range(4)]
        for k in range(5):  # four workers race for each boundary, each more than once
            results = await asyncio.gather(*(s.record(T0 + k * HOUR, ["big_spender", "vip", "big_spender"])
                                             for s in stores for _ in range(3)))
            assert sum(results) == 1, (k, results)
        assert not await stores[0].record(T0 + 2 * HOUR, ["vip"])  # behind the newest point: never added
        points = await stores[1].points()
        assert [p["at"] for p in points] == [f"2025-12-01T0{k}:00:00.000Z" for k in range(5)]
        assert points[0] == {"at": "2025-12-01T00:00:00.000Z", "tiers": {"A": 2, "B": 5, "C": 0, "D": 40},
                             "churn": {"none": 30, "low": 0, "medium": 0, "high": 3},
                             "tags": {"big_spender": 2, "vip": 0}}
        raw = sync.zrangebyscore("t:trends", T0, T0)
        assert len(raw) == 1 and b" " not in raw[0] and orjson.loads(raw[0]) == points[0]  # compact JSON
        await close(*stores)

    asyncio.run(run())


def test_no_counts_yet_is_zeros_and_at_most_the_first_hundred_tags(server: RedisServer) -> None:
    async def run() -> None:
        store = TrendStore(aioredis.Redis.from_url(server.url), "t", HOUR)
        assert await store.stream_clock() is None
        assert await store.record(T0, [f"tag{i}" for i in range(150)])
        (point,) = await store.points()
        assert point["tiers"] == dict.fromkeys("ABCD", 0) and set(point["churn"]) == {"none", "low", "medium", "high"}
        assert point["tags"] == {f"tag{i}": 0 for i in range(MAX_TAGS)}  # the first 100, in the order given
        assert await store.record(T0 + HOUR, []) and (await store.points())[-1]["tags"] == {}
        await close(store)

    asyncio.run(run())


def test_points_past_the_span_are_trimmed_and_from_to_select(server: RedisServer, sync: redis.Redis) -> None:

    async def run() -> None:
        store = TrendStore(aioredis.Redis.from_url(server.url), "t", 3 * HOUR)  # keep three hours
        for k in range(6):
            sync.hset("t:n", "tier:A", k)
            assert await store.record(T0 + k * HOUR, [])
        points = await store.points()
        assert [p["tiers"]["A"] for p in points] == [3, 4, 5]  # (newest - span, newest]
        assert sync.zcard("t:trends") == 3
        assert [p["tiers"]["A"] for p in await store.points(T0 + 4 * HOUR)] == [4, 5]
        assert [p["tiers"]["A"] for p in await store.points(None, T0 + 4 * HOUR)] == [3, 4]
        assert [p["tiers"]["A"] for p in await store.points(T0 + 4 * HOUR, T0 + 4 * HOUR)] == [4]  # inclusive
        assert await store.points(T0 + 4 * HOUR + 1, T0 + 5 * HOUR - 1) == []
        sync.set("t:clock", T0 + 5 * HOUR + 17)
        assert await store.stream_clock() == T0 + 5 * HOUR + 17
        sync.script_flush()  # Redis lost the script (a restart): loaded again
        assert await store.record(T0 + 6 * HOUR, [])
        await close(store)

    asyncio.run(run())
