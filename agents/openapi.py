"""The API's own description, and the promise it makes about errors.

``GET /openapi.json`` serves agents/static/openapi.yaml (the one source, kept in the
repository) as JSON, without a token: it says what the API is, nothing about customers.
The document promises a JSON ``{"error": ...}`` body on every 4xx and 5xx; the
handlers keep it themselves, and :func:`json_errors` keeps it where no handler runs
(aiohttp's own 404 for an unknown path, 405 for a method a path does not serve, and
500 for an exception that escaped a handler), which aiohttp answers in plain text.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import orjson
import yaml
from aiohttp import web as aioweb
from faust.web import Request, Response, View

log = logging.getLogger(__name__)

DOCUMENT = "openapi.yaml"
_Handler = Callable[[aioweb.Request], Awaitable[aioweb.StreamResponse]]


def load_document() -> dict[str, Any]:
    """The OpenAPI document, from the YAML source shipped in agents/static."""
    text = resources.files("agents").joinpath("static", DOCUMENT).read_text(encoding="utf-8")
    document: dict[str, Any] = yaml.safe_load(text)
    return document


def error_response(exc: aioweb.HTTPException) -> aioweb.Response:
    """aiohttp's error, as JSON: the same status and headers (``Allow`` of a 405), ``{"error": reason}``."""
    headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
    return aioweb.json_response({"error": exc.reason}, status=exc.status, headers=headers,
                                dumps=lambda v: orjson.dumps(v).decode())


@aioweb.middleware
async def json_errors(request: aioweb.Request, handler: _Handler) -> aioweb.StreamResponse:
    """Answer what no view answers (unknown path, method, an escaped exception) with a JSON error body."""
    try:
        return await handler(request)
    except aioweb.HTTPException as exc:
        if exc.status < 400:
            raise  # a redirect is not an error
        return error_response(exc)
    except Exception:  # noqa: BLE001 - a bug in a handler: logged with its traceback, answered as JSON
        log.exception("unhandled error on %s %s", request.method, request.path)
        return aioweb.json_response({"error": "internal error"}, status=500)


def install_openapi(app: Any) -> None:
    """Serve ``GET /openapi.json`` and give the worker's web server JSON error bodies."""
    body = orjson.dumps(load_document())
    app.web.web_app.middlewares.append(json_errors)

    @app.page("/openapi.json")
    async def openapi(web: View, request: Request) -> Response:
        return web.bytes(body, content_type="application/json")
