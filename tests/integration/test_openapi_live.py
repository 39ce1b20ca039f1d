"""The worker's HTTP surface against agents/static/openapi.yaml, on a live worker (real broker and Redis):
Faust's own pages are gone, the operations pages still serve, every error is a JSON ``{"error": ...}``, and
schemathesis, with every role's token and none, finds no 5xx and no answer the document does not describe."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from agents.openapi import load_document
from stream.devtools.embedded import ServiceGroup

from .conftest import Namespace, Worker, isolated_namespace, wait_for

pytestmark = pytest.mark.integration

CUSTOMER = "c-open"
#: the live feed is an endless event stream (no answer to validate): its refusal is checked below
SCHEMA = schemathesis.openapi.from_dict(load_document()).exclude(operation_id="getDashboardFeed")
SCHEMA.config.generation.update(modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
                                with_security_parameters=False)  # the token is the test's, per role


@SCHEMA.hook
def flatmap_path_parameters(context: schemathesis.HookContext, path_parameters: dict[str, Any] | None) -> Any:
    """Half the valid customer ids are the live customer's, so its document (200) is checked for every role too."""
    cid = (path_parameters or {}).get("customer_id")
    if isinstance(cid, str) and 1 <= len(cid) <= 128:
        return st.sampled_from([path_parameters, {**(path_parameters or {}), "customer_id": CUSTOMER}])
    return st.just(path_parameters)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]


def fetch(worker: Worker, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    """Status, content type and body of ``method path`` on ``worker``, without a token."""
    req = urllib.request.Request(f"http://127.0.0.1:{worker.web_port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - a local test worker
            return resp.status, resp.headers.get_content_type(), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get_content_type(), exc.read()


@pytest.fixture(scope="module")
def live(services: ServiceGroup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Namespace, Worker]]:
    """One worker, holding one customer (so /table/customers/<id>/ would have had something to show)."""
    spaces = isolated_namespace(services, tmp_path_factory.mktemp("openapi"))
    ns = next(spaces)
    try:
        worker = ns.worker()
        ns.produce("order", {"event_id": "o1", "customer_id": CUSTOMER, "ts": "2026-01-05T00:00:00Z",
                             "order_id": "o1", "amount": "120"})
        wait_for(lambda: worker.get(f"/customers/{CUSTOMER}")[0] == 200, 60, f"{CUSTOMER} served")
        yield ns, worker
    finally:
        spaces.close()


@pytest.mark.parametrize("path", [f"/table/customers/{CUSTOMER}/", "/table/", "/router/", "/router/topics",
                                  f"/router/customers/{CUSTOMER}/", "/graph/", "/performance/"])
def test_fausts_own_pages_are_not_served(live: tuple[Namespace, Worker], path: str) -> None:
    """/table/ served a customer's whole state without a token, /router/ the workers' URLs (stream/faust/app.py)."""
    _, worker = live
    status, content_type, body = fetch(worker, path)
    assert (status, content_type) == (404, "application/json"), body
    assert orjson.loads(body) == {"error": "Not Found"}
    assert CUSTOMER.encode() not in body


@pytest.mark.parametrize(("path", "content_type"), [("/healthz", "application/json"), ("/readyz", "application/json"),
                                                    ("/stats", "application/json"),
                                                    ("/stats?partitions", "application/json"),
                                                    ("/metrics", "text/plain"), ("/", "application/json")])
def test_the_operations_pages_still_serve_without_a_token(live: tuple[Namespace, Worker], path: str,
                                                         content_type: str) -> None:
    _, worker = live
    status, got, body = fetch(worker, path)
    assert (status, got) == (200, content_type), body
    if path == "/metrics":
        assert b"tagger_events_total" in body
    if path.startswith("/stats"):
        assert ("partitions" in orjson.loads(body)) == path.endswith("?partitions")


def test_a_method_a_path_does_not_serve_is_a_json_405(live: tuple[Namespace, Worker]) -> None:
    _, worker = live
    for method, path in (("DELETE", "/healthz"), ("PUT", f"/customers/{CUSTOMER}"), ("GET", "/privacy/requests")):
        status, content_type, body = fetch(worker, path, method)
        assert (status, content_type) == (405, "application/json"), (method, path, body)
        assert set(orjson.loads(body)) == {"error"}


def test_the_live_feed_refuses_a_call_without_a_token_in_json(live: tuple[Namespace, Worker]) -> None:
    _, worker = live
    status, content_type, body = fetch(worker, "/dashboard/api/feed")
    assert (status, content_type) == (401, "application/json") and set(orjson.loads(body)) == {"error"}


def test_the_description_is_served_without_a_token_as_in_the_repository(live: tuple[Namespace, Worker]) -> None:
    _, worker = live
    status, content_type, body = fetch(worker, "/openapi.json")
    assert (status, content_type) == (200, "application/json")
    assert orjson.loads(body) == load_document()  # tests/unit/test_openapi.py: load_document() is the repo's file


def test_a_tag_command_is_produced_as_parsed_and_a_stray_field_refused(live: tuple[Namespace, Worker]) -> None:
    """The API sent the caller's fields as given: ``adjust_pct: {}`` on an add_tag reached tag-commands."""
    ns, worker = live
    status, answer = worker.request("POST", f"/customers/{CUSTOMER}/tags",
                                    {"action": "add_tag", "tag": "probe", "adjust_pct": {}}, who="sales")
    assert (status, answer) == (400, {"error": "field 'adjust_pct': not taken by action 'add_tag'"})
    status, answer = worker.request("POST", f"/customers/{CUSTOMER}/tags", {"action": "add_tag", "tag": "probe",
                                    "note": None, "expires_at": "2099-01-01T00:00:00Z", "command_id": "cmd-p"},
                                    who="sales")
    assert status == 202, answer
    records = ns.read(ns.settings.tag_commands_topic, lambda rs: any(r["value"]["command_id"] == "cmd-p" for r in rs))
    sent = next(r["value"] for r in records if r["value"]["command_id"] == "cmd-p")
    assert sent == {"command_id": "cmd-p", "customer_id": CUSTOMER, "action": "add_tag", "author": "sales",
                    "note": "", "tag": "probe", "expires_at": 4070908800000}


def json_error_body(response: schemathesis.Response) -> None:
    """Every 4xx says what went wrong as JSON ``{"error": "..."}`` (the document's promise)."""
    if 400 <= response.status_code < 500:
        assert response.headers.get("content-type", [""])[0].startswith("application/json"), response.headers
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str), body


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


@SCHEMA.parametrize()
@pytest.mark.parametrize("who", [None, "viewer", "sales", "finance", "admin"])
@settings(max_examples=25, deadline=None, phases=[Phase.explicit, Phase.generate], database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_the_api_keeps_its_description(live: tuple[Namespace, Worker], session: requests.Session, who: str | None,
                                       case: schemathesis.Case) -> None:
    """Writes only produce to the namespace's topics; no shrinking: a failure names its case as generated."""
    ns, worker = live
    headers = {"Authorization": f"Bearer {ns.tokens[who]}"} if who else {}
    response = case.call(base_url=f"http://127.0.0.1:{worker.web_port}", session=session, headers=headers)
    case.validate_response(response, checks=CHECKS)
    json_error_body(response)
