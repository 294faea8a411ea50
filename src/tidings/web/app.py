"""The standalone ASGI app: every route, the error shape for framework errors, and CORS."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from tidings import __version__
from tidings.web.dashboard import build_dashboard_router
from tidings.web.errors import error_response, validation_message
from tidings.web.routes import events_response, publish_response
from tidings.web.task_routes import progress_response, task_id_of

if TYPE_CHECKING:
    from tidings.hub import Hub

__all__ = ["CORS", "FastPaths", "create_app"]

CORS_HEADERS = ["Authorization", "Content-Type", "Last-Event-ID"]


def create_app(hub: Hub) -> FastAPI:
    """A FastAPI app serving ``hub``: what ``tidings serve`` runs."""
    app = FastAPI(
        title="tidings",
        version=__version__,
        summary="Server-Sent Events hub: topics, resumable streams, task progress.",
        lifespan=hub.lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.include_router(hub.router)
    app.include_router(build_dashboard_router())  # GET /: the live dashboard
    # The standalone server's protocol finds the hub here (tidings.web.protocol).
    app.state.tidings_hub = hub

    async def http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException):  # registered for HTTPException only
            raise exc
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), exc.headers)

    async def invalid_request(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, RequestValidationError):  # registered for this type only
            raise exc
        return error_response(422, "invalid_request", validation_message(exc))

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_middleware(FastPaths, hub=hub)

    origins = hub.settings.cors_origin
    if origins:
        wildcard = "*" in origins
        app.add_middleware(
            CORS,
            allow_origins=origins,
            # `*` is never combined with credentials (SPEC §5).
            allow_credentials=not wildcard,
            allow_methods=["GET", "POST", "PUT", "OPTIONS"],
            allow_headers=CORS_HEADERS,
            expose_headers=["Retry-After"],
            max_age=600,
        )
    return app


class CORS(CORSMiddleware):
    """Starlette's CORS middleware, with a refused preflight in the SPEC's error shape.

    Starlette answers a preflight it refuses (an origin, a method or a header not on the
    lists) with ``400 text/plain "Disallowed CORS origin"``; here the same refusal is
    ``400 {"error": {"code": "cors_refused", "message": ...}}``, the message saying what was
    refused. The browser decides on the headers alone, which are Starlette's.
    """

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        headers = {
            name: value
            for name, value in response.headers.items()
            if name not in ("content-type", "content-length")
        }
        refused = "; ".join(self._refusals(request_headers)) or "not allowed"
        return error_response(
            response.status_code, "cors_refused", f"CORS preflight refused: {refused}", headers
        )

    def _refusals(self, request_headers: Headers) -> list[str]:
        refusals = []
        if not self.is_allowed_origin(origin=request_headers["origin"]):
            refusals.append("this origin is not allowed (--cors-origin)")
        method = request_headers["access-control-request-method"]
        if method not in self.allow_methods:
            allowed = ", ".join(m for m in self.allow_methods if m != "OPTIONS")
            refusals.append(f"method {method!r} is not allowed (only {allowed})")
        requested = request_headers.get("access-control-request-headers") or ""
        names = [name.strip().lower() for name in requested.split(",") if name.strip()]
        extra = [name for name in names if name not in self.allow_headers]
        if extra and not self.allow_all_headers:
            refusals.append(
                f"header {extra[0]!r} is not allowed (only {', '.join(CORS_HEADERS)} and the "
                "CORS-safelisted ones)"
            )
        private = "access-control-request-private-network" in request_headers
        if private and not self.allow_private_network:
            refusals.append("private network access is not allowed")
        return refusals


class FastPaths:
    """Answers the hot endpoints before FastAPI's routing, with the same code as the routes.

    ``GET /events``: a stream lives for hours, and everything on its call stack lives as
    long. ``POST /publish`` and ``POST /tasks/{id}/progress``: called for every event and
    every progress report, where the router, the dependency solver and the exception
    middlewares cost several times the work itself (docs/performance.md). The answers,
    errors included, are the routes' own (``events_response``, ``publish_response``,
    ``progress_response``); CORS still wraps them.
    """

    def __init__(self, app: ASGIApp, hub: Hub) -> None:
        self.app = app
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            response = await self._answer(scope, receive)
            if response is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive) -> Response | None:
        method, path = scope["method"], scope["path"]
        if method == "GET" and path == "/events":
            return await events_response(self.hub, Request(scope, receive))
        if method != "POST":
            return None
        if path == "/publish":
            return await publish_response(self.hub, Request(scope, receive))
        task_id = task_id_of(path, "progress")
        if task_id is not None:
            return await progress_response(self.hub, Request(scope, receive), task_id)
        return None
