"""agents/static/openapi.yaml against the worker it describes: the routes a worker registers and the document's
paths agree both ways, each operation's roles are ACTION_ROLES', the document is valid OpenAPI 3.1, and the
middleware answers what no view answers with a JSON error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web as aioweb
from aiohttp.test_utils import make_mocked_request
from openapi_spec_validator import validate

from agents.openapi import json_errors, load_document
from agents.tagger import build
from stream.access.auth import ACTION_ROLES, ROLES
from stream.settings import Settings

SOURCE = Path(__file__).resolve().parents[2] / "agents" / "static" / "openapi.yaml"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[tuple[str, str]]]:
    """(path, METHOD) of every route of an app built as ``tagger worker`` builds it, its web server initialised
    as the worker initialises it (Faust's blueprints applied, with the settings of stream/faust/app.py)."""
    app, _ = build(Settings(datadir=tmp_path_factory.mktemp("data")))  # type: ignore[call-arg]
    web: Any = app.web  # Faust's aiohttp driver
    web.init_server()
    yield {(r.resource.canonical, r.method) for r in web.web_app.router.routes() if r.resource is not None}


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method.upper(), item[method]


def test_every_route_a_worker_serves_is_documented(routes: set[tuple[str, str]]) -> None:
    documented = {(path, method) for path, method, _ in operations(load_document())}
    undocumented = {(p, m) for p, m in routes if m != "HEAD"} - documented
    assert not undocumented, f"routes missing from agents/static/openapi.yaml: {sorted(undocumented)}"


def test_every_documented_operation_is_served(routes: set[tuple[str, str]]) -> None:
    documented = {(path, method) for path, method, _ in operations(load_document())}
    assert not documented - routes, f"documented but not served: {sorted(documented - routes)}"
    assert {p for p, _ in routes} == {p for p, m in routes if m == "HEAD"}, "the document promises HEAD everywhere"


def test_each_operations_roles_are_the_roles_allowed_its_action() -> None:
    for path, method, op in operations(load_document()):
        protected = op.get("security") != []
        assert ("x-roles" in op) == protected, (method, path)
        assert set(op.get("x-roles", ())) <= set(ROLES), (method, path)
        if "x-action" in op:
            assert set(op["x-roles"]) == ACTION_ROLES[op["x-action"]], (method, path)


def test_the_document_is_valid_openapi_3_1() -> None:
    document = load_document()
    assert document["openapi"] == "3.1.0"
    validate(document)  # raises, naming the place, when it is not
    assert len({op["operationId"] for _, _, op in operations(document)}) == len(list(operations(document)))


def test_the_served_document_is_the_repository_file() -> None:
    assert load_document() == yaml.safe_load(SOURCE.read_text(encoding="utf-8"))


async def test_aiohttps_own_errors_and_escaped_exceptions_are_json() -> None:
    request = make_mocked_request("DELETE", "/healthz")

    async def not_allowed(request: aioweb.Request) -> aioweb.StreamResponse:
        raise aioweb.HTTPMethodNotAllowed("DELETE", ["GET", "HEAD"])

    async def broken(request: aioweb.Request) -> aioweb.StreamResponse:
        raise RuntimeError("a bug")

    async def redirect(request: aioweb.Request) -> aioweb.StreamResponse:
        raise aioweb.HTTPFound("/dashboard")

    response = await json_errors(request, not_allowed)
    assert isinstance(response, aioweb.Response) and response.text is not None
    assert (response.status, response.content_type) == (405, "application/json")
    assert orjson.loads(response.text) == {"error": "Method Not Allowed"}
    assert set(response.headers["Allow"].split(",")) == {"GET", "HEAD"}
    response = await json_errors(request, broken)
    assert isinstance(response, aioweb.Response) and response.text is not None
    assert response.status == 500 and orjson.loads(response.text) == {"error": "internal error"}
    with pytest.raises(aioweb.HTTPFound):
        await json_errors(request, redirect)
