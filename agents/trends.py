"""Trends: a timer that records one point per ``TAGGER_TREND_INTERVAL`` of stream time, and ``GET /trends``.

Every worker runs the timer; the store's script lets exactly one of them record each boundary
(stream/view/trend_store.py). The timer looks at the clock every few seconds and records the
latest boundary the clock has passed. If the clock jumped over several boundaries between two
looks (a replay of old history, a cluster that was down), only the latest is recorded: the counts
are those of the moment, so points for the boundaries skipped would all hold them too, under
times they do not describe; the series has a gap there instead.

``GET /trends?from=&to=`` answers from Redis on any worker, filtered by role and audited like the
rest of the API (agents/api.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from faust.web import Request, Response, View

from stream.settings import Settings
from stream.tuning import TREND_CHECK_EVERY
from stream.view.trend_store import (
    TrendQueryError,
    TrendStore,
    boundary,
    disclosed,
    query_bounds,
    rule_tags,
    visible_point,
)

from .api import Api

log = logging.getLogger(__name__)
ACTION = "trends.read"


@dataclass
class TrendRecorder:
    """One tick of the trend timer: record the point of the latest boundary the clock passed, once."""

    store: TrendStore
    interval_ms: int
    clock: Callable[[], Awaitable[int | None]]  # the stream clock (wall time with TAGGER_CLOCK=wall)
    tags: Callable[[], Sequence[str]]  # the live ruleset's tags, in rule order
    last: int | None = None  # the latest boundary recorded here or found recorded

    async def run(self) -> None:
        try:
            now = await self.clock()
            if not now or (self.last is not None and boundary(now, self.interval_ms) <= self.last):
                return
            at = boundary(now, self.interval_ms)
            if await self.store.record(at, self.tags()):
                log.info("trend point recorded for boundary %d (stream clock %d)", at, now)
            self.last = at
        except Exception as exc:  # noqa: BLE001 - Redis is down: the next tick tries again
            log.warning("trend point not recorded (will retry): %r", exc)


async def read_trends(api: Api, store: TrendStore, interval_s: int, web: View, request: Request) -> Response:
    """``GET /trends?from=&to=``: the points in range as the caller's role may see them."""
    decision = api.authorize(request, ACTION)
    if decision.principal is None or decision.status != 200:
        return await api.refuse(web, decision, ACTION)
    try:
        low, high = query_bounds(request.query)
    except TrendQueryError as exc:
        return await api.answer(web, {"error": exc.reason, "parameter": exc.parameter}, 400, decision, ACTION,
                                "invalid", detail={"reason": exc.reason})
    try:
        points = await store.points(low, high)
    except Exception as exc:  # noqa: BLE001 - Redis is down: say so, audited
        log.warning("trends read failed: %r", exc)
        return await api.answer(web, {"error": "trend store unavailable"}, 503, decision, ACTION, "unavailable")
    rules = api.rules()
    body = {"interval_s": interval_s, "points": [visible_point(p, decision.principal, rules) for p in points]}
    return await api.answer(web, body, 200, decision, ACTION, "allowed", None, disclosed(decision.principal),
                            detail={"returned": len(points)})


async def _wall_clock() -> int:
    return int(time.time() * 1000)


def install_trends(app: Any, api: Api, settings: Settings) -> TrendRecorder:
    """Register the trend timer (every worker; one records each point) and ``GET /trends``."""
    runtime = api.runtime
    store = TrendStore(runtime.view.client, settings.redis_prefix, settings.trend_span * 1000)
    recorder = TrendRecorder(store, settings.trend_interval * 1000,
                             store.stream_clock if settings.clock == "stream" else _wall_clock,
                             lambda: rule_tags(r.tag for r in runtime.evaluator.ruleset.rules))
    app.timer(TREND_CHECK_EVERY)(recorder.run)

    @app.page("/trends")
    async def trends(web: View, request: Request) -> Response:
        return await read_trends(api, store, settings.trend_interval, web, request)

    return recorder
