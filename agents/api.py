"""The worker's HTTP API: customer lookup, tag listing, manual tag commands, privacy requests.

Every call is authenticated (bearer token → role, :mod:`stream.access.auth`), filtered
by role (:mod:`stream.access.visibility`) and audited (:mod:`stream.access.audit`) before it
answers; if the audit record cannot be written the call fails with 503 instead
of answering unaudited. Customer lookups run on the worker owning the
customer's partition (Faust ``table_route`` forwards the request with its
headers); writes only produce to Kafka and work on any worker.
"""

from __future__ import annotations

import csv
import io
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import faust
import orjson
from faust.web import Request, Response, View

from agents.engine.runtime import Runtime
from stream.access.audit import AuditLog, audit_record
from stream.access.auth import Decision, Principal, TokenRegistry, authorize, load_registry
from stream.access.privacy import parse_privacy_request
from stream.access.visibility import (
    TagRules,
    can_see_tag,
    filter_customer,
    filter_history,
    list_disclosed,
    list_row,
    sees_money,
)
from stream.domain.events import MAX_ID_CHARS, format_ts
from stream.domain.manual import TAG, parse_command, stray_field
from stream.exceptions import InvalidEvent
from stream.faust import guards
from stream.kafka.topics import Topics
from stream.settings import Settings
from stream.view.listing import MONEY_SORTS, BadParameter, Cursor, ListQuery, parse_query
from stream.view.redis_view import WalkExpired

log = logging.getLogger(__name__)

DEFAULT_PAGE = 100
MAX_PAGE = 1000


class Api:
    """Authentication, filtering and auditing around the API handlers (one per worker)."""

    def __init__(self, app: faust.App, runtime: Runtime, settings: Settings, topics: Topics,
                 registry: TokenRegistry, audit: AuditLog) -> None:
        self.runtime = runtime
        self.settings = settings
        self.registry = registry
        self.audit = audit
        self.worker = f"{settings.web_host}:{settings.web_port}"
        raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
        self.tag_commands = app.topic(settings.tag_commands_topic, **raw)
        self.privacy_requests = app.topic(settings.privacy_requests_topic, **raw)
        self._rules: tuple[str, TagRules] = ("", {})

    def rules(self) -> TagRules:
        """Visibility and owner of every rule's tag, for the live ruleset (hot reload included)."""
        ruleset = self.runtime.evaluator.ruleset
        if self._rules[0] != ruleset.version:
            self._rules = (ruleset.version, {r.tag: (r.visibility, r.owner) for r in ruleset.rules})
        return self._rules[1]

    def authorize(self, request: Request, action: str) -> Decision:
        """Who is calling and whether its role may perform ``action``."""
        return authorize(self.registry, request.headers.get("Authorization"), action)

    async def answer(self, web: View, body: Any, status: int, decision: Decision | None, action: str,
                     outcome: str, customer_id: str | None = None, disclosed: list[str] | None = None,
                     detail: Mapping[str, object] | None = None,
                     render: Callable[[], Response] | None = None) -> Response:
        """Write the audit record, then answer (``render``: other than as JSON); 503 (and no data) if the
        audit cannot be written."""
        record = audit_record(action=action, outcome=outcome, status=status,
                              principal=decision.principal if decision else None, customer_id=customer_id,
                              disclosed=disclosed or [], worker=self.worker, detail=detail)
        try:
            await self.audit.write(record)
        except Exception as exc:  # noqa: BLE001 - no audit, no answer
            log.error("audit write failed; refusing %s: %r", action, exc)
            return web.json({"error": "audit log unavailable; try again"}, status=503)
        if render is not None:
            return render()
        headers = {"WWW-Authenticate": 'Bearer realm="tagger"'} if status == 401 else None
        return web.json(body, status=status, headers=headers)

    async def refuse(self, web: View, decision: Decision, action: str, customer_id: str | None = None,
                     detail: Mapping[str, object] | None = None) -> Response:
        """Answer 401/403 (audited)."""
        outcome = "unauthenticated" if decision.status == 401 else "denied"
        return await self.answer(web, {"error": decision.reason}, decision.status, decision, action, outcome,
                                 customer_id, detail={"reason": decision.reason, **(detail or {})})

    async def read_customer(self, web: View, request: Request, table: Any, customer_id: str,
                            extra: Callable[[Any, int, Principal], dict[str, Any]] | None = None) -> Response:
        """``GET /customers/{id}``: the customer as the caller's role may see it.

        ``extra(state, now, principal)`` may add fields for this caller (disclosed and audited too).
        """
        action = "customer.read"
        decision = self.authorize(request, action)
        if decision.principal is None or decision.status != 200:
            return await self.refuse(web, decision, action, customer_id)
        state = table.get(customer_id)
        if state is None:
            return await self.answer(web, {"error": "unknown customer", "customer_id": customer_id}, 404,
                                     decision, action, "not_found", customer_id, detail={"found": False})
        now, evaluator = self.runtime.clock.now(), self.runtime.evaluator
        doc = evaluator.view_document(customer_id, state, evaluator.facts(state, now))
        body, disclosed = filter_customer(doc, decision.principal, self.rules())
        if extra is not None:
            added = extra(state, now, decision.principal)
            body.update(added)
            disclosed = [*disclosed, *added]
        return await self.answer(web, body, 200, decision, action, "allowed", customer_id, disclosed,
                                 detail={"found": True})

    async def list_tag(self, web: View, request: Request, tag: str) -> Response:
        """``GET /tags/{tag}/customers?limit=&after=``: customers holding ``tag``, from Redis, by id."""
        action = "tag.list"
        decision = self.authorize(request, action)
        if decision.principal is None or decision.status != 200:
            return await self.refuse(web, decision, action, detail={"tag": tag})
        if not TAG.match(tag):
            return await self.answer(web, {"error": f"{tag[:64]!r} is not a tag name"}, 400, decision, action,
                                     "invalid", detail={"tag": tag[:64]})
        if not can_see_tag(decision.principal, tag, self.rules()):
            return await self.refuse(web, Decision(decision.principal, 403,
                                                   f"role {decision.principal.role!r} may not see tag {tag!r}"),
                                     action, detail={"tag": tag})
        after = request.query.get("after") or None
        try:
            limit = int(request.query.get("limit", DEFAULT_PAGE))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_PAGE or (after is not None and len(after) > MAX_ID_CHARS):
            return await self.answer(web, {"error": f"limit must be 1..{MAX_PAGE}; after a customer id"}, 400,
                                     decision, action, "invalid", detail={"tag": tag})
        try:
            customers, cursor = await self.runtime.view.tag_members(tag, after, limit)
            total = await self.runtime.view.tag_count(tag)
        except Exception as exc:  # noqa: BLE001 - Redis is down: say so, audited
            log.warning("tag listing failed: %r", exc)
            return await self.answer(web, {"error": "customer index unavailable"}, 503, decision, action,
                                     "unavailable", detail={"tag": tag})
        body = {"tag": tag, "customers": customers, "next": cursor, "total": total}
        return await self.answer(web, body, 200, decision, action, "allowed", None, ["customer_ids"],
                                 detail={"tag": tag, "customers": customers, "returned": len(customers),
                                         "limit": limit, "after": after})

    async def list_customers(self, web: View, request: Request) -> Response:
        """``GET /customers``: a page of customers by tier, tag, churn level and team, in a sort order,
        from the Redis list indexes (any worker); ``format=csv`` for a download."""
        action = "customer.list"
        decision = self.authorize(request, action)
        if decision.principal is None or decision.status != 200:
            return await self.refuse(web, decision, action)
        try:
            query = parse_query(dict(request.query))
        except BadParameter as exc:
            return await self.answer(web, {"error": str(exc), "parameter": exc.parameter}, 400, decision, action,
                                     "invalid", detail={"reason": str(exc)})
        detail: dict[str, object] = {"sort": f"{query.sort} {query.order}", "filters": query.filters(),
                                     "limit": query.limit, "format": "csv" if query.csv else "json"}
        principal = decision.principal
        why = list_refusal(query, principal, self.rules())
        if why is not None:
            return await self.refuse(web, Decision(principal, 403, why), action, detail=detail)
        try:
            page = await self.runtime.view.list_page(query)
        except WalkExpired as exc:
            return await self.answer(web, {"error": str(exc), "parameter": "cursor"}, 410, decision, action,
                                     "invalid", detail={**detail, "reason": str(exc)})
        except Exception as exc:  # noqa: BLE001 - Redis is down: say so, audited
            log.warning("customer list failed: %r", exc)
            return await self.answer(web, {"error": "customer index unavailable"}, 503, decision, action,
                                     "unavailable", detail=detail)
        rows = [list_row(view, principal, self.rules()) for view in page.views]
        cursor = Cursor(*page.next, query.digest()).encode() if page.next else None
        body = {"customers": rows, "next": cursor, "as_of": format_ts(page.as_of_ms), "sort": query.sort,
                "order": query.order, "limit": query.limit}
        render = partial(csv_response, web, rows, cursor) if query.csv else None
        ids = [str(r["customer_id"]) for r in rows]
        return await self.answer(web, body, 200, decision, action, "allowed", None, list_disclosed(principal),
                                 detail={**detail, "customers": ids, "returned": len(ids)}, render=render)

    async def customer_history(self, web: View, request: Request, customer_id: str) -> Response:
        """``GET /customers/{id}/history?limit=``: the customer's last changes, newest first, from Redis."""
        action = "customer.history"
        decision = self.authorize(request, action)
        if decision.principal is None or decision.status != 200:
            return await self.refuse(web, decision, action, customer_id)
        size = self.settings.history_size
        text = request.query.get("limit", str(size))
        error = None
        if len(customer_id) > MAX_ID_CHARS:
            error = {"error": f"a customer id has at most {MAX_ID_CHARS} characters", "parameter": "customer_id"}
        elif not (text.isdigit() and 1 <= int(text) <= size):
            error = {"error": f"limit must be an integer from 1 to {size}", "parameter": "limit"}
        if error is not None:
            return await self.answer(web, error, 400, decision, action, "invalid", customer_id[:MAX_ID_CHARS],
                                     detail={"reason": error["error"]})
        try:
            exists, entries = await self.runtime.view.history(customer_id, int(text))
        except Exception as exc:  # noqa: BLE001 - Redis is down: say so, audited
            log.warning("history read failed: %r", exc)
            return await self.answer(web, {"error": "customer history unavailable"}, 503, decision, action,
                                     "unavailable", customer_id)
        if not exists and not entries:
            return await self.answer(web, {"error": "unknown customer", "customer_id": customer_id}, 404,
                                     decision, action, "not_found", customer_id, detail={"found": False})
        shown = [e for e in (filter_history(e, decision.principal, self.rules()) for e in entries) if e is not None]
        return await self.answer(web, {"customer_id": customer_id, "changes": shown}, 200, decision, action,
                                 "allowed", customer_id, ["history"], detail={"found": True, "returned": len(shown)})

    async def _body(self, web: View, request: Request) -> dict[str, Any] | None:
        try:
            body = orjson.loads(await web.read_request_content(request))
        except orjson.JSONDecodeError:
            return None
        return body if isinstance(body, dict) else None

    async def _produce(self, topic: faust.TopicT, key: str, value: dict[str, Any]) -> None:
        fut = await topic.send(key=key.encode(), value=orjson.dumps(value))
        await fut  # the broker has it

    async def manual_command(self, web: View, request: Request, customer_id: str) -> Response:
        """``POST /customers/{id}/tags``: a manual tag or score command, authored by the caller."""
        action = "manual.command"
        decision = self.authorize(request, action)
        if decision.principal is None or decision.status != 200:
            return await self.refuse(web, decision, action, customer_id)
        body = await self._body(web, request)
        if body is None:
            return await self.answer(web, {"error": "body must be a JSON object"}, 400, decision, action,
                                     "invalid", customer_id, detail={"reason": "body must be a JSON object"})
        fields = ("action", "tag", "note", "expires_at", "adjust_pct", "command_id")
        given = {k: body[k] for k in fields if k in body}
        given.setdefault("command_id", f"api-{uuid.uuid4().hex}")
        given.update(customer_id=customer_id, author=decision.principal.name)
        try:
            if reason := stray_field(given):
                raise InvalidEvent(reason)
            # produced as parsed: the fields of its action, in the wire types (stream/schemas/tag-command)
            cmd = parse_command(orjson.dumps(given), max_bytes=self.settings.max_event_bytes,
                                now_ms=self.runtime.clock.now())
        except InvalidEvent as exc:
            return await self.answer(web, {"error": exc.reason}, 400, decision, action, "invalid", customer_id,
                                     detail={"reason": exc.reason, "command": str(given.get("action"))})
        detail: dict[str, object] = {"command": cmd["action"], "command_id": str(cmd["command_id"]),
                                     "tag": cmd.get("tag")}
        return await self._write(web, decision, action, customer_id, self.tag_commands, cmd,
                                 {"command_id": cmd["command_id"], "status": "accepted"}, detail)

    async def privacy_request(self, web: View, request: Request) -> Response:
        """``POST /privacy/requests``: queue ``{request_id, customer_id, ts, type: erase}`` (admin only)."""
        action = "privacy.request"
        decision = self.authorize(request, action)
        body = await self._body(web, request)  # also when refused: the audit names the customer asked for
        customer = (body or {}).get("customer_id")
        customer_id = customer if isinstance(customer, str) else None
        if decision.principal is None or decision.status != 200:
            return await self.refuse(web, decision, action, customer_id)
        if body is None:
            return await self.answer(web, {"error": "body must be a JSON object"}, 400, decision, action,
                                     "invalid", detail={"reason": "body must be a JSON object"})
        body.setdefault("request_id", f"api-{uuid.uuid4().hex}")
        body.setdefault("ts", int(time.time() * 1000))
        try:
            req = parse_privacy_request(orjson.dumps(body), max_bytes=self.settings.max_event_bytes)
        except InvalidEvent as exc:
            return await self.answer(web, {"error": exc.reason}, 400, decision, action, "invalid", customer_id,
                                     detail={"reason": exc.reason})
        detail: dict[str, object] = {"request_id": req["request_id"]}
        return await self._write(web, decision, action, req["customer_id"], self.privacy_requests, req,
                                 {"request_id": req["request_id"], "status": "accepted"}, detail)

    async def _write(self, web: View, decision: Decision, action: str, customer_id: str, topic: faust.TopicT,
                     value: dict[str, Any], body: dict[str, Any], detail: dict[str, object]) -> Response:
        """Audit, then produce; 202 once the broker has the message."""
        response = await self.answer(web, body, 202, decision, action, "accepted", customer_id, detail=detail)
        if response.status != 202:
            return response  # not audited: not sent
        try:
            await self._produce(topic, customer_id, value)
        except Exception as exc:  # noqa: BLE001 - the caller must know it did not happen
            log.error("%s: producing failed: %r", action, exc)
            return await self.answer(web, {"error": "could not queue the request; try again"}, 503, decision,
                                     action, "failed", customer_id, detail=detail)
        return response


def list_refusal(query: ListQuery, principal: Principal, rules: TagRules) -> str | None:
    """Why ``principal`` may not run ``query`` (a 403), or None."""
    if query.sort in MONEY_SORTS and not sees_money(principal):
        return f"sorting by {query.sort} discloses spend: finance and admin only (role {principal.role!r})"
    if principal.role == "viewer":
        for used, what in ((query.sort in ("risk", "score"), f"sort={query.sort}"), (query.levels, "churn"),
                           (query.team, "team")):
            if used:
                return f"{what} uses churn, score or profile data: sales, finance and admin only (role 'viewer')"
    if query.tag and not can_see_tag(principal, query.tag, rules):
        return f"role {principal.role!r} may not see tag {query.tag!r}"
    return None


def csv_response(web: View, rows: list[dict[str, Any]], cursor: str | None) -> Response:
    """A page of list rows as CSV: a header row of the role's fields, tags separated by spaces, churn as
    two columns; the next page's cursor in ``X-Next-Cursor``."""
    out = io.StringIO()
    writer = csv.writer(out)
    fields = list(rows[0]) if rows else ["customer_id", "tier", "tags", "evaluated_at"]
    header = [c for f in fields for c in (("churn_risk", "churn_level") if f == "churn" else (f,))]
    writer.writerow(header)
    for row in rows:
        cells: list[Any] = []
        for f in fields:
            value = row.get(f)
            if f == "churn":
                cells += [(value or {}).get("risk"), (value or {}).get("level")]
            else:
                cells.append(" ".join(value or ()) if f == "tags" else ("" if value is None else value))
        writer.writerow(cells)
    headers = {"Content-Type": "text/csv; charset=utf-8", "Content-Disposition": 'attachment; filename="customers.csv"'}
    if cursor:
        headers["X-Next-Cursor"] = cursor
    return web.bytes(out.getvalue().encode(), headers=headers)


def create_audit(settings: Settings, topics: Topics) -> AuditLog:
    """The worker's audit log: the API's calls, and the erasures the runtime carries out."""
    return AuditLog(topics.audit_log, settings.audit_file)


def install_api(app: faust.App, table: Any, runtime: Runtime, settings: Settings, topics: Topics,
                audit: AuditLog) -> Api:
    """Load the tokens (fails fast on a bad configuration), register the pages; ``audit``: the runtime's too."""
    registry = load_registry(settings.api_tokens, settings.api_tokens_file)
    api = Api(app, runtime, settings, topics, registry, audit)

    @app.task
    async def announce() -> None:  # once the worker's logging is set up
        await guards.learn_partitions(app, table.changelog_topic.get_topic_name())
        if len(registry):
            roles = ", ".join(f"{r} {n}" for r, n in registry.roles().items())
            log.info("API tokens: %s; audit to topic %r%s", roles, settings.audit_log_topic,
                     f" and file {str(settings.audit_file)!r}" if settings.audit_file else "")
        else:
            log.warning("no API tokens configured: /customers, /tags and /privacy answer 401")

    @app.page("/customers/{customer_id}")
    class CustomerView(View):
        @app.table_route(table=table, match_info="customer_id")  # type: ignore[arg-type]
        async def get(self, request: Request, customer_id: str) -> Response:
            return await api.read_customer(self, request, table, customer_id)

    @app.page("/customers")
    class Customers(View):
        async def get(self, request: Request) -> Response:
            return await api.list_customers(self, request)

    @app.page("/customers/{customer_id}/history")
    class CustomerHistory(View):
        async def get(self, request: Request, customer_id: str) -> Response:
            return await api.customer_history(self, request, customer_id)

    @app.page("/customers/{customer_id}/tags")
    class ManualTags(View):
        async def post(self, request: Request, customer_id: str) -> Response:
            return await api.manual_command(self, request, customer_id)

    @app.page("/tags/{tag}/customers")
    class TagCustomers(View):
        async def get(self, request: Request, tag: str) -> Response:
            return await api.list_tag(self, request, tag)

    @app.page("/privacy/requests")
    class PrivacyRequests(View):
        async def post(self, request: Request) -> Response:
            return await api.privacy_request(self, request)

    return api
