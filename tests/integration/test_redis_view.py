"""The Redis projection's write path against a real redis-server: one round trip per chunk."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from stream.embedded import RedisServer
from stream.redis_view import RedisView

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(workdir=tmp_path) as running:
        yield running


def view(cid: str, tags: list[str]) -> bytes:
    return orjson.dumps({"customer_id": cid, "tags": tags})


def test_views_ranks_and_tag_indexes_survive_script_loss_and_concurrent_flushes(server: RedisServer) -> None:
    sync = redis.Redis.from_url(server.url)

    async def run() -> None:
        rv = RedisView(aioredis.Redis.from_url(server.url), "t")
        for i in range(2500):  # more than one chunk
            rv.stage(f"c{i}", view(f"c{i}", ["big", "vip"] if i % 2 else []), float(i))
        assert await rv.flush() == 2500 and rv.pending == 0
        assert sync.zcard("t:tag:big") == 1250 and sync.zscore("t:spend365", "c7") == 7.0
        assert sync.zscore("t:spend365", "c0") is None  # no spend, no rank entry
        sync.script_flush()  # Redis lost the script (a restart): loaded again on NOSCRIPT
        rv.stage("c1", lambda: view("c1", ["big"]), 1.0)  # rendered at flush time; lost "vip"
        rv.stage_erase("c3")
        assert await rv.flush() == 2
        assert orjson.loads(sync.get("t:c:c1"))["tags"] == ["big"]
        assert sync.zscore("t:tag:vip", "c1") is None and sync.smembers("t:ct:c1") == {b"big"}
        assert sync.get("t:c:c3") is None and sync.zscore("t:tag:big", "c3") is None
        assert sync.zscore("t:spend365", "c3") is None and not sync.exists("t:ct:c3")
        # flushes run one at a time: each customer written once, the newest view last
        for i in range(3000):
            rv.stage(f"d{i}", view(f"d{i}", ["old"]), 1.0)
        first = asyncio.ensure_future(rv.flush())
        await asyncio.sleep(0)
        rv.stage("d0", view("d0", ["new"]), 2.0)
        second = asyncio.ensure_future(rv.flush())
        assert await first + await second == 3001
        assert orjson.loads(sync.get("t:c:d0"))["tags"] == ["new"] and sync.zscore("t:spend365", "d0") == 2.0
        assert sync.zcard("t:tag:old") == 2999
        await rv.client.aclose()

    asyncio.run(run())


def test_a_failed_flush_keeps_every_view_staged(server: RedisServer, tmp_path: Path) -> None:
    async def run() -> None:
        rv = RedisView(aioredis.Redis.from_url(server.url, socket_timeout=2), "t")
        rv.stage("a", view("a", ["x"]), 5.0)
        server.stop()
        with pytest.raises(redis.exceptions.ConnectionError):
            await rv.flush()
        rv.stage("b", view("b", []), 1.0)
        assert rv.pending == 2
        server.start()
        assert await rv.flush() == 2 and rv.pending == 0
        assert redis.Redis.from_url(server.url).zscore("t:tag:x", "a") == 0
        await rv.client.aclose()

    asyncio.run(run())


def test_a_flush_writes_what_was_staged_when_it_began(server: RedisServer) -> None:
    """Views staged while a flush runs wait for the next flush instead of trickling in as tiny chunks."""
    sync = redis.Redis.from_url(server.url)

    async def run() -> None:
        rv = RedisView(aioredis.Redis.from_url(server.url), "t")
        for i in range(450):
            rv.stage(f"a{i}", view(f"a{i}", ["first"]), 1.0)
        flush = asyncio.ensure_future(rv.flush(batch=200))
        while rv.pending == 450:  # the first chunk is on its way
            await asyncio.sleep(0)
        for i in range(30):
            rv.stage(f"b{i}", view(f"b{i}", ["later"]), 1.0)
        assert await flush == 450 and rv.pending == 30
        assert sync.zcard("t:tag:first") == 450 and not sync.exists("t:tag:later")
        assert await rv.flush() == 30 and sync.zcard("t:tag:later") == 30
        await rv.client.aclose()

    asyncio.run(run())


def test_a_priority_flush_writes_only_its_customer(server: RedisServer) -> None:
    sync = redis.Redis.from_url(server.url)

    async def run() -> None:
        rv = RedisView(aioredis.Redis.from_url(server.url), "p")
        for cid in ("c1", "c2", "c3"):
            rv.stage(cid, view(cid, ["vip"]), 1.0)
        assert await rv.flush(only=["c2", "gone"]) == 1 and rv.pending == 2
        assert sync.exists("p:c:c2") and not sync.exists("p:c:c1") and not sync.exists("p:c:c3")
        assert await rv.flush() == 2 and sync.zcard("p:tag:vip") == 3
        await rv.client.aclose()

    asyncio.run(run())
