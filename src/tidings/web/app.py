"""The hub as one pure ASGI app: every endpoint, the dashboard, OpenAPI, CORS and lifespan.

What ``tidings serve`` runs, and what ``hub.asgi_app()`` gives an application to mount.
Requests are matched by :class:`~tidings.web.routes.Routes` (no framework on the way);
``/openapi.json`` and ``/docs`` are FastAPI's, generated once from the same endpoint list
(:func:`~tidings.web.routes.build_router`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import orjson
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from tidings.errors import error_line
from tidings.web.context import HubContext
from tidings.web.cors import CorsMiddleware, CorsPolicy
from tidings.web.routes import API, DASHBOARD, Endpoint, Routes, build_router

__all__ = ["BEGIN_SHUTDOWN", "Lifespan", "TidingsApp", "create_app"]

logger = logging.getLogger("tidings.web")

#: What runs while the app serves: ``hub.lifespan`` (start the hub, stop it after).
Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]

SUMMARY = "Server-Sent Events hub: topics, resumable streams, task progress."

#: The key, in the ASGI lifespan state, of the callable that ends the hub's streams.
BEGIN_SHUTDOWN = "tidings.begin_shutdown"


class TidingsApp:
    """The hub's endpoints and dashboard as an ASGI app, with its lifespan.

    Args:
        hub: the hub the endpoints serve.
        lifespan: run on the ASGI lifespan protocol (``hub.lifespan``); a failure to start
            is reported to the server in one line (the error and its cause).
        version: the version OpenAPI shows.
    """

    def __init__(self, hub: HubContext, *, lifespan: Lifespan | None, version: str) -> None:
        self.hub = hub
        self.lifespan = lifespan
        self.version = version
        self._openapi: bytes | None = None
        docs = (
            Endpoint("/openapi.json", ("GET",), self._openapi_json, "openapi"),
            Endpoint("/docs", ("GET",), self._docs, "docs"),
        )
        self.routes = Routes(hub, API + DASHBOARD + docs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.routes(scope, receive, send)
        elif kind == "lifespan":
            state = scope.get("state")
            if isinstance(state, dict):
                # How a server that runs this app ends its streams on shutdown: through
                # the engine, spread over the drain window (ASGI lifespan state is shared
                # between the server and the app).
                state[BEGIN_SHUTDOWN] = self.hub.engine.begin_shutdown
            await self._lifespan(receive, send)
        # A websocket is refused by not accepting it (the server answers 403).

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":  # pragma: no cover - the protocol's order
            return
        if self.lifespan is None:
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        context = self.lifespan(self)
        try:
            await context.__aenter__()
        except Exception as exc:
            await send({"type": "lifespan.startup.failed", "message": error_line(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        try:
            await context.__aexit__(None, None, None)
        except Exception as exc:
            logger.exception("stopping the hub failed")
            await send({"type": "lifespan.shutdown.failed", "message": error_line(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document of the JSON endpoints (SPEC §3)."""
        return get_openapi(
            title="tidings",
            version=self.version,
            summary=SUMMARY,
            routes=build_router(self.hub).routes,
        )

    async def _openapi_json(self, hub: HubContext, request: Request) -> Response:
        if self._openapi is None:
            self._openapi = orjson.dumps(self.openapi())
        return Response(self._openapi, media_type="application/json")

    async def _docs(self, hub: HubContext, request: Request) -> Response:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title="tidings - API")


def create_app(hub: HubContext, *, lifespan: Lifespan | None = None, version: str = "") -> ASGIApp:
    """The hub's ASGI app: :class:`TidingsApp`, behind CORS when ``--cors-origin`` is set."""
    app: ASGIApp = TidingsApp(hub, lifespan=lifespan, version=version)
    origins = hub.settings.cors_origin
    if origins:
        app = CorsMiddleware(app, CorsPolicy(origins))
    return app
