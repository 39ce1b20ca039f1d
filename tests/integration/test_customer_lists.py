"""Customer lists, counts and history against a real redis-server (stream/view/lua/list.lua and write.lua).

A walk is checked against a model of the indexes as they were at its first page: every customer
of the asked tiers exactly once (but those erased meanwhile), whatever changed between its pages,
and in the order of their sort values when nothing did.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from stream.devtools.embedded import RedisServer
from stream.view.listing import LEVELS, SORTS, Cursor, ListQuery, index_scores
from stream.view.redis_view import RedisView, WalkExpired

pytestmark = pytest.mark.integration

TEAMS = ("emea", "apac", "")
TAGS = ("big_spender", "at_risk", "vip", "rare")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(workdir=tmp_path) as running:
        yield running


class Model:
    """The customers as staged: their documents, spend and last activity."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.docs: dict[str, dict[str, Any]] = {}
        self.values: dict[str, dict[str, float | None]] = {}

    def customer(self, cid: str, *, keep_filters: bool = False) -> tuple[dict[str, Any], float, int]:
        rng, old = self.rng, self.docs.get(cid)
        tags = old["tags"] if keep_filters and old else sorted(t for t in TAGS if rng.random() < (0.01 if t == "rare"
                                                                                               else 0.3))
        level = old["churn"]["level"] if keep_filters and old else rng.choice(LEVELS)
        team = old["profile"]["team"] if keep_filters and old else rng.choice(TEAMS)
        risk = rng.choice([0.0, 0.0, round(rng.random(), 4)])  # many equal scores
        score = round(rng.uniform(0, 100), 2)
        spend = rng.choice([0.0, round(rng.uniform(1, 5000), 2)])
        last = rng.choice([None, 1_760_000_000_000 + rng.randrange(10**9)])
        doc = {"customer_id": cid, "tier": rng.choice("ABCD"), "tags": tags, "score": score,
               "churn": {"risk": risk, "level": level}, "profile": {"team": team}}
        self.docs[cid] = doc
        self.values[cid] = {"last_activity": last, "risk": risk, "score": score, "spend_365d": spend}
        return doc, spend, last or 0

    def stage(self, rv: RedisView, cid: str, **kw: bool) -> None:
        doc, spend, last = self.customer(cid, **kw)
        rv.stage(cid, doc, spend, last or None)

    def erase(self, rv: RedisView, cid: str) -> None:
        rv.stage_erase(cid)
        del self.docs[cid], self.values[cid]

    def order(self, q: ListQuery, *, keep: Any = None) -> list[str]:
        """The customers of ``q`` in its order, as the indexes hold them now."""
        position = list(SORTS).index(q.sort)

        def matches(cid: str) -> bool:
            doc = self.docs[cid]
            return (doc["tier"] in q.tiers and (not q.tag or q.tag in doc["tags"])
                    and (not q.levels or doc["churn"]["level"] in q.levels)
                    and (not q.team or doc["profile"]["team"] == q.team))

        rows = [(index_scores(cid, self.values[cid])[position], cid.encode(), cid) for cid in self.docs if matches(cid)]
        rows.sort(reverse=q.order == "desc")
        return [cid for _, _, cid in rows]


async def walk(rv: RedisView, q: ListQuery, between: Any = None, listed: list[str] | None = None,
               budget: int | None = None, pages: list[int] | None = None) -> list[str]:
    """Every page of ``q``; ``listed`` fills as it goes, ``pages`` gets each page's size."""
    listed = [] if listed is None else listed
    while True:
        page = await rv.list_page(q, budget)
        listed += [v["customer_id"] for v in page.views]
        if pages is not None:
            pages.append(len(page.views))
        if page.next is None:
            return listed
        if between is not None:
            await between()
        w, score, cid = page.next
        q = ListQuery(**{**q.__dict__, "cursor": Cursor(w, score, cid, q.digest())})


def test_every_filter_and_sort_pages_through_in_order(server: RedisServer) -> None:
    rng = random.Random(7)
    sync = redis.Redis.from_url(server.url)

    async def run() -> None:
        rv = RedisView(aioredis.Redis.from_url(server.url), "t")
        model = Model(rng)
        for i in range(700):
            model.stage(rv, f"c{i:04d}")
        await rv.flush()
        queries = [ListQuery(sort=s, order=o, limit=n) for s in SORTS for o in ("desc", "asc") for n in (1, 37, 500)]
        queries += [ListQuery(tiers="A"), ListQuery(tiers="BD", sort="risk", limit=20),
                    ListQuery(tag="big_spender", sort="score", limit=25), ListQuery(tag="rare", limit=3),
                    ListQuery(levels=("high", "medium"), sort="risk", limit=30), ListQuery(team="emea", limit=40),
                    ListQuery(tiers="A", tag="vip", levels=("low",), team="apac", sort="spend_365d", limit=2)]
        for q in queries:
            assert await walk(rv, q) == model.order(q), q
        # a rare filter scanned through the big indexes: short pages, still complete and in order
        q = ListQuery(levels=("high",), team="apac", limit=10)
        pages: list[int] = []
        listed = await walk(rv, q, budget=50, pages=pages)
        assert listed == model.order(q) and len(pages) > len(listed) // 10
        counts = await rv.counts()
        for tier in "ABCD":
            assert counts.get(f"tier:{tier}", 0) == sum(d["tier"] == tier for d in model.docs.values())
        for level in LEVELS:
            assert counts.get(f"churn:{level}", 0) == sum(d["churn"]["level"] == level for d in model.docs.values())
        assert not sync.keys("t:w:*") and sync.zcard("t:walks") == 0  # finished walks leave nothing behind
        await rv.client.aclose()

    asyncio.run(run())


@pytest.mark.parametrize("seed", range(6))
def test_a_walk_under_concurrent_updates_lists_each_customer_once(server: RedisServer, seed: int) -> None:
    """Between every two pages a fifth of the customers change their sort values and tiers, some are
    erased, new ones come: the walk lists exactly the customers of its first page's snapshot (less the
    erased), each once. (The order is the snapshot's only where nothing changed: a customer that moved
    but stayed ahead of the walk is listed where it is when its page is read.)"""
    rng = random.Random(seed)
    sync = redis.Redis.from_url(server.url)

    async def run() -> None:
        rv = RedisView(aioredis.Redis.from_url(server.url), "t")
        model = Model(rng)
        for i in range(500):
            model.stage(rv, f"c{i:04d}")
        await rv.flush()
        sort = rng.choice(list(SORTS))
        q = ListQuery(sort=sort, order=rng.choice(("desc", "asc")), limit=rng.choice((7, 25, 60)),
                      tiers=rng.choice(("ABCD_", "A", "BC")), tag=rng.choice(("", "", "vip")),
                      levels=rng.choice(((), ("high", "low"))))
        expected = model.order(q)
        erased: set[str] = set()
        seen: set[str] = set()
        fresh = iter(range(10_000))

        async def update() -> None:
            for cid in rng.sample(sorted(model.docs), len(model.docs) // 5):
                model.stage(rv, cid, keep_filters=True)
            for cid in rng.sample(sorted(model.docs), 3):
                model.erase(rv, cid)
                erased.add(cid)
                if cid in listed_so_far:
                    seen.add(cid)
            for _ in range(5):
                model.stage(rv, f"n{next(fresh):04d}")
            await rv.flush(batch=rng.choice((7, 200)))

        listed_so_far: list[str] = []
        listed = await walk(rv, q, update, listed_so_far)
        assert len(listed) == len(set(listed))
        # those erased after their page was read were listed; those erased before, not
        assert {cid for cid in expected if cid not in erased} <= set(listed) <= set(expected) - (erased - seen)
        assert not sync.keys("t:w:*")
        await rv.client.aclose()

    asyncio.run(run())


def test_a_cursor_expires_with_its_walk_and_walks_give_way(server: RedisServer) -> None:
    sync = redis.Redis.from_url(server.url)

    async def run() -> None:
        rv = RedisView(aioredis.Redis.from_url(server.url), "t")
        model = Model(random.Random(1))
        for i in range(30):
            model.stage(rv, f"c{i:02d}")
        await rv.flush()
        page = await rv.list_page(ListQuery(limit=5))
        assert page.next is not None and sync.ttl(f"t:w:{page.next[0]}") > 500
        other = ListQuery(limit=5, sort="risk")
        with pytest.raises(WalkExpired, match="another list"):
            await rv.list_page(ListQuery(**{**other.__dict__, "cursor": Cursor(*page.next, other.digest())}))
        sync.delete(f"t:w:{page.next[0]}")
        sync.zrem("t:walks", page.next[0])
        q = ListQuery(limit=5)
        with pytest.raises(WalkExpired, match="expired"):
            await rv.list_page(ListQuery(**{**q.__dict__, "cursor": Cursor(*page.next, q.digest())}))
        await rv.client.aclose()

    asyncio.run(run())


def test_history_is_capped_not_repeated_erased_and_marked_after_a_rebuild(server: RedisServer) -> None:
    sync = redis.Redis.from_url(server.url)

    async def run() -> None:
        rv = RedisView(aioredis.Redis.from_url(server.url), "t", history_size=5)
        doc = {"customer_id": "x", "tier": "B", "tags": ["vip"], "score": 50.0, "churn": {"risk": 0.1, "level": "low"}}
        for i in range(8):
            rv.note("x", {"at": i, "kind": "tag_change", "change_id": f"x:tag:{i}"})
            rv.stage("x", doc, 10.0)
            await rv.flush()
        rv.note("x", {"at": 7, "kind": "tag_change", "change_id": "x:tag:7"})  # a replay writes it again
        rv.note("x", {"at": 8, "kind": "manual", "command_id": "m1"})  # noted without a view: written alone
        await rv.flush()
        exists, entries = await rv.history("x", 100)
        assert exists and [e["at"] for e in entries] == [8, 7, 6, 5, 4]
        rv.stage("x", doc, 10.0, rebuilt=True)  # a rebuild of an intact history adds nothing
        await rv.flush()
        assert len((await rv.history("x", 100))[1]) == 5
        sync.delete("t:h:x")
        rv.stage("x", doc, 10.0, rebuilt=True)  # Redis lost it: the rebuilt history starts with a marker
        await rv.flush()
        (entry,) = (await rv.history("x", 100))[1]
        assert entry["kind"] == "rebuilt" and entry["tier"] == "B" and entry["tags"] == ["vip"]
        rv.note("x", {"at": 9, "kind": "churn"})
        rv.stage_erase("x")  # the erase drops what was noted too
        await rv.flush()
        assert await rv.history("x", 100) == (False, [])
        assert not [k for k in sync.keys("*") if b"x" in k.split(b":")[-1]]
        assert await rv.counts() == {"tier:B": 0, "churn:low": 0}
        await rv.client.aclose()

    asyncio.run(run())


def test_a_view_written_before_the_meta_hash_moves_to_it(server: RedisServer) -> None:
    """An older version kept each customer's tags in the set P:ct:<id>; the first write after the
    upgrade reads it, fixes the tag indexes from it and deletes it."""
    sync = redis.Redis.from_url(server.url)
    sync.sadd("t:ct:x", "old", "kept")
    sync.zadd("t:tag:old", {"x": 0})
    sync.zadd("t:tag:kept", {"x": 0})
    sync.set("t:c:x", orjson.dumps({"customer_id": "x"}))

    async def run() -> None:
        rv = RedisView(aioredis.Redis.from_url(server.url), "t")
        rv.stage("x", {"customer_id": "x", "tier": "C", "tags": ["kept", "new"]}, 1.0)
        await rv.flush()
        await rv.client.aclose()

    asyncio.run(run())
    assert not sync.exists("t:ct:x", "t:tag:old") and sync.hget("t:m:x", "t") == b"kept new"
    assert sync.zscore("t:tag:new", "x") == 0 and sync.zscore("t:ix:last:C", "x") is not None
