"""The web dashboard, served by every worker: ``/dashboard`` (plain HTML + JS in agents/static, no build step).

Its data calls take the same bearer tokens and roles as the customer API:

- ``GET /dashboard/api/summary``: customers per tier (from the Redis views, at most
  one SCAN every 2 s per worker), ruleset version and name, the caller's role;
- ``GET /dashboard/api/feed``: server-sent events of tag changes and churn alerts,
  filtered by role (stream/view/dashboard_feed.py), the last few first; one audit record per connection;
- ``GET /dashboard/api/customers/{id}``: the customer document as ``GET /customers/{id}``
  gives it (routed to the owning worker, audited), plus monthly spend for finance and admin.

The page reads the token from ``#token=…`` (a fragment never reaches servers or
logs) or asks for it, and keeps it in the tab's sessionStorage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from importlib import resources
from typing import Any

import orjson
from aiohttp import web as aioweb
from faust.web import Request, Response, View

from stream.access.audit import audit_record
from stream.access.auth import Principal
from stream.access.visibility import sees_money
from stream.security import aiokafka_options
from stream.view.dashboard_feed import feed_item, spend_series, tier_counts
from stream.view.export import views

from .api import Api

log = logging.getLogger(__name__)
HISTORY = 50  # recent messages a new feed connection gets first
SUMMARY_TTL = 2.0


def _static(name: str) -> bytes:
    return resources.files("agents").joinpath("static", name).read_bytes()


class Feed:
    """One side consumer per worker (no group, every partition) fanning messages out to open feeds."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.kinds = {settings.tag_changes_topic: "tag_change", settings.churn_alerts_topic: "churn_alert"}
        self.recent: deque[tuple[str, dict[str, Any]]] = deque(maxlen=HISTORY)
        self.queues: set[asyncio.Queue[tuple[str, dict[str, Any]]]] = set()
        self.task: asyncio.Task[None] | None = None

    def subscribe(self) -> asyncio.Queue[tuple[str, dict[str, Any]]]:
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._run())
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=1000)
        self.queues.add(queue)
        return queue

    async def _run(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap_servers, group_id=None,
                                    enable_auto_commit=False, **aiokafka_options(self.settings))
        await consumer.start()
        try:
            # every tagger topic has settings.partitions partitions (the worker refuses others); the consumer's
            # own metadata is no source: on Kafka it holds no topics until asked for one (Tansu sent them all)
            tps = [TopicPartition(t, p) for t in self.kinds for p in range(self.settings.partitions)]
            consumer.assign(tps)
            begin, end = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
            for tp in tps:
                consumer.seek(tp, max(begin[tp], end[tp] - HISTORY // max(1, len(tps)) - 1))
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        self._publish(self.kinds[record.topic], record.value)
        except Exception:  # noqa: BLE001 - the next subscriber restarts the feed
            log.exception("dashboard feed consumer failed")
        finally:
            await consumer.stop()

    def _publish(self, kind: str, value: bytes | None) -> None:
        try:
            message = orjson.loads(value or b"null")
        except orjson.JSONDecodeError:
            return
        if not isinstance(message, dict):
            return
        self.recent.append((kind, message))
        for queue in list(self.queues):
            try:
                queue.put_nowait((kind, message))
            except asyncio.QueueFull:  # a stalled client: drop it, its page reconnects
                self.queues.discard(queue)


class Dashboard:
    """The dashboard's handlers; access decisions and the audit come from :class:`Api`."""

    def __init__(self, api: Api, settings: Any) -> None:
        self.api, self.settings = api, settings
        self.feed = Feed(settings)
        self._summary: tuple[float, dict[str, int]] = (0.0, {})

    def principal(self, request: Request) -> tuple[Principal | None, int, str]:
        decision = self.api.authorize(request, "dashboard.feed")
        return decision.principal if decision.status == 200 else None, decision.status, decision.reason

    async def summary(self, web: View, request: Request) -> Response:
        principal, status, reason = self.principal(request)
        if principal is None:
            return web.json({"error": reason}, status=status)
        at, counts = self._summary
        if time.monotonic() - at > SUMMARY_TTL:
            counts = tier_counts([v async for v in views(self.api.runtime.view.client, self.settings.redis_prefix)])
            self._summary = (time.monotonic(), counts)
        ruleset = self.api.runtime.evaluator.ruleset
        return web.json({"tiers": counts, "customers": sum(counts.values()), "ruleset_version": ruleset.version,
                         "ruleset_name": ruleset.name, "role": principal.role, "metrics": "/metrics"})

    async def events(self, web: View, request: Request) -> Any:
        principal, status, reason = self.principal(request)
        if principal is None:
            return web.json({"error": reason}, status=status)
        try:
            await self.api.audit.write(audit_record(action="dashboard.feed", outcome="allowed", status=200,
                                                    principal=principal, worker=self.api.worker,
                                                    disclosed=["feed"], source="dashboard"))
        except Exception as exc:  # noqa: BLE001 - no audit, no data
            log.error("audit write failed; refusing the dashboard feed: %r", exc)
            return web.json({"error": "audit log unavailable; try again"}, status=503)
        queue = self.feed.subscribe()
        response = aioweb.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await response.prepare(request)  # type: ignore[arg-type]
        try:
            for kind, message in list(self.feed.recent):
                await self._send(response, kind, message, principal)
            while True:
                try:
                    kind, message = await asyncio.wait_for(queue.get(), timeout=15)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                await self._send(response, kind, message, principal)
        except ConnectionResetError:  # the page went away (a shutdown cancels us: that propagates)
            pass
        finally:
            self.feed.queues.discard(queue)
        return response

    async def _send(self, response: aioweb.StreamResponse, kind: str, message: dict[str, Any],
                    principal: Principal) -> None:
        item = feed_item(kind, message, principal, self.api.rules())
        if item is not None:
            await response.write(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(item) + b"\n\n")

    async def customer(self, web: View, request: Request, table: Any, customer_id: str) -> Response:
        """The API's customer read, plus the spend per month for roles that see money."""
        return await self.api.read_customer(web, request, table, customer_id, extra=_spend_by_month)


def _spend_by_month(state: Any, now: int, principal: Principal) -> dict[str, Any]:
    return {"spend_by_month": spend_series(state.days, now)} if sees_money(principal) else {}


def install_dashboard(app: Any, table: Any, api: Api, settings: Any) -> Dashboard:
    """Register /dashboard, its script and its three data calls."""
    dashboard = Dashboard(api, settings)
    page, script = _static("dashboard.html"), _static("dashboard.js")

    @app.page("/dashboard")
    async def index(web: View, request: Request) -> Response:
        return web.bytes(page, content_type="text/html")

    @app.page("/dashboard/dashboard.js")
    async def js(web: View, request: Request) -> Response:
        return web.bytes(script, content_type="text/javascript")

    @app.page("/dashboard/api/summary")
    async def summary(web: View, request: Request) -> Response:
        return await dashboard.summary(web, request)

    @app.page("/dashboard/api/feed")
    async def feed(web: View, request: Request) -> Any:
        return await dashboard.events(web, request)

    @app.page("/dashboard/api/customers/{customer_id}")
    class Customer(View):
        @app.table_route(table=table, match_info="customer_id")  # type: ignore[arg-type]
        async def get(self, request: Request, customer_id: str) -> Response:
            return await dashboard.customer(self, request, table, customer_id)

    return dashboard
