"""The Redis projection's write path against a real redis-server: one round trip per chunk."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from stream.devtools.embedded import RedisServer
from stream.view.redis_view import RedisView

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(workdir=tmp_path) as running:
        yield running


def view(cid: str, tags: list[str]) -> dict[str, Any]:
    return {"customer_id": cid, "tags": tags, "tier": "B"}


def test_views_ranks_and_tag_indexes_survive_script_loss_and_concurrent_flushes(server: RedisServer) -> None:
    sync = redis.Redis.from_url(server.url)

    async def run() -> None:
        rv = RedisView(aioredis.Redis.from_url(server.url), "t")
        for i in range(2500):  # more than one chunk
            rv.stage(f"c{i}", view(f"c{i}", ["big", "vip"] if i % 2 else []), float(i))
        assert await rv.flush() == 2500 and rv.pending == 0
        assert sync.zcard("t:tag:big") == 1250 and sync.zscore("t:spend365", "c7") == 7.0
        assert orjson.loads(sync.get("t:c:c7")) == view("c7", ["big", "vip"])
        assert sync.hget("t:m:c7", "t") == b"big vip" and sync.hget("t:m:c7", "r") == b"B"
        assert sync.hget("t:m:c6", "t") == b"" and sync.zscore("t:tag:big", "c6") is None
        assert sync.zscore("t:spend365", "c0") is None  # no spend, no rank entry
        sync.script_flush()  # Redis lost the script (a restart): loaded again on NOSCRIPT
        rv.stage("c1", lambda: view("c1", ["big"]), 1.0)  # rendered at flush time; lost "vip"
        rv.stage_erase("c3")
        assert await rv.flush() == 2
        assert orjson.loads(sync.get("t:c:c1")) == view("c1", ["big"])  # the document, rendered as JSON
        assert sync.zscore("t:tag:vip", "c1") is None and sync.hget("t:m:c1", "t") == b"big"
        assert sync.get("t:c:c3") is None and sync.zscore("t:tag:big", "c3") is None
        assert sync.zscore("t:spend365", "c3") is None and not sync.exists("t:m:c3")
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


def test_a_write_changes_only_the_tags_that_differ_and_an_erase_removes_them_all(server: RedisServer) -> None:
    """Tags go [a, b] → [b, c] → [c, b] (unchanged) → [] → [a] → erased: after each flush the tag
    indexes and the customer's meta hash are exactly right, a neighbour sharing tag b keeps its
    membership, and the script issued tag-index commands only for the tags lost or gained."""
    sync = redis.Redis.from_url(server.url)

    def indexes() -> dict[str, set[bytes]]:
        return {t: set(sync.zrange(f"t:tag:{t}", 0, -1)) for t in ("a", "b", "c")}

    def tag_calls() -> dict[str, int]:
        """Calls since the last reset of the commands a write may issue (Lua's calls included)."""
        stats = sync.info("commandstats")
        return {c: int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("zadd", "zrem", "del")}

    async def run() -> None:
        rv = RedisView(aioredis.Redis.from_url(server.url), "t")
        rv.stage("n", view("n", ["b"]), 3.0)  # the neighbour
        assert await rv.flush() == 1

        async def write(tags: list[str] | None) -> dict[str, int]:
            if tags is None:
                rv.stage_erase("x")
            else:
                rv.stage("x", lambda: view("x", tags), 2.0)
            sync.config_resetstat()
            assert await rv.flush() == 1
            return tag_calls()

        # spend > 0: one ZADD of the rank entry and four of the list indexes per write; an erase: one ZREM of
        # each of them and one DEL of the view, meta hash and history
        assert await write(["a", "b"]) == {"zadd": 7, "zrem": 0, "del": 0}
        assert indexes() == {"a": {b"x"}, "b": {b"n", b"x"}, "c": set()}
        assert sync.hget("t:m:x", "t") == b"a b"

        assert await write(["b", "c"]) == {"zadd": 6, "zrem": 1, "del": 0}
        assert indexes() == {"a": set(), "b": {b"n", b"x"}, "c": {b"x"}} and not sync.exists("t:tag:a")
        assert sync.hget("t:m:x", "t") == b"b c"

        assert await write(["c", "b"]) == {"zadd": 5, "zrem": 0, "del": 0}  # same set
        assert indexes() == {"a": set(), "b": {b"n", b"x"}, "c": {b"x"}}
        assert sync.hget("t:m:x", "t") == b"c b" and orjson.loads(sync.get("t:c:x"))["tags"] == ["c", "b"]

        assert await write([]) == {"zadd": 5, "zrem": 2, "del": 0}
        assert indexes() == {"a": set(), "b": {b"n"}, "c": set()} and not sync.exists("t:tag:c")
        assert sync.hget("t:m:x", "t") == b"" and orjson.loads(sync.get("t:c:x")) == view("x", [])
        assert sync.zscore("t:spend365", "x") == 2.0

        await write(["a", "c"])
        assert indexes() == {"a": {b"x"}, "b": {b"n"}, "c": {b"x"}}
        assert await write(None) == {"zadd": 0, "zrem": 7, "del": 1}
        assert indexes() == {"a": set(), "b": {b"n"}, "c": set()}
        assert not sync.exists("t:m:x", "t:c:x", "t:tag:a", "t:tag:c") and sync.zscore("t:spend365", "x") is None
        assert sync.hget("t:m:n", "t") == b"b" and sync.zscore("t:spend365", "n") == 3.0  # the neighbour: untouched
        await rv.client.aclose()

    asyncio.run(run())
